"""The chapter 4 and 5 checks accept a correct solution and diagnose the typical mistakes."""

import pytest
import torch

from dspa_lite.method.cdmap import estimate_map
from dspa_lite.notebook import exercises as ex


def test_delta():
    ex.check_delta(lambda zp, zn: zp.mean(0) - zn.mean(0))
    for wrong, msg in [
        (lambda zp, zn: zn.mean(0) - zp.mean(0), "chosen minus rejected"),
        (lambda zp, zn: zp.sum(0) - zn.sum(0), "summed over tokens"),
        (lambda zp, zn: zp[-1] - zn[-1], "only the last token"),
        (lambda zp, zn: zp.amax(0) - zn.amax(0), "max-pooled"),
        (lambda zp, zn: (zp > 0).float().mean(0) - (zn > 0).float().mean(0), "whether latents fire"),
        (lambda zp, zn: zp - zn.mean(0), "shape \\(d_sae,\\)"),
    ]:
        with pytest.raises(AssertionError, match=msg):
            ex.check_delta(wrong)


def test_prompt_features():
    ex.check_prompt_features(lambda z, c: (z[c] > 0).any(0).float())
    ex.check_prompt_features(lambda z, c: (z[c] > 0).any(0))  # a bool tensor is fine
    for wrong, msg in [
        (lambda z, c: (z > 0).any(0).float(), "content positions only"),
        (lambda z, c: z[c].mean(0), "mean-pooled"),
        (lambda z, c: z[c].amax(0), "max-pooled"),
        (lambda z, c: (z[c] > 0).float().mean(0), "averaged the indicators"),
        (lambda z, c: (z[c] > 0).float(), "shape \\(d_sae,\\)"),
    ]:
        with pytest.raises(AssertionError, match=msg):
            ex.check_prompt_features(wrong)


def _ridge(U, D, lam):
    return torch.linalg.solve(U.T @ U + lam * torch.eye(U.shape[1]), U.T @ D)


def test_ridge():
    ex.check_ridge(_ridge)
    ex.check_ridge(lambda U, D, lam: estimate_map(U, D, "ridge", ridge=lam))
    for wrong, msg in [
        (lambda U, D, lam: estimate_map(U, D), "conditional mean"),
        (lambda U, D, lam: _ridge(U, D, 0.0), "add lam \\* I"),
        (lambda U, D, lam: torch.linalg.solve(U.T @ U + lam, U.T @ D), "diagonal only"),
        (lambda U, D, lam: _ridge(U, D, lam).T, "rows are prompt latents"),
        (lambda U, D, lam: U.T @ D, "U\\^T Delta"),
        (lambda U, D, lam: _ridge(U, D, lam + 0.5), "differs from"),
    ]:
        with pytest.raises(AssertionError, match=msg):
            ex.check_ridge(wrong)
