"""Where toy worlds live and how they are trusted: the shipped reference world, the cache, manifests.

- The **reference world** (seed 0) ships inside the package (``dspa_lite/toyworld/reference_world/``), so
  every reader, Colab session and CI run gets the same world in seconds, and the numbers in the
  book are the numbers the reader sees. Floats depend on the CPU: a rebuild on another machine is
  a different (equally valid) world.
- Other seeds are built on demand into ``DSPA_CACHE/toyworld/<config-hash>/``, under a file lock
  (concurrent builders wait for one build), through a temporary folder and one rename.
- Every world folder carries ``manifest.json``: the format version, the config hash and the
  SHA-256 of every file. It is written last (it marks a finished build) and checked on every
  load; a missing or changed file is an error that names the file and the fix. Nothing rebuilds
  silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ..method.files import atomic_write

__all__ = ["WorldError", "FORMAT_VERSION", "REFERENCE_SEED", "REFERENCE_DIR", "MANIFEST", "toy_seed",
           "write_manifest", "verify", "content_hashes", "build_lock", "clean_stale"]

FORMAT_VERSION = 2
REFERENCE_SEED = 0
REFERENCE_DIR = Path(__file__).resolve().parent / "reference_world"
MANIFEST = "manifest.json"
# files that describe a build (when, where, how long) rather than the world: left out of identity checks
BUILD_RECORDS = ("build_info.json",)


class WorldError(RuntimeError):
    """A toy-world folder is incomplete, corrupt, foreign or of another format version."""


def toy_seed() -> int:
    """The world seed from ``DSPA_TOY_SEED`` (default: the reference world's, 0)."""
    raw = os.environ.get("DSPA_TOY_SEED", "").strip()
    if not raw:
        return REFERENCE_SEED
    try:
        seed = int(raw)
    except ValueError:
        seed = -1
    if seed < 0:
        from ..loading.config import SettingError

        raise SettingError(f"DSPA_TOY_SEED={raw!r} is not a non-negative integer: unset it for the reference "
                           "world (seed 0) or give a seed such as 1")
    return seed


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST
                  and "__pycache__" not in p.parts and not p.name.startswith("."))


def write_manifest(path: Path, config_hash: str, seed: int) -> dict:
    """Hash every file of the world at ``path`` into ``manifest.json`` (written last, atomically)."""
    manifest = {"format": FORMAT_VERSION, "config_hash": config_hash, "seed": seed,
                "files": {p.relative_to(path).as_posix(): _sha256(p) for p in _files(path)}}
    atomic_write(path / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def content_hashes(path: Path) -> dict[str, str]:
    """SHA-256 of every file that makes the world (build records left out): equal for equal seeds."""
    files = json.loads((Path(path) / MANIFEST).read_text())["files"]
    return {name: h for name, h in files.items() if name not in BUILD_RECORDS}


def verify(path: Path, config_hash: str, seed: int) -> dict:
    """Check the world at ``path`` against its manifest; raise :class:`WorldError` naming what is wrong."""
    path = Path(path)
    fix = (f"rebuild it with `dspa-lite build-toy --seed {seed} --force`" if path != REFERENCE_DIR
           else "reinstall dspa-lite (pip install --force-reinstall dspa-lite), which ships this world")
    mfile = path / MANIFEST
    if not mfile.is_file():
        raise WorldError(f"the toy world at {path} is incomplete (no {MANIFEST}: an interrupted build or an "
                         f"older format); {fix}")
    try:
        manifest = json.loads(mfile.read_text())
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as e:
        raise WorldError(f"{mfile} is unreadable ({e}); {fix}") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise WorldError(f"the toy world at {path} has format version {manifest.get('format')!r} but this "
                         f"dspa-lite reads version {FORMAT_VERSION}; {fix}")
    if manifest.get("config_hash") != config_hash:
        raise WorldError(f"the toy world at {path} was built from config {manifest.get('config_hash')!r}, not the "
                         f"requested {config_hash!r} (seed {seed}): a foreign folder; {fix}")
    for name, expected in sorted(files.items()):
        f = path / name
        if not f.is_file():
            raise WorldError(f"the toy world at {path} is missing {name}; {fix}")
        if _sha256(f) != expected:
            raise WorldError(f"{f} does not match its SHA-256 in {MANIFEST} (corrupt or edited); {fix}")
    return manifest


def build_lock(path: Path):
    """A file lock beside ``path``: a second builder of the same world waits for the first."""
    from filelock import FileLock

    return FileLock(str(path.parent / f".{path.name}.lock"))


def clean_stale(path: Path) -> None:
    """Remove temporary folders that an interrupted build of ``path`` left (call under the lock)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
