"""Model and data fixtures shared by the test modules (session-scoped; loaded once)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def rt_data():
    """Rotten Tomatoes splits, capped for speed (the real data, deterministic by seed)."""
    from tightfit.data import load_dataset

    return load_dataset("rotten_tomatoes", seed=0, limit=512)


@pytest.fixture(scope="session")
def minilm():
    """The packaged all-MiniLM-L6-v2 as a 2-label classifier (untrained head)."""
    from tightfit.assets import load_model

    return load_model("minilm")
