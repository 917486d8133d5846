"""The package as a user installs it: a wheel built from this tree (offline, ``pip wheel --no-build-isolation``)
holds every module, the shipped toy world and the ``dspa-lite`` entry point, and the commands the README tells
a user to run work from the wheel's own files, outside the repository (the real-model command's ``--dry-run``
included), so that nothing the README documents needs a clone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")  # a copy: the build leaves build/ and *.egg-info behind
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "dspa_lite", src / "dspa_lite", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(out)], check=True, timeout=600, capture_output=True)
    (whl,) = out.glob("dspa_lite-*.whl")
    return whl


def readme_commands() -> list[list[str]]:
    """The ``dspa-lite`` command lines in the README's code blocks (``!`` of a Colab cell removed)."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [line.strip().lstrip("!").split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line.split()[1:] for line in lines if line.startswith("dspa-lite ")]


def test_wheel_holds_the_package_and_the_entry_point(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "dspa_lite").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)
    world = "dspa_lite/toyworld/reference_world/"
    assert {world + "manifest.json", world + "model/model.safetensors", world + "sae_out/cfg.json"} <= names
    (entry,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "dspa-lite = dspa_lite.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    assert not any(n.startswith(("benchmarks/", "tests/", "book/")) for n in names)


def test_readme_commands_run_from_the_wheel(wheel, tmp_path):
    """Every subcommand the README names exists in the wheel's CLI, and the documented real-model command's
    dry run works from the wheel alone, in a folder outside the repository."""
    commands = readme_commands()
    subcommands = sorted({c[0] for c in commands})
    assert "pipeline" in subcommands and ["pipeline", "--dry-run"] in [c[:2] for c in commands]
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import json, sys, dspa_lite; from dspa_lite.cli import build_parser, main\n"
             "p = build_parser(); subs = next(a for a in p._actions if a.__class__.__name__ == '_SubParsersAction')\n"
             f"print(json.dumps({{'file': dspa_lite.__file__, 'missing': sorted(set({subcommands!r}) - set(subs.choices))}}))\n"
             "sys.exit(main(['pipeline', '--dry-run', '--json', '--out', 'run']))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("DSPA_PROFILE", None)
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found, plan = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert found["file"].startswith(str(site)) and found["missing"] == []
    assert plan["model"] == "google/gemma-2-2b-it" and plan["memory_modelled"]["A100 40 GB"]["fits"]
    assert not (tmp_path / "run").exists(), "a dry run writes nothing"


def test_colab_instructions_need_no_clone():
    colab = (ROOT / "README.md").read_text().split("## In Colab")[1].split("\n## ")[0]
    assert "benchmarks/" not in colab and "git clone" not in colab and "python " not in colab
    assert "notebook_login()" in colab and "export_hf_token()" in colab
