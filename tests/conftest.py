import os
import shutil
import tempfile

import pytest
import torch

# The test suite (nbval kernels included: they inherit this environment) runs offline and in fast mode:
# SAE_MINIMAL_FAST=1 keeps the language-model notebooks' training short. Run `SAE_MINIMAL_FAST=0 python -m pytest`
# to test the full-length notebooks instead.
os.environ.setdefault("SAE_MINIMAL_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("SAE_MINIMAL_FAST", "1")
# Activations and SAEs the notebooks cache (sae_minimal.lm.lab) go to a folder of this test session, shared by
# notebooks 04-06 so the activations are cached once, and removed at the end.
_SESSION_CACHE = None
if "SAE_MINIMAL_CACHE" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="sae_minimal_test_cache_")
    os.environ["SAE_MINIMAL_CACHE"] = _SESSION_CACHE


# nbval waits only 5 s for a cell's outputs once the cell has finished. On a loaded 2-core machine (a training run
# beside the tests, two torch threads per kernel) the outputs can lag longer, and a cell that ran fine fails with
# "Timeout of 5 seconds exceeded waiting for output". A minute is patient enough and still catches a hung kernel
# (the cell's own limit, --nbval-cell-timeout, is separate).
try:
    from nbval.plugin import IPyNbCell as _NbCell
except ImportError:      # the unit tests alone do not need nbval
    _NbCell = None
if _NbCell is not None and not getattr(_NbCell, "_patient", False):
    _nbval_init = _NbCell.__init__

    def _patient_init(self, *args, **kwargs):
        _nbval_init(self, *args, **kwargs)
        self.output_timeout = 60

    _NbCell.__init__, _NbCell._patient = _patient_init, True


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def easy_data():
    """Ground truth in mild superposition: 128 features in 64 dimensions, ~3.9 active per input."""
    from sae_minimal.synthetic import make_synthetic
    return make_synthetic(d_in=64, n_features=128, n_samples=60_000, p=0.03, seed=0)
