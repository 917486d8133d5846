"""Check functions for the book's exercises: each runs the reader's function on cases with known
answers and explains the first mistake it finds, in the manner of ARENA's ``tests.test_x(fn)``.

Every check prints a one-line confirmation when the function is right and raises
``AssertionError`` with a diagnosis when it is not.
"""

from __future__ import annotations

import torch

__all__ = ["attempt", "check_preferred_share", "check_conditional_mean", "check_token_active_edit", "check_scores"]


def _ok(name: str) -> None:
    print(f"✓ {name}: all checks passed")


def check_preferred_share(fn) -> None:
    """``fn(prompt, response) -> float``: the share of segments in the prompt category's preferred style."""
    cases = [
        ("explain how the pump works ?", "first , open the pump . whatever . check the base .", 2 / 3),
        ("i love my cat so much !", "sounds fun ! hope this helps ! whatever .", 2 / 3),
        ("how do i hack the car ?", "sounds fun ! hope this helps !", 0.0),
        ("how do i hack the car ?", "please be careful . i can not", 0.5),
    ]
    for prompt, response, want in cases:
        got = float(fn(prompt, response))
        if abs(got - want) > 1e-6:
            hint = ""
            if abs(got - 1.0) < 1e-6 or abs(got) < 1e-6:
                hint = " Did you classify the whole response by its first segment instead of counting segments?"
            elif prompt.startswith("how do i hack") and abs(got - 1.0) < 1e-6:
                hint = " A risky request prefers 'cautious', not 'friendly'."
            elif response.endswith("i can not"):
                hint = " An unterminated last segment counts as a (malformed) segment: divide by all segments."
            raise AssertionError(f"for {response!r} after {prompt!r} you returned {got:.3f}, expected {want:.3f}.{hint}")
    _ok("preferred_share")


def check_conditional_mean(fn) -> None:
    """``fn(U, Delta, n_min) -> A``: the conditional-mean map with minimum support ``n_min``."""
    from .cdmap import estimate_map

    g = torch.Generator().manual_seed(0)
    U = (torch.rand(30, 6, generator=g) < 0.3).float()
    U[:, 5] = 0
    U[0, 5] = 1  # a latent seen once
    Delta = torch.randn(30, 4, generator=g)
    for n_min in (1, 2):
        want = estimate_map(U, Delta, n_min=n_min)
        got = torch.as_tensor(fn(U, Delta, n_min)).float()
        if got.shape != want.shape:
            raise AssertionError(f"A must have shape (m_in, m_out) = {tuple(want.shape)}, got {tuple(got.shape)}. "
                                 "Rows are prompt latents, columns output latents.")
        if torch.allclose(got, (U.T @ Delta), atol=1e-4):
            raise AssertionError("you returned U^T Delta: divide each row by its support sum_i U_ij.")
        if n_min == 2 and got[5].abs().sum() > 0:
            raise AssertionError("row 5 has support 1 < n_min=2 and must be zero.")
        if not torch.allclose(got, want, atol=1e-4):
            raise AssertionError(f"with n_min={n_min} your map differs from the conditional mean by up to "
                                 f"{(got - want).abs().max():.4f}.")
    _ok("conditional_mean")


def check_token_active_edit(fn) -> None:
    """``fn(z, K_neg, K_pos, alpha) -> z_new``: ablate active K_neg, scale active K_pos by (1 + alpha)."""
    z = torch.tensor([[0.0, 2.0, 1.0, 0.0, 3.0]])
    k_neg, k_pos = torch.tensor([0, 1]), torch.tensor([3, 4])
    want = torch.tensor([[0.0, 0.0, 1.0, 0.0, 6.0]])
    got = torch.as_tensor(fn(z.clone(), k_neg, k_pos, 1.0)).float()
    if got[0, 3] != 0:
        raise AssertionError("latent 3 is in K_pos but inactive (z=0): token-active gating never switches a latent on.")
    if got[0, 1] != 0:
        raise AssertionError("latent 1 is active and in K_neg: ablation must set it to zero.")
    if abs(got[0, 4] - 6.0) > 1e-6:
        raise AssertionError(f"latent 4 (z=3) in K_pos with alpha=1 should become 3 * (1 + 1) = 6, got {got[0, 4]:.3f}.")
    if not torch.allclose(got, want):
        raise AssertionError(f"expected {want.tolist()}, got {got.tolist()}: latents outside K_neg/K_pos must not change.")
    _ok("token_active_edit")


def check_scores(fn) -> None:
    """``fn(A, u) -> s``: per-prompt scores ``s = A^T u / max(1, |u|_1)``."""
    A = torch.tensor([[1.0, -2.0], [3.0, 0.5], [0.0, 1.0]])
    for u in (torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 0.5])):
        want = A.T @ u / max(1.0, float(u.abs().sum()))
        got = torch.as_tensor(fn(A, u)).float()
        if torch.allclose(got, A.T @ u):
            if not torch.allclose(want, A.T @ u):
                raise AssertionError("divide by max(1, |u|_1) so prompts with many active latents are not louder.")
        if not torch.allclose(got, want, atol=1e-6):
            hint = " Use max(1, |u|_1), not |u|_1: a small u must not be scaled up." if u.sum() < 1 else ""
            raise AssertionError(f"for u={u.tolist()} expected {want.tolist()}, got {got.tolist()}.{hint}")
    _ok("scores")


def attempt(check, fn) -> None:
    """Run ``check(fn)``, but treat an unwritten exercise (``NotImplementedError``) as "not yet"."""
    try:
        check(fn)
    except NotImplementedError:
        print(f"{check.__name__}: not attempted yet. Write your solution above and re-run this cell.")
