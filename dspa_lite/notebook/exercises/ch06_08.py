"""Chapters 06 and 08: the token-active edit on the residual, first and later segments, the paired
bootstrap over prompts and seeds, and quiz answers that change under steering.

Use them as ``from dspa_lite.notebook.exercises import ch06_08`` then ``ch06_08.check_...(fn)``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from .core import passed

__all__ = [
    "check_bootstrap_diffs",
    "check_quiz_changes",
    "check_residual_edit",
    "check_segment_shares",
]


# ---------------------------------------------------------------- 6.1: the edit on the residual stream


class _TinySAE:
    """A ReLU SAE of width 6 on a 4-dimensional residual, with a decoder bias, that does not
    reconstruct its input exactly (so an edit that drops the error term is visible)."""

    def __init__(self):
        g = torch.Generator().manual_seed(6)
        self.W_enc = torch.randn(4, 6, generator=g, dtype=torch.float64)
        self.b_enc = torch.tensor([0.3, -0.2, 0.1, 0.0, -0.1, 0.2], dtype=torch.float64)
        self.W_dec = torch.randn(6, 4, generator=g, dtype=torch.float64) / 2
        self.b_dec = torch.tensor([0.05, -0.05, 0.1, 0.0], dtype=torch.float64)

    def encode(self, h):
        return torch.relu(h @ self.W_enc + self.b_enc)

    def decode(self, z):
        return z @ self.W_dec + self.b_dec


def _edit_cases():
    """A batch of two rows, three positions each, and per-row latent masks that hit active and inactive latents."""
    sae = _TinySAE()
    g = torch.Generator().manual_seed(61)
    h = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    neg = torch.zeros(2, 6, dtype=torch.bool)
    pos = torch.zeros(2, 6, dtype=torch.bool)
    # row 0: ablate latent 0, augment 1 and 2; row 1: ablate 3, augment 4 and 5 (some inactive somewhere)
    neg[0, 0], pos[0, [1, 2]] = True, True
    neg[1, 3], pos[1, [4, 5]] = True, True
    return sae, h, neg, pos


def _reference_edit(h, sae, neg, pos, alpha, *, additive=False, times_alpha=False, row0=False, keep_error=True,
                    minus=False, swap=False, no_ablation=False):
    """The edit (all keywords at their defaults), or one of its typical mistakes."""
    if no_ablation:
        neg = torch.zeros_like(neg)
    if swap:
        neg, pos = pos, neg
    if row0:
        neg, pos = neg[:1].expand_as(neg), pos[:1].expand_as(pos)
    z = sae.encode(h)
    active = z > 0
    n3, p3 = neg[:, None, :], pos[:, None, :]
    z_new = torch.where(n3 & active, torch.zeros_like(z), z)
    if additive:
        z_new = torch.where(p3, z_new + alpha, z_new)
    else:
        z_new = torch.where(p3 & active, z * (alpha if times_alpha else 1 + alpha), z_new)
    if not keep_error:
        return sae.decode(z_new)
    diff = (z_new - z) @ sae.W_dec
    return h - diff if minus else h + diff


def check_residual_edit(fn) -> None:
    """``fn(h, sae, neg, pos, alpha) -> h_new``: the token-active edit ``h + (z' - z) W_dec``.

    ``h`` is ``(B, T, d_model)``; ``neg`` and ``pos`` are boolean masks ``(B, d_sae)``, one row of
    latent sets per row of the batch; ``z = sae.encode(h)``; ``z'`` zeroes the active latents of
    ``neg`` and multiplies the active latents of ``pos`` by ``1 + alpha``.
    """
    sae, h, neg, pos = _edit_cases()
    alpha = 2.0
    want = _reference_edit(h, sae, neg, pos, alpha)
    got = fn(h.clone(), sae, neg.clone(), pos.clone(), alpha)
    if not isinstance(got, torch.Tensor) or got.shape != h.shape:
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise AssertionError(f"return the edited residual, a tensor shaped like h {tuple(h.shape)}; got {shape}. "
                             "Decode z' - z with W_dec (d_sae x d_model) and add it to h.")
    got = got.to(torch.float64)
    if torch.allclose(got, want, atol=1e-8):
        empty = torch.zeros_like(neg)
        same = fn(h.clone(), sae, empty, empty.clone(), alpha)
        if not torch.equal(same, h):
            raise AssertionError("with empty latent sets the edit must return h bit for bit. Compute the change "
                                 "first, (z' - z) W_dec, then add it to h: h + decode(z') - decode(z) rounds "
                                 "differently and leaves a trace of the SAE in h even when nothing is edited.")
        passed("residual_edit")
        return
    mistakes = {
        "you returned the SAE's reconstruction of the edited latents, decode(z'): that throws away the part of h "
        "the SAE does not reconstruct. Add the change instead: h + (z' - z) W_dec.": dict(keep_error=False),
        "you added alpha to the K_pos latents: that switches inactive latents on. Multiply the active ones by "
        "(1 + alpha), so a latent at zero stays at zero (token-active gating).": dict(additive=True),
        "you multiplied the K_pos latents by alpha: augmentation scales them by (1 + alpha), so alpha = 0 is no "
        "edit.": dict(times_alpha=True),
        "you used the first row's latent sets for every row: each prompt of the batch has its own K_neg and "
        "K_pos (row i of neg and pos goes with row i of h).": dict(row0=True),
        "you subtracted the change: the edit is h + (z' - z) W_dec.": dict(minus=True),
        "you swapped the sets: K_neg is ablated (set to zero), K_pos augmented.": dict(swap=True),
        "the active K_neg latents were not zeroed in your edit. If you zeroed them in z itself (in place), "
        "then z' - z is zero there: clone z before editing it.": dict(no_ablation=True),
    }
    for hint, kw in mistakes.items():
        if torch.allclose(got, _reference_edit(h, sae, neg, pos, alpha, **kw), atol=1e-8):
            raise AssertionError(hint)
    if torch.allclose(got, h, atol=1e-12):
        raise AssertionError("your edit left h unchanged. Did you edit z in place (z_new = z, then z_new[...] = ...)? "
                             "Then z' - z is zero: clone z before editing it.")
    raise AssertionError(f"your edit differs from h + (z' - z) W_dec by up to {(got - want).abs().max():.4f}. "
                         "Check: z = sae.encode(h); z' zeroes active K_neg latents and scales active K_pos "
                         "latents by (1 + alpha); masks (B, d_sae) broadcast over positions as mask[:, None, :].")


# ---------------------------------------------------------------- 6.2: first and later segments


def _verdict(styles, preferred="steps"):
    return SimpleNamespace(styles=list(styles), preferred=preferred)


def check_segment_shares(fn) -> None:
    """``fn(verdicts) -> (first, later)``: the share of responses whose first segment is in the preferred
    style, and, over the responses with more than one segment, the mean share of their later segments
    in it. A verdict has ``styles`` (one style per segment, ``None`` if unreadable) and ``preferred``."""
    S, F, C = "steps", "friendly", "cautious"
    verdicts = [
        _verdict([S, F, F, F, F, F, F, S]),  # first preferred; later 1/7
        _verdict([F, S, S]),                  # later 2/2
        _verdict([C]),                        # one segment: no later share
        _verdict([]),                         # empty response: its first segment is not preferred
        _verdict([F, S], preferred="friendly"),  # first preferred; later 0/1
    ]
    first_want = 2 / 5
    later_want = (1 / 7 + 1.0 + 0.0) / 3
    got = fn(verdicts)
    try:
        first, later = (float(x) for x in got)
    except (TypeError, ValueError):
        raise AssertionError(f"return two numbers (first, later); got {got!r}") from None
    if abs(first - first_want) > 1e-9:
        hints = {
            2 / 4: "you left the empty response out of the first-segment share: every response counts in the "
                   "denominator (an empty one has no preferred first segment).",
            5 / 14: "you pooled every segment: the first-segment share looks at the first segment of "
                                  "each response only.",
        }
        hint = next((h for v, h in hints.items() if abs(first - v) < 1e-9), "")
        raise AssertionError(f"first-segment share: expected {first_want:.4f}, got {first:.4f}. {hint}".rstrip())
    if abs(later - later_want) > 1e-9:
        hints = {
            (1 + 2 + 0) / (7 + 2 + 1): "you pooled the later segments of all responses: the 8-segment response "
                                       "then outweighs the others. Average the share per response.",
            (1 / 7 + 1.0 + 0.0) / 5: "wrong denominator: a response with one segment (or none) has no later "
                                     "segments, so it has no later share; average over the responses with two "
                                     "or more segments.",
            (2 / 8 + 2 / 3 + 1 / 2) / 3: "you counted the first segment among the later ones: later segments "
                                         "start at the second.",
            (2 / 8 + 2 / 3 + 0 + 1 / 2) / 4: "you averaged every segment's share: later segments start at the "
                                             "second, over the responses with two or more segments.",
        }
        hint = next((h for v, h in hints.items() if abs(later - v) < 1e-9), "")
        raise AssertionError(f"later-segment share: expected {later_want:.4f}, got {later:.4f}. {hint}".rstrip())
    passed("segment_shares")


# ---------------------------------------------------------------- 8.1: the paired bootstrap


def _draws(n_seeds, n_prompts, n_boot, gen):
    return (torch.randint(n_seeds, (n_boot, n_seeds), generator=gen),
            torch.randint(n_prompts, (n_boot, n_prompts), generator=gen))


def _grid(x, si, pi):
    return x[si[:, :, None], pi[:, None, :]].mean((1, 2))


def _variants(a, b, n_boot=4000):
    """The standard error of the right bootstrap and of each typical mistake, on scores ``a``, ``b``."""
    g = torch.Generator().manual_seed(123)
    S, P = a.shape
    si, pi = _draws(S, P, n_boot, g)
    sj, pj = _draws(S, P, n_boot, g)
    every_seed = torch.arange(S).expand(n_boot, S)
    cells = torch.randint(S * P, (n_boot, S * P), generator=g)
    nested = torch.randint(S, (n_boot, P, S), generator=g)  # per drawn prompt, its own seeds

    def nest(x):
        cols = x.T[pi]  # (n_boot, P, S): the drawn prompts' rows of seeds
        return cols.gather(2, nested).mean((1, 2))

    return {
        "right": (_grid(a, si, pi) - _grid(b, si, pi)).std(),
        "unpaired": (_grid(a, si, pi) - _grid(b, sj, pj)).std(),
        "prompts only": (_grid(a, every_seed, pi) - _grid(b, every_seed, pi)).std(),
        "cells": (a.flatten()[cells].mean(1) - b.flatten()[cells].mean(1)).std(),
        "nested": (nest(a) - nest(b)).std(),
    }


def _bootstrap_cases():
    g = torch.Generator().manual_seed(81)
    cases = {}
    # A: a large prompt effect both methods share: pairing removes it
    p = torch.randn(1, 60, generator=g, dtype=torch.float64)
    cases["shared prompts"] = (p + 0.1 + 0.05 * torch.randn(3, 60, generator=g, dtype=torch.float64),
                               p + 0.05 * torch.randn(3, 60, generator=g, dtype=torch.float64))
    # B: a seed effect on the difference (one random stream favours the method on every prompt)
    q = torch.tensor([[0.3], [-0.3], [0.2], [-0.2]], dtype=torch.float64)
    p = torch.randn(1, 60, generator=g, dtype=torch.float64)
    cases["seed effect"] = (p + 0.1 + q + 0.01 * torch.randn(4, 60, generator=g, dtype=torch.float64),
                            p + 0.01 * torch.randn(4, 60, generator=g, dtype=torch.float64))
    # C: some prompts gain much more than others, on every seed: the responses to one prompt are not independent
    r = 0.3 * torch.randn(1, 40, generator=g, dtype=torch.float64)
    p = torch.randn(1, 40, generator=g, dtype=torch.float64)
    cases["prompt effect"] = (p + 0.1 + r + 0.05 * torch.randn(6, 40, generator=g, dtype=torch.float64),
                              p + 0.05 * torch.randn(6, 40, generator=g, dtype=torch.float64))
    return cases


_BOOT_HINTS = {
    "unpaired": "you drew separate indices for the two methods (an unpaired bootstrap): both methods answered "
                "the same prompts with the same seeds, so draw the indices once per replicate and use them for "
                "a and b alike; then the noise they share cancels.",
    "prompts only": "your replicates keep every seed: draw the seeds with replacement too (n_seeds indices per "
                    "replicate), or a result carried by one lucky seed looks certain.",
    "cells": "you resampled (seed, prompt) cells one by one: the responses to one prompt are not independent "
             "(some prompts gain more than others on every seed). Draw prompt indices and seed indices, and "
             "average over the grid they make.",
    "nested": "you drew seeds separately for each prompt: a seed's random stream is shared by every prompt, so "
              "draw one set of seed indices per replicate for all prompts.",
}


def check_bootstrap_diffs(fn) -> None:
    """``fn(a, b, n_boot, gen) -> diffs``: ``n_boot`` paired-bootstrap replicates of ``mean(a) - mean(b)``.

    ``a`` and ``b`` are ``(n_seeds, n_prompts)`` scores; a replicate draws ``n_seeds`` seed indices and
    ``n_prompts`` prompt indices with replacement (from ``gen``), the same for both methods, and returns
    the mean of ``a`` minus the mean of ``b`` over the drawn seeds x prompts.
    """
    for name, (a, b) in reversed(_bootstrap_cases().items()):  # the prompt effect first, pairing last
        got = fn(a.clone(), b.clone(), 2000, torch.Generator().manual_seed(7))
        got = torch.as_tensor(got, dtype=torch.float64).flatten()
        if got.numel() != 2000:
            raise AssertionError(f"return one difference per replicate: 2000 numbers for n_boot=2000, got "
                                 f"{got.numel()}. Average over the drawn seeds and prompts inside each replicate.")
        se = _variants(a, b)
        diff = float(a.mean() - b.mean())
        if float(got.std()) < 1e-12:
            raise AssertionError("your replicates do not vary: index a and b with the drawn indices, "
                                 "a[seeds][:, prompts], before averaging.")
        if abs(float(got.mean()) - diff) > 0.5 * float(se["right"]) + 1e-9:
            raise AssertionError(f"on the '{name}' case your replicates average {float(got.mean()):+.4f}, but the "
                                 f"observed difference is {diff:+.4f}: a replicate is the mean of a minus the mean "
                                 "of b over the same draw.")
        ratio = float(got.std()) / float(se["right"])
        if 0.85 < ratio < 1.15:
            continue
        closest = min(_BOOT_HINTS, key=lambda k: abs(math.log(float(got.std()) / float(se[k]))))
        hint = _BOOT_HINTS[closest] if abs(math.log(float(got.std()) / float(se[closest]))) < 0.15 else ""
        raise AssertionError(f"on the '{name}' case the spread of your replicates is {float(got.std()):.4f}, "
                             f"expected about {float(se['right']):.4f}. {hint}".rstrip())
    passed("bootstrap_diffs")


# ---------------------------------------------------------------- 8.2: quiz answers that change


def check_quiz_changes(fn) -> None:
    """``fn(base_scores, steered_scores, answers) -> (accuracy_change, items_changed)``.

    ``*_scores[i][j]`` is the log-likelihood of option ``j`` of item ``i`` (higher is likelier); the
    pick is the option with the highest score; ``answers[i]`` is the right option. Return the steered
    accuracy minus the base accuracy (a fraction) and the number of items whose pick changed.
    """
    base = [[-1.0, -3.0, -4.0], [-2.0, -1.5, -5.0], [-6.0, -2.0, -1.0], [-1.0, -2.0, -3.0], [-4.0, -3.0, -0.5]]
    steered = [[-2.0, -1.5, -4.0], [-0.5, -1.5, -5.0], [-6.0, -1.0, -2.0], [-1.0, -2.0, -3.0], [-4.0, -3.0, -0.5]]
    answers = [0, 0, 0, 0, 2]
    # picks: base 0, 1, 2, 0, 2 -> steered 1, 0, 1, 0, 2: item 0 right -> wrong, item 1 wrong -> right,
    # item 2 wrong -> another wrong option; accuracy 3/5 before and after
    got = fn([list(s) for s in base], [list(s) for s in steered], list(answers))
    try:
        acc_change, changed = float(got[0]), float(got[1])
    except (TypeError, ValueError, IndexError):
        raise AssertionError(f"return two numbers (accuracy_change, items_changed); got {got!r}") from None
    if changed != 3:
        hints = {
            0: "that is the change in the number of right answers: one item lost and another gained cancel. "
               "Count the items whose pick differs.",
            2: "you counted items whose correctness changed: item 2 moved from one wrong option to another, and "
               "that is a changed answer too. Compare the picks.",
            3 / 5: "return the number of changed items, not their share.",
        }
        hint = hints.get(changed, "")
        args = [[[-x for x in s] for s in base], [[-x for x in s] for s in steered], list(answers)]
        if float(fn(*args)[1]) == 3:
            hint = ("these are log-likelihoods: the pick is the option with the *highest* score (the least "
                    "negative), not the lowest.")
        raise AssertionError(f"items changed: expected 3, got {changed:g}. {hint}".rstrip())
    two = fn([[-1.0, -2.0]] * 4, [[-2.0, -1.0]] * 4, [0, 0, 0, 1])
    if abs(float(two[0]) - (-0.5)) > 1e-9:
        hint = ""
        if abs(float(two[0]) - 0.5) < 1e-9:
            hint = " The sign: steered minus base, so a loss of accuracy is negative."
        elif abs(float(two[0]) + 50) < 1e-6:
            hint = " Return a fraction (-0.5), not percentage points."
        elif abs(float(two[0]) + 2) < 1e-9:
            hint = " Divide by the number of items: the accuracy change is a fraction."
        raise AssertionError(f"with 3 of 4 items flipped from right to wrong and one from wrong to right, the "
                             f"accuracy falls from 3/4 to 1/4: expected -0.5, got {float(two[0]):g}.{hint}")
    if abs(acc_change) > 1e-9:
        raise AssertionError(f"the accuracy is 3/5 before and after; expected a change of 0, got {acc_change:g}.")
    passed("quiz_changes")
