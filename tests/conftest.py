"""Shared fixtures: the toy world (loaded once per session), a seed before every test, one torch thread."""

from __future__ import annotations

import pytest
import torch

from dspa_lite import toyworld
from dspa_lite.loading.config import seed_everything


@pytest.fixture(autouse=True)
def _seeded():
    seed_everything(0)


@pytest.fixture(scope="session")
def world():
    return toyworld.load(progress=False)


@pytest.fixture(scope="session")
def cdmap(world):
    from dspa_lite.evaluation.experiment import fit_maps

    return fit_maps(world)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny matmuls are slower with threads, and on a busy 2-core machine by 10x; restore the count after."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
