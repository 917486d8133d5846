"""The length-controlled win rate (evaluation/protocols.py: length_controlled) on synthetic outcomes whose
length effect is known: it recovers the effect, and raw and length-controlled win rates differ as they should."""

from __future__ import annotations

import math
import random

import pytest

from dspa_lite.evaluation.protocols import Comparison, length_controlled, length_diffs, win_rate


def synthetic(n: int, b0: float, b1: float, mean_d: float, seed: int = 0, ties: bool = False):
    """Outcomes drawn from the model the estimator fits, with lengths ``d ~ N(mean_d, 30)``."""
    rng = random.Random(seed)
    d = [rng.gauss(mean_d, 30) for _ in range(n)]
    mu = sum(d) / n
    sd = math.sqrt(sum((v - mu) ** 2 for v in d) / n)
    p = [1 / (1 + math.exp(-(b0 + b1 * math.tanh(v / sd)))) for v in d]
    if ties:  # half a win where a coin says so: the expectation stays p
        y = [0.5 if rng.random() < 0.3 else float(rng.random() < pi) for pi in p]
    else:
        y = [float(rng.random() < pi) for pi in p]
    return y, d


def test_recovers_a_known_length_effect():
    y, d = synthetic(6000, b0=0.0, b1=2.0, mean_d=25)
    r = length_controlled(y, d)
    assert abs(r["length_coef"] - 2.0) < 0.25
    assert abs(r["lc_win_rate"] - 0.5) < 0.03  # the truth at zero length difference
    assert r["win_rate"] > 0.6  # the longer model wins the raw comparison on length alone
    assert r["lc_win_rate"] - 2.5 * r["lc_standard_error"] < 0.5 < r["lc_win_rate"] + 2.5 * r["lc_standard_error"]


def test_shorter_model_is_credited_back():
    y, d = synthetic(6000, b0=0.8, b1=1.5, mean_d=-25, seed=1)
    r = length_controlled(y, d)
    assert r["win_rate"] < r["lc_win_rate"]
    assert abs(r["lc_win_rate"] - 1 / (1 + math.exp(-0.8))) < 0.03


def test_without_a_length_effect_raw_and_controlled_agree():
    y, d = synthetic(6000, b0=0.4, b1=0.0, mean_d=25, seed=2, ties=True)
    r = length_controlled(y, d)
    assert abs(r["length_coef"]) < 0.2
    assert abs(r["lc_win_rate"] - r["win_rate"]) < 0.02


def test_equal_lengths_and_unanimous_outcomes_stay_finite():
    r = length_controlled([1.0, 0.0, 0.5, 1.0], [0, 0, 0, 0])
    assert r["length_coef"] == pytest.approx(0.0) and r["lc_win_rate"] == pytest.approx(r["win_rate"], abs=1e-3)
    r = length_controlled([1.0] * 20, list(range(20)))
    assert 0.99 < r["lc_win_rate"] <= 1.0 and math.isfinite(r["length_coef"])
    assert math.isnan(length_controlled([], [])["lc_win_rate"])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="length differences"):
        length_controlled([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        length_controlled([2.0], [1.0])
    with pytest.raises(ValueError, match="references"):
        length_diffs(["a"], [])


def test_win_rate_adds_the_controlled_rate_over_decided_comparisons():
    y, d = synthetic(400, b0=0.0, b1=2.0, mean_d=20, seed=3)
    winner = {1.0: "model", 0.0: "reference"}
    comps = [Comparison(i, "x", "A", "A", winner[v], "", False) for i, v in enumerate(y)]
    comps.append(Comparison(len(y), "x", "A", None, None, "", False))  # unreadable: left out of both rates
    r = win_rate(comps, length_diff=d + [1e6])
    assert r["lc_win_rate"] == pytest.approx(length_controlled(y, d)["lc_win_rate"])
    assert r["win_rate"] == pytest.approx(sum(y) / len(y))
    assert "lc_win_rate" not in win_rate(comps)
    with pytest.raises(ValueError, match="length differences"):
        win_rate(comps, length_diff=d)
