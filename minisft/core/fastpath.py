"""The one switch between minisft's reference math and its fast path.

llm.c keeps `train_gpt2.c`, the code a reader follows, apart from `train_gpt2.cu`, the fast one, and
checks one against the other. minisft does the same within one package: the layers, adapters,
optimizer, selection and buckets are plain `xp` code, and a function that a faster implementation
may stand in for is marked where it is defined:

    @has_fast_path
    def layernorm_forward(x, weight, bias, eps=EPS, need=ALL):
        ...the reference body...

`minisft.gpu` registers its fused CuPy kernels against these functions (`register`), each with a
predicate saying which calls it takes (CuPy arrays of a dtype and layout it handles). A call runs
the fast implementation when one is registered, fast paths are on and the predicate accepts the
arguments; otherwise the reference body. `f.reference` is always the reference body: the GPU tests
call both on the same arrays and compare them (tests/test_kernels.py), and the CPU tests check the
dispatch itself (tests/test_fastpath.py).

Fast paths are on unless MINISFT_FUSED=0 is in the environment when minisft is imported; `disabled()`
turns them off inside a block (for comparisons and benchmarks).
"""

import contextlib
import functools
import os

ENABLED = os.environ.get("MINISFT_FUSED", "1") != "0"  # read once, at import (module docstring)
POINTS = []  # every function marked @has_fast_path, in definition order


def has_fast_path(reference):
    """Mark `reference` as a function a registered fast implementation may stand in for."""

    @functools.wraps(reference)
    def dispatch(*args, **kwargs):
        fast = dispatch.fast
        if fast is not None and ENABLED and fast[1](*args, **kwargs):
            return fast[0](*args, **kwargs)
        return reference(*args, **kwargs)

    dispatch.reference = reference
    dispatch.fast = None  # (implementation, applies) once registered
    POINTS.append(dispatch)
    return dispatch


def register(point, implementation, applies):
    """Let `implementation` (same signature and results as the reference) stand in for `point`, a
    function marked @has_fast_path, on the calls where `applies(*args, **kwargs)` is true."""
    if getattr(point, "reference", None) is None or point not in POINTS:
        raise TypeError(f"{point!r} is not marked @has_fast_path: nothing would call its fast path")
    point.fast = (implementation, applies)


def on_device(x):
    """Whether `x` is a CuPy array (every fast path's first condition)."""
    return type(x).__module__.startswith("cupy")


@contextlib.contextmanager
def disabled():
    """Run the reference bodies inside the block, whatever is registered."""
    global ENABLED
    before, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = before
