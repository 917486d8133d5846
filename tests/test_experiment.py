"""The central claims on the toy world, asserted with margins (the full numbers are in benchmarks/RESULTS.md), and the
paired bootstrap over prompts and seeds."""

import math

import pytest
import torch

from dspa_lite.evaluation.experiment import build_methods, compare, paired_bootstrap


@pytest.fixture(scope="module")
def run(world, cdmap):
    methods = build_methods(world, ["none", "static", "caa", "dspa"], cdmap)
    return compare(world, methods, n_prompts=80, seeds=(0, 1), mcq=True, progress=False, keep_responses=True)


@pytest.fixture(scope="module")
def results(run):
    return run["methods"]


def test_dspa_beats_unsteered_and_static(results):
    none, static, dspa = results["none"], results["static"], results["dspa"]
    assert dspa["preferred_share"] - none["preferred_share"] >= 0.06, (dspa["preferred_share"], none["preferred_share"])
    assert dspa["preferred_share"] - static["preferred_share"] >= 0.03
    # conditional steering wins where one global direction is wrong: chat and risky prefer non-"steps" styles
    for cat in ("chat", "risky"):
        assert dspa["vs_static"]["per_category"][cat] >= 0.05, (cat, dspa["vs_static"]["per_category"])


def test_dspa_keeps_text_fluent_and_knowledge(results):
    none, dspa = results["none"], results["dspa"]
    assert dspa["fluency"] >= none["fluency"] - 0.03
    assert abs(dspa["mcq_accuracy"] - none["mcq_accuracy"]) <= 0.05
    assert dspa["mcq_changed_items"] <= 10


def test_first_segment_is_out_of_reach_of_gated_edits(results):
    none, dspa = results["none"], results["dspa"]
    gain_first = dspa["first_segment_share"] - none["first_segment_share"]
    gain_later = dspa["later_segments_share"] - none["later_segments_share"]
    assert gain_later > gain_first + 0.04, (gain_first, gain_later)


def test_dense_vector_and_conditional_edit_trade_off(results):
    """Chapter 6's trade-off, on every toy world: CAA leads where its one direction (steps) is preferred,
    DSPA where the category prefers another style, and DSPA changes no more quiz answers than CAA."""
    from dspa_lite.toyworld import language

    share = {m: {c: r["per_category"][c]["preferred_share"] for c in r["per_category"]} for m, r in results.items()}
    for cat, preferred in language.PREFERRED.items():
        if preferred == "steps":
            assert share["caa"][cat] > share["dspa"][cat], (cat, share)
        else:
            assert share["dspa"][cat] > share["static"][cat], (cat, share)
    assert share["dspa"]["risky"] > share["caa"]["risky"]
    assert results["dspa"]["mcq_changed_items"] <= results["caa"]["mcq_changed_items"]


def test_compare_reports_every_pair_and_every_response(run):
    res, n_seeds = run["methods"], len(run["seeds"])
    assert {k for k in res["dspa"] if k.startswith("vs_")} == {"vs_none", "vs_static", "vs_caa"}
    assert "vs_caa" not in res["caa"] and "vs_none" not in res["none"]
    assert "pairwise_vs_none" not in res["none"] and 0 <= res["dspa"]["pairwise_vs_none"]["lc_win_rate"] <= 1
    for name, per in run["per_response"].items():
        for metric in ("preferred_share", "first_segment", "later_segments", "words"):
            assert len(per[metric]) == n_seeds and all(len(row) == run["n_prompts"] for row in per[metric])
        share = torch.tensor(per["preferred_share"], dtype=torch.float64)
        assert math.isclose(float(share.mean()), res[name]["preferred_share"], abs_tol=1e-9)
        first = torch.tensor(per["first_segment"], dtype=torch.float64)
        assert math.isclose(float(first.mean()), res[name]["first_segment_share"], abs_tol=1e-9)
    d = res["dspa"]["vs_caa"]
    lo, hi = d["ci95"]
    assert lo < d["diff"] < hi
    assert math.isclose(d["diff"], res["dspa"]["preferred_share"] - res["caa"]["preferred_share"], abs_tol=1e-9)
    for c, ci in d["per_category_ci"].items():
        assert d["per_category"][c] == ci["diff"]
        mean_gap = res["dspa"]["per_category"][c]["preferred_share"] - res["caa"]["per_category"][c]["preferred_share"]
        assert math.isclose(ci["diff"], mean_gap, abs_tol=1e-9)


def _cells(seed_effect, prompt_effect, noise, n_seeds=4, n_prompts=60, shared=1.0):
    """Scores of two methods whose difference has a per-seed part, a per-prompt part and per-response noise."""
    g = torch.Generator().manual_seed(0)
    base = shared * torch.randn(1, n_prompts, generator=g, dtype=torch.float64)  # what both methods share
    q = seed_effect * torch.randn(n_seeds, 1, generator=g, dtype=torch.float64)
    p = prompt_effect * torch.randn(1, n_prompts, generator=g, dtype=torch.float64)
    e = noise * torch.randn(n_seeds, n_prompts, generator=g, dtype=torch.float64)
    return base + 0.1 + q + p + e, base.expand(n_seeds, n_prompts).clone()


def test_paired_bootstrap_resamples_seeds_as_well_as_prompts():
    a, b = _cells(seed_effect=0.2, prompt_effect=0.0, noise=0.01)
    both, prompts = paired_bootstrap(a, b), paired_bootstrap(a, b, over=("prompts",))
    assert math.isclose(both["diff"], float(a.mean() - b.mean()))
    assert 20 * prompts["se"] < both["se"], (prompts["se"], both["se"])  # the seed effect is seen
    assert both["ci95"][0] < both["diff"] < both["ci95"][1]


def test_paired_bootstrap_pairs_the_draws():
    a, b = _cells(seed_effect=0.0, prompt_effect=0.0, noise=0.05)
    paired, unpaired = paired_bootstrap(a, b), paired_bootstrap(a, b, paired=False)
    assert paired["se"] * 5 < unpaired["se"], (paired["se"], unpaired["se"])  # the shared prompt effect cancels


def test_paired_bootstrap_leaves_out_missing_scores_and_checks_its_arguments():
    a = torch.tensor([[0.5, float("nan"), 0.2], [0.1, 0.3, float("nan")]], dtype=torch.float64)
    b = torch.zeros(2, 3, dtype=torch.float64)
    r = paired_bootstrap(a, b)
    assert math.isclose(r["diff"], (0.5 + 0.2 + 0.1 + 0.3) / 4) and math.isfinite(r["se"])
    with pytest.raises(ValueError, match="n_seeds, n_prompts"):
        paired_bootstrap([0.1, 0.2], [0.1, 0.2])
    with pytest.raises(ValueError, match="resample 'prompts' and/or 'seeds'"):
        paired_bootstrap(a, b, over=("responses",))
    one_seed = paired_bootstrap(a[:1, [0, 2]], b[:1, [0, 2]])
    assert one_seed["se"] == pytest.approx(paired_bootstrap(a[:1, [0, 2]], b[:1, [0, 2]], over=("prompts",))["se"],
                                           rel=0.1)


def test_recorded_run_reads_the_repository_then_says_what_to_do(tmp_path):
    import json

    import pytest

    from dspa_lite.evaluation.experiment import recorded_run

    results = tmp_path / "repo" / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "toy_steering.json").write_text(json.dumps({"main": 1}))
    nested = tmp_path / "repo" / "book" / "sub"
    nested.mkdir(parents=True)
    assert recorded_run("toy_steering.json", "https://github.com/x/y", start=nested) == {"main": 1}
    with pytest.raises(FileNotFoundError, match=r"raw\.githubusercontent|127\.0\.0\.1.*python benchmarks/fit_cost\.py"):
        recorded_run("fit_cost_quick.json", "http://127.0.0.1:9", start=nested)


def test_style_colors_cover_every_style():
    from dspa_lite.toyworld import language
    assert set(language.STYLE_COLORS) == set(language.STYLES) | {"other"}
    assert len(set(language.STYLE_COLORS.values())) == len(language.STYLE_COLORS)


def test_build_methods_fits_a_map_only_for_methods_that_use_one(world, monkeypatch):
    from dspa_lite.evaluation import experiment

    def no_fit(*a, **k):
        raise AssertionError("fitted a map that no named method uses")

    monkeypatch.setattr(experiment, "fit_maps", no_fit)
    assert set(experiment.build_methods(world, ["none"])) == {"none"}
