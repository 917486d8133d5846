"""Walk every page of the rendered site: each internal link and #anchor resolves, and each chapter's Colab
and download links point where the repository setting says.

Run after `make book` (the Makefile's `browser` target does both)."""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from dspa_lite.loading import repository

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("BOOK_HTML") or ROOT / "_build" / "html").resolve()


class Page(HTMLParser):
    """The links (``href``, ``src``) and the anchors (``id``, ``name``) of one HTML page."""

    def __init__(self, path: Path):
        super().__init__()
        self.links: list[str] = []
        self.anchors: set[str] = set()
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("href", "src") and value:
                self.links.append(value)
            elif key in ("id", "name") and value:
                self.anchors.add(value)


def _pages() -> dict[Path, Page]:
    pages = {p: Page(p) for p in sorted(HTML.rglob("*.html")) if "_static" not in p.parts}
    if not pages:
        pytest.fail(f"no rendered pages under {HTML}: run `make book` first")
    return pages


def test_every_internal_link_and_anchor_resolves():
    pages, broken = _pages(), []
    for path, page in pages.items():
        for link in page.links:
            url = urlsplit(link)
            if url.scheme in ("http", "https"):
                if re.fullmatch(r"[\w-]+\.(md|py|json|yml|ipynb|txt)", url.netloc):
                    broken.append(f"{path.relative_to(HTML)}: {link} (a file name read as a web address)")
                continue
            if url.scheme or link.startswith("//"):  # mailto:, data:, javascript:
                continue
            target = (path.parent / unquote(url.path)).resolve() if url.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{path.relative_to(HTML)}: {link} (no such file)")
            elif url.fragment and target.suffix == ".html":
                anchors = pages[target].anchors if target in pages else Page(target).anchors
                if unquote(url.fragment) not in anchors:
                    broken.append(f"{path.relative_to(HTML)}: {link} (no #{url.fragment} there)")
    assert not broken, f"{len(broken)} broken links, e.g.:\n" + "\n".join(broken[:20])


def test_every_chapter_links_to_its_colab_and_download():
    chapters = sorted((ROOT / "book").glob("*.ipynb"))
    for nb in chapters:
        page = HTML / "book" / f"{nb.stem}.html"
        assert page.is_file(), f"{nb.name} was not rendered"
        links = set(Page(page).links)
        colab = {link for link in links if "colab.research.google.com" in link}
        assert colab == {repository.colab_url(f"book/{nb.name}")}, f"{page.name}: Colab links {colab}"
        assert f"../_sources/book/{nb.name}" in links, f"{page.name}: no download link for {nb.name}"
