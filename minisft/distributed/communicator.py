"""The communicator: the few collectives data-parallel training needs, one interface for every backend.

    comm.rank, comm.world_size, comm.local_rank     where this process sits (local: on its host)
    comm.allreduce_sum(arrays)                       every rank's arrays become the sum over ranks
    comm.allreduce_sum_bucketed(arrays, bucket_bytes) the same in few fused collectives -> ReduceReport
    comm.broadcast(arrays, root=0)                   every rank's arrays become root's
    comm.allgather_object(obj) / bcast_object(obj)   small JSON-able host metadata
    comm.barrier()
    comm.abort_on_failure()                          a failure in the block ends the whole job at once

`arrays` is a list/tuple of arrays or a dict of them, changed in place and returned. A dict is
walked in sorted key order, so ranks may build it in any order; a list must be in the same order on
every rank. Every rank must call the same collectives in the same order with the same layout
(names, shapes, dtypes): a mismatch would sum unrelated numbers, or hang.

Arrays live on the backend's device: NumPy for "single" and "mpi", CuPy for "nccl"; they must be
C-contiguous (an in-place collective writes through the array's own memory) and of a numeric dtype
the backend can add.

Backends implement four primitives on ONE contiguous array or byte string (`_allreduce_one`,
`_broadcast_one`, `_allgather_bytes`, `_bcast_bytes`) plus `_wait`, `barrier` and `abort`; the
bucketing, the object encoding and the checks live here once. Objects travel as UTF-8 JSON (never
pickle): tuples come back as lists, dict keys as strings, NumPy scalars as Python numbers; an array
inside an object is refused (arrays go through the array collectives).
"""

import importlib
import json
import os
import sys
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from ..core.errors import MinisftError, bad_type, bad_value, require
from .buckets import DEFAULT_BUCKET_BYTES, pack, plan_buckets, unpack
from .watchdog import TIMEOUT_EXIT_CODE

SUM_DTYPES = tuple(np.dtype(d) for d in ("float16", "float32", "float64", "int32", "int64", "uint8"))


class DistributedError(MinisftError):
    """A collective could not be set up or completed (bad launch environment, lost peer, layout mismatch)."""


@dataclass
class ReduceReport:
    """What one bucketed all-reduce moved: tensors, elements and bytes reduced per rank, collectives."""

    tensors: int
    elements: int
    bytes: int
    buckets: int

    def __add__(self, other):
        return ReduceReport(self.tensors + other.tensors, self.elements + other.elements, self.bytes + other.bytes,
                            self.buckets + other.buckets)


class Communicator:
    """The interface (module docstring) and the backend-independent parts; "single" is this class."""

    backend = "single"

    def __init__(self, rank=0, world_size=1, local_rank=0, xp=np, watchdog=None):
        self.rank, self.world_size, self.local_rank, self.xp = rank, world_size, local_rank, xp
        self._watchdog = watchdog
        self._previous_hook = None  # sys.excepthook before `_abort_on_uncaught`, restored by close()
        self._buffers = {}  # dtype -> bucket buffer, reused step after step (_queue_buckets)
        self.totals = {"collectives": 0, "bytes": 0}  # bucketed all-reduces since construction

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank})"

    # ------------------------------------------------------------------ array collectives
    def allreduce_sum(self, arrays):
        """Every array becomes its sum over the ranks, in place (one collective per array); returns `arrays`."""
        items = self._items(arrays, "arrays")
        if self.world_size > 1:
            with self._watch("allreduce_sum"):
                for a in items:
                    if a.size:
                        self._allreduce_one(a)
                self._wait()
        return arrays

    def allreduce_sum_bucketed(self, arrays, bucket_bytes=DEFAULT_BUCKET_BYTES):
        """`allreduce_sum` fused into few collectives: the tensors are packed into buckets of at most
        `bucket_bytes` (minisft.distributed.buckets), one collective per bucket, copied back in place.
        Returns the ReduceReport (per rank: tensors, elements and bytes reduced, buckets)."""
        items = self._items(arrays, "arrays")
        if self.world_size > 1:
            with self._watch("allreduce_sum_bucketed"):
                report = self._queue_buckets(items, bucket_bytes, self._buffers)
                self._wait()
        else:
            buckets = plan_buckets([a.size for a in items], [a.dtype for a in items], bucket_bytes)
            report = _report(items, buckets)
        self.totals["collectives"] += report.buckets
        self.totals["bytes"] += report.bytes
        return report

    def broadcast(self, arrays, root=0):
        """Every rank's arrays become root's, in place; returns `arrays`."""
        self._check_root(root)
        items = self._items(arrays, "arrays")
        if self.world_size > 1:
            with self._watch("broadcast"):
                for a in items:
                    if a.size:
                        self._broadcast_one(a, root)
                self._wait()
        return arrays

    # ----------------------------------------------------------------- object collectives
    def allgather_object(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank; obj: small JSON-able host metadata."""
        data = _encode(obj)
        if self.world_size == 1:
            return [_decode(data)]
        with self._watch("allgather_object"):
            return [_decode(d) for d in self._allgather_bytes(data)]

    def bcast_object(self, obj, root=0):
        """Root's `obj` on every rank (the others' `obj` is ignored; pass None)."""
        self._check_root(root)
        data = _encode(obj) if self.rank == root else b""
        if self.world_size == 1:
            return _decode(data)
        with self._watch("bcast_object"):
            return _decode(self._bcast_bytes(data, root))

    # ----------------------------------------------------------------- lifetime and failure
    def barrier(self):
        """Return once every rank has called barrier()."""

    def abort(self, code=1, reason="aborted"):
        """End this process (and, where the backend can, the whole job) with exit code `code`."""
        print(f"minisft.distributed: rank {self.rank}/{self.world_size}: {reason}; aborting (exit code {code})",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        self._abort(int(code))

    def _abort(self, code):
        """Backend part of `abort`: end the job (MPI_Abort and/or os._exit); must not return."""
        raise SystemExit(code)

    def _timed_out(self, op, timeout):
        """Watchdog callback: runs on the watchdog thread while the main thread is stuck in `op`."""
        self.abort(TIMEOUT_EXIT_CODE, f"{op} did not complete within {timeout:g} s (a peer died or hangs)")
        os._exit(TIMEOUT_EXIT_CODE)  # in case the backend's abort returned

    def _abort_on_uncaught(self):
        """Make an uncaught exception print its traceback and then abort the job (restored by close())."""
        previous = self._previous_hook = sys.excepthook

        def hook(kind, value, tb):
            previous(kind, value, tb)
            self.abort(1, f"uncaught {kind.__name__}")

        sys.excepthook = hook

    @contextmanager
    def abort_on_failure(self):
        """Run a block so that its failure ends the whole job at once: an exception (traceback printed)
        or a SystemExit with a non-zero code inside it calls `abort` when world_size > 1, so peers
        blocked in a collective exit now instead of at their watchdog's timeout."""
        try:
            yield self
        except SystemExit as e:
            if self.world_size > 1 and e.code not in (None, 0):
                self.abort(e.code if isinstance(e.code, int) else 1, f"exited with {e.code!r}")
            raise
        except BaseException as e:
            if self.world_size > 1:
                traceback.print_exc()
                self.abort(1, f"{type(e).__name__}: {e}")
            raise

    def close(self):
        """Stop the watchdog and release the backend (idempotent)."""
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        if self._previous_hook is not None:
            sys.excepthook, self._previous_hook = self._previous_hook, None
        self._buffers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --------------------------------------------------------------------- backend primitives
    def _allreduce_one(self, a):
        """a (contiguous, non-empty) <- sum over ranks, in place."""

    def _broadcast_one(self, a, root):
        """a (contiguous, non-empty) <- root's a, in place."""

    def _allgather_bytes(self, data):
        return [data]

    def _bcast_bytes(self, data, root):
        return data

    def _wait(self):
        """Block until the collectives queued so far have completed (a no-op where they block)."""

    # --------------------------------------------------------------------------- helpers
    def _watch(self, op):
        return self._watchdog.watch(op) if self._watchdog is not None else nullcontext()

    def _queue_buckets(self, items, bucket_bytes, buffers):
        """Queue the bucketed all-reduce of the checked arrays `items` on the current stream, without
        waiting: each bucket packed into buffers[dtype], reduced by one collective and unpacked in
        place (one buffer per dtype serves every bucket; one smaller than this call's largest bucket
        of its dtype is replaced, and on a GPU its memory returns to the pool of the stream it was
        made on, reused only after the work queued there). Returns the ReduceReport."""
        buckets = plan_buckets([a.size for a in items], [a.dtype for a in items], bucket_bytes)
        for b in buckets:
            if b.dtype not in buffers or buffers[b.dtype].size < b.size:
                buffers[b.dtype] = self.xp.empty(max(c.size for c in buckets if c.dtype == b.dtype), dtype=b.dtype)
        flats = [a.reshape(-1) for a in items]  # views: C-contiguous checked by _items
        for bucket in buckets:
            buffer = buffers[bucket.dtype]
            pack(bucket, flats, buffer)
            self._allreduce_one(buffer[: bucket.size])
            unpack(bucket, buffer, flats)
        return _report(items, buckets)

    def _check_root(self, root):
        if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < self.world_size:
            raise bad_value("root", root, f"a rank in [0, {self.world_size})")

    def _items(self, arrays, what):
        """The arrays of a list/tuple (in order) or dict (sorted keys), each checked."""
        if isinstance(arrays, dict):
            named = [(f"{what}[{k!r}]", arrays[k]) for k in sorted(arrays)]
        elif isinstance(arrays, (list, tuple)):
            named = [(f"{what}[{i}]", a) for i, a in enumerate(arrays)]
        else:
            raise bad_type(what, arrays, "a list, tuple or dict of arrays")
        seen = set()
        for name, a in named:
            if not isinstance(a, self.xp.ndarray):
                raise bad_type(name, a, f"a {self.xp.__name__} array (the {self.backend!r} backend's arrays)")
            require(a.dtype in SUM_DTYPES, name, f"an array of dtype {a.dtype}", f"a dtype among {[d.name for d in SUM_DTYPES]}")
            require(a.flags.c_contiguous, name, f"a non-contiguous array of shape {a.shape}",
                    "a C-contiguous array (the collective writes in place through its memory)")
            require(id(a) not in seen, name, "the same array twice", "distinct arrays (one would be reduced twice)")
            seen.add(id(a))
        return [a for _, a in named]


def _report(items, buckets):
    """The ReduceReport of reducing `items` in `buckets`."""
    return ReduceReport(len(items), sum(int(a.size) for a in items), sum(int(a.nbytes) for a in items), len(buckets))


def _encode(obj):
    try:
        return json.dumps(obj, sort_keys=True, default=_plain).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise bad_type("obj", obj, f"JSON-able host metadata (numbers, strings, lists, dicts) ({e})") from None


def _plain(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-able (send arrays with broadcast / allreduce_sum)")


def _decode(data):
    return json.loads(data.decode("utf-8"))


def require_module(name, needed_by, install):
    """importlib.import_module(name), or a DistributedError saying what needs it and how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise DistributedError(f"{needed_by} needs {name} ({e}): expected {install}") from None
