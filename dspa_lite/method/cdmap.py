"""The conditional-difference map ``A`` (DSPA, arXiv 2603.21461; docs/design.md §3.2-3.3): which output latents
differ between chosen and rejected responses when a prompt latent is active. The estimators live in
:mod:`dspa_lite.method.estimators` (re-exported here); this module holds the fitting options (:class:`CDMapConfig`) and a
fitted :class:`CDMap`, saved as ``cdmap.safetensors`` + ``cdmap.json`` (no pickle)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from jaxtyping import Float
from torch import Tensor

from .checks import check_output_folder
from .estimators import (  # re-exported: dspa_lite.method.cdmap.estimate_map is a stable public name
    ESTIMATORS,
    LowRankMap,
    check_matrix,
    estimate_map,
    is_int,
    is_num,
    prompt_scores,
    select_latents,
    shape_of,
    specificity_weights,
)
from .features import POOLINGS
from .files import atomic_folder

__all__ = ["CDMap", "CDMapConfig", "CDMapFileError", "CDMapNotFoundError", "IncompatibleMapError", "LowRankMap",
           "estimate_map", "prompt_scores", "select_latents", "specificity_weights"]

COMPAT_FIELDS = ("model_id", "sae_in_id", "sae_out_id", "l_in", "l_out", "d_model", "d_sae_in", "d_sae_out")
TENSORS_FILE, SIDECAR_FILE, FORMAT = "cdmap.safetensors", "cdmap.json", "dspa-lite-cdmap/1"
_TENSORS = ("A", "delta_mean", "delta_std", "latent_mean")
# Above this many entries (1 GiB in fp32) CDMap.from_features keeps A factored (LowRankMap): Gemma Scope 16k x 16k
# is 2^28 and stays dense; Qwen-Scope 64k x 64k (17 GB dense) becomes two (64k, n_triples) factors.
DENSE_MAX_ENTRIES = 2**28
_REFIT = "delete it and refit with `dspa-lite fit`"
try:
    _VERSION = version("dspa-lite")
except PackageNotFoundError:  # running from a source checkout that was never installed
    _VERSION = "0+unknown"


@dataclass(frozen=True)
class CDMapConfig:
    """Options for fitting a :class:`CDMap` (docs/design.md §3.1-3.2); ``default()`` holds the measured defaults."""

    estimator: str = "mean"
    n_min: int = 2
    center: bool = True
    ridge: float = 0.0
    top_r: int | None = None
    pooling: str = "binary"  # how u(x) pools prompt tokens: binary (active anywhere), mean, max, last
    exclude_template: bool = True  # drop BOS and chat-template tokens from u(x)
    specificity: bool = True  # weight rows of A by specificity_weights(U)
    normalize_delta: bool = True  # divide each delta latent by its std over triples
    batch_size: int = 16  # triples per forward pass when extracting features

    def __post_init__(self):
        r, top_r = self.ridge, self.top_r
        checks = [
            ("estimator", self.estimator in ESTIMATORS, f"choose one of {ESTIMATORS}"),
            ("n_min", is_int(self.n_min) and self.n_min >= 1, "it must be an integer >= 1"),
            ("ridge", is_num(r) and r >= 0, "it must be a finite number >= 0"),
            ("ridge", r == 0 or self.estimator == "ridge", f"it only applies to estimator='ridge', not {self.estimator!r}"),
            ("top_r", top_r is None or (is_int(top_r) and top_r >= 1), "it must be None or an integer >= 1"),
            ("pooling", self.pooling in POOLINGS, f"choose one of {POOLINGS}"),
            *((n, isinstance(getattr(self, n), bool), "it must be True or False")
              for n in ("center", "exclude_template", "specificity", "normalize_delta")),
            ("batch_size", is_int(self.batch_size) and self.batch_size >= 1, "it must be an integer >= 1"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"CDMapConfig.{name}={getattr(self, name)!r} is invalid: {want}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CDMapConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"unknown CDMapConfig field(s) {unknown}; valid fields are {sorted(known)}")
        return cls(**d)

    @classmethod
    def plain(cls) -> CDMapConfig:  # the textbook estimator: conditional mean, no options
        return cls(n_min=1, center=False, specificity=False, normalize_delta=False, exclude_template=False)

    @classmethod
    def default(cls) -> CDMapConfig:  # the measured defaults (docs/design.md §3.5)
        return cls()


class CDMapFileError(ValueError):
    """A saved CDMap folder is incomplete or corrupt."""


class CDMapNotFoundError(CDMapFileError, FileNotFoundError):
    """There is no CDMap folder (or one of its two files) at the path given."""


class IncompatibleMapError(ValueError):
    """A map fitted for another model, other SAEs or other layers than the ones it is applied to."""


@dataclass(eq=False)
class CDMap:
    """A fitted map, the ``delta`` mean/std over triples (static steering), each output latent's mean active
    value on chosen responses (ungated ablation), and provenance: ``meta`` records ``COMPAT_FIELDS``,
    ``n_triples``, ``data_hash``, ``package_version`` and ``created`` (the last two filled in if absent).

    ``A`` is a dense tensor, or a :class:`LowRankMap` when it would exceed ``DENSE_MAX_ENTRIES`` (wide SAEs)."""

    A: Float[Tensor, "m_in m_out"] | LowRankMap
    delta_mean: Float[Tensor, " m_out"]
    delta_std: Float[Tensor, " m_out"]
    latent_mean: Float[Tensor, " m_out"]
    config: CDMapConfig = field(default_factory=CDMapConfig)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.A, LowRankMap):
            self.A = LowRankMap(*(t.detach().to(torch.float32).contiguous() for t in (self.A.left, self.A.right)))
        else:
            check_matrix("A", self.A)
        m_in, m_out = self.A.shape
        for name in _TENSORS:
            t = getattr(self, name)
            if name != "A" and (not isinstance(t, Tensor) or tuple(t.shape) != (m_out,)):
                raise ValueError(f"{name} must have shape (m_out,) = ({m_out},), got {shape_of(t)}")
            if name != "A" or isinstance(t, Tensor):
                setattr(self, name, t.detach().to(torch.float32).contiguous())
        self._copies: dict[torch.device, Tensor | LowRankMap] = {self.A.device: self.A}  # A on each device used
        self.meta = {"package_version": _VERSION,
                     "created": datetime.now(UTC).isoformat(timespec="seconds"), **self.meta}
        for key, size in (("d_sae_in", m_in), ("d_sae_out", m_out)):
            if self.meta.get(key) is not None and self.meta[key] != size:
                raise ValueError(f"meta[{key!r}]={self.meta[key]} but A has shape {(m_in, m_out)}")

    @classmethod
    def from_features(cls, U: Float[Tensor, "n_triples m_in"], Delta: Float[Tensor, "n_triples m_out"],
                      latent_mean: Float[Tensor, " m_out"], config: CDMapConfig | None = None,
                      meta: dict | None = None) -> CDMap:
        """Fit ``A`` with ``config`` (default: ``CDMapConfig.default()``) and record the ``delta`` statistics.

        ``A`` stays factored (a :class:`LowRankMap`) when ``m_in * m_out > DENSE_MAX_ENTRIES``."""
        config = CDMapConfig.default() if config is None else config
        factored = U.shape[-1] * Delta.shape[-1] > DENSE_MAX_ENTRIES
        if factored and config.top_r is not None:
            raise ValueError(f"top_r={config.top_r} needs the dense map, but it would have {U.shape[-1]} x {Delta.shape[-1]} "
                             f"entries (> DENSE_MAX_ENTRIES={DENSE_MAX_ENTRIES}): use top_r=None with SAEs this wide")
        A = estimate_map(U, Delta, config.estimator, config.n_min, config.center, config.ridge, config.top_r,
                         weights=specificity_weights(U) if config.specificity else None,
                         normalize_delta=config.normalize_delta, factored=factored)
        d = Delta.to(torch.float64)
        return cls(A, d.mean(0), d.std(0, correction=0), latent_mean, config, {**(meta or {}), "n_triples": U.shape[0]})

    def scores(self, u: Float[Tensor, "*B m_in"]) -> Float[Tensor, "*B m_out"]:
        if u.device not in self._copies:  # one copy per device, kept: not one transfer per call
            self._copies[u.device] = self.A.to(u.device)
        return prompt_scores(self._copies[u.device], u)

    def active_rows(self) -> Tensor:
        """``(m_in,)`` bool: prompt latents whose row of ``A`` is not all zero (for a factored map: whose left row)."""
        rows = self.A.left if isinstance(self.A, LowRankMap) else self.A
        return rows.abs().sum(1) > 0

    def check_compatible(self, model_id: str, sae_in_id: str, sae_out_id: str, l_in: int, l_out: int,
                         d_model: int, d_sae_in: int, d_sae_out: int) -> None:
        """Raise :class:`IncompatibleMapError` (a ``ValueError``), in one line, listing every field where this map's
        provenance differs from what it is applied to; the model comes first."""
        given = dict(zip(COMPAT_FIELDS, (model_id, sae_in_id, sae_out_id, l_in, l_out, d_model, d_sae_in, d_sae_out)))
        if not (bad := [f for f in COMPAT_FIELDS if self.meta.get(f) != given[f]]):
            return
        rec = {f: self.meta.get(f, "<not recorded>") for f in COMPAT_FIELDS}
        fields = "; ".join(f"{f}: recorded {rec[f]!r}, given {given[f]!r}" for f in bad)
        other = "another model" if "model_id" in bad else "other SAEs or layers"
        raise IncompatibleMapError(
            f"wrong map for {other}: this map was fitted on model {rec['model_id']!r} layer {rec['l_in']}->{rec['l_out']} "
            f"but is being applied to {model_id!r} layer {l_in}->{l_out}; mismatching fields: {fields}; "
            "refit with dspa-lite fit for this model and these SAEs")

    def save(self, dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``cdmap.safetensors`` + ``cdmap.json`` into ``dir`` atomically (temp folder, then rename).

        An existing ``dir`` is replaced only with ``overwrite=True`` and only if it holds nothing but a CDMap.
        """
        target = check_output_folder(dir, overwrite=overwrite, owned=(TENSORS_FILE, SIDECAR_FILE), what="a CDMap")
        tensors = {n: getattr(self, n).detach().cpu().contiguous() for n in _TENSORS[1:]}
        if isinstance(self.A, LowRankMap):
            tensors |= {"A.left": self.A.left.cpu().contiguous(), "A.right": self.A.right.cpu().contiguous()}
        else:
            tensors["A"] = self.A.detach().cpu().contiguous()
        with atomic_folder(target) as tmp:
            safetensors.torch.save_file(tensors, str(tmp / TENSORS_FILE), metadata={"format": FORMAT})
            sidecar = {"format": FORMAT, "config": self.config.to_dict(), "meta": self.meta}  # TypeError if not JSON
            (tmp / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2, sort_keys=True), encoding="utf-8")
        return target

    @classmethod
    def load(cls, dir: str | os.PathLike) -> CDMap:
        """Read a folder written by :meth:`save`; errors name the path and suggest refitting."""
        root = Path(dir)
        if not root.is_dir():
            raise CDMapNotFoundError(f"no CDMap folder at {root}: check the path, or fit one with `dspa-lite fit`")
        if missing := [n for n in (TENSORS_FILE, SIDECAR_FILE) if not (root / n).is_file()]:
            raise CDMapNotFoundError(f"{root / missing[0]} is missing, so {root} is not a complete CDMap: {_REFIT}")
        path = root / SIDECAR_FILE
        try:
            sidecar = json.loads(path.read_text(encoding="utf-8"))
            if sidecar.get("format") != FORMAT:
                raise ValueError(f"format {sidecar.get('format')!r} is not {FORMAT!r}")
            config, meta = CDMapConfig.from_dict(sidecar["config"]), dict(sidecar["meta"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
            raise CDMapFileError(f"{path} is corrupt or not a CDMap sidecar ({e}): {_REFIT}") from e
        path = root / TENSORS_FILE
        try:
            tensors = safetensors.torch.load_file(str(path))
            A = tensors["A"] if "A" in tensors else LowRankMap(tensors["A.left"], tensors["A.right"])
            return cls(A, *(tensors[n] for n in _TENSORS[1:]), config, meta)
        except (safetensors.SafetensorError, OSError, KeyError, ValueError) as e:
            raise CDMapFileError(f"{path} is corrupt, truncated or incomplete ({type(e).__name__}: {e}): {_REFIT}") from e
