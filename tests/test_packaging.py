"""Packaging: environment.yml installs the package with its extras; the README's commands are what CI runs."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_the_package_with_every_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    (line,) = pip  # the package itself, not a second list of pins
    assert line.startswith("-e .[") and line.endswith("]")
    installed = set(line[len("-e .["):-1].split(","))
    assert installed | {"notebook"} == set(project["optional-dependencies"])  # book brings notebook
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.replace("python", "") == project["requires-python"]


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert readme.index("make book") < readme.index("make test") < 2000
