"""Each check accepts a correct solution and diagnoses typical mistakes."""

import pytest
import torch

from dspa_lite.method.cdmap import estimate_map, prompt_scores
from dspa_lite.notebook import exercises as ex
from dspa_lite.toyworld import language as L


def good_share(prompt, response):
    return L.Judge()(prompt, response).preferred_share


def first_segment_only(prompt, response):
    v = L.Judge()(prompt, response)
    return float(v.styles[0] == v.preferred)


def test_preferred_share():
    ex.check_preferred_share(good_share)
    with pytest.raises(AssertionError, match="first segment"):
        ex.check_preferred_share(first_segment_only)


def test_conditional_mean():
    ex.check_conditional_mean(lambda U, D, n: estimate_map(U, D, n_min=n))
    with pytest.raises(AssertionError, match="U\\^T Delta"):
        ex.check_conditional_mean(lambda U, D, n: U.T @ D)
    with pytest.raises(AssertionError, match="n_min=2"):
        ex.check_conditional_mean(lambda U, D, n: estimate_map(U, D, n_min=1))


def test_token_active_edit():
    def good(z, k_neg, k_pos, alpha):
        z = z.clone()
        active = z > 0
        z[:, k_neg] = 0
        z[:, k_pos] = torch.where(active[:, k_pos], z[:, k_pos] * (1 + alpha), z[:, k_pos])
        return z

    def switches_on(z, k_neg, k_pos, alpha):
        z = good(z, k_neg, k_pos, alpha)
        z[:, k_pos] += 0.5
        return z

    ex.check_token_active_edit(good)
    with pytest.raises(AssertionError, match="never switches a latent on"):
        ex.check_token_active_edit(switches_on)


def test_scores():
    ex.check_scores(prompt_scores)
    with pytest.raises(AssertionError, match="max\\(1, \\|u\\|_1\\)"):
        ex.check_scores(lambda A, u: A.T @ u / u.abs().sum())


def test_precision_at_k():
    ex.check_precision_at_k(lambda sel, ref, k: len(set(list(sel)[:k]) & set(ref)) / k)
    with pytest.raises(AssertionError, match="recall"):
        ex.check_precision_at_k(lambda sel, ref, k: len(set(list(sel)[:k]) & set(ref)) / max(1, len(ref)))


def test_pairwise_win_rate():
    def good(verdicts, positions):
        decided = [(v, p) for v, p in zip(verdicts, positions) if v is not None]
        return sum(1.0 if v == p else 0.5 if v == "tie" else 0.0 for v, p in decided) / len(decided)

    ex.check_pairwise_win_rate(good)
    with pytest.raises(AssertionError, match="half a win"):
        ex.check_pairwise_win_rate(lambda v, p: sum(a == b for a, b in zip(v, p) if a) / len([a for a in v if a]))
