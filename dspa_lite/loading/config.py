"""Run-time settings: the profile, fast mode, the cache folder, device, dtype and seeding.

This is the one place that reads the environment:

- ``DSPA_PROFILE``: which model world to run in (``tiny``, the embedded offline toy world, or a
  real model such as ``gemma-2-2b-it``). Default: ``tiny`` when there is no GPU or ``CI`` is set, else
  ``gemma-2-2b-it`` (chat-style preference data steers the chat model; chapter 07 says why).
- ``DSPA_FAST``: ``1`` shrinks evaluation sizes so chapters run in about a minute on a CPU.
  Default: on when ``CI`` is set.
- ``DSPA_CACHE``: where built artifacts (the toy world, fitted maps) live.
  Default: ``~/.cache/dspa_lite``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .profiles import PROFILES, ConfigError, SettingError

__all__ = ["KNOWN_PROFILES", "ConfigError", "SettingError", "cache_dir", "command_profile", "device", "env_flag",
           "fast_mode", "in_ci", "profile_name", "seed_everything"]

KNOWN_PROFILES = tuple(PROFILES)


def env_flag(name: str, default: bool = False) -> bool:
    """The boolean environment variable ``name`` (``1/true/yes/on`` or ``0/false/no/off``; unset: ``default``).

    >>> import os; os.environ["DSPA_DOCTEST_FLAG"] = "yes"; env_flag("DSPA_DOCTEST_FLAG")
    True
    """
    value = os.environ.get(name)
    if value is None:
        return default
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise SettingError(f"{name}={value!r} is not a boolean: use 1 or 0")


def in_ci() -> bool:
    """Whether ``CI`` is set (as GitHub Actions and most CI systems do)."""
    return env_flag("CI")


def profile_name() -> str:
    """The profile selected by ``DSPA_PROFILE`` (validated), or the default for this machine."""
    name = os.environ.get("DSPA_PROFILE", "").strip()
    if not name:
        return "tiny" if in_ci() or not torch.cuda.is_available() else "gemma-2-2b-it"  # why -it: book chapter 07
    known = KNOWN_PROFILES
    if name not in known:
        raise SettingError(f"DSPA_PROFILE={name!r} is not a known profile; choose one of {', '.join(known)}")
    return name


def command_profile(flag: str | None, supported: tuple[str, ...] = ("tiny",)) -> str:
    """The profile a command runs: ``flag`` (``--profile``), else ``DSPA_PROFILE`` when set, else ``tiny``.

    An unknown name, or one outside ``supported``, is a :class:`ConfigError` when it came from the flag and a
    :class:`SettingError` when it came from the environment."""
    if flag is not None:
        name, where, error = flag, "--profile", ConfigError
    elif os.environ.get("DSPA_PROFILE", "").strip():
        name, where, error = profile_name(), "DSPA_PROFILE", SettingError
    else:
        name, where, error = "tiny", "the default profile", ConfigError
    if name not in KNOWN_PROFILES:
        raise error(f"{where}={name!r} is not a known profile; choose one of {', '.join(KNOWN_PROFILES)}")
    if name not in supported:
        raise error(f"{where}={name!r}: this command runs {' or '.join(supported)} only; a real model runs in Python "
                    "(book chapter 07) or with `dspa-lite pipeline`: unset DSPA_PROFILE or pass --profile tiny")
    return name


def fast_mode() -> bool:
    """Whether ``DSPA_FAST`` asks for small evaluation sizes (default: on in CI)."""
    return env_flag("DSPA_FAST", default=in_ci())


def cache_dir(kind: str | None = None) -> Path:
    """``DSPA_CACHE`` (default ``~/.cache/dspa_lite``), created and checked writable.

    Args:
        kind: an optional sub-folder (``"toyworld"``, ``"maps"``...).
    """
    root = Path(os.environ.get("DSPA_CACHE") or Path.home() / ".cache" / "dspa_lite").expanduser()
    path = root / kind if kind else root
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise SettingError(
            f"DSPA_CACHE folder {path} is not writable ({e.strerror}); set DSPA_CACHE to a folder you can write"
        ) from None
    return path


def device(preferred: str | torch.device | None = None) -> torch.device:
    """``preferred`` if given, else the best available device: cuda, then mps, then cpu."""
    if preferred is not None:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
