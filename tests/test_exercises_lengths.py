"""The chapter 8 length-control check accepts a correct solution (the notebook's, in torch) and diagnoses the
typical mistakes."""

import math

import pytest
import torch

from dspa_lite.notebook.exercises import lengths as ex


def solution(outcomes, length_diff, *, feature="tanh", at="zero", flip=False, percent=False):
    y = torch.tensor(outcomes, dtype=torch.float64)
    y = 1 - y if flip else y
    d = torch.tensor(length_diff, dtype=torch.float64)
    sd = d.std(correction=0)
    x = torch.tanh(d / sd) if feature == "tanh" else d / sd
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([b], max_iter=100, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(b[0] + b[1] * x, y)
        value.backward()
        return value

    opt.step(loss)
    t = b[0] if at == "zero" else b[0] + b[1] * x.mean()
    out = float(torch.sigmoid(t.detach()))
    return 100 * out if percent else out


def test_a_correct_solution_passes(capsys):
    ex.check_length_controlled(solution)
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize("fn, hint", [
    (lambda y, d: sum(y) / len(y), "raw win rate"),
    (lambda y, d: solution(y, d, at="mean"), "average length difference"),
    (lambda y, d: solution(y, d, feature="linear"), "tanh"),
    (lambda y, d: solution(y, d, flip=True), "reference's win rate"),
    (lambda y, d: solution(y, d, percent=True), "percentage"),
    (lambda y, d: math.nan, "as a float"),
])
def test_mistakes_are_diagnosed(fn, hint):
    with pytest.raises(AssertionError, match=hint):
        ex.check_length_controlled(fn)
