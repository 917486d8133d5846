"""Where the project lives: one repository URL and branch behind every Colab link, install line and
recorded-results download.

The setting is `_config.yml`'s `repository` section. `make repository` (tools/set_repository.py) copies it
into the two constants below and into every chapter, the README and the course guide;
tests/test_repository.py checks that they agree and that a changed setting reaches every rendered link.
"""

from __future__ import annotations

import json
import urllib.request

__all__ = ["BRANCH", "URL", "colab_url", "fetch_json", "raw_url", "slug"]

URL = "https://github.com/dspa-lite/dspa-lite"  # written by `make repository` from _config.yml
BRANCH = "main"  # written by `make repository` from _config.yml


def slug(url: str = URL) -> str:
    """``owner/name`` of a GitHub repository URL.

    >>> slug("https://github.com/owner/name")
    'owner/name'
    """
    if not url.startswith("https://github.com/"):
        raise ValueError(f"{url!r} is not a GitHub repository URL (https://github.com/OWNER/NAME)")
    return url.removeprefix("https://github.com/").strip("/")


def raw_url(path: str, url: str = URL, branch: str = BRANCH) -> str:
    """The raw file ``path`` of the repository at ``branch``. A URL that is not GitHub's (a mirror, a
    ``file://`` folder in tests) is read as laid out like raw.githubusercontent.com: ``<url>/<branch>/<path>``.

    >>> raw_url("benchmarks/results/fit_cost.json", "https://github.com/owner/name", "dev")
    'https://raw.githubusercontent.com/owner/name/dev/benchmarks/results/fit_cost.json'
    """
    if url.startswith("https://github.com/"):
        return f"https://raw.githubusercontent.com/{slug(url)}/{branch}/{path}"
    return f"{url.rstrip('/')}/{branch}/{path}"


def colab_url(path: str) -> str:
    """Colab's page for the notebook ``path`` of the repository (what the book's Colab buttons open).

    >>> colab_url("book/05_conditional_map.ipynb") == (
    ...     f"https://colab.research.google.com/github/{slug()}/blob/{BRANCH}/book/05_conditional_map.ipynb")
    True
    """
    return f"https://colab.research.google.com/github/{slug()}/blob/{BRANCH}/{path}"


def fetch_json(path: str, url: str = URL, branch: str = BRANCH, timeout: float = 20) -> dict:
    """The JSON file ``path`` of the repository, downloaded (Colab installs the package without the
    repository's files). Raises ``OSError`` without network or file, ``ValueError`` for a file that is not JSON."""
    with urllib.request.urlopen(raw_url(path, url, branch), timeout=timeout) as response:
        return json.loads(response.read())
