"""Preference triples, the data DSPA is fitted on: the type, and a hash that names a data set in fitted maps.

Reading and writing them (JSONL, ``datasets``) is :mod:`dspa_lite.loading.data`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DataError", "PreferenceTriple", "as_triples", "data_hash"]

REQUIRED = ("prompt", "chosen", "rejected")


class DataError(ValueError):
    """Preference data that cannot be read or used; the message says where and why."""


@dataclass(frozen=True)
class PreferenceTriple:
    """One preference: for ``prompt``, ``chosen`` is preferred over ``rejected``.

    >>> t = PreferenceTriple("Say hi", "Hello there!", "no.", category="chat")
    >>> PreferenceTriple.from_dict(t.to_dict()) == t
    True
    """

    prompt: str
    chosen: str
    rejected: str
    category: str | None = None
    meta: dict | None = field(default=None, hash=False)  # e.g. the source's scores; JSON-serialisable

    def __post_init__(self) -> None:
        for name in REQUIRED:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise DataError(f"field {name!r} must be a string, got {type(value).__name__}: {value!r:.60}")
            if not value.strip():
                raise DataError(f"field {name!r} is empty (a triple needs a non-empty prompt, chosen and rejected)")
        if self.category is not None and not isinstance(self.category, str):
            raise DataError(f"field 'category' must be a string or None, got {type(self.category).__name__}")
        if self.meta is not None:
            try:  # our own copy, so changing the caller's dict does not change the triple
                object.__setattr__(self, "meta", dict(self.meta))
                json.dumps(self.meta)
            except (TypeError, ValueError) as e:
                raise DataError(f"field 'meta' must be a JSON-serialisable dict or None ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSONL row: the three texts, plus ``category``/``meta`` when set."""
        d = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, "category": self.category}
        return {k: v for k, v in d.items() if v is not None} | ({"meta": dict(self.meta)} if self.meta is not None else {})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreferenceTriple:
        """Inverse of :meth:`to_dict`; unknown keys are kept in ``meta`` rather than lost."""
        if not isinstance(d, Mapping):
            raise DataError(f"expected a JSON object with prompt/chosen/rejected, got {type(d).__name__}")
        for name in REQUIRED:
            if name not in d:
                raise DataError(f"missing field {name!r} (found keys: {', '.join(map(repr, d)) or 'none'})")
        meta = d.get("meta")
        extra = {k: v for k, v in d.items() if k not in (*REQUIRED, "category", "meta")}
        if extra and (meta is None or isinstance(meta, Mapping)):  # a non-dict meta: __post_init__ rejects it
            meta = {**(meta or {}), **extra}
        return cls(d["prompt"], d["chosen"], d["rejected"], d.get("category"), meta)


def as_triples(items: Iterable[PreferenceTriple | Mapping]) -> list[PreferenceTriple]:
    return [t if isinstance(t, PreferenceTriple) else PreferenceTriple.from_dict(t) for t in items]


def data_hash(triples: Iterable[PreferenceTriple]) -> str:
    """Sha256 of the triples' canonical JSON, first 16 hex digits; order-sensitive.

    Recorded next to a fitted map so it says which data it came from.

    >>> data_hash([PreferenceTriple("p", "good", "bad")])
    'feb9195117f7c442'
    """
    blob = json.dumps([t.to_dict() for t in as_triples(triples)], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
