"""Chapters 01-03: SAE basics, reading features, static steering."""

from __future__ import annotations

import torch

from .core import passed

__all__ = [
    "check_fve",
    "check_static_sets",
    "check_style_labels",
]


def _fve_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Activations with a non-zero mean and unequal variances, and reconstructions with a bias, so that
    each common mistake gives a visibly different number."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 6, generator=g) * torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25, 0.1]) + 3.0
    noise = torch.randn(200, 6, generator=g) * torch.tensor([0.5, 0.5, 0.4, 0.3, 0.2, 0.1])
    return [(x, x + noise + 0.3), (x, x + 0.5 * noise)]


def check_fve(fn) -> None:
    """``fn(acts, recon) -> float``: fraction of variance explained, ``1 - sum|x - x_hat|^2 / sum|x - mean(x)|^2``."""
    for x, r in _fve_cases():
        err, cen = (x - r).pow(2), (x - x.mean(0)).pow(2)
        want = float(1 - err.sum() / cen.sum())
        got = float(fn(x.clone(), r.clone()))
        if abs(got - want) < 1e-4:
            continue
        mistakes = [
            (float(err.sum() / cen.sum()), "that is the fraction *un*explained: FVE is one minus it."),
            (float(1 - err.sum() / x.pow(2).sum()),
             "you divided by sum |x|^2: the denominator is the variance around the mean, sum |x - mean(x)|^2 "
             "(activations have a large mean, so forgetting it inflates FVE)."),
            (float((1 - err.sum(0) / cen.sum(0)).mean()),
             "you averaged a per-dimension FVE: sum the squared errors over all dimensions and tokens first, "
             "then divide once (dimensions with little variance must not count as much as big ones)."),
            (float((1 - err.sum(1) / cen.sum(1)).mean()),
             "you averaged a per-token ratio: sum over tokens before dividing."),
            (float(1 - ((x - r) - (x - r).mean(0)).pow(2).sum() / cen.sum()),
             "you centred the reconstruction error: a constant offset in x_hat is an error too, so use "
             "sum |x - x_hat|^2 as it is."),
        ]
        hint = next((msg for value, msg in mistakes if abs(got - value) < 1e-4), "")
        raise AssertionError(f"expected FVE {want:.4f}, got {got:.4f}. {hint}".rstrip())
    x = _fve_cases()[0][0]
    if abs(float(fn(x, x.clone())) - 1.0) > 1e-6:
        raise AssertionError("a perfect reconstruction must give FVE = 1.")
    if abs(float(fn(x, x.mean(0).expand_as(x).clone()))) > 1e-5:
        raise AssertionError("reconstructing every token by the mean activation must give FVE = 0.")
    passed("fve")


def check_style_labels(fn) -> None:
    """``fn(mass, threshold) -> labels``: for each latent (column of ``mass``, shape ``(n_styles, d_sae)``),
    the style holding at least ``threshold`` of its activation mass, or ``-1`` (no such style, or dead)."""
    mass = torch.tensor([
        # latent: 0     1    2    3    4    5     6
        [9.0, 1.0, 4.0, 0.0, 0.0, 30.0, 3.0],
        [1.0, 1.0, 3.0, 0.0, 5.0, 0.0, 1.0],
        [0.0, 8.5, 3.0, 0.0, 0.0, 20.0, 0.0],
    ])
    want = {0.8: [0, 2, -1, -1, 1, -1, -1], 0.75: [0, 2, -1, -1, 1, -1, 0]}
    for threshold, expected in want.items():
        got = [int(v) for v in torch.as_tensor(fn(mass.clone(), threshold)).flatten().tolist()]
        if len(got) != mass.shape[1]:
            raise AssertionError(f"return one label per latent (column): {mass.shape[1]} labels, got {len(got)}. "
                                 "mass has shape (n_styles, d_sae).")
        if got == expected:
            continue
        row_share = mass / mass.sum(1, keepdim=True)
        row_labels = torch.where(row_share.max(0).values >= threshold, row_share.argmax(0), -1).tolist()
        if got == row_labels:
            hint = ("you normalised each style's row (how a style's mass spreads over latents): normalise each "
                    "latent's column instead (how a latent's mass spreads over styles).")
        elif got[2] != -1 or got[5] != -1:
            hint = ("latents 2 and 5 spread their mass over several styles: the largest share must reach the "
                    "threshold, not just be the largest.")
        elif got[3] != -1:
            hint = "latent 3 never fires (no mass at all): a dead latent has no style, label it -1."
        elif threshold == 0.75 and got[6] == -1:
            hint = "latent 6 puts exactly 3/4 of its mass on style 0: the rule is share >= threshold."
        else:
            hint = ""
        raise AssertionError(f"with threshold={threshold} expected {expected}, got {got}. {hint}".rstrip())
    passed("style_labels")


def check_static_sets(fn) -> None:
    """``fn(delta_mean, delta_std, k) -> (K_neg, K_pos)``: static steering's global latent sets, ranked on
    ``delta_mean / delta_std`` (0 where the std is 0); at most ``k`` each, only latents of the right sign."""
    d = torch.tensor([0.6, -2.0, 0.2, 3.0, -0.2, 0.1, 0.0, 0.5])
    std = torch.tensor([0.2, 4.0, 0.1, 2.0, 0.1, 1.0, 0.0, 1.0])
    # normalised:      3.0 -0.5  2.0  1.5 -2.0  0.1  0.0  0.5
    cases = {2: ({4, 1}, {0, 2}), 3: ({4, 1}, {0, 2, 3})}
    for k, (want_neg, want_pos) in cases.items():
        out = fn(d.clone(), std.clone(), k)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise AssertionError("return a pair (K_neg, K_pos) of latent indices.")
        neg, pos = ({int(i) for i in torch.as_tensor(s).flatten().tolist()} for s in out)
        if (neg, pos) == (want_neg, want_pos):
            continue
        if (neg, pos) == (want_pos, want_neg):
            hint = ("K_neg and K_pos are swapped: K_neg holds the most negative scores (latents the rejected "
                    "responses use more), K_pos the most positive.")
        elif 6 in neg and 6 in pos:
            hint = ("latent 6 has std 0 (it never varies, so carries no evidence): its score is 0, not NaN "
                    "(torch.topk ranks NaN above every number).")
        elif k == 2 and pos == {3, 0}:
            hint = ("you ranked the raw delta: divide by delta_std first, so a latent with a large but noisy "
                    "difference (latent 3) does not outrank a consistent one (latent 2).")
        elif len(neg) > len(want_neg) or neg & {0, 2, 3, 5, 6, 7}:
            hint = (f"K_neg may only hold latents with a negative score: with k={k} only {len(want_neg)} "
                    "qualify, so return fewer than k rather than padding with zero or positive ones.")
        else:
            hint = ""
        raise AssertionError(f"with k={k} expected K_neg={sorted(want_neg)}, K_pos={sorted(want_pos)}; "
                             f"got K_neg={sorted(neg)}, K_pos={sorted(pos)}. {hint}".rstrip())
    passed("static_sets")
