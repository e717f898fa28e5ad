import os

import pytest
import torch

os.environ.setdefault("SAE_MINIMAL_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def easy_data():
    """Ground truth in mild superposition: 128 features in 64 dims, ~3.9 active per input."""
    from sae_minimal.data import make_synthetic
    return make_synthetic(d_in=64, n_features=128, n_samples=60_000, p=0.03, seed=0)
