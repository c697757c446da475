"""Array backends (NumPy on the CPU, CuPy on the GPU), dtype policy, seeded randomness, transfers.

One body of code serves both backends: every function asks `array_module(x)` for the module that
owns its arrays and writes `xp.*` (never `import cupy as np`). All randomness flows from one seeded
`numpy.random.Generator` on the host, so the same seed gives the same initial weights on both
backends (values are drawn on the host, then moved).

backend="auto" runs on NumPy only when CuPy is not installed (it does not import) or no GPU is
visible (CUDA reports zero devices, or cudaErrorNoDevice). When CuPy imports but CUDA fails for any
other reason (a driver older than the runtime, a broken install), "auto" and "cupy" raise a
BackendError that names the CUDA error, instead of silently running on the CPU; pass
backend="numpy" (or set MINISFT_BACKEND=numpy) to run on the CPU on purpose.
"""

import os

import numpy as np

from .errors import BackendError, bad_value

BACKENDS = ("numpy", "cupy", "auto")
DTYPES = ("float32", "float64")
CUDA_ERROR_NO_DEVICE = 100  # cudaErrorNoDevice: the runtime sees no CUDA-capable device


def _probe_cupy():
    """(cupy, None) when CuPy imports and sees a GPU; (None, None) when CuPy is not installed or no
    GPU is visible; (None, error) when CuPy imports but CUDA fails for another reason."""
    try:
        import cupy
    except ImportError:
        return None, None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # cupy.cuda.runtime.CUDARuntimeError and kin
        no_device = getattr(e, "status", None) == CUDA_ERROR_NO_DEVICE or "cudaErrorNoDevice" in str(e)
        return None, (None if no_device else e)
    return (cupy if count > 0 else None), None


def _cupy():
    """The cupy module when CuPy imports and sees a GPU, else None; a BackendError when CuPy imports
    but CUDA is broken."""
    cupy, error = _probe_cupy()
    if error is not None:
        raise BackendError(f"CuPy is installed but CUDA failed: {type(error).__name__}: {error}. Fix the CUDA "
                           "install, or run on the CPU on purpose with backend='numpy' (MINISFT_BACKEND=numpy)")
    return cupy


def gpu_available():
    """True when CuPy imports and at least one CUDA device is visible (False when CUDA is broken:
    nothing raises here; the backend choice does)."""
    return _probe_cupy()[0] is not None


def resolve_backend(name="auto"):
    """Map a backend name to "numpy" or "cupy".

    "auto" (the default) picks CuPy when it imports and a GPU is visible, NumPy when CuPy is not
    installed or no GPU is visible, and raises BackendError when CuPy imports but CUDA is broken
    (module docstring); the environment variable MINISFT_BACKEND overrides "auto" (not an explicit
    choice)."""
    if name == "auto":
        name = os.environ.get("MINISFT_BACKEND", "auto")
        if name not in BACKENDS:
            raise bad_value("MINISFT_BACKEND", name, f"one of {BACKENDS}")
        if name == "auto":
            return "cupy" if _cupy() is not None else "numpy"
    if name not in BACKENDS:
        raise bad_value("backend", name, f"one of {BACKENDS}")
    if name == "cupy" and _cupy() is None:
        raise bad_value("backend", name, "a machine where CuPy imports and sees a GPU")
    return name


def xp_for(backend):
    """The array module (numpy or cupy) of a resolved backend name."""
    return np if resolve_backend(backend) == "numpy" else _cupy()


def array_module(*arrays):
    """The module (numpy or cupy) that owns `arrays`; NumPy for host arrays and Python scalars."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy

            return cupy
    return np


def resolve_dtype(dtype):
    """Map "float32"/"float64" (or the numpy dtypes) to a numpy dtype; anything else is an error."""
    name = np.dtype(dtype).name if isinstance(dtype, (type, np.dtype)) else dtype
    if name not in DTYPES:
        raise bad_value("dtype", dtype, f"one of {DTYPES}")
    return np.dtype(name)


def to_numpy(a):
    """A host NumPy copy-free view of `a` when it is already on the host, else a device-to-host copy."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def to_device(a, xp):
    """`a` moved to the backend of module `xp` (a no-op when it is already there)."""
    return xp.asarray(a)


def rng(seed):
    """The one seeded generator every random draw in a run comes from."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise bad_value("seed", seed, "a non-negative integer")
    return np.random.default_rng(int(seed))


def synchronize(xp):
    """Wait for the device's queued work (CuPy); nothing on NumPy."""
    if xp.__name__ == "cupy":
        xp.cuda.get_current_stream().synchronize()
