"""The chapters as files: each setup cell installs what its chapter imports, and is hidden in the rendered book."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))
RUNTIME = {"IPython", "google", "ipykernel"}  # Jupyter and Colab themselves


def code(nb: dict) -> str:
    """Every code cell, with IPython magics (``%pip``, ``!cmd``) read as ``pass``."""
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    return "\n".join(re.sub(r"^(\s*)[%!].*$", r"\1pass", cell, flags=re.M) for cell in cells)


def imported(nb: dict) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code(nb))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - RUNTIME - {"dspa_lite"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_by(extras: list[str]) -> set[str]:
    """The distributions that `pip install dspa-lite[extras]` names directly (and through dspa-lite[...])."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs, todo = list(project["dependencies"]), list(extras)
    while todo:
        for req in project["optional-dependencies"][todo.pop()]:
            if (m := re.match(r"dspa-lite\[([^\]]+)\]", req)):
                todo += m.group(1).split(",")
            else:
                reqs.append(req)
    return {norm(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in reqs}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_setup_cell_installs_what_the_chapter_imports(path):
    nb = json.loads(path.read_text())
    setup = nb["cells"][1]
    (extras,) = re.findall(r'dspa-lite\[([^\]]*)\] @', "".join(setup["source"]))
    dists = md.packages_distributions()
    have = installed_by(extras.split(","))
    missing = {m: dists.get(m, [m]) for m in imported(nb) if not have & {norm(d) for d in dists.get(m, [m])}}
    assert not missing, f"{path.name} imports {missing}, which dspa-lite[{extras}] does not install"
    assert "hide-input" in setup["metadata"].get("tags", []), f"{path.name}: hide the setup cell's input"
