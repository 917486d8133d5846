"""The estimators of the conditional-difference map ``A`` (docs/design.md §3.2-3.3) and how a prompt is scored with it.

Pure tensor code: ``U`` ``(n_triples, m_in)`` and ``Delta`` ``(n_triples, m_out)`` come from
:mod:`dspa_lite.method.features`; :class:`dspa_lite.method.cdmap.CDMap` holds a fitted map with its options
and provenance. Re-exported by :mod:`dspa_lite.method.cdmap`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from jaxtyping import Float, Int, Shaped
from torch import Tensor

__all__ = ["ESTIMATORS", "LowRankMap", "estimate_map", "prompt_scores", "select_latents", "specificity_weights"]

ESTIMATORS = ("mean", "ridge")
_EPS = 1e-8


def is_int(x) -> bool:
    """An int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_num(x) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def shape_of(x) -> object:
    """A tensor's shape, or the type name of anything else (for error messages)."""
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def check_matrix(name: str, x) -> None:
    """Raise ``ValueError`` unless ``x`` is a 2-D tensor with finite entries."""
    if not isinstance(x, Tensor) or x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D tensor (n_triples, m), got {shape_of(x)}")
    if x.is_floating_point() and (bad := int((~torch.isfinite(x)).sum())):
        raise ValueError(f"{name} has {bad} non-finite (NaN/inf) entries out of {x.numel()}: check its extraction")


def estimate_map(
    U: Shaped[Tensor, "n_triples m_in"], Delta: Float[Tensor, "n_triples m_out"], estimator: str = "mean",
    n_min: int = 1, center: bool = False, ridge: float = 0.0, top_r: int | None = None, *,
    weights: Float[Tensor, " m_in"] | None = None, normalize_delta: bool = False, factored: bool = False,
) -> Float[Tensor, "m_in m_out"] | LowRankMap:
    """Estimate ``A`` (docs/design.md §3.2). With only the first seven arguments: the textbook estimator.

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
    _check_estimate_args(U, Delta, estimator, n_min, top_r, ridge, weights, factored)
    u, d = U.to(torch.float64), Delta.to(torch.float64)
    if normalize_delta:
        std = d.std(0, correction=0)  # (m_out,); population std so a single triple is not NaN
        d = torch.where(std > _EPS, d / std.clamp_min(_EPS), torch.zeros_like(d))
    if center:
        d = d - d.mean(0)
    L = _left_factor(u, estimator, n_min, ridge)  # A = L @ d
    if weights is not None:
        L = L * weights.to(torch.float64)[:, None]
    dtype = Delta.dtype if Delta.is_floating_point() else torch.float32
    if factored:
        return LowRankMap(L.to(dtype), d.to(dtype))
    A = L @ d
    if top_r is not None and top_r < A.shape[1]:
        idx = A.abs().topk(top_r, dim=1).indices  # (m_in, top_r)
        A = torch.zeros_like(A).scatter_(1, idx, A.gather(1, idx))
    return A.to(dtype)


def _check_estimate_args(U, Delta, estimator, n_min, top_r, ridge, weights, factored) -> None:
    check_matrix("U", U)
    check_matrix("Delta", Delta)
    n, m_in = U.shape
    w_ok = weights is None or (isinstance(weights, Tensor) and tuple(weights.shape) == (m_in,))
    for ok, msg in (
        (Delta.shape[0] == n, f"U has {n} triples (rows) but Delta has {Delta.shape[0]}: both must come from the same triples"),
        (n > 0, "U and Delta have no rows: the map needs at least one preference triple"),
        (estimator in ESTIMATORS, f"estimator={estimator!r} is not one of {ESTIMATORS}"),
        (is_int(n_min) and n_min >= 1, f"n_min={n_min!r} must be an integer >= 1 (minimum triples per prompt latent)"),
        (top_r is None or (is_int(top_r) and top_r >= 1), f"top_r={top_r!r} must be None or an integer >= 1"),
        (is_num(ridge) and ridge >= 0, f"ridge={ridge!r} must be a finite number >= 0"),
        (w_ok, f"weights must have shape (m_in,) = ({m_in},), got {shape_of(weights)}"),
        (w_ok and (weights is None or bool(torch.isfinite(weights.double()).all())), "weights has NaN/inf entries"),
        (not (neg := int((U < 0).sum())), f"U has {neg} negative entries: prompt features must be >= 0"),
        (not (factored and top_r is not None), f"top_r={top_r} needs the dense (m_in, m_out) map: pass factored=False"),
    ):
        if not ok:
            raise ValueError(msg)


def _left_factor(u: Tensor, estimator: str, n_min: int, ridge: float) -> Tensor:
    """``L`` with ``A = L @ Delta`` (float64, ``(m_in, n_triples)``); rows of latents with support below ``n_min`` are 0."""
    n, m_in = u.shape
    keep = (u > 0).sum(0) >= n_min  # (m_in,) support filter
    L = torch.zeros(m_in, n, dtype=torch.float64)
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
    return L


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
        check_matrix("left", self.left)
        check_matrix("right", self.right)
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
    check_matrix("U", U)
    df = (U > 0).sum(0).to(torch.float32)  # (m_in,)
    return torch.log1p(torch.tensor(float(U.shape[0]))) - torch.log1p(df)  # a difference of logs: exactly 0 if df = n


def prompt_scores(A: Float[Tensor, "m_in m_out"] | LowRankMap, u: Float[Tensor, "*B m_in"]) -> Float[Tensor, "*B m_out"]:
    """Per-prompt scores ``s(x) = A^T u(x) / max(1, |u(x)|_1)`` (docs/design.md §3.3), for ``(m_in,)`` or ``(B, m_in)``.

    >>> prompt_scores(torch.tensor([[2., 0.], [0., 2.]]), torch.tensor([1., 1.]))
    tensor([1., 1.])
    """
    if not isinstance(A, LowRankMap) and (not isinstance(A, Tensor) or A.ndim != 2):
        raise ValueError(f"A must be a 2-D tensor (m_in, m_out) or a LowRankMap, got {shape_of(A)}")
    if not isinstance(u, Tensor) or u.ndim not in (1, 2) or u.shape[-1] != A.shape[0]:
        raise ValueError(f"u has shape {shape_of(u)} but A expects (m_in,) or (B, m_in) with m_in={A.shape[0]}")
    u = u.to(A.right.dtype if isinstance(A, LowRankMap) else A.dtype)
    return (u @ A) / u.abs().sum(-1, keepdim=True).clamp_min(1.0)


def select_latents(s: Float[Tensor, "*B m_out"], k: int, *, check: bool = True
                   ) -> tuple[Int[Tensor, "*B k"], Int[Tensor, "*B k"]]:
    """``(K_neg, K_pos)``: the ``k`` most negative latents with ``s < 0`` (rejected-associated) and the ``k``
    most positive with ``s > 0`` (chosen-associated), strongest first.

    For ``s`` of shape ``(m_out,)`` each holds only the qualifying latents (length ``<= k``); for ``(B, m_out)``
    each is a ``(B, k)`` LongTensor padded with ``-1`` where fewer qualify: mask with ``K >= 0`` before indexing.
    ``check=False`` skips the NaN/inf check of ``s`` (a host read; DSPA's prefill checks its input on the device).

    >>> select_latents(torch.tensor([0.5, -2.0, 0.0, 3.0, -0.1]), 2)
    (tensor([1, 4]), tensor([3, 0]))
    >>> select_latents(torch.tensor([[0.5, -2.0, 0.0]]), 2)
    (tensor([[ 1, -1]]), tensor([[ 0, -1]]))
    """
    if not isinstance(s, Tensor) or s.ndim not in (1, 2):
        raise ValueError(f"s must have shape (m_out,) or (B, m_out), got {shape_of(s)}")
    if not is_int(k) or k < 0:
        raise ValueError(f"k={k!r} must be an integer >= 0")
    if k > (m_out := s.shape[-1]):
        raise ValueError(f"k={k} exceeds d_sae={m_out} (the number of output latents): choose k <= {m_out}")
    if check and s.is_floating_point() and (bad := int((~torch.isfinite(s)).sum())):
        raise ValueError(f"s has {bad} non-finite (NaN/inf) entries: check A and u")
    neg_val, K_neg = torch.topk(-s, k, dim=-1)
    pos_val, K_pos = torch.topk(s, k, dim=-1)
    if s.ndim == 1:
        return K_neg[neg_val > 0], K_pos[pos_val > 0]
    return K_neg.masked_fill(neg_val <= 0, -1), K_pos.masked_fill(pos_val <= 0, -1)
