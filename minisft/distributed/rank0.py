"""Rank 0 reads, every rank gets what it read: files touched by one process only.

In a data-parallel job only rank 0 opens the run's files (checkpoints, results, caches), so the
ranks need no shared filesystem and never race on a file. What rank 0 read reaches the others by a
collective:

    on_rank0(comm, fn)            fn() runs on rank 0; its JSON-able value, or the MinisftError it
                                  raised, on every rank (each rank raises the same error: none is
                                  left waiting in a collective the others skipped)
    broadcast_arrays(comm, arrays)  rank 0's {name: host array} on every rank (any dtype, bools too:
                                  each array travels as its bytes)

With comm=None (or a world of one) both are plain calls.
"""

import numpy as np

from ..core import errors
from ..core.backend import to_numpy
from ..core.errors import MinisftError, bad_type


def _lead(comm):
    return comm is None or comm.world_size == 1


def on_rank0(comm, fn):
    """fn() on rank 0 (module docstring); fn's value must be JSON-able (minisft.distributed's objects)."""
    if _lead(comm):
        return fn()
    payload = None
    if comm.rank == 0:
        try:
            payload = {"value": fn()}
        except MinisftError as e:
            value = e.value if isinstance(e.value, (str, int, float, bool, type(None))) else str(e.value)
            payload = {"error": [type(e).__name__, str(e), e.arg, value, e.expected]}
    payload = comm.bcast_object(payload)
    if "error" in payload:
        name, message, arg, value, expected = payload["error"]
        kind = getattr(errors, name, MinisftError)
        kind = kind if isinstance(kind, type) and issubclass(kind, MinisftError) else MinisftError
        raise kind(message, arg, value, expected)
    return payload["value"]


def broadcast_arrays(comm, arrays):
    """{name: host NumPy array}: rank 0's `arrays` on every rank (the others pass None)."""
    if _lead(comm):
        return arrays
    if comm.rank == 0:
        if not isinstance(arrays, dict):
            raise bad_type("arrays", arrays, "a dict of host arrays on rank 0")
        host = {k: np.asarray(to_numpy(v), order="C") for k, v in arrays.items()}  # 0-d stays 0-d
        layout = {k: [list(a.shape), a.dtype.str] for k, a in host.items()}
    layout = comm.bcast_object(layout if comm.rank == 0 else None)
    xp = comm.xp
    if comm.rank == 0:
        raw = {k: xp.asarray(a.reshape(-1).view(np.uint8)) for k, a in host.items()}
    else:
        raw = {k: xp.empty(int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize, dtype=np.uint8)
               for k, (shape, dt) in layout.items()}
    comm.broadcast(raw)
    return {k: to_numpy(raw[k]).view(np.dtype(dt)).reshape(shape) for k, (shape, dt) in layout.items()}
