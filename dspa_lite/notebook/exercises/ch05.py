"""Chapter 05, the conditional-difference map: the learner builds the estimator and its options.

``check_conditional_mean`` (exercise 5.1) and ``check_options_map`` (exercise 5.3) run the learner's
function on small cases with known answers and name the first typical mistake they recognise; the
ridge exercise (5.2) uses :func:`dspa_lite.notebook.exercises.method.check_ridge`.
"""

from __future__ import annotations

import math

import torch

from .core import passed

__all__ = ["check_conditional_mean", "check_options_map"]


def _as_map(out, shape: tuple[int, int]) -> torch.Tensor:
    """The learner's map as a float64 tensor of ``shape``, or an ``AssertionError`` that says why not."""
    got = torch.as_tensor(out).double()
    if tuple(got.shape) == shape[::-1] and shape[0] != shape[1]:
        raise AssertionError(f"A has shape (m_in, m_out) = {shape}, got {tuple(got.shape)}: rows are prompt "
                             "latents, columns output latents (A = U^T Delta ..., not Delta^T U).")
    if tuple(got.shape) != shape:
        raise AssertionError(f"A must have shape (m_in, m_out) = {shape}, got {tuple(got.shape)}.")
    return got


def _finite(got: torch.Tensor, rows: str) -> None:
    if not torch.isfinite(got).all():
        bad = sorted({int(j) for j in (~torch.isfinite(got)).nonzero()[:, 0]})
        raise AssertionError(f"rows {bad} of your map hold NaN or inf. {rows}")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, atol=1e-5, rtol=1e-5))


def _cm(U: torch.Tensor, D: torch.Tensor, n_min: int) -> torch.Tensor:
    """The reference conditional mean (float64), written out so the check does not lean on the package."""
    support = (U > 0).sum(0)
    A = (U.T @ D) / U.sum(0).clamp_min(1e-12)[:, None]
    A[support < n_min] = 0
    return A


def _cm_cases() -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Binary prompt features with a dead latent (4), a latent seen once (5) and one seen exactly twice (6),
    then real-valued features (mean pooling), where weighting by ``U`` differs from counting."""
    g = torch.Generator().manual_seed(0)
    U = (torch.rand(24, 7, generator=g) < 0.35).double()
    U[:, 4:] = 0
    U[3, 5] = 1
    U[[1, 8], 6] = 1
    D = torch.randn(24, 5, generator=g, dtype=torch.float64) + 0.7  # a shared mean: centring would change A
    W = U[:, :4] * (0.2 + torch.rand(24, 4, generator=g, dtype=torch.float64))
    return [(U, D, 1), (U, D, 2), (W, D, 1)]


def check_conditional_mean(fn) -> None:
    """``fn(U, Delta, n_min) -> A``: ``A_j = sum_i U_ij Delta_i / sum_i U_ij`` for every prompt latent ``j``
    with support ``#{i : U_ij > 0} >= n_min``; the other rows are zero."""
    for U, D, n_min in _cm_cases():
        want = _cm(U, D, n_min)
        got = _as_map(fn(U.clone().float(), D.clone().float(), n_min), tuple(want.shape))
        binary = bool(((U == 0) | (U == 1)).all())
        _finite(got, "A latent that is never active (support 0) has no evidence at all: its row is zero, "
                     "not 0/0. Zero rows with support below n_min (which is >= 1) before or instead of dividing.")
        if _close(got, want):
            continue
        support, n = (U > 0).sum(0), U.shape[0]
        wrong = [
            (U.T @ D, "you returned U^T Delta, a sum over the triples: divide row j by its mass sum_i U_ij "
                      "so a frequent latent is not louder than a rare one."),
            (U.T @ D / n, "you divided every row by the number of triples n: divide row j by the mass of "
                          "latent j, sum_i U_ij (the triples where it is active)."),
            (_cm(U, D - D.mean(0), n_min), "you centred Delta: the plain conditional mean averages Delta as "
                                           "it is (centring is an option, exercise 5.3)."),
            (_cm(U, D, n_min + 1), f"latent 6 has support exactly n_min={n_min} and must keep its row: "
                                   "the rule is support >= n_min, not > n_min."),
        ]
        if not binary:
            count = (U > 0).double()
            wrong += [
                ((U.T @ D) / count.sum(0).clamp_min(1)[:, None],
                 "with real-valued U (mean pooling) divide by sum_i U_ij, not by the number of active triples: "
                 "the estimator is a U-weighted mean."),
                (_cm(count, D, n_min), "you binarised U: with real-valued U (mean pooling) weight each triple "
                                       "by U_ij, as sum_i U_ij Delta_i / sum_i U_ij does."),
            ]
        for value, hint in wrong:
            if _close(got, value) and not _close(value, want):
                raise AssertionError(hint)
        low = support < n_min
        if low.any() and got[low].abs().sum() > 0:
            raise AssertionError(f"rows {low.nonzero().flatten().tolist()} have support below n_min={n_min} and "
                                 "must be zero.")
        row = int((got - want).abs().sum(1).argmax())
        raise AssertionError(f"with n_min={n_min} your row {row} differs from the conditional mean by up to "
                             f"{(got - want).abs().max():.4f} (support of that latent: {int(support[row])}).")
    passed("conditional_mean")


def _options(U, D, n_min, *, correction=0, normalise=True, centre=True, weights="idf", centre_A=False):
    """The default map's options, each of which can be switched off or done the wrong way."""
    d = D.double()
    if normalise == "rows":
        d = d / d.std(1, correction=correction, keepdim=True).clamp_min(1e-8)
    elif normalise:
        std = d.std(0, correction=correction)
        d = torch.where(std > 1e-8, d / std.clamp_min(1e-8), torch.zeros_like(d))
    if centre:
        d = d - d.mean(0)
    A = _cm(U.double(), d, n_min)
    if centre_A:
        A = A - A.mean(0)
    n, df = U.shape[0], (U > 0).sum(0).double()
    w = {"idf": math.log1p(n) - torch.log1p(df), "no+1": math.log(n) - torch.log(df.clamp_min(1)),
         "none": torch.ones_like(df)}[weights]
    return A * w[:, None]


def _options_case() -> tuple[torch.Tensor, torch.Tensor]:
    """12 triples, 6 prompt latents (0 in every prompt, 5 seen once), 4 output latents of very different
    scales, the last constant over triples (zero spread)."""
    g = torch.Generator().manual_seed(3)
    U = (torch.rand(12, 6, generator=g) < 0.45).double()
    U[:, 0] = 1
    U[:, 5] = 0
    U[7, 5] = 1
    U[[0, 1], 1] = 1
    scale = torch.tensor([0.1, 1.0, 20.0, 1.0], dtype=torch.float64)
    D = (torch.randn(12, 4, generator=g, dtype=torch.float64) + 0.5) * scale
    D[:, 3] = 0.8
    return U, D


def check_options_map(fn) -> None:
    """``fn(U, Delta, n_min) -> A``: the default map's options around the conditional mean: each column of
    ``Delta`` divided by its population std over triples (0 where that is 0), centred over triples, the
    conditional mean with minimum support, then row ``j`` times ``log((1 + n) / (1 + df_j))``."""
    U, D = _options_case()
    n_min = 2
    want = _options(U, D, n_min)
    got = _as_map(fn(U.clone().float(), D.clone().float(), n_min), tuple(want.shape))
    if not torch.isfinite(got[:, 3]).all():
        raise AssertionError("column 3 of your map is NaN or inf: output latent 3 is constant over the triples "
                             "(std 0), so it carries no evidence. Make its normalised Delta 0 where the std is "
                             "(near) 0, as torch.where(std > 1e-8, Delta / std, 0) does.")
    _finite(got, "Check every division: by the std of each Delta column, and by each latent's mass.")
    if _close(got, want):
        passed("options_map")
        return
    wrong = [
        (dict(correction=1), "you divided by the sample std (n - 1 in the denominator): use the population "
                             "std over triples, Delta.std(0, correction=0), as estimate_map does."),
        (dict(normalise="rows"), "you normalised each triple (a row of Delta): divide each *column*, one output "
                                 "latent, by its std over the triples (dim 0)."),
        (dict(normalise=False), "you did not normalise Delta: divide each column by its std over the triples, so "
                                "a loud output latent does not outrank a consistent one."),
        (dict(centre=False), "you did not centre: subtract the mean of (normalised) Delta over triples before "
                             "the conditional mean."),
        (dict(centre=False, centre_A=True), "you centred the map A (its mean over prompt latents) instead of "
                                            "Delta (its mean over triples)."),
        (dict(weights="none"), "you left out the specificity weights: multiply row j by "
                               "log((1 + n) / (1 + df_j)), df_j = #{i : U_ij > 0}."),
        (dict(weights="no+1"), "you used log(n / df_j): the weight is log((1 + n) / (1 + df_j)), smoothed so a "
                               "latent seen once does not get an extreme weight."),
    ]
    for kw, hint in wrong:
        if _close(got, _options(U, D, n_min, **kw)):
            raise AssertionError(hint)
    if got[5].abs().sum() > 0:
        raise AssertionError(f"prompt latent 5 is active in one triple only (support 1 < n_min={n_min}): its row "
                             "must be zero. Use your conditional_mean with n_min.")
    if got[0].abs().sum() > 1e-6:
        raise AssertionError("prompt latent 0 is active in every triple, so its specificity weight "
                             "log((1 + n) / (1 + n)) is 0 and its row must be zero.")
    col = (got - want).abs().sum(0).argmax()
    raise AssertionError(f"your map differs from the default options' map by up to {(got - want).abs().max():.4f}, "
                         f"most in output latent {int(col)}. The order is: normalise each Delta column, centre over "
                         "triples, conditional mean with n_min, then weight each row.")
