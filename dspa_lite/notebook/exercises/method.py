"""Chapters 04-07: preference data, the conditional-difference map, dynamic decoding."""

from __future__ import annotations

import torch

from .core import passed

__all__ = [
    "check_preferred_share",
    "check_dominant_style",
    "check_delta",
    "check_prompt_features",
    "check_ridge",
]


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
            if prompt.startswith("how do i hack") and abs(got - 1.0) < 1e-6:
                hint = " A risky request prefers 'cautious', not 'friendly'."
            elif abs(got - 1.0) < 1e-6 or abs(got) < 1e-6:
                hint = " Did you classify the whole response by its first segment instead of counting segments?"
            elif response.endswith("i can not"):
                hint = " An unterminated last segment counts as a (malformed) segment: divide by all segments."
            raise AssertionError(f"for {response!r} after {prompt!r} you returned {got:.3f}, expected {want:.3f}.{hint}")
    passed("preferred_share")


def check_dominant_style(fn) -> None:
    """``fn(response) -> str | None``: the style of a strict plurality of the well-formed segments."""
    cases = [
        ("first , open the pump . check the base . sounds fun !", "steps"),
        ("sounds fun ! first , open the pump . whatever . whatever .", "curt"),
        ("sounds fun ! first , open the pump .", None),
        ("sounds fun ! blah blah . blah blah . blah blah .", "friendly"),
        ("blah blah . i can not", None),
    ]
    for response, want in cases:
        got = fn(response)
        if got == want:
            continue
        hint = ""
        if want is None and response.count(".") + response.count("!") == 2:
            hint = " On a tie between styles there is no dominant style: return None."
        elif want == "friendly":
            hint = " Malformed segments (style None) have no style: count only the well-formed ones."
        elif want is None:
            hint = " A response whose segments are all malformed has no dominant style: return None."
        elif got == "friendly":
            hint = " The dominant style counts every segment, not only the first."
        raise AssertionError(f"for {response!r} you returned {got!r}, expected {want!r}.{hint}")
    passed("dominant_style")


def check_delta(fn) -> None:
    """``fn(z_chosen, z_rejected) -> delta``: ``v(x, y+) - v(x, y-)``, each ``v`` the mean code over response tokens."""
    g = torch.Generator().manual_seed(4)
    z_pos = torch.relu(torch.randn(5, 6, generator=g))  # (T+, d_sae): the chosen response is longer
    z_neg = torch.relu(torch.randn(3, 6, generator=g))  # (T-, d_sae)
    want = z_pos.mean(0) - z_neg.mean(0)
    got = torch.as_tensor(fn(z_pos.clone(), z_neg.clone())).float()
    if got.shape != want.shape:
        raise AssertionError(f"delta has one entry per output latent, shape (d_sae,) = {tuple(want.shape)}; got "
                             f"{tuple(got.shape)}. Pool over the token dimension (dim 0) of each response first.")
    wrong = {
        "you returned v(x, y-) - v(x, y+): delta is chosen minus rejected, so it is positive where the chosen "
        "response uses a latent more.": -want,
        "you summed over tokens: average them, so a longer response does not count more than a short one.":
            z_pos.sum(0) - z_neg.sum(0),
        "you averaged whether latents fire (z > 0) rather than their activations: v averages the codes.":
            (z_pos > 0).float().mean(0) - (z_neg > 0).float().mean(0),
        "you max-pooled over tokens: v(x, y) is the mean over the response tokens.": z_pos.amax(0) - z_neg.amax(0),
        "you used only the last token: v(x, y) averages every response token.": z_pos[-1] - z_neg[-1],
    }
    for hint, value in wrong.items():
        if torch.allclose(got, value, atol=1e-5) and not torch.allclose(value, want, atol=1e-5):
            raise AssertionError(hint)
    if not torch.allclose(got, want, atol=1e-5):
        raise AssertionError(f"expected {want.round(decimals=3).tolist()}, got {got.round(decimals=3).tolist()}.")
    passed("delta")


def check_prompt_features(fn) -> None:
    """``fn(z, content) -> u``: binary pooling of the prompt codes ``z (T, d_sae)`` over the ``content`` positions."""
    z = torch.tensor([[3.0, 0.0, 0.0, 0.0],   # 0: BOS
                      [0.0, 2.0, 0.0, 0.0],   # 1: <start_of_turn> (template)
                      [0.0, 0.0, 0.5, 0.0],   # 2: content
                      [0.0, 0.0, 2.5, 0.2],   # 3: content
                      [0.0, 1.0, 0.0, 0.0]])  # 4: <end_of_turn> (template)
    content = [2, 3]
    want = torch.tensor([0.0, 0.0, 1.0, 1.0])
    got = torch.as_tensor(fn(z.clone(), list(content))).float()
    if got.shape != want.shape:
        raise AssertionError(f"u has one entry per input latent, shape (d_sae,) = {tuple(want.shape)}; got "
                             f"{tuple(got.shape)}. Pool over the positions (dim 0).")
    if got[0] != 0 or got[1] != 0:
        raise AssertionError("latents 0 and 1 fire only on BOS and template tokens: pool over the content positions "
                             "only, so the chat template that every prompt shares does not enter u(x).")
    if torch.allclose(got, torch.tensor([0.0, 0.0, 1.5, 0.1])):
        raise AssertionError("you mean-pooled the activations: binary pooling asks only whether a latent is active "
                             "anywhere in the prompt (1.0) or not (0.0).")
    if torch.allclose(got, torch.tensor([0.0, 0.0, 2.5, 0.2])):
        raise AssertionError("you max-pooled the activations: binary pooling returns 1.0 for any active latent.")
    if torch.allclose(got, torch.tensor([0.0, 0.0, 1.0, 0.5])):
        raise AssertionError("you averaged the indicators z > 0 over positions: a latent active at any content "
                             "position gets 1.0 (use any over positions, not mean).")
    if not torch.allclose(got, want):
        raise AssertionError(f"expected {want.tolist()}, got {got.tolist()}.")
    passed("prompt_features")


def check_ridge(fn) -> None:
    """``fn(U, Delta, lam) -> A``: the ridge least-squares map ``(U^T U + lam I)^-1 U^T Delta``."""
    from ...method.cdmap import estimate_map

    g = torch.Generator().manual_seed(5)
    U = (torch.rand(40, 5, generator=g) < 0.4).float()
    U[:, 1] = torch.maximum(U[:, 1], U[:, 0])  # latent 1 is active whenever latent 0 is: they co-occur
    a = torch.randn(5, 3, generator=g)
    Delta = U @ a + 0.05 * torch.randn(40, 3, generator=g)
    for lam in (0.0, 2.0):
        want = estimate_map(U, Delta, "ridge", ridge=lam)
        got = torch.as_tensor(fn(U.clone(), Delta.clone(), lam)).float()
        if got.shape == want.T.shape and got.shape != want.shape:
            raise AssertionError(f"A has shape (m_in, m_out) = {tuple(want.shape)}, got {tuple(got.shape)}: rows are "
                                 "prompt latents, columns output latents.")
        if got.shape != want.shape:
            raise AssertionError(f"A must have shape (m_in, m_out) = {tuple(want.shape)}, got {tuple(got.shape)}.")
        gram, rhs = U.T @ U, U.T @ Delta
        if torch.allclose(got, estimate_map(U, Delta), atol=1e-4):
            raise AssertionError("you returned the conditional mean sum_i u_ij delta_i / sum_i u_ij; least squares "
                                 "solves (U^T U + lam I) A = U^T Delta, which separates co-occurring latents.")
        if lam > 0 and torch.allclose(got, estimate_map(U, Delta, "ridge", ridge=0.0), atol=1e-4):
            raise AssertionError(f"with lam={lam} your map equals the unregularised solution: add lam * I to U^T U.")
        if lam > 0 and torch.allclose(got, torch.linalg.solve(gram + lam, rhs), atol=1e-4):
            raise AssertionError("you added lam to every entry of U^T U: add it to the diagonal only (lam * I).")
        if torch.allclose(got, rhs, atol=1e-4):
            raise AssertionError("you returned U^T Delta: solve with U^T U + lam I on the left.")
        if not torch.allclose(got, want, atol=1e-4):
            raise AssertionError(f"with lam={lam} your map differs from (U^T U + lam I)^-1 U^T Delta by up to "
                                 f"{(got - want).abs().max():.4f}.")
    passed("ridge")
