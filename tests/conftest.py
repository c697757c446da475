"""Shared test configuration: hypothesis profiles and backend parametrisation.

Profiles (HYPOTHESIS_PROFILE selects one for every file):
- "ci": derandomized, 25 examples a test, so a run is reproducible;
- "explore": random draws, 100 examples a test: new examples at every run;
- "dev": random draws, 300 examples a test (HYPOTHESIS_PROFILE=dev pytest).
Without HYPOTHESIS_PROFILE, the property files of EXPLORED (the math, the selections, the knapsack,
the masks) take "explore" and every other file "ci": so the README's plain `pytest` (what CI runs)
draws new examples on the properties at every run, within CI's time. A failure prints the blob
that replays it (`@reproduce_failure`); pin it as an `@example`.

A test's settings are fixed when its module is imported (hypothesis reads the active profile then),
so the profile is switched around the collection of each module, and checked after collection.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

COMMON = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=25, derandomize=True, **COMMON)
settings.register_profile("explore", max_examples=100, derandomize=False, **COMMON)
settings.register_profile("dev", max_examples=300, derandomize=False, **COMMON)

EXPLORED = {"test_nn_grad.py", "test_gmt_mask.py", "test_mgpp_primitives.py", "test_knapsack.py",
            "test_loradrop_select.py", "test_importance.py", "test_structure.py", "test_curvature.py",
            "test_gpu_host.py"}


def profile_for(path):
    """The profile of a test file: HYPOTHESIS_PROFILE when set, else "explore" for EXPLORED, "ci" otherwise."""
    chosen = os.environ.get("HYPOTHESIS_PROFILE")
    if chosen:
        return chosen
    return "explore" if path is not None and path.name in EXPLORED else "ci"


settings.load_profile(profile_for(None))


def pytest_collectstart(collector):
    if isinstance(collector, pytest.Module):
        settings.load_profile(profile_for(collector.path))


def pytest_collectreport(report):
    settings.load_profile(profile_for(None))


def pytest_collection_modifyitems(items):
    """Every hypothesis test runs with its file's profile (a module imported first by another test
    module would have taken that module's): derandomized exactly when the profile is."""
    for item in items:
        used = getattr(getattr(item, "obj", None), "_hypothesis_internal_use_settings", None)
        if used is not None:
            want = settings.get_profile(profile_for(item.path)).derandomize
            assert used.derandomize == want, f"{item.nodeid}: derandomize={used.derandomize}, its profile says {want}"


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
