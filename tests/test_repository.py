"""One repository setting (_config.yml's `repository`) behind every Colab link, install line and download."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import set_repository  # noqa: E402

FORK, BRANCH = "https://github.com/a-teacher/steering-course", "spring-2027"
COPY = ["book", "_static", "_config.yml", "_toc.yml", "README.md", set_repository.CONSTANTS, *set_repository.TEXTS]


def test_every_file_names_the_configured_repository():
    assert set_repository.main(["--check"]) == 0, "run `make repository`"
    from dspa_lite.loading import repository

    assert (repository.URL, repository.BRANCH) == set_repository.configured(ROOT)


def _fork(tmp_path: Path) -> Path:
    root = tmp_path / "fork"
    for name in COPY:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, root / name)
    config = yaml.safe_load((root / "_config.yml").read_text())
    config["repository"].update(url=FORK, branch=BRANCH)
    config["execute"]["execute_notebooks"] = "off"
    (root / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert set_repository.main(["--check", "--root", str(root)]) == 1  # the copy is stale until rewritten
    assert set_repository.main(["--root", str(root)]) == 0
    assert set_repository.main(["--check", "--root", str(root)]) == 0
    return root


def test_a_changed_setting_reaches_every_link(tmp_path):
    root = _fork(tmp_path)
    for name in COPY[2:]:
        text = (root / name).read_text()
        assert "dspa-lite/dspa-lite" not in text and "/blob/main/" not in text, f"{name} still names the old one"
    assert set_repository.current(root) == (FORK, BRANCH)
    assert f"git+{FORK}@{BRANCH}" in (root / "README.md").read_text()
    for path in sorted((root / "book").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        badge, setup = "".join(cells[0]["source"]), "".join(cells[1]["source"])
        colab = f"https://colab.research.google.com/github/a-teacher/steering-course/blob/{BRANCH}/book/{path.name}"
        assert f"(../_static/colab-badge.svg)]({colab})" in badge, path.name
        assert f'REPO_URL = "{FORK}"' in setup and f'BRANCH = "{BRANCH}"' in setup, path.name
        assert "@ git+{REPO_URL}@{BRANCH}" in setup, path.name

    # The rendered pages (execution off: only the links matter here): the badge and the theme's launch button.
    out = subprocess.run([str(Path(sys.executable).with_name("jupyter-book")), "build", str(root)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    pages = sorted((root / "_build" / "html" / "book").glob("*.html"))
    chapters = [p for p in pages if (root / "book" / f"{p.stem}.ipynb").exists()]
    assert len(chapters) == len(list((root / "book").glob("*.ipynb")))
    for page in chapters:
        links = set(re.findall(r'href="(https://colab\.research\.google\.com[^"]*)"', page.read_text()))
        want = f"https://colab.research.google.com/github/a-teacher/steering-course/blob/{BRANCH}/book/{page.stem}.ipynb"
        assert links == {want}, f"{page.name}: {links}"
