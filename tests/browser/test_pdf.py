"""The printable edition (`make pdf`): a table of contents, every chapter, its figures and typeset math.

Run after `make pdf` (the Makefile's `browser` target does both); needs poppler's pdfinfo, pdftotext,
pdfimages and pdftoppm."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PDF = Path(os.environ.get("BOOK_PDF") or ROOT / "_build" / "dspa-lite.pdf").resolve()


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout


@pytest.fixture(scope="module")
def text() -> str:
    if not PDF.is_file():
        pytest.fail(f"no {PDF}: run `make pdf` first")
    return _run("pdftotext", "-layout", str(PDF), "-")


def _title(notebook: Path) -> str:
    first = "".join(json.loads(notebook.read_text())["cells"][0]["source"])
    return re.search(r"^# (.+)$", first, re.M)[1]


def test_pages_contents_and_every_chapter(text):
    pages = int(re.search(r"^Pages:\s+(\d+)", _run("pdfinfo", str(PDF)), re.M)[1])
    chapters = sorted((ROOT / "book").glob("*.ipynb"))
    assert pages >= 10 * len(chapters), f"{pages} pages for {len(chapters)} chapters: is the book all there?"
    assert "Contents" in text.split("\f")[0], "the first page holds the table of contents"
    flat = " ".join(text.split())
    # each title twice (contents, chapter), but the root page's, which heads the contents
    missing = [nb.name for i, nb in enumerate(chapters) if flat.count(" ".join(_title(nb).split())) < min(i + 1, 2)]
    assert not missing, f"chapters missing from the PDF: {missing}"
    assert "Cell In[" not in text, "a chapter printed an error"


def test_figures_and_math_are_printed(text, tmp_path):
    images = [line for line in _run("pdfimages", "-list", str(PDF)).splitlines()[2:] if line.strip()]
    figures = [line for line in images if int(line.split()[3]) >= 300]  # width in pixels: plots, not icons
    assert len(figures) >= 13, f"{len(figures)} figures in the PDF; every numbered chapter draws at least one"
    assert "\\frac" not in text and "$$" not in text, "math printed as LaTeX source: was MathJax loaded?"
    _run("pdftoppm", "-r", "40", "-png", "-f", "1", "-l", "2", str(PDF), str(tmp_path / "page"))
    shots = sorted(tmp_path.glob("page-*.png"))
    assert len(shots) == 2 and all(p.stat().st_size > 5_000 for p in shots), "the first pages look empty"
