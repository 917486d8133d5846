"""The central claim on the toy world, asserted with margins (the full numbers are in benchmarks/RESULTS.md)."""

import pytest

from dspa_lite.evaluation.experiment import build_methods, compare


@pytest.fixture(scope="module")
def results(world, cdmap):
    methods = build_methods(world, ["none", "static", "dspa"], cdmap)
    return compare(world, methods, n_prompts=80, seeds=(0, 1), mcq=True, progress=False)["methods"]


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
