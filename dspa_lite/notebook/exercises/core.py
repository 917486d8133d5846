"""The two helpers every check uses."""

from __future__ import annotations

__all__ = ["attempt", "passed"]


def passed(name: str) -> None:
    """Tell the learner that every check of exercise ``name`` passed."""
    print(f"✓ {name}: all checks passed")


def attempt(check, fn) -> None:
    """Run ``check(fn)``, but treat an unwritten exercise (``NotImplementedError``) as "not yet"."""
    try:
        check(fn)
    except NotImplementedError:
        print(f"{check.__name__}: not attempted yet. Write your solution above and re-run this cell.")
