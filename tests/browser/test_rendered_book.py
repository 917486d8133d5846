"""The rendered book, opened in headless Chromium: no tracebacks, figures everywhere, a Colab button, math
typeset offline, no code cell that scrolls sideways.

Run after `make book` (the Makefile's `browser` target does both). Screenshots are saved under
_build/screenshots/ for a person to look at.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("BOOK_HTML") or ROOT / "_build" / "html").resolve()
SHOTS = ROOT / "_build" / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=4000"]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.fail("Chromium is not installed: `make browser` installs Debian's chromium (apt-get install chromium)")
    return exe


def _chapters() -> list[Path]:
    pages = sorted((HTML / "book").glob("[0-9][0-9]_*.html"))
    if not pages:
        pytest.fail(f"no rendered chapters under {HTML / 'book'}: run `make book` first")
    return pages


def _dom(exe: str, page: Path, tmp_path: Path) -> str:
    out = subprocess.run([exe, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _screenshot(exe: str, page: Path, tmp_path: Path) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"{page.stem}.png"
    subprocess.run([exe, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1800",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000, f"screenshot of {page.name} looks empty"
    return shot


def test_index_opens(tmp_path):
    exe = _chromium()
    index = HTML / "index.html"
    assert index.is_file(), "run `make book` first"
    _screenshot(exe, index, tmp_path)
    dom = _dom(exe, index, tmp_path)
    assert "DSPA" in dom


@pytest.mark.parametrize("page", _chapters() if HTML.exists() else [], ids=lambda p: p.stem)
def test_chapter_renders_cleanly(page, tmp_path):
    exe = _chromium()
    dom = _dom(exe, page, tmp_path)
    text = re.sub(r"<[^>]+>", " ", dom)
    assert "Traceback (most recent call last)" not in text, f"{page.name} shows a traceback"
    assert not re.search(r'class="[^"]*output[^"]*(traceback|error)', dom), f"{page.name} shows an error output"
    assert re.search(r"<img[^>]+src=\"[^\"]+\.(png|svg)", dom), f"{page.name} has no rendered figure"
    assert "colab.research.google.com" in dom, f"{page.name} has no Colab launch link"
    if 'class="math' in page.read_text(encoding="utf-8"):  # typeset by the site's own MathJax, with no network
        assert "<mjx-container" in dom and "\\(" not in text, f"{page.name} shows its math as LaTeX source"
    _screenshot(exe, page, tmp_path)


# Runs in the page after layout: the widest line of every code input that overflows its box.
OVERFLOW_JS = """<script>window.addEventListener('load', () => {
  const wide = [...document.querySelectorAll('div.cell_input pre')]
    .filter(p => p.scrollWidth > p.clientWidth + 1)
    .map(p => p.textContent.split('\\n').reduce((a, b) => b.length > a.length ? b : a, ''));
  document.body.setAttribute('data-overflow', JSON.stringify(wide));
});</script>"""


@pytest.mark.parametrize("page", _chapters() if HTML.exists() else [], ids=lambda p: p.stem)
def test_code_fits_the_page(page, tmp_path):
    """In a 1366-pixel window (the commonest laptop screen), no code input needs a horizontal scroll bar.

    Chapters keep code within 100 characters (tests/test_book.py); _static/dspa.css gives them the room."""
    exe = _chromium()
    probe = page.with_name(f"_probe_{page.name}")  # beside the page, so its relative assets resolve
    probe.write_text(page.read_text().replace("</body>", OVERFLOW_JS + "</body>"))
    try:
        out = subprocess.run([exe, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1366,1800",
                              "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    found = re.search(r'data-overflow="([^"]*)"', out.stdout)
    assert found, f"the overflow probe did not run on {page.name}: {out.stderr[-500:]}"
    wide = json.loads(html.unescape(found.group(1)))
    assert not wide, f"{page.name}: {len(wide)} code cells scroll sideways, e.g. {wide[0]!r}"
