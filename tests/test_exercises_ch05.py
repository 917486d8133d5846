"""The chapter 05 checks accept correct solutions and diagnose the typical mistakes."""

import math

import pytest
import torch

from dspa_lite.method.cdmap import estimate_map, specificity_weights
from dspa_lite.notebook.exercises import attempt, ch05


def _cm(U, D, n_min, *, strict=False, count=False, nan=False):
    """A conditional mean, right by default, with the switches a learner gets wrong."""
    U, D = U.double(), D.double()
    mass = (U > 0).double().sum(0) if count else U.sum(0)
    A = (U.T @ D) / (mass if nan else mass.clamp_min(1e-12))[:, None]
    support = (U > 0).sum(0)
    A[(support <= n_min) if strict else (support < n_min)] = 0
    if nan:
        A[support == 0] = float("nan")
    return A


def _options(U, D, n_min, *, correction=0, normalise=True, centre=True, weights="idf", eps=1e-8, centre_A=False):
    """The default map's options, right by default, with the switches a learner gets wrong."""
    d = D.double()
    if normalise == "rows":
        d = d / d.std(1, correction=correction, keepdim=True)
    elif normalise:
        std = d.std(0, correction=correction)
        d = torch.where(std > eps, d / std.clamp_min(eps), torch.zeros_like(d)) if eps else d / std
    if centre:
        d = d - d.mean(0)
    A = _cm(U, d, n_min)
    if centre_A:
        A = A - A.mean(0)
    n, df = U.shape[0], (U > 0).sum(0).double()
    if weights == "idf":
        A = A * (math.log1p(n) - torch.log1p(df))[:, None]
    elif weights == "no+1":
        A = A * (math.log(n) - torch.log(df.clamp_min(1)))[:, None]
    return A


def test_conditional_mean_accepts():
    ch05.check_conditional_mean(_cm)
    ch05.check_conditional_mean(lambda U, D, n_min: estimate_map(U, D, n_min=n_min))
    ch05.check_conditional_mean(lambda U, D, n_min: _cm(U, D, n_min).float())  # float32 is fine


@pytest.mark.parametrize("wrong, msg", [
    (lambda U, D, n_min: U.T @ D, "sum over the triples"),
    (lambda U, D, n_min: U.T @ D / U.shape[0], "number of triples n"),
    (lambda U, D, n_min: _cm(U, D - D.mean(0), n_min), "you centred Delta"),
    (lambda U, D, n_min: _cm(U, D, n_min, strict=True), "not > n_min"),
    (lambda U, D, n_min: _cm(U, D, n_min, nan=True), "NaN or inf"),
    (lambda U, D, n_min: _cm(U, D, n_min, count=True), "divide by sum_i U_ij, not by the number"),
    (lambda U, D, n_min: _cm((U > 0).float(), D, n_min), "you binarised U"),
    (lambda U, D, n_min: _cm(U, D, n_min).T, "rows are prompt latents"),
    (lambda U, D, n_min: _cm(U, D, 1), "must be zero"),
    (lambda U, D, n_min: _cm(U, D, n_min) * 1.1, "differs from the conditional mean"),
])
def test_conditional_mean_diagnoses(wrong, msg):
    with pytest.raises(AssertionError, match=msg):
        ch05.check_conditional_mean(wrong)


def test_options_map_accepts():
    ch05.check_options_map(_options)
    ch05.check_options_map(lambda U, D, n_min: estimate_map(
        U, D, n_min=n_min, center=True, weights=specificity_weights(U), normalize_delta=True))
    # centring before normalising gives the same map (a shift leaves the std unchanged)
    ch05.check_options_map(lambda U, D, n_min: _options(U, D - D.mean(0), n_min))


@pytest.mark.parametrize("wrong, msg", [
    (lambda U, D, n_min: _options(U, D, n_min, eps=0), "column 3 of your map is NaN"),
    (lambda U, D, n_min: _options(U, D, n_min, correction=1), "sample std"),
    (lambda U, D, n_min: _options(U, D, n_min, normalise=False), "did not normalise"),
    (lambda U, D, n_min: _options(U, D, n_min, normalise="rows"), "normalised each triple"),
    (lambda U, D, n_min: _options(U, D, n_min, centre=False, centre_A=True), "centred the map A"),
    (lambda U, D, n_min: _options(U, D, n_min, centre=False), "did not centre"),
    (lambda U, D, n_min: _options(U, D, n_min, weights="none"), "left out the specificity weights"),
    (lambda U, D, n_min: _options(U, D, n_min, weights="no+1"), r"log\(n / df_j\)"),
    (lambda U, D, n_min: _options(U, D, 1), "support 1 < n_min"),
    (lambda U, D, n_min: _options(U, D, n_min) + 0.1 * (U.sum(0) == U.shape[0])[:, None], "every triple"),
    (lambda U, D, n_min: _options(U, D, n_min) * 0.5, "differs from the default options"),
])
def test_options_map_diagnoses(wrong, msg):
    with pytest.raises(AssertionError, match=msg):
        ch05.check_options_map(wrong)


def test_attempt_reports_a_stub(capsys):
    def stub(U, D, n_min):
        raise NotImplementedError

    attempt(ch05.check_conditional_mean, stub)
    attempt(ch05.check_options_map, stub)
    assert capsys.readouterr().out.count("not attempted yet") == 2
