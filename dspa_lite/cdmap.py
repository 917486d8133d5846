"""The conditional-difference map ``A`` (DSPA, arXiv 2603.21461; DESIGN.md §5.3-5.4): which output latents
differ between chosen and rejected responses when a prompt latent is active. Pure tensor code: ``U``
``(n_triples, m_in)`` and ``Delta`` ``(n_triples, m_out)`` come from ``dspa_lite.features``; a fitted
:class:`CDMap` is saved as ``cdmap.safetensors`` + ``cdmap.json`` (no pickle)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["CDMap", "CDMapConfig", "CDMapFileError", "LowRankMap", "estimate_map", "prompt_scores",
           "select_latents", "specificity_weights"]

ESTIMATORS, POOLINGS = ("mean", "ridge"), ("binary", "mean", "max", "last")
COMPAT_FIELDS = ("model_id", "sae_in_id", "sae_out_id", "l_in", "l_out", "d_model", "d_sae_in", "d_sae_out")
TENSORS_FILE, SIDECAR_FILE, FORMAT = "cdmap.safetensors", "cdmap.json", "dspa-lite-cdmap/1"
_TENSORS = ("A", "delta_mean", "delta_std", "latent_mean")
# Above this many entries (1 GiB in fp32) CDMap.from_features keeps A factored (LowRankMap): Gemma Scope 16k x 16k
# is 2^28 and stays dense; Qwen-Scope 64k x 64k (17 GB dense) becomes two (64k, n_triples) factors.
DENSE_MAX_ENTRIES = 2**28
_EPS = 1e-8
_REFIT = "delete it and refit with `dspa-lite fit`"
try:
    _VERSION = version("dspa-lite")
except PackageNotFoundError:  # running from a source checkout that was never installed
    _VERSION = "0+unknown"


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _shape(x) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _check_matrix(name: str, x) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D tensor (n_triples, m), got {_shape(x)}")
    if x.is_floating_point() and (bad := int((~torch.isfinite(x)).sum())):
        raise ValueError(f"{name} has {bad} non-finite (NaN/inf) entries out of {x.numel()}: check its extraction")


def estimate_map(
    U: Float[Tensor, "n_triples m_in"], Delta: Float[Tensor, "n_triples m_out"], estimator: str = "mean",
    n_min: int = 1, center: bool = False, ridge: float = 0.0, top_r: int | None = None, *,
    weights: Float[Tensor, " m_in"] | None = None, normalize_delta: bool = False, factored: bool = False,
) -> Float[Tensor, "m_in m_out"] | LowRankMap:
    """Estimate ``A`` (DESIGN.md §5.3). With only the first seven arguments: the textbook estimator.

    ``"mean"``: ``A_jk = sum_i U_ij Delta_ik / sum_i U_ij``. ``"ridge"``: ``(U^T U + ridge I)^-1 U^T Delta`` in
    float64 over the latents with support ``>= n_min``, exact when ``Delta_i = sum_j U_ij a_j`` even if
    prompt latents co-occur (the mean is then biased). Rows with support (triples with ``U_ij > 0``) below
    ``n_min`` are zero. ``center`` subtracts the mean of ``Delta`` over triples (A keeps what is specific to
    a prompt latent beyond the global edit); ``normalize_delta`` divides each ``Delta`` column by its
    population std (zero-std columns become 0); ``weights`` scales row ``j`` (e.g. :func:`specificity_weights`);
    ``top_r`` then keeps the ``r`` largest ``|A_jk|`` per row. ``U`` may be 0/1 (bool, int) or real ``>= 0``.

    Every estimator is ``A = L R`` with ``R`` the processed ``Delta`` (n_triples rows), so ``factored=True`` returns
    a :class:`LowRankMap` without ever forming the ``(m_in, m_out)`` matrix (needs ``top_r=None``).

    >>> U = torch.tensor([[1., 0.], [1., 1.], [0., 1.]])  # latent 0 and 1 co-occur in triple 1
    >>> Delta = torch.tensor([[2., 0.], [2., 2.], [0., 2.]])  # additive: a_0 = (2, 0), a_1 = (0, 2)
    >>> estimate_map(U, Delta)  # the conditional mean mixes the co-occurring effects
    tensor([[2., 1.],
            [1., 2.]])
    >>> estimate_map(U, Delta, "ridge").round(decimals=4)  # least squares recovers a_0, a_1
    tensor([[2., 0.],
            [0., 2.]])
    >>> estimate_map(U, Delta, n_min=3)  # each latent is active in only 2 triples
    tensor([[0., 0.],
            [0., 0.]])
    >>> estimate_map(U, Delta, factored=True).dense()  # the same A, kept as (2, 3) @ (3, 2) factors
    tensor([[2., 1.],
            [1., 2.]])
    """
    _check_matrix("U", U)
    _check_matrix("Delta", Delta)
    (n, m_in), m_out = U.shape, Delta.shape[1]
    w_ok = weights is None or (isinstance(weights, Tensor) and tuple(weights.shape) == (m_in,))
    for ok, msg in (
        (Delta.shape[0] == n, f"U has {n} triples (rows) but Delta has {Delta.shape[0]}: both must come from the same triples"),
        (n > 0, "U and Delta have no rows: the map needs at least one preference triple"),
        (estimator in ESTIMATORS, f"estimator={estimator!r} is not one of {ESTIMATORS}"),
        (_is_int(n_min) and n_min >= 1, f"n_min={n_min!r} must be an integer >= 1 (minimum triples per prompt latent)"),
        (top_r is None or (_is_int(top_r) and top_r >= 1), f"top_r={top_r!r} must be None or an integer >= 1"),
        (_is_num(ridge) and ridge >= 0, f"ridge={ridge!r} must be a finite number >= 0"),
        (w_ok, f"weights must have shape (m_in,) = ({m_in},), got {_shape(weights)}"),
        (w_ok and (weights is None or bool(torch.isfinite(weights.double()).all())), "weights has NaN/inf entries"),
        (not (neg := int((U < 0).sum())), f"U has {neg} negative entries: prompt features must be >= 0"),
        (not (factored and top_r is not None), f"top_r={top_r} needs the dense (m_in, m_out) map: pass factored=False"),
    ):
        if not ok:
            raise ValueError(msg)
    u, d = U.to(torch.float64), Delta.to(torch.float64)
    if normalize_delta:
        std = d.std(0, correction=0)  # (m_out,); population std so a single triple is not NaN
        d = torch.where(std > _EPS, d / std.clamp_min(_EPS), torch.zeros_like(d))
    if center:
        d = d - d.mean(0)
    keep = (u > 0).sum(0) >= n_min  # (m_in,) support filter
    L = torch.zeros(m_in, n, dtype=torch.float64)  # A = L @ d
    uk = u[:, keep]  # (n_triples, m_kept): only supported latents, so dead ones do not make the ridge singular
    if estimator == "mean":
        L[keep] = uk.T / uk.sum(0)[:, None]  # the mass is > 0 wherever support >= 1
    elif keep.any():
        m_kept, eye = uk.shape[1], partial(torch.eye, dtype=torch.float64)
        if ridge == 0 and (rank := int(torch.linalg.matrix_rank(uk))) < m_kept:
            raise ValueError(
                f"estimator='ridge' with ridge=0 needs U^T U of full rank, but its rank is {rank} < {m_kept} supported "
                "prompt latents (some always co-occur, or fewer triples than latents): pass ridge > 0 (e.g. 1e-3)")
        if m_kept <= n:  # (U^T U + rI)^-1 U^T, a (m_kept, m_kept) solve
            L[keep] = torch.linalg.solve(uk.T @ uk + ridge * eye(m_kept), uk.T)
        else:  # the same matrix by the push-through identity U^T (U U^T + rI)^-1: a (n, n) solve
            L[keep] = torch.linalg.solve(uk @ uk.T + ridge * eye(n), uk).T
    if weights is not None:
        L = L * weights.to(torch.float64)[:, None]
    dtype = Delta.dtype if Delta.is_floating_point() else torch.float32
    if factored:
        return LowRankMap(L.to(dtype), d.to(dtype))
    A = L @ d
    if top_r is not None and top_r < m_out:
        idx = A.abs().topk(top_r, dim=1).indices  # (m_in, top_r)
        A = torch.zeros_like(A).scatter_(1, idx, A.gather(1, idx))
    return A.to(dtype)


@dataclass(eq=False)
class LowRankMap:
    """``A = left @ right`` kept as its factors, ``left`` ``(m_in, r)`` and ``right`` ``(r, m_out)`` with ``r`` the number
    of triples: ``r (m_in + m_out)`` numbers instead of ``m_in m_out``, and ``u @ A`` costs ``r (m_in + m_out)``.

    >>> A = LowRankMap(torch.ones(4, 2), torch.eye(2, 3))
    >>> A.shape, torch.ones(4) @ A
    ((4, 3), tensor([4., 4., 0.]))
    """

    left: Float[Tensor, "m_in r"]
    right: Float[Tensor, "r m_out"]

    def __post_init__(self):
        _check_matrix("left", self.left)
        _check_matrix("right", self.right)
        if self.left.shape[1] != self.right.shape[0]:
            raise ValueError(f"left {tuple(self.left.shape)} and right {tuple(self.right.shape)} do not chain: "
                             "left must be (m_in, r) and right (r, m_out)")

    @property
    def shape(self) -> tuple[int, int]:
        return self.left.shape[0], self.right.shape[1]

    @property
    def device(self) -> torch.device:
        return self.left.device

    def to(self, *args, **kw) -> LowRankMap:
        return LowRankMap(self.left.to(*args, **kw), self.right.to(*args, **kw))

    def dense(self) -> Float[Tensor, "m_in m_out"]:
        return self.left @ self.right

    def __rmatmul__(self, u: Tensor) -> Tensor:  # u @ A for u of shape (..., m_in)
        return (u @ self.left) @ self.right


def specificity_weights(U: Float[Tensor, "n_triples m_in"]) -> Float[Tensor, " m_in"]:
    """IDF-like specificity of each prompt latent: ``log((1 + n) / (1 + df_j))``.

    ``n`` is the number of triples and ``df_j`` the number in which latent ``j`` is active (``U_ij > 0``).
    A latent active in every prompt (template-like) gets 0, rare ones the most; pass as ``estimate_map(weights=)``.

    >>> specificity_weights(torch.tensor([[1., 0.], [1., 1.], [1., 0.]]))
    tensor([0.0000, 0.6931])
    """
    _check_matrix("U", U)
    df = (U > 0).sum(0).to(torch.float32)  # (m_in,)
    return torch.log1p(torch.tensor(float(U.shape[0]))) - torch.log1p(df)  # a difference of logs: exactly 0 if df = n


def prompt_scores(A: Float[Tensor, "m_in m_out"] | LowRankMap, u: Float[Tensor, "*B m_in"]) -> Float[Tensor, "*B m_out"]:
    """Per-prompt scores ``s(x) = A^T u(x) / max(1, |u(x)|_1)`` (DESIGN.md §5.4), for ``(m_in,)`` or ``(B, m_in)``.

    >>> prompt_scores(torch.tensor([[2., 0.], [0., 2.]]), torch.tensor([1., 1.]))
    tensor([1., 1.])
    """
    if not isinstance(A, LowRankMap) and (not isinstance(A, Tensor) or A.ndim != 2):
        raise ValueError(f"A must be a 2-D tensor (m_in, m_out) or a LowRankMap, got {_shape(A)}")
    if not isinstance(u, Tensor) or u.ndim not in (1, 2) or u.shape[-1] != A.shape[0]:
        raise ValueError(f"u has shape {_shape(u)} but A expects (m_in,) or (B, m_in) with m_in={A.shape[0]}")
    u = u.to(A.right.dtype if isinstance(A, LowRankMap) else A.dtype)
    return (u @ A) / u.abs().sum(-1, keepdim=True).clamp_min(1.0)


def select_latents(s: Float[Tensor, "*B m_out"], k: int) -> tuple[Int[Tensor, "*B k"], Int[Tensor, "*B k"]]:
    """``(K_neg, K_pos)``: the ``k`` most negative latents with ``s < 0`` (rejected-associated) and the ``k``
    most positive with ``s > 0`` (chosen-associated), strongest first.

    For ``s`` of shape ``(m_out,)`` each holds only the qualifying latents (length ``<= k``); for ``(B, m_out)``
    each is a ``(B, k)`` LongTensor padded with ``-1`` where fewer qualify: mask with ``K >= 0`` before indexing.

    >>> select_latents(torch.tensor([0.5, -2.0, 0.0, 3.0, -0.1]), 2)
    (tensor([1, 4]), tensor([3, 0]))
    >>> select_latents(torch.tensor([[0.5, -2.0, 0.0]]), 2)
    (tensor([[ 1, -1]]), tensor([[ 0, -1]]))
    """
    if not isinstance(s, Tensor) or s.ndim not in (1, 2):
        raise ValueError(f"s must have shape (m_out,) or (B, m_out), got {_shape(s)}")
    if not _is_int(k) or k < 0:
        raise ValueError(f"k={k!r} must be an integer >= 0")
    if k > (m_out := s.shape[-1]):
        raise ValueError(f"k={k} exceeds d_sae={m_out} (the number of output latents): choose k <= {m_out}")
    if s.is_floating_point() and (bad := int((~torch.isfinite(s)).sum())):
        raise ValueError(f"s has {bad} non-finite (NaN/inf) entries: check A and u")
    neg_val, K_neg = torch.topk(-s, k, dim=-1)
    pos_val, K_pos = torch.topk(s, k, dim=-1)
    if s.ndim == 1:
        return K_neg[neg_val > 0], K_pos[pos_val > 0]
    return K_neg.masked_fill(neg_val <= 0, -1), K_pos.masked_fill(pos_val <= 0, -1)


@dataclass(frozen=True)
class CDMapConfig:
    """Options for fitting a :class:`CDMap` (DESIGN.md §5.1-5.3); ``default()`` holds the measured defaults."""

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
            ("n_min", _is_int(self.n_min) and self.n_min >= 1, "it must be an integer >= 1"),
            ("ridge", _is_num(r) and r >= 0, "it must be a finite number >= 0"),
            ("ridge", r == 0 or self.estimator == "ridge", f"it only applies to estimator='ridge', not {self.estimator!r}"),
            ("top_r", top_r is None or (_is_int(top_r) and top_r >= 1), "it must be None or an integer >= 1"),
            ("pooling", self.pooling in POOLINGS, f"choose one of {POOLINGS}"),
            *((n, isinstance(getattr(self, n), bool), "it must be True or False")
              for n in ("center", "exclude_template", "specificity", "normalize_delta")),
            ("batch_size", _is_int(self.batch_size) and self.batch_size >= 1, "it must be an integer >= 1"),
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
    def default(cls) -> CDMapConfig:  # the measured defaults (DESIGN.md §5, prototype lessons)
        return cls()


class CDMapFileError(ValueError):
    """A saved CDMap folder is incomplete or corrupt."""


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
            _check_matrix("A", self.A)
        m_in, m_out = self.A.shape
        for name in _TENSORS:
            t = getattr(self, name)
            if name != "A" and (not isinstance(t, Tensor) or tuple(t.shape) != (m_out,)):
                raise ValueError(f"{name} must have shape (m_out,) = ({m_out},), got {_shape(t)}")
            if name != "A" or isinstance(t, Tensor):
                setattr(self, name, t.detach().to(torch.float32).contiguous())
        self._on_device = self.A
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
        if self._on_device.device != u.device:  # one copy per device, not one transfer per call
            self._on_device = self.A.to(u.device)
        return prompt_scores(self._on_device, u)

    def active_rows(self) -> Tensor:
        """``(m_in,)`` bool: prompt latents whose row of ``A`` is not all zero (for a factored map: whose left row)."""
        rows = self.A.left if isinstance(self.A, LowRankMap) else self.A
        return rows.abs().sum(1) > 0

    def check_compatible(self, model_id: str, sae_in_id: str, sae_out_id: str, l_in: int, l_out: int,
                         d_model: int, d_sae_in: int, d_sae_out: int) -> None:
        """Raise ``ValueError`` listing every field where this map's provenance differs from what it is applied to."""
        given = dict(zip(COMPAT_FIELDS, (model_id, sae_in_id, sae_out_id, l_in, l_out, d_model, d_sae_in, d_sae_out)))
        if not (bad := [f for f in COMPAT_FIELDS if self.meta.get(f) != given[f]]):
            return
        rec = {f: self.meta.get(f, "<not recorded>") for f in COMPAT_FIELDS}
        lines = "\n".join(f"  {f}: recorded {rec[f]!r}, given {given[f]!r}" for f in bad)
        raise ValueError(
            f"this map was fitted on model {rec['model_id']!r} layer {rec['l_in']}->{rec['l_out']} but is being "
            f"applied to {model_id!r} layer {l_in}->{l_out}; mismatching fields:\n{lines}\n"
            "refit with dspa-lite fit for this model and these SAEs")

    def save(self, dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``cdmap.safetensors`` + ``cdmap.json`` into ``dir`` atomically (temp folder, then rename).

        An existing ``dir`` is replaced only with ``overwrite=True`` and only if it holds nothing but a CDMap.
        """
        target = Path(dir)
        contents = {p.name for p in target.iterdir()} if target.is_dir() else {"?"} if target.exists() else set()
        if contents - {TENSORS_FILE, SIDECAR_FILE}:
            raise FileExistsError(f"refusing to replace {target}: it is a file or holds files other than a CDMap; "
                                  "choose a new or empty folder")
        if contents and not overwrite:
            raise FileExistsError(f"{target} already holds a CDMap: pass overwrite=True to replace it")
        tensors = {n: getattr(self, n).detach().cpu().contiguous() for n in _TENSORS[1:]}
        if isinstance(self.A, LowRankMap):
            tensors |= {"A.left": self.A.left.cpu().contiguous(), "A.right": self.A.right.cpu().contiguous()}
        else:
            tensors["A"] = self.A.detach().cpu().contiguous()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        old = None
        try:
            safetensors.torch.save_file(tensors, str(tmp / TENSORS_FILE), metadata={"format": FORMAT})
            sidecar = {"format": FORMAT, "config": self.config.to_dict(), "meta": self.meta}  # TypeError if not JSON
            (tmp / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2, sort_keys=True), encoding="utf-8")
            if target.exists():  # a directory cannot be renamed over a non-empty one: move it aside first
                old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(target, old)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None and not target.exists():
                os.replace(old, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target

    @classmethod
    def load(cls, dir: str | os.PathLike) -> CDMap:
        """Read a folder written by :meth:`save`; errors name the path and suggest refitting."""
        root = Path(dir)
        if not root.is_dir():
            raise FileNotFoundError(f"no CDMap folder at {root}: check the path, or fit one with `dspa-lite fit`")
        if missing := [n for n in (TENSORS_FILE, SIDECAR_FILE) if not (root / n).is_file()]:
            raise FileNotFoundError(f"{root / missing[0]} is missing, so {root} is not a complete CDMap: {_REFIT}")
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
