"""Chapter 08: the length-controlled win rate (AlpacaEval 2's regression on the length difference).

Use it as ``from dspa_lite.notebook.exercises import lengths`` then ``lengths.check_length_controlled(fn)``.
"""

from __future__ import annotations

import math
import random

from .core import passed

__all__ = ["check_length_controlled", "synthetic_outcomes"]


def synthetic_outcomes(n: int, b0: float, b1: float, mean_d: float, seed: int = 0) -> tuple[list[float], list[float]]:
    """Pairwise outcomes (1 win, 1/2 tie, 0 loss) drawn from ``sigmoid(b0 + b1 * tanh(d / sd(d)))``, with length
    differences ``d ~ N(mean_d, 30)`` words: the win rate at zero length difference is ``sigmoid(b0)``."""
    rng = random.Random(seed)
    d = [rng.gauss(mean_d, 30) for _ in range(n)]
    mu = sum(d) / n
    sd = math.sqrt(sum((v - mu) ** 2 for v in d) / n)
    p = [1 / (1 + math.exp(-(b0 + b1 * math.tanh(v / sd)))) for v in d]
    return [0.5 if rng.random() < 0.2 else float(rng.random() < pi) for pi in p], d


def _fit(y: list[float], x: list[float]) -> tuple[float, float]:
    """Logistic regression of ``y`` on ``[1, x]`` by Newton's method (for the checks' diagnoses)."""
    b0 = b1 = 0.0
    for _ in range(50):
        p = [1 / (1 + math.exp(-(b0 + b1 * xi))) for xi in x]
        w = [pi * (1 - pi) for pi in p]
        g0, g1 = sum(yi - pi for yi, pi in zip(y, p)), sum((yi - pi) * xi for yi, pi, xi in zip(y, p, x))
        h00, h01, h11 = sum(w), sum(wi * xi for wi, xi in zip(w, x)), sum(wi * xi * xi for wi, xi in zip(w, x))
        det = h00 * h11 - h01 * h01
        b0, b1 = b0 + (h11 * g0 - h01 * g1) / det, b1 + (h00 * g1 - h01 * g0) / det
    return b0, b1


def check_length_controlled(fn) -> None:
    """``fn(outcomes, length_diff) -> float``: the win rate at zero length difference, from a logistic regression of
    the outcomes on ``tanh(d / sd(d))``; it must agree with :func:`dspa_lite.evaluation.protocols.length_controlled`
    to within 0.01 on synthetic outcomes whose length effect is known."""
    from ...evaluation.protocols import length_controlled

    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    for b0, b1, mean_d, seed in ((0.0, 2.0, 25.0, 0), (0.8, 1.5, -25.0, 1), (0.4, 0.0, 10.0, 2)):
        y, d = synthetic_outcomes(1500, b0, b1, mean_d, seed)
        want = length_controlled(y, d)["lc_win_rate"]
        got = fn(list(y), list(d))
        if not isinstance(got, int | float) or isinstance(got, bool) or not math.isfinite(got):
            raise AssertionError(f"return the length-controlled win rate as a float, got {got!r}")
        if abs(got - want) <= 0.01:
            continue
        sd = math.sqrt(sum((v - sum(d) / len(d)) ** 2 for v in d) / len(d))
        x = [math.tanh(v / sd) for v in d]
        c0, c1 = _fit(y, x)
        mistakes = [
            (sum(y) / len(y), "that is the raw win rate: fit the regression and read it at zero length difference"),
            (sig(c0 + c1 * sum(x) / len(x)), "you predicted at the average length difference; length control asks "
                                             "what the win rate would be for equally long answers: sigmoid(b0)"),
            (sig(_fit(y, [v / sd for v in d])[0]), "use tanh(d / sd(d)) as the regressor, as AlpacaEval 2 does "
                                                   "(a linear d lets a few very long answers dominate the fit)"),
            (1 - want, "the outcome is 1 when the model wins: you returned the reference's win rate"),
            (100 * want, "return a fraction in [0, 1], not a percentage"),
        ]
        hint = next((msg for value, msg in mistakes if abs(got - value) < 0.01), "")
        raise AssertionError(f"outcomes drawn with b0={b0}, b1={b1}, mean length difference {mean_d:+g} words: "
                             f"expected {want:.3f} (truth sigmoid(b0) = {sig(b0):.3f}), got {got:.3f}. {hint}".rstrip())
    passed("length_controlled")
