"""The chapter 11 checks accept a correct solution and diagnose the typical mistakes."""

import math
import random

import pytest

from dspa_lite.loading.data import subsets
from dspa_lite.notebook import exercises as ex


def nested(triples, sizes, seed):
    order = list(range(len(triples)))
    random.Random(seed).shuffle(order)
    out = {}
    for n in sizes:
        if n > len(triples):
            raise ValueError(f"{n} > {len(triples)}")
        out[n] = [triples[i] for i in order[:n]]
    return out


def shuffles_in_place(triples, sizes, seed):
    random.Random(seed).shuffle(triples)
    return {n: triples[:n] for n in sizes}


def redraws_per_size(triples, sizes, seed):
    rng = random.Random(seed)
    return {n: rng.sample(triples, n) for n in sizes}


def with_replacement(triples, sizes, seed):
    rng = random.Random(seed)
    draws = [rng.choice(triples) for _ in range(max(sizes))]
    return {n: draws[:n] for n in sizes}


def first_n(triples, sizes, seed):
    if max(sizes) > len(triples):
        raise ValueError("too many")
    return {n: list(triples[:n]) for n in sizes}


def global_rng(triples, sizes, seed):
    order = random.sample(range(len(triples)), len(triples))
    return {n: [triples[i] for i in order[:n]] for n in sizes}


def returns_fewer(triples, sizes, seed):
    order = list(range(len(triples)))
    random.Random(seed).shuffle(order)
    return {n: [triples[i] for i in order[:n]] for n in sizes}


def test_nested_subsets_accepts_correct_solutions():
    ex.check_nested_subsets(nested)
    ex.check_nested_subsets(lambda t, sizes, seed: subsets(t, sizes, seed))  # DataError is a ValueError


@pytest.mark.parametrize("wrong, msg", [
    (shuffles_in_place, "in place"),
    (redraws_per_size, "not contained in"),
    (with_replacement, "without replacement"),
    (first_n, "source's order"),
    (global_rng, "same seed gave different subsets"),
    (lambda t, sizes, seed: nested(t, sizes, 0), "seeds 0 and 1 gave the same subset"),
    (returns_fewer, "must raise ValueError"),
    (lambda t, sizes, seed: {n: v for n, v in nested(t, sizes, seed).items() if n != sizes[-1]}, "one entry per size"),
])
def test_nested_subsets_diagnoses(wrong, msg):
    with pytest.raises(AssertionError, match=msg):
        ex.check_nested_subsets(wrong)


def test_training_steps_accepts_correct_solutions():
    ex.check_training_steps(lambda n, e, b, m: max(m, math.ceil(e * n / b)))
    ex.check_training_steps(lambda n, e, b, m: float(max(m, math.ceil(e * n / b))))  # a whole float is fine


@pytest.mark.parametrize("wrong, msg", [
    (lambda n, e, b, m: max(m, math.floor(e * n / b)), "rounded down"),
    (lambda n, e, b, m: math.ceil(e * n / b), "take the max"),
    (lambda n, e, b, m: max(m, math.ceil(n / b)), "multiply n by it"),
    (lambda n, e, b, m: max(m, math.ceil(e * n)), "divide by batch_size"),
    (lambda n, e, b, m: max(m, e * n / b), "whole number"),
])
def test_training_steps_diagnoses(wrong, msg):
    with pytest.raises(AssertionError, match=msg):
        ex.check_training_steps(wrong)
