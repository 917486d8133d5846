"""Where toy worlds come from: the reference world shipped with the package (seed 0), or one built once
into ``DSPA_CACHE/toyworld/<config-hash>/``; every world is verified against its manifest before use."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..loading.config import cache_dir, fast_mode
from ..method.cdmap import CDMap
from . import store
from .build import build
from .data import ToyConfig
from .world import ToyWorld, identity

__all__ = ["build_into", "config_for", "load", "load_map", "world_path"]


def config_for(seed: int | None = None) -> ToyConfig:
    """The config of the world of ``seed`` (default ``DSPA_TOY_SEED``, checked), known before it is loaded or built."""
    return ToyConfig(seed=store.toy_seed() if seed is None else seed)


def load_map(path: str | os.PathLike, cfg: ToyConfig | None = None) -> CDMap:
    """A saved map, checked against the world of ``cfg`` before that world is loaded: a map fitted for another
    model or world is an ``IncompatibleMapError`` that says so first."""
    cdmap = CDMap.load(path)
    cdmap.check_compatible(**identity(cfg or config_for()))
    return cdmap


def world_path(cfg: ToyConfig) -> Path:
    """Where the world of ``cfg`` lives: inside the package for the reference world, else the cache."""
    if cfg == ToyConfig(seed=store.REFERENCE_SEED):
        return store.REFERENCE_DIR
    return cache_dir("toyworld") / cfg.hash()


def build_into(out: str | os.PathLike, seed: int | None = None, force: bool = False, progress: bool = True,
               config: ToyConfig | None = None) -> ToyWorld:
    """Build a world from scratch into the folder ``out`` (``dspa-lite build-toy --seed N --out DIR``)."""
    cfg = config or config_for(seed)
    out = Path(out).expanduser().resolve()
    if out == store.REFERENCE_DIR:
        raise store.WorldError(f"{out} is the reference world shipped with the package; build somewhere else")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with store.build_lock(out):
        store.clean_stale(out)
        build(cfg, out, progress)
    store.verify(out, cfg.hash(), cfg.seed)
    return ToyWorld(out, cfg, fast_mode())


def load(fast: bool | None = None, config: ToyConfig | None = None, seed: int | None = None, force: bool = False,
         progress: bool = True) -> ToyWorld:
    """The toy world: the shipped reference world (seed 0) or one built once into the cache.

    Args:
        fast: shrink default evaluation sizes (``prompts()``); default from ``DSPA_FAST``.
            The world itself is the same in both modes.
        config: a full world config; default ``ToyConfig(seed=seed)``.
        seed: the world seed; default from ``DSPA_TOY_SEED``, else 0 (the reference world).
        force: rebuild into the cache even if a verified copy exists (the reference world shipped
            with the package is never overwritten; ``force`` builds a copy of it in the cache).

    Raises:
        WorldError: the world on disk is incomplete, corrupt or foreign; the message names the file
            and the command that rebuilds it. A world is never rebuilt silently.
    """
    cfg = config or config_for(seed)
    fast = fast_mode() if fast is None else fast
    path = world_path(cfg)
    if force or path != store.REFERENCE_DIR:
        path = cache_dir("toyworld") / cfg.hash()
        if force or not (path / store.MANIFEST).is_file():
            with store.build_lock(path):
                if force or not (path / store.MANIFEST).is_file():  # another process may have built it meanwhile
                    store.clean_stale(path)
                    if progress:
                        print(f"building the toy world (seed {cfg.seed}) into {path}: a few minutes, once",
                              file=sys.stderr, flush=True)
                    build(cfg, path, progress)
    store.verify(path, cfg.hash(), cfg.seed)
    return ToyWorld(path, cfg, fast)
