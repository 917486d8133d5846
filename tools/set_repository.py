"""Write the repository setting of _config.yml (`repository: url, branch`) everywhere it is used.

    python tools/set_repository.py          # rewrite (what `make repository` runs)
    python tools/set_repository.py --check  # exit 1 and list the files that disagree

The places: the package's constants (dspa_lite/loading/repository.py), every chapter's Colab badge and
setup cell, the README and the course guide. A fork changes _config.yml, runs `make repository` and commits.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

CONSTANTS = "dspa_lite/loading/repository.py"
TEXTS = ["README.md", "book/course_guide.md", "dspa_lite/evaluation/pipeline.py"]
BADGE = "[![Open In Colab](../_static/colab-badge.svg)]({colab}/github/{slug}/blob/{branch}/book/{name})"


def configured(root: Path) -> tuple[str, str]:
    repo = yaml.safe_load((root / "_config.yml").read_text())["repository"]
    url, branch = repo["url"].rstrip("/"), repo.get("branch", "main")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        sys.exit(f"_config.yml repository.url = {url!r}: write it as https://github.com/OWNER/NAME")
    return url, branch


def current(root: Path) -> tuple[str, str]:
    text = (root / CONSTANTS).read_text()
    return re.search(r'^URL = "([^"]+)"', text, re.M)[1], re.search(r'^BRANCH = "([^"]+)"', text, re.M)[1]


def rewrite(text: str, old: tuple[str, str], new: tuple[str, str]) -> str:
    """Every form the setting takes: the URL, ``owner/name`` in Colab links, ``owner.github.io/name``, the
    branch after ``git+URL@`` and in ``/blob/BRANCH/``, and the ``BRANCH = "..."`` constants."""
    (old_url, old_branch), (new_url, new_branch) = old, new
    old_slug, new_slug = old_url.removeprefix("https://github.com/"), new_url.removeprefix("https://github.com/")
    (old_owner, old_name), (new_owner, new_name) = old_slug.split("/"), new_slug.split("/")
    text = text.replace(f"git+{old_url}@{old_branch}", f"git+{new_url}@{new_branch}")
    text = text.replace(f"github/{old_slug}/blob/{old_branch}/", f"github/{new_slug}/blob/{new_branch}/")
    for kind in ("blob", "tree"):  # links to files and folders on GitHub
        text = text.replace(f"{old_url}/{kind}/{old_branch}/", f"{new_url}/{kind}/{new_branch}/")
    text = text.replace(f"{old_owner}.github.io/{old_name}", f"{new_owner}.github.io/{new_name}")
    text = text.replace(old_url, new_url)
    return re.sub(rf'^(\s*BRANCH = )"{re.escape(old_branch)}"', rf'\1"{new_branch}"', text, flags=re.M)


def notebook(path: Path, old: tuple[str, str], new: tuple[str, str]) -> str:
    """The chapter with its badge (first line of the first cell) and setup cell (the second) rewritten."""
    nb = json.loads(path.read_text())
    url, branch = new
    badge = BADGE.format(colab="https://colab.research.google.com", slug=url.removeprefix("https://github.com/"),
                         branch=branch, name=path.name)
    first = "".join(nb["cells"][0]["source"]).split("\n", 1)
    nb["cells"][0]["source"] = "\n".join([badge, *first[1:]]).splitlines(True)
    setup = nb["cells"][1]
    setup["source"] = rewrite("".join(setup["source"]), old, new).splitlines(True)
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file disagrees")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = ap.parse_args(argv)
    root, new = args.root, configured(args.root)
    old = current(root)
    todo = {root / name: rewrite((root / name).read_text(), old, new) for name in [CONSTANTS, *TEXTS]}
    todo |= {path: notebook(path, old, new) for path in sorted((root / "book").glob("*.ipynb"))}
    stale = [path for path, text in todo.items() if path.read_text() != text]
    for path in stale:
        print(f"{'differs' if args.check else 'rewrote'}: {path.relative_to(root)}")
        if not args.check:
            path.write_text(todo[path])
    if args.check and stale:
        print(f"these files do not name {new[0]} @ {new[1]} (_config.yml): run `make repository`", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
