"""Shared test configuration: hypothesis profiles and backend parametrisation.

Profiles: "ci" (default; derandomized, fixed example budget, so CI is reproducible) and "dev"
(more examples, random seeds) — select with HYPOTHESIS_PROFILE=dev.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

try:  # the oracles run on small tensors: one intra-op thread avoids oversubscribing a 2-core machine
    import torch

    torch.set_num_threads(1)
except ImportError:
    pass


def _cupy_or_none():
    from minisft.core.backend import gpu_available

    if not gpu_available():
        return None
    import cupy

    return cupy


BACKEND_PARAMS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
]


@pytest.fixture(params=BACKEND_PARAMS)
def xp(request):
    """The array module of each backend; the CuPy case skips cleanly without a GPU."""
    if request.param == "numpy":
        return np
    cp = _cupy_or_none()
    if cp is None:
        pytest.skip("CuPy with a visible GPU is not available")
    return cp


@pytest.fixture(scope="session")
def fresh_vectors(tmp_path_factory):
    """A golden-vector suite written now by `minisft vectors --out DIR` (not the kept copy): the
    oracle tests check it, so a change of a writer shows even when the kept copy was regenerated."""
    from minisft.app.cli import main

    out = tmp_path_factory.mktemp("vectors")
    assert main(["vectors", "--out", str(out)]) == 0
    return out
