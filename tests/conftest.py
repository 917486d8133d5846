"""Shared fixtures: the toy world is built once per session (cached in DSPA_CACHE) and reused."""

from __future__ import annotations

import pytest

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
