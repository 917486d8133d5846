"""The chapter 09 exercise check: a right answer passes, typical mistakes get a diagnosis."""

from __future__ import annotations

import pytest

from dspa_lite.evaluation.flops import ModelShape, forward_flops
from dspa_lite.notebook import exercises


def _layer_and_head(c, B, T):
    shape = ModelShape.from_config(c)
    head = 2 * B * T * c.hidden_size * c.vocab_size
    return (forward_flops(shape, B * T, T) - head) // c.num_hidden_layers, head


def right(c, B, T, l_out):
    per_layer, head = _layer_and_head(c, B, T)
    return (c.num_hidden_layers - l_out - 1) * per_layer + head


def test_right_answer_passes(capsys):
    exercises.check_saved_by_stopping(right)
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda c, B, T, l: right(c, B, T, l) - _layer_and_head(c, B, T)[1], "computes no logits"),
    (lambda c, B, T, l: right(c, B, T, l) + _layer_and_head(c, B, T)[0], "l_out \\+ 1 of them"),
    (lambda c, B, T, l: right(c, B, T, l) - _layer_and_head(c, B, T)[0], "One layer too few"),
    (lambda c, B, T, l: 0, "expected .* got 0"),
])
def test_mistakes_are_diagnosed(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check_saved_by_stopping(wrong)
