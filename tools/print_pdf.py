"""Print the single-page book (jupyter-book's singlehtml builder) to one PDF with headless Chromium.

    python tools/print_pdf.py _stage/_build/singlehtml _build/dspa-lite.pdf [--mathjax DIR]

Nothing is fetched from the network: the page loads MathJax from the site's `mathjax/` folder (_config.yml's
`mathjax_path`), where this copies npm's `es5` folder (installed by `make pdf`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def printable(site: Path, mathjax: Path) -> Path:
    """A copy of the book's one page at the site's root, where its relative ``_static/``, ``_images/`` and
    ``mathjax/`` links resolve, with MathJax copied into the site."""
    (index,) = re.findall(r'url=([^"]+)"', (site / "index.html").read_text())  # the redirect to the root page
    html = (site / index).read_text(encoding="utf-8")
    if 'src="_static/../mathjax/' not in html:
        raise SystemExit(f"{site / index} loads no MathJax from the site's mathjax/ folder: is _config.yml's "
                         "mathjax_path still ../mathjax/...?")
    shutil.copytree(mathjax, site / "mathjax", dirs_exist_ok=True)
    page = site / "print.html"
    page.write_text(html, encoding="utf-8")
    return page


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if exe := shutil.which(name):
            return exe
    raise SystemExit("Chromium is not installed: apt-get install chromium")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("site", type=Path, help="the singlehtml build folder")
    ap.add_argument("pdf", type=Path, help="where to write the PDF")
    ap.add_argument("--mathjax", type=Path, default=Path(".tools/node_modules/mathjax/es5"))
    args = ap.parse_args(argv)
    page = printable(args.site.resolve(), args.mathjax)
    args.pdf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", f"--user-data-dir={profile}", "--no-pdf-header-footer",
                        "--virtual-time-budget=60000", "--run-all-compositor-stages-before-draw",
                        f"--print-to-pdf={args.pdf.resolve()}", page.as_uri()],
                       check=True, capture_output=True, timeout=600)
    print(f"wrote {args.pdf} ({args.pdf.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
