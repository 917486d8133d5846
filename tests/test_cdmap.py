"""Tests for dspa_lite.method.cdmap: parity with loop references, invariants, validation, and safe save/load."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import safetensors.torch
import torch

from dspa_lite.method import cdmap
from dspa_lite.method.cdmap import (
    CDMap,
    CDMapConfig,
    CDMapFileError,
    estimate_map,
    prompt_scores,
    select_latents,
    specificity_weights,
)

META = {"model_id": "toy-1m", "sae_in_id": "toy/sae-l1", "sae_out_id": "toy/sae-l3", "l_in": 1, "l_out": 3, "d_model": 64,
            "d_sae_in": 12, "d_sae_out": 7, "n_triples": 40, "data_hash": "abc123"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def reference_map(U, Delta, n_min=1, center=False):
    """The conditional mean written as a loop over prompt latents and triples."""
    U, Delta = U.double(), Delta.double()
    if center:
        Delta = Delta - Delta.mean(0)
    A = torch.zeros(U.shape[1], Delta.shape[1], dtype=torch.float64)
    for j in range(U.shape[1]):
        rows = [i for i in range(U.shape[0]) if U[i, j] > 0]
        if len(rows) >= n_min:
            A[j] = sum(U[i, j] * Delta[i] for i in rows) / sum(U[i, j] for i in rows)
    return A


def random_features(n=40, m_in=12, m_out=7, real=False):
    U = (torch.rand(n, m_in) < 0.3).float()
    U[:, 0] = 0  # a dead prompt latent
    U[:, 1] = 0
    U[3, 1] = 1  # a prompt latent seen in one triple only
    if real:
        U = U * torch.rand(n, m_in) * 3
    return U, torch.randn(n, m_out) + 0.5


def additive_world(n=400):
    """Prompt latent 0 co-occurs with latent 1 half the time; delta is additive in the active latents."""
    u0 = (torch.rand(n) < 0.5).float()
    u1 = torch.where(u0 > 0, (torch.rand(n) < 0.5).float(), (torch.rand(n) < 0.2).float())
    u2 = (torch.rand(n) < 0.3).float()
    U = torch.stack([u0, u1, u2], 1)
    a = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 3.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 2.0]])
    return U, U @ a, a


# ---- estimate_map -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("real", [False, True])
@pytest.mark.parametrize("n_min,center", [(1, False), (3, False), (1, True), (4, True)])
def test_mean_matches_loop_reference(real, n_min, center):
    U, Delta = random_features(real=real)
    A = estimate_map(U, Delta, n_min=n_min, center=center)
    assert A.shape == (12, 7) and A.dtype == torch.float32
    torch.testing.assert_close(A.double(), reference_map(U, Delta, n_min, center), atol=1e-5, rtol=1e-5)
    assert (A[0] == 0).all() and ((A[1] == 0).all() == (n_min > 1))


def test_defaults_are_the_textbook_estimator_and_accept_bool_u():
    U, Delta = random_features()
    torch.testing.assert_close(estimate_map(U.bool(), Delta).double(), reference_map(U, Delta), atol=1e-6, rtol=0)
    torch.testing.assert_close(estimate_map(U.long(), Delta), estimate_map(U, Delta))


def test_ridge_is_exact_under_additive_gating_where_the_mean_is_biased():
    U, Delta, a = additive_world()
    ridge_A = estimate_map(U, Delta, "ridge")
    torch.testing.assert_close(ridge_A, a, atol=1e-4, rtol=0)
    mean_A = estimate_map(U, Delta, "mean")
    assert (mean_A[0] - a[0]).abs().max() > 0.5  # latent 0's row absorbs half of latent 1's effect
    # a small ridge penalty shrinks only slightly
    torch.testing.assert_close(estimate_map(U, Delta, "ridge", ridge=1e-3), a, atol=1e-3, rtol=0)


def test_ridge_skips_unsupported_latents_and_explains_a_singular_gram():
    U, Delta, a = additive_world()
    U4 = torch.cat([U, torch.zeros(len(U), 1)], 1)  # a dead latent does not make the solve singular
    A = estimate_map(U4, Delta, "ridge")
    torch.testing.assert_close(A[:3], a, atol=1e-4, rtol=0)
    assert (A[3] == 0).all()
    U_dup = torch.cat([U, U[:, :1]], 1)  # latent 3 always co-occurs with latent 0
    with pytest.raises(ValueError, match=r"full rank.*rank is 3 < 4.*ridge > 0"):
        estimate_map(U_dup, Delta, "ridge")
    assert torch.isfinite(estimate_map(U_dup, Delta, "ridge", ridge=0.1)).all()


def test_top_r_keeps_exactly_r_largest_per_row():
    U, Delta = random_features()
    full = estimate_map(U, Delta, n_min=2)
    for r in (1, 3):
        sparse = estimate_map(U, Delta, n_min=2, top_r=r)
        for j in range(full.shape[0]):
            if (full[j] == 0).all():
                assert (sparse[j] == 0).all()
                continue
            kept = sparse[j].nonzero().flatten()
            assert len(kept) == r
            assert set(kept.tolist()) == set(full[j].abs().argsort(descending=True)[:r].tolist())
            torch.testing.assert_close(sparse[j, kept], full[j, kept])
    torch.testing.assert_close(estimate_map(U, Delta, top_r=99), estimate_map(U, Delta))


def test_weights_scale_rows_and_specificity_is_idf():
    U, Delta = random_features()
    U[:, 2] = 1  # active in every triple: no specificity
    w = specificity_weights(U)
    df = (U > 0).sum(0).double()
    torch.testing.assert_close(w.double(), torch.log((1 + 40) / (1 + df)), atol=1e-6, rtol=0)
    assert w[2] == 0 and w[0] == w.max() == torch.log(torch.tensor(41.0))  # always active; dead
    torch.testing.assert_close(estimate_map(U, Delta, weights=w), w[:, None] * estimate_map(U, Delta))
    with pytest.raises(ValueError, match=r"weights must have shape \(m_in,\) = \(12,\), got \(11,\)"):
        estimate_map(U, Delta, weights=w[:11])
    with pytest.raises(ValueError, match="weights has NaN"):
        estimate_map(U, Delta, weights=torch.full((12,), float("nan")))


def test_normalize_delta_divides_by_std_and_zeroes_constant_columns():
    U, Delta = random_features()
    Delta[:, 3] = 5.0  # zero std
    plain = estimate_map(U, Delta)
    assert torch.allclose(plain[2:, 3][plain[2:, 3] != 0], torch.tensor(5.0))
    normed = estimate_map(U, Delta, normalize_delta=True)
    assert (normed[:, 3] == 0).all()
    cols = [0, 1, 2, 4, 5, 6]
    scaled = Delta[:, cols] / Delta[:, cols].std(0, correction=0)
    torch.testing.assert_close(normed[:, cols], estimate_map(U, scaled))
    # normalising a column that was multiplied by 10 gives the same map
    torch.testing.assert_close(estimate_map(U, Delta * 10, normalize_delta=True), normed)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"U": torch.ones(5, 3), "Delta": torch.ones(4, 2)}, r"U has 5 triples \(rows\) but Delta has 4"),
        ({"U": torch.ones(5), "Delta": torch.ones(5, 2)}, r"U must be a 2-D tensor.*got \(5,\)"),
        ({"estimator": "median"}, r"estimator='median' is not one of \('mean', 'ridge'\)"),
        ({"n_min": 0}, r"n_min=0 must be an integer >= 1"),
        ({"top_r": 0}, r"top_r=0 must be None or an integer >= 1"),
        ({"ridge": -1.0}, r"ridge=-1.0 must be a finite number >= 0"),
        ({"U": -torch.ones(5, 3)}, r"U has 15 negative entries"),
        ({"U": torch.ones(0, 3), "Delta": torch.ones(0, 2)}, r"no rows"),
    ],
)
def test_estimate_map_rejects_bad_arguments(kwargs, match):
    args = {"U": torch.ones(5, 3), "Delta": torch.ones(5, 2)} | kwargs
    with pytest.raises(ValueError, match=match):
        estimate_map(**args)


def test_estimate_map_counts_non_finite_entries():
    U, Delta = random_features()
    Delta[0, 0], Delta[5, 2] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"Delta has 2 non-finite \(NaN/inf\) entries out of 280"):
        estimate_map(U, Delta)
    U[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^U has 1 non-finite"):
        estimate_map(U, torch.zeros(40, 7))


# ---- scores and selection -----------------------------------------------------------------------------------


def test_prompt_scores_single_and_batched():
    A, u = torch.randn(12, 7), (torch.rand(4, 12) < 0.4).float()
    s = prompt_scores(A, u)
    assert s.shape == (4, 7)
    for b in range(4):
        ref = A.T @ u[b] / max(1.0, u[b].abs().sum().item())
        torch.testing.assert_close(s[b], ref)
        torch.testing.assert_close(prompt_scores(A, u[b]), ref)
    small = torch.full((12,), 0.05)  # |u|_1 = 0.6 < 1: no division
    torch.testing.assert_close(prompt_scores(A, small), A.T @ small)
    with pytest.raises(ValueError, match=r"u has shape \(4, 11\).*m_in=12"):
        prompt_scores(A, u[:, :11])


def _reference_select(s, k):
    neg = [i for i in torch.argsort(s).tolist() if s[i] < 0][:k]
    pos = [i for i in torch.argsort(s, descending=True).tolist() if s[i] > 0][:k]
    return neg, pos


def test_select_latents_matches_argsort():
    s = torch.randn(20)
    for k in (1, 5, 20):
        K_neg, K_pos = select_latents(s, k)
        assert K_neg.dtype == K_pos.dtype == torch.long
        assert (K_neg.tolist(), K_pos.tolist()) == _reference_select(s, k)


def test_select_latents_batched_pads_with_minus_one():
    s = torch.randn(4, 10)
    s[1] = s[1].abs() + 0.1  # no negative latents
    s[2] = torch.tensor([0.3, -0.2, 0.0, 0.4, -1.0, 0.5, 0.6, 0.7, 0.8, 0.9])  # two negatives, a zero
    K_neg, K_pos = select_latents(s, 4)
    assert K_neg.shape == K_pos.shape == (4, 4)
    for b in range(4):
        neg, pos = _reference_select(s[b], 4)
        assert K_neg[b].tolist() == neg + [-1] * (4 - len(neg))
        assert K_pos[b].tolist() == pos + [-1] * (4 - len(pos))
    assert K_neg[1].tolist() == [-1] * 4 and K_neg[2].tolist() == [4, 1, -1, -1]


def test_select_latents_k_bounds():
    with pytest.raises(ValueError, match=r"k=11 exceeds d_sae=10"):
        select_latents(torch.randn(2, 10), 11)
    with pytest.raises(ValueError, match=r"k=-1 must be an integer >= 0"):
        select_latents(torch.randn(10), -1)
    K_neg, K_pos = select_latents(torch.randn(3, 10), 0)
    assert K_neg.shape == K_pos.shape == (3, 0)
    assert select_latents(torch.randn(10), 0)[0].numel() == 0


# ---- config -------------------------------------------------------------------------------------------------


def test_config_presets_round_trip_and_frozen():
    d, p = CDMapConfig.default(), CDMapConfig.plain()
    assert (d.n_min, d.center, d.specificity, d.normalize_delta, d.exclude_template) == (2, True, True, True, True)
    assert (p.n_min, p.center, p.specificity, p.normalize_delta, p.exclude_template) == (1, False, False, False, False)
    for cfg in (d, p, CDMapConfig(estimator="ridge", ridge=0.5, top_r=8, pooling="max")):
        assert CDMapConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.n_min = 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"estimator": "median"}, "CDMapConfig.estimator='median' is invalid: choose one of"),
        ({"n_min": 0}, "CDMapConfig.n_min=0 is invalid"),
        ({"ridge": 0.1}, "only applies to estimator='ridge'"),
        ({"estimator": "ridge", "ridge": float("inf")}, "finite number"),
        ({"top_r": 0}, "CDMapConfig.top_r=0"),
        ({"pooling": "sum"}, r"CDMapConfig.pooling='sum' is invalid: choose one of \('binary'"),
        ({"center": "yes"}, "CDMapConfig.center='yes' is invalid: it must be True or False"),
        ({"batch_size": 0}, "CDMapConfig.batch_size=0"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CDMapConfig(**kwargs)


def test_config_from_dict_names_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown CDMapConfig field\(s\) \['alpha'\]"):
        CDMapConfig.from_dict({"alpha": 3})


# ---- CDMap --------------------------------------------------------------------------------------------------


@pytest.fixture
def fitted():
    U, Delta = random_features()
    return CDMap.from_features(U, Delta, torch.rand(7), CDMapConfig.default(), META), U, Delta


def test_from_features_records_delta_statistics(fitted):
    m, U, Delta = fitted
    cfg = m.config
    expected = estimate_map(U, Delta, cfg.estimator, cfg.n_min, cfg.center, cfg.ridge, cfg.top_r,
                            weights=specificity_weights(U), normalize_delta=True)
    torch.testing.assert_close(m.A, expected)
    torch.testing.assert_close(m.delta_mean, Delta.mean(0))
    torch.testing.assert_close(m.delta_std, Delta.std(0, correction=0))
    assert m.meta["n_triples"] == 40 and "created" in m.meta and "package_version" in m.meta
    torch.testing.assert_close(m.scores(U[:3]), prompt_scores(m.A, U[:3]))


def test_cdmap_validates_shapes():
    with pytest.raises(ValueError, match=r"delta_std must have shape \(m_out,\) = \(7,\), got \(6,\)"):
        CDMap(torch.zeros(12, 7), torch.zeros(7), torch.zeros(6), torch.zeros(7))
    with pytest.raises(ValueError, match=r"meta\['d_sae_out'\]=9 but A has shape \(12, 7\)"):
        CDMap(torch.zeros(12, 7), torch.zeros(7), torch.zeros(7), torch.zeros(7), meta={"d_sae_out": 9})


def test_save_load_round_trip(fitted, tmp_path):
    m = fitted[0]
    out = m.save(tmp_path / "maps" / "run1")
    assert sorted(os.listdir(out)) == ["cdmap.json", "cdmap.safetensors"]
    assert os.listdir(tmp_path / "maps") == ["run1"]  # no temp folders left
    back = CDMap.load(out)
    for name in ("A", "delta_mean", "delta_std", "latent_mean"):
        assert torch.equal(getattr(back, name), getattr(m, name))
    assert back.config == m.config and back.meta == m.meta


def test_save_refuses_to_clobber_and_overwrites_on_request(fitted, tmp_path):
    m = fitted[0]
    m.save(tmp_path / "run")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        m.save(tmp_path / "run")
    m2 = CDMap(m.A * 2, m.delta_mean, m.delta_std, m.latent_mean, m.config, m.meta)
    m2.save(tmp_path / "run", overwrite=True)
    assert torch.equal(CDMap.load(tmp_path / "run").A, m.A * 2)
    assert os.listdir(tmp_path) == ["run"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds files other than a CDMap"):
        m.save(tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "todo.txt").exists()


def test_crash_during_save_leaves_nothing_behind(fitted, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        fitted[0].save(tmp_path / "run")
    assert os.listdir(tmp_path) == []


def test_crash_while_replacing_keeps_the_old_map(fitted, tmp_path, monkeypatch):
    m = fitted[0]
    m.save(tmp_path / "run")
    real_replace = os.replace

    def flaky_replace(src, dst):
        if ".tmp-" in str(src):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(cdmap.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="rename failed"):
        CDMap(m.A * 3, m.delta_mean, m.delta_std, m.latent_mean, m.config, m.meta).save(tmp_path / "run", overwrite=True)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["run"]
    assert torch.equal(CDMap.load(tmp_path / "run").A, m.A)


def test_load_errors_name_the_path_and_suggest_refitting(fitted, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no CDMap folder at .*nowhere"):
        CDMap.load(tmp_path / "nowhere")
    out = fitted[0].save(tmp_path / "run")
    data = (out / "cdmap.safetensors").read_bytes()
    (out / "cdmap.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CDMapFileError, match=r"cdmap\.safetensors is corrupt, truncated.*refit with `dspa-lite fit`"):
        CDMap.load(out)
    (out / "cdmap.json").write_text("{not json")
    with pytest.raises(CDMapFileError, match=r"cdmap\.json is corrupt"):
        CDMap.load(out)
    (out / "cdmap.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"cdmap\.safetensors is missing.*refit"):
        CDMap.load(out)


def test_check_compatible_names_each_mismatching_field(fitted):
    m = fitted[0]
    m.check_compatible(**{k: META[k] for k in cdmap.COMPAT_FIELDS})  # matching: no error
    given = {k: META[k] for k in cdmap.COMPAT_FIELDS} | {"model_id": "gemma-2-2b", "l_in": 10}
    with pytest.raises(ValueError) as err:
        m.check_compatible(**given)
    msg = str(err.value)
    assert "fitted on model 'toy-1m' layer 1->3 but is being applied to 'gemma-2-2b' layer 10->3" in msg
    assert "model_id: recorded 'toy-1m', given 'gemma-2-2b'" in msg and "l_in: recorded 1, given 10" in msg
    assert "refit with dspa-lite fit" in msg
    assert "sae_out_id" not in msg and "d_model" not in msg
    bare = CDMap(m.A, m.delta_mean, m.delta_std, m.latent_mean)  # no provenance: refuse
    with pytest.raises(ValueError, match="d_model: recorded '<not recorded>', given 64"):
        bare.check_compatible(**{k: META[k] for k in cdmap.COMPAT_FIELDS})


# ---- factored maps (wide SAEs) ----------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    dict(),
    dict(n_min=2, center=True, normalize_delta=True, weights=torch.linspace(0, 2, 12)),
    dict(estimator="ridge", ridge=0.5),  # 10 supported latents < 40 triples: the (m_kept, m_kept) solve
])
def test_factored_map_equals_the_dense_one(kw):
    U, Delta = random_features(real=True)
    low = estimate_map(U, Delta, factored=True, **kw)
    assert isinstance(low, cdmap.LowRankMap) and low.shape == (12, 7) and low.left.shape == (12, 40)
    torch.testing.assert_close(low.dense(), estimate_map(U, Delta, **kw), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prompt_scores(low, U[:5]), prompt_scores(estimate_map(U, Delta, **kw), U[:5]))


def test_ridge_with_more_latents_than_triples_uses_the_push_through_identity():
    U, Delta = random_features(n=6, m_in=30)  # ~20 supported latents, 6 triples: only ridge > 0 is defined
    U[:, 2:] += (torch.rand(6, 28) < 0.5).float()
    ridge = 0.3
    keep = (U > 0).sum(0) >= 1
    uk = U[:, keep].double()
    primal = torch.zeros(30, 7, dtype=torch.float64)
    primal[keep] = torch.linalg.solve(uk.T @ uk + ridge * torch.eye(uk.shape[1], dtype=torch.float64), uk.T @ Delta.double())
    torch.testing.assert_close(estimate_map(U, Delta, "ridge", ridge=ridge), primal.float(), atol=1e-5, rtol=1e-5)


def test_factored_map_refuses_top_r():
    U, Delta = random_features()
    with pytest.raises(ValueError, match="top_r=3 needs the dense"):
        estimate_map(U, Delta, top_r=3, factored=True)
    with pytest.raises(ValueError, match="left .* and right .* do not chain"):
        cdmap.LowRankMap(torch.zeros(4, 2), torch.zeros(3, 5))


def test_wide_maps_are_fitted_factored_and_round_trip(monkeypatch, tmp_path):
    U, Delta = random_features()
    dense = CDMap.from_features(U, Delta, torch.rand(7), CDMapConfig.default(), META)
    monkeypatch.setattr(cdmap, "DENSE_MAX_ENTRIES", 12 * 7 - 1)  # this 12 x 7 map now counts as wide
    wide = CDMap.from_features(U, Delta, dense.latent_mean, CDMapConfig.default(), META)
    assert isinstance(wide.A, cdmap.LowRankMap) and wide.A.left.shape == (12, 40)
    torch.testing.assert_close(wide.A.dense(), dense.A, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wide.scores(U[:3]), dense.scores(U[:3]), atol=1e-5, rtol=1e-5)
    assert torch.equal(wide.active_rows(), dense.active_rows()) and not wide.active_rows()[:2].any()
    loaded = CDMap.load(wide.save(tmp_path / "wide"))
    assert isinstance(loaded.A, cdmap.LowRankMap)
    assert torch.equal(loaded.A.left, wide.A.left) and torch.equal(loaded.A.right, wide.A.right)
    with pytest.raises(ValueError, match="top_r=2 needs the dense map"):
        CDMap.from_features(U, Delta, dense.latent_mean, dataclasses.replace(CDMapConfig.default(), top_r=2), META)
