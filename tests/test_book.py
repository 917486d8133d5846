"""The chapters as files: each setup cell installs what its chapter imports and is hidden in the rendered
book, and each numbered chapter has the anatomy of a course chapter (goals, exercises, summary)."""

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


NUMBERED = [p for p in CHAPTERS if p.stem[:2].isdigit()]
MAX_LINE = 100  # wider code scrolls sideways in the rendered page
DIFFICULTY = re.compile(r"\*Difficulty [1-5]/5 · Importance [1-5]/5 · about \d+ minutes\*")


def source(cell: dict) -> str:
    return "".join(cell["source"])


def hidden(cell: dict) -> bool:
    return "hide-input" in cell["metadata"].get("tags", [])


def exercise_sections(nb: dict) -> list[list[dict]]:
    """The cells from each ``### Exercise`` heading up to the next heading of level 1-3."""
    sections: list[list[dict]] = []
    for cell in nb["cells"]:
        headings = re.findall(r"^#{1,3} .*", source(cell), re.M) if cell["cell_type"] == "markdown" else []
        if headings and headings[-1].startswith("### Exercise "):
            sections.append([cell])
        elif headings:
            sections.append([])
        elif sections:
            sections[-1].append(cell)
    return [s for s in sections if s]


def complete(section: list[dict]) -> bool:
    """A stub the learner fills in, run through a check, and a solution hidden in the rendered book."""
    code = [c for c in section if c["cell_type"] == "code"]
    stub = any("NotImplementedError" in source(c) and "check_" in source(c) and not hidden(c) for c in code)
    solution = any(hidden(c) and re.search(r"check_\w+\(", source(c)) for c in code)
    return bool(DIFFICULTY.search(source(section[0]))) and stub and solution


@pytest.mark.parametrize("path", NUMBERED, ids=lambda p: p.stem)
def test_chapter_anatomy(path):
    nb = json.loads(path.read_text())
    md = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "**Learning goals**" in md, f"{path.name}: state the learning goals at the top"
    assert re.search(r"^## Summary", md, re.M), f"{path.name}: end with a ## Summary"
    sections = exercise_sections(nb)
    done = [re.findall(r"### Exercise [^:]*", source(s[0]))[-1] for s in sections if complete(s)]
    assert len(done) >= 2, (f"{path.name}: {len(done)} complete exercises ({done}); each needs a difficulty line, "
                            "a stub with a check call and a hidden solution that calls the check")
    long = [(i, line) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
            for line in source(c).splitlines() if len(line) > MAX_LINE]
    assert not long, f"{path.name}: code lines over {MAX_LINE} characters (cell, line): {long[:3]}"
