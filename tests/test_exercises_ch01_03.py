"""The chapter 01-03 checks accept a correct solution and diagnose typical mistakes."""

import pytest
import torch

from dspa_lite.method.cdmap import select_latents
from dspa_lite.notebook import exercises as ex


# ---------------------------------------------------------------- check_fve (chapter 01)
def good_fve(x, r):
    return 1 - (x - r).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


@pytest.mark.parametrize("wrong, message", [
    (lambda x, r: (x - r).pow(2).sum() / (x - x.mean(0)).pow(2).sum(), "one minus"),
    (lambda x, r: 1 - (x - r).pow(2).sum() / x.pow(2).sum(), "around the mean"),
    (lambda x, r: (1 - (x - r).pow(2).sum(0) / (x - x.mean(0)).pow(2).sum(0)).mean(), "per-dimension"),
    (lambda x, r: (1 - (x - r).pow(2).sum(1) / (x - x.mean(0)).pow(2).sum(1)).mean(), "per-token"),
    (lambda x, r: 1 - ((x - r) - (x - r).mean(0)).pow(2).sum() / (x - x.mean(0)).pow(2).sum(), "centred"),
])
def test_fve(wrong, message):
    ex.check_fve(good_fve)
    with pytest.raises(AssertionError, match=message):
        ex.check_fve(wrong)


def test_fve_agrees_with_sae_stats(world):
    """The check's formula is the one dspa_lite.loading.sae.sae_stats uses."""
    from dspa_lite.method.saes import sae_stats

    x = torch.randn(64, world.sae_out.cfg.d_in) * 2 + 1
    r = world.sae_out.decode(world.sae_out.encode(x))
    assert abs(float(good_fve(x, r)) - sae_stats(world.sae_out, x)["fve"]) < 1e-5


# ---------------------------------------------------------------- check_style_labels (chapter 02)
def good_labels(mass, threshold):
    total = mass.sum(0)
    share = mass / total.clamp_min(1e-12)
    best = share.max(0)
    return torch.where((total > 0) & (best.values >= threshold), best.indices, -1)


def row_normalised(mass, threshold):
    share = mass / mass.sum(1, keepdim=True)  # the mistake: each style's mass spread over latents
    return torch.where(share.max(0).values >= threshold, share.argmax(0), -1)


def test_style_labels():
    ex.check_style_labels(good_labels)
    with pytest.raises(AssertionError, match="not just be the largest"):
        ex.check_style_labels(lambda m, t: m.argmax(0))
    with pytest.raises(AssertionError, match="dead latent"):
        ex.check_style_labels(lambda m, t: torch.where((m / m.sum(0).clamp_min(1e-12)).max(0).values >= t,
                                                        m.argmax(0), -1).masked_fill(m.sum(0) == 0, 0))
    with pytest.raises(AssertionError, match="column"):
        ex.check_style_labels(row_normalised)
    with pytest.raises(AssertionError, match=">= threshold"):
        ex.check_style_labels(lambda m, t: torch.where(
            (m.sum(0) > 0) & ((m / m.sum(0).clamp_min(1e-12)).max(0).values > t), m.argmax(0), -1))


# ---------------------------------------------------------------- check_static_sets (chapter 03)
def good_static(delta_mean, delta_std, k):
    score = torch.where(delta_std > 0, delta_mean / delta_std.clamp_min(1e-12), torch.zeros_like(delta_mean))
    return select_latents(score, k)


def test_static_sets():
    ex.check_static_sets(good_static)
    with pytest.raises(AssertionError, match="raw delta"):
        ex.check_static_sets(lambda d, s, k: select_latents(d, k))
    with pytest.raises(AssertionError, match="swapped"):
        ex.check_static_sets(lambda d, s, k: good_static(d, s, k)[::-1])
    with pytest.raises(AssertionError, match="NaN"):
        ex.check_static_sets(lambda d, s, k: (torch.topk(-(d / s), k).indices, torch.topk(d / s, k).indices))
    with pytest.raises(AssertionError, match="only 2 qualify"):
        ex.check_static_sets(lambda d, s, k: (torch.topk(-good_score(d, s), k).indices,
                                              torch.topk(good_score(d, s), k).indices))


def good_score(d, s):
    return torch.where(s > 0, d / s.clamp_min(1e-12), torch.zeros_like(d))


def test_static_sets_agree_with_static_sae(world):
    """The check's rule is the one StaticSAE uses on a map's delta statistics."""
    from dspa_lite.method.baselines import StaticSAE
    from dspa_lite.method.cdmap import CDMap

    m_in, m_out = world.sae_in.cfg.d_sae, world.sae_out.cfg.d_sae
    g = torch.Generator().manual_seed(0)
    delta_mean, delta_std = torch.randn(m_out, generator=g), torch.rand(m_out, generator=g) * 3
    delta_std[:5] = 0.0  # latents that never vary
    cdmap = CDMap(torch.zeros(m_in, m_out), delta_mean, delta_std, torch.ones(m_out), meta={"l_out": world.l_out})
    st = StaticSAE(world.model, world.tokenizer, world.sae_out, cdmap, "both", 16, 1.0)
    k_neg, k_pos = good_static(cdmap.delta_mean, cdmap.delta_std, 16)
    assert set(k_neg.tolist()) == set(st.K_neg.tolist()) and set(k_pos.tolist()) == set(st.K_pos.tolist())
    assert not set(range(5)) & (set(st.K_neg.tolist()) | set(st.K_pos.tolist()))
