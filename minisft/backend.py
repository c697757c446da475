"""Array backends (NumPy on the CPU, CuPy on the GPU), dtype policy, seeded randomness, transfers.

One body of code serves both backends: every function asks `array_module(x)` for the module that
owns its arrays and writes `xp.*` (never `import cupy as np`). All randomness flows from one seeded
`numpy.random.Generator` on the host, so the same seed gives the same initial weights on both
backends (values are drawn on the host, then moved).
"""

import os

import numpy as np

from .errors import bad_value

BACKENDS = ("numpy", "cupy", "auto")
DTYPES = ("float32", "float64")


def _cupy():
    """The cupy module, or None when it cannot be imported or sees no GPU."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # ImportError, or a CUDA runtime error on a machine without a driver
        return None


def gpu_available():
    """True when CuPy imports and at least one CUDA device is visible."""
    return _cupy() is not None


def resolve_backend(name="auto"):
    """Map a backend name to "numpy" or "cupy".

    "auto" (the default) picks CuPy when it imports and a GPU is visible, else NumPy; the
    environment variable MINISFT_BACKEND overrides "auto" (not an explicit choice).
    """
    if name == "auto":
        name = os.environ.get("MINISFT_BACKEND", "auto")
        if name not in BACKENDS:
            raise bad_value("MINISFT_BACKEND", name, f"one of {BACKENDS}")
        if name == "auto":
            return "cupy" if gpu_available() else "numpy"
    if name not in BACKENDS:
        raise bad_value("backend", name, f"one of {BACKENDS}")
    if name == "cupy" and not gpu_available():
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
