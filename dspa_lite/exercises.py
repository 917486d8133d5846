"""Check functions for the book's exercises: each runs the reader's function on cases with known
answers and explains the first mistake it finds, in the manner of ARENA's ``tests.test_x(fn)``.

Every check prints a one-line confirmation when the function is right and raises
``AssertionError`` with a diagnosis when it is not.
"""

from __future__ import annotations

import torch

__all__ = ["attempt", "check_precision_at_k", "check_preferred_share", "check_conditional_mean", "check_token_active_edit",
           "check_scores"]


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


# --------------------------------------------------------------------------- chapters 01-03
__all__ += ["check_fve", "check_style_labels", "check_static_sets"]


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
    _ok("fve")


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
    _ok("style_labels")


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
    _ok("static_sets")


# --------------------------------------------------------------------------- chapters 4 and 5
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
    _ok("delta")


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
    _ok("prompt_features")


def check_ridge(fn) -> None:
    """``fn(U, Delta, lam) -> A``: the ridge least-squares map ``(U^T U + lam I)^-1 U^T Delta``."""
    from .cdmap import estimate_map

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
    _ok("ridge")


__all__ += ["check_delta", "check_prompt_features", "check_ridge"]


def check_precision_at_k(fn) -> None:
    """``fn(selected, reference, k) -> float``: the share of the first ``k`` selected latents that are in ``reference``."""
    cases = [([3, 1, 7, 9], {1, 9, 42}, 4, 0.5), ([3, 1, 7, 9], {1, 9, 42}, 2, 0.5), ([5, 6], set(), 2, 0.0)]
    for selected, reference, k, want in cases:
        got = float(fn(selected, reference, k))
        if abs(got - want) > 1e-9:
            hint = ""
            if abs(got - len(set(selected[:k]) & reference) / max(1, len(reference))) < 1e-9 and reference:
                hint = " You divided by the size of the reference set (that is recall); precision divides by k."
            elif abs(got - len(set(selected) & reference) / k) < 1e-9:
                hint = " Only the first k selected latents count."
            raise AssertionError(f"selected={selected}, reference={sorted(reference)}, k={k}: expected {want}, "
                                 f"got {got}.{hint}")
    _ok("precision_at_k")


def check_pairwise_win_rate(fn) -> None:
    """``fn(verdicts, model_positions) -> float``: the model's pairwise win rate, AlpacaEval's way.

    ``verdicts[i]`` is the judge's ``"A"``, ``"B"``, ``"tie"`` or ``None`` (unreadable); ``model_positions[i]``
    is where the model's output was shown (``"A"`` or ``"B"``). Wins count 1, ties 1/2, unreadable verdicts
    are left out; the answer must equal :func:`dspa_lite.judges.win_rate`.
    """
    from .judges import Comparison, win_rate

    cases = [
        (["A", "B", "tie", None, "B", "A", "B"], ["A", "A", "B", "A", "B", "B", "A"]),
        (["A", "A", "A", "A"], ["A", "B", "B", "A"]),
    ]
    for verdicts, positions in cases:
        comps = [Comparison(i, f"instruction {i}", p, v, {None: None, "tie": "tie", p: "model"}.get(v, "reference"),
                            "", False) for i, (v, p) in enumerate(zip(verdicts, positions))]
        want = win_rate(comps)["win_rate"]
        got = float(fn(list(verdicts), list(positions)))
        if abs(got - want) < 1e-9:
            continue
        decided = [(v, p) for v, p in zip(verdicts, positions) if v is not None]
        wins = sum(v == p for v, p in decided)
        ties = sum(v == "tie" for v, _ in decided)
        mistakes = [
            ((sum(v == "A" for v, _ in decided) + ties / 2) / len(decided),
             "you counted verdict 'A' as a model win: the model's output was shown as A or B at random, so a "
             "verdict is a model win only where it names model_positions[i]."),
            (wins / len(decided), "ties count half a win (AlpacaEval's rule), not zero."),
            ((wins + ties) / len(decided), "ties count half a win, not a whole one."),
            ((wins + ties / 2) / len(verdicts),
             "an unreadable verdict (None) is left out of the denominator, not counted as a loss."),
            (100 * want, "return a fraction in [0, 1], not a percentage."),
        ]
        hint = next((msg for value, msg in mistakes if abs(got - value) < 1e-9 and abs(value - want) > 1e-9), "")
        raise AssertionError(f"for verdicts {verdicts} with the model shown at {positions} you returned {got:.4f}, "
                             f"expected {want:.4f}. {hint}".rstrip())
    _ok("pairwise_win_rate")


__all__ += ["check_pairwise_win_rate"]


# --------------------------------------------------------------------------- chapter 11
def check_nested_subsets(fn) -> None:
    """``fn(triples, sizes, seed) -> {n: list}``: seeded random subsets without replacement, nested across sizes."""
    from .data import PreferenceTriple

    pool = [PreferenceTriple(f"prompt {i}", f"good {i}", f"bad {i}") for i in range(40)]
    sizes = [5, 20, 40]
    copy = list(pool)
    out = {s: list(v) for s, v in fn(pool, list(sizes), 0).items()}
    if pool != copy:
        raise AssertionError("you changed the caller's list (random.shuffle shuffles in place): shuffle a copy, or "
                             "a list of indices, and leave `triples` as it was.")
    if sorted(out) != sizes:
        raise AssertionError(f"return a dict with one entry per size: keys {sizes}, got {sorted(out)}.")
    for n in sizes:
        if len(out[n]) != n:
            raise AssertionError(f"the subset for n={n} has {len(out[n])} triples.")
        if any(t not in pool for t in out[n]):
            raise AssertionError(f"the subset for n={n} holds something that is not one of the input triples.")
        if len(set(out[n])) != n:
            raise AssertionError(f"the subset for n={n} repeats triples: sample without replacement "
                                 "(a permutation, or random.sample), not with random.choice.")
    for small, large in zip(sizes, sizes[1:]):
        if not set(out[small]) <= set(out[large]):
            raise AssertionError(f"the n={small} subset is not contained in the n={large} one: draw one permutation per "
                                 "seed and take its first n for every size, so that a larger n adds triples instead of "
                                 "drawing a new sample (which would mix the effect of n with the luck of the draw).")
    if out[5] == pool[:5] and fn(pool, [5], 1)[5] == pool[:5]:
        raise AssertionError("you returned the first n triples in the source's order: shuffle first. Sources are "
                             "often sorted (by date, topic or score), so their first n are not a random sample.")
    again = {s: list(v) for s, v in fn(pool, list(sizes), 0).items()}
    if again != out:
        raise AssertionError("the same seed gave different subsets: draw from random.Random(seed) (or "
                             "torch.Generator().manual_seed(seed)), not from the global random state.")
    if fn(pool, [20], 1)[20] == out[20]:
        raise AssertionError("seeds 0 and 1 gave the same subset: the seed must choose the permutation.")
    try:
        fn(pool, [len(pool) + 1], 0)
    except ValueError:
        pass
    else:
        raise AssertionError(f"asking for {len(pool) + 1} of {len(pool)} triples must raise ValueError, not return "
                             "fewer triples than asked for: a curve labelled n must have n triples.")
    _ok("nested_subsets")


def check_training_steps(fn) -> None:
    """``fn(n, epochs, batch_size, min_steps) -> int``: ``max(min_steps, ceil(epochs * n / batch_size))``."""
    import math
    import numbers

    from .finetune import _n_steps

    cases = [(25, 1.0, 16, 8), (250, 1.0, 16, 8), (1000, 1.0, 16, 8), (100, 0.5, 16, 4), (1000, 0.5, 16, 4),
             (40, 2.0, 8, 0), (50, 1.0, 8, 16)]
    for n, epochs, bs, min_steps in cases:
        want = _n_steps(n, epochs, bs, min_steps)
        got = fn(n, epochs, bs, min_steps)
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if not isinstance(got, numbers.Integral) or isinstance(got, bool):
            raise AssertionError(f"return a whole number of steps (an int), got {got!r} for n={n}, epochs={epochs}, "
                                 f"batch_size={bs}: round up with math.ceil.")
        if int(got) == want:
            continue
        got = int(got)
        mistakes = [
            (max(min_steps, math.floor(epochs * n / bs)), "you rounded down: a last, partial batch is still a step, "
                                                          "so round up (math.ceil)."),
            (math.ceil(epochs * n / bs), f"min_steps={min_steps} is a floor on the number of steps: take the max with it."),
            (max(min_steps, math.ceil(n / bs)), f"epochs={epochs} scales the passes over the data: multiply n by it."),
            (min(min_steps, math.ceil(epochs * n / bs)), "min_steps is a lower bound: use max, not min."),
            (max(min_steps, math.ceil(epochs * n)), "one step processes batch_size triples: divide by batch_size."),
        ]
        hint = next((msg for value, msg in mistakes if value == got), "")
        raise AssertionError(f"for n={n}, epochs={epochs}, batch_size={bs}, min_steps={min_steps} expected {want} "
                             f"steps, got {got}. {hint}".rstrip())
    _ok("training_steps")


__all__ += ["check_nested_subsets", "check_training_steps"]
