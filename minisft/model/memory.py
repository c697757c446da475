"""Memory meter: bytes held by live arrays, by category, counted from the arrays themselves.

Arrays are deduplicated by the buffer they view, so q, k, v views of one qkv array count once and a
cache that keeps a reference to a weight does not double-count it (a reference costs nothing).
Categories used across minisft: frozen (base tensors without gradient), trainable (tensors the
optimizer updates), grads, optimizer (its state), activations (what the forward pass cached for
backward, measured at its peak: the end of the forward pass).
"""

import dataclasses

from ..core.errors import bad_type

CATEGORIES = ("frozen", "trainable", "grads", "optimizer", "activations")


def iter_arrays(obj):
    """Every array reachable from `obj` through dataclasses, dicts, lists and tuples."""
    if obj is None or isinstance(obj, (str, bytes, int, float, bool, frozenset)):
        return
    if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from iter_arrays(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from iter_arrays(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from iter_arrays(v)


def _buffer(a):
    """(key, bytes) of the allocation that `a` views."""
    if hasattr(a, "data") and hasattr(a.data, "mem"):  # cupy.ndarray: its memory pointer
        return ("cupy", a.data.mem.ptr), a.data.mem.size
    root = a
    while getattr(root, "base", None) is not None and hasattr(root.base, "nbytes"):
        root = root.base
    return ("numpy", id(root)), root.nbytes


def unique_nbytes(*objs, exclude=()):
    """Bytes of the distinct buffers reachable from `objs`, minus those reachable from `exclude`."""
    skip = {_buffer(a)[0] for a in iter_arrays(exclude)}
    seen = {}
    for obj in objs:
        for a in iter_arrays(obj):
            key, size = _buffer(a)
            if key not in skip:
                seen[key] = size
    return sum(seen.values())


def device_pool_bytes():
    """CuPy's default pool: bytes in use and held, or None on the CPU."""
    try:
        import cupy
    except ImportError:
        return None
    pool = cupy.get_default_memory_pool()
    return {"used": pool.used_bytes(), "held": pool.total_bytes()}


def memory_report(model, grads=None, optimizer=None):
    """Bytes by category, measured from the live arrays (see the module docstring).

    frozen: base tensors not being trained; trainable: trained base tensors and adapter parameters;
    grads: the gradient arrays of the last step; optimizer: its state; activations: what the last
    `loss_and_grads` forward pass cached for backward.
    """
    if not callable(getattr(model, "trainable_params", None)):
        raise bad_type("model", model, "a minisft.GPT")
    trainable = model.trainable_params()
    frozen = {k: v for k, v in model.params.items() if k not in model.trainable}
    report = {
        "frozen": unique_nbytes(frozen),
        "trainable": unique_nbytes(trainable),
        "grads": unique_nbytes(grads or {}),
        "optimizer": unique_nbytes(optimizer.state if optimizer is not None else {}),
        "activations": model.last_activation_bytes,
    }
    report["total"] = sum(report[c] for c in CATEGORIES)
    pool = device_pool_bytes() if model.backend == "cupy" else None
    if pool is not None:
        report["device_pool_used"] = pool["used"]
        report["device_pool_held"] = pool["held"]
    return report


class PeakMemoryHook:
    """CuPy memory hook tracking the bytes the default pool hands out (current and peak) while it
    is active: `with PeakMemoryHook() as h: ...; h.peak`. GPU only (imports cupy when entered)."""

    def __init__(self):
        self.current = self.peak = 0
        self._hook = None

    def __enter__(self):
        from cupy.cuda import memory_hook

        meter = self

        class _Hook(memory_hook.MemoryHook):
            name = "minisft-peak"

            def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
                meter.current += mem_size
                meter.peak = max(meter.peak, meter.current)

            def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
                meter.current -= mem_size

        self._hook = _Hook()
        self._hook.__enter__()
        return self

    def __exit__(self, *exc):
        self._hook.__exit__(*exc)
