"""Backend choice (minisft.core.backend): backend="auto" falls back to NumPy only when CuPy is not
installed or no GPU is visible; a CuPy whose CUDA is broken is a clear error, never a silent CPU
run. CuPy is faked through sys.modules, so these run on any machine."""

import sys
import types

import pytest

from minisft.core.backend import CUDA_ERROR_NO_DEVICE, gpu_available, resolve_backend
from minisft.core.config import GPTConfig
from minisft.core.errors import BackendError
from minisft.model.gpt import GPT


class FakeCUDARuntimeError(RuntimeError):
    """Shaped like cupy.cuda.runtime.CUDARuntimeError: a `status` and the CUDA error's name."""

    def __init__(self, status, name, text):
        super().__init__(f"{name}: {text}")
        self.status = status


def fake_cupy(device_count):
    """A module named cupy whose cuda.runtime.getDeviceCount() runs `device_count()`."""
    module = types.ModuleType("cupy")
    module.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=device_count))
    return module


def raises(error):
    def device_count():
        raise error

    return device_count


NO_DEVICE = FakeCUDARuntimeError(CUDA_ERROR_NO_DEVICE, "cudaErrorNoDevice", "no CUDA-capable device is detected")
OLD_DRIVER = FakeCUDARuntimeError(35, "cudaErrorInsufficientDriver",
                                  "CUDA driver version is insufficient for CUDA runtime version")


@pytest.fixture(autouse=True)
def no_backend_override(monkeypatch):
    monkeypatch.delenv("MINISFT_BACKEND", raising=False)


@pytest.mark.parametrize("cupy", [None, fake_cupy(lambda: 0), fake_cupy(raises(NO_DEVICE))],
                         ids=["not-installed", "zero-devices", "cudaErrorNoDevice"])
def test_auto_falls_back_to_numpy_without_cupy_or_without_a_gpu(monkeypatch, cupy):
    monkeypatch.setitem(sys.modules, "cupy", cupy)  # None: `import cupy` raises ImportError
    assert resolve_backend("auto") == "numpy"
    assert not gpu_available()
    assert GPT(GPTConfig(), backend="auto").backend == "numpy"
    with pytest.raises(ValueError, match="backend='cupy'.*sees a GPU"):
        resolve_backend("cupy")


def test_broken_cuda_is_an_error_not_a_cpu_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(raises(OLD_DRIVER)))
    for call in (lambda: resolve_backend("auto"), lambda: resolve_backend("cupy"), lambda: GPT(GPTConfig())):
        with pytest.raises(BackendError, match="cudaErrorInsufficientDriver.*backend='numpy'"):
            call()
    assert not gpu_available()  # a query, not a choice: it does not raise
    assert resolve_backend("numpy") == "numpy"  # the CPU on purpose still works
    monkeypatch.setenv("MINISFT_BACKEND", "numpy")
    assert resolve_backend("auto") == "numpy"


def test_a_visible_gpu_is_chosen(monkeypatch):
    cupy = fake_cupy(lambda: 1)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    assert resolve_backend("auto") == "cupy" and resolve_backend("cupy") == "cupy" and gpu_available()


