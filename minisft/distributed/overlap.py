"""Gradient all-reduce overlapped with the backward, as PyTorch DDP's bucket all-reduces (Li et al.
2020, "PyTorch Distributed", §3.2.3): a block's gradients are reduced while the blocks below it
still run their backward.

    reducer = make_reducer(comm)
    loss, grads = model.loss_and_grads(x, y, grad_scale=w, on_ready=reducer.ready)
    loss, grads, report = reducer.finish(grads, loss)     # = reduce_loss_and_grads(comm, loss, grads)

`GPT.loss_and_grads` calls `ready(grads, names)` with the names whose gradients are final, block by
block from the top, and once more at the end (its docstring gives the contract); `finish` completes
every reduction, all-reduces the float64 loss and returns (Σ_r loss, {name: Σ_r grad}, ReduceReport).
A reducer serves one backward; every rank reports the same names in the same order (the model's
structure fixes them), so every rank queues the same collectives.

    "nccl"            StreamReducer: each ready group is packed into buckets, all-reduced and unpacked
                      on the communicator's own CUDA stream (`side_stream`), which first waits for an
                      event recorded on the compute stream (CuPy's current stream) after the group's
                      gradients were written; `finish` makes the compute stream wait for the side
                      stream, then waits for both under the watchdog.
    "single", "mpi"   EndReducer: `ready` only records the names; `finish` is the one bucketed
                      all-reduce of `reduce_all`, so the numbers are those of the plain path bit for
                      bit (MPI's calls block the host: nothing would overlap).

Same sums: every element is added over the same ranks by the same collective either way; only its
bucket, hence its position in NCCL's ring, differs, which can change the order of the additions for
more than 2 ranks (rounding), never which terms are added.

Stream safety (NCCL): the side stream reads and writes only the reported gradients and its own
buffers. The model never writes a gradient after reporting it, and the arrays stay referenced by
`grads` until `finish`, after which the compute stream is ordered after the side stream, so the
memory pool cannot hand their memory to a compute-stream allocation while a reduction still uses
it. The bucket buffers are allocated inside `with side_stream:` (CuPy's pool keeps them in that
stream's arena) and are reused from group to group: everything on the side stream runs in the
order it was queued, so one buffer per dtype serves every group, as it serves every bucket in
`Communicator.allreduce_sum_bucketed` (`Communicator._queue_buckets` serves both); a buffer
replaced by a larger one returns to the side stream's pool, reused only after the work queued there.
"""

import numpy as np

from .buckets import DEFAULT_BUCKET_BYTES
from .communicator import DistributedError, ReduceReport


def make_reducer(comm, bucket_bytes=DEFAULT_BUCKET_BYTES):
    """The reducer of one backward for this communicator's backend (module docstring)."""
    if comm.backend == "nccl" and comm.world_size > 1:
        return StreamReducer(comm, bucket_bytes)
    return EndReducer(comm, bucket_bytes)


def reduce_all(comm, loss, grads, bucket_bytes=DEFAULT_BUCKET_BYTES):
    """(Σ_r loss, {name: Σ_r grad}, ReduceReport): one bucketed all-reduce of every gradient (sorted
    names) and the float64 loss, in place, after the backward."""
    total = comm.xp.asarray([loss], dtype=np.float64)
    report = comm.allreduce_sum_bucketed([grads[k] for k in sorted(grads)] + [total], bucket_bytes)
    return float(total[0]), grads, report


def _check_reported(reported, grads):
    """DistributedError unless every gradient was reported exactly once (a gradient never reported
    would stay unreduced on the overlapped path)."""
    if sorted(reported) != sorted(grads):
        twice = sorted({n for n in reported if reported.count(n) > 1})
        missing = sorted(set(grads) - set(reported))
        unknown = sorted(set(reported) - set(grads))
        raise DistributedError(f"on_ready reported {len(reported)} gradients for {len(grads)} (never: {missing[:5]}, "
                               f"twice: {twice[:5]}, unknown: {unknown[:5]}); expected each gradient exactly once")


class EndReducer:
    """"single" and "mpi": names recorded by `ready`, everything reduced at `finish` (`reduce_all`)."""

    def __init__(self, comm, bucket_bytes=DEFAULT_BUCKET_BYTES):
        self.comm, self.bucket_bytes = comm, bucket_bytes
        self.reported = []

    def ready(self, grads, names):
        """Record that the gradients `names` are final (nothing is reduced yet)."""
        self.reported += names

    def finish(self, grads, loss):
        """(Σ_r loss, {name: Σ_r grad}, ReduceReport): `reduce_all` once every gradient was reported."""
        _check_reported(self.reported, grads)
        return reduce_all(self.comm, loss, grads, self.bucket_bytes)


class StreamReducer:
    """"nccl": each ready group all-reduced on the communicator's side stream at once (module docstring)."""

    def __init__(self, comm, bucket_bytes=DEFAULT_BUCKET_BYTES):
        self.comm, self.bucket_bytes = comm, bucket_bytes
        self.cupy, self.stream = comm.cupy, comm.side_stream()
        self.reported = []
        self.buffers = {}  # dtype -> bucket buffer on the side stream, reused by every group
        self.report = ReduceReport(0, 0, 0, 0)

    def ready(self, grads, names):
        """Queue the all-reduce of the gradients `names` (final, written on the compute stream) on the
        side stream, after everything the compute stream has queued so far."""
        if names:
            self.reported += names
            self._queue(self.comm._items([grads[n] for n in names], "grads"))

    def finish(self, grads, loss):
        """(Σ_r loss, {name: Σ_r grad}, ReduceReport) once every queued reduction and the loss's are done;
        the compute stream is then ordered after them."""
        _check_reported(self.reported, grads)
        with self.stream:
            total = self.cupy.asarray([loss], dtype=np.float64)
        self._queue([total])
        self.cupy.cuda.get_current_stream().wait_event(self.stream.record())
        with self.comm._watch("allreduce_sum_bucketed (overlapped with the backward)"):
            self.comm._wait()
        self.comm.totals["collectives"] += self.report.buckets
        self.comm.totals["bytes"] += self.report.bytes
        return float(total[0]), grads, self.report

    def _queue(self, items):
        """Pack, all-reduce and unpack `items` bucket by bucket on the side stream (the communicator's
        `_queue_buckets`, buffers made inside `with self.stream`), which first waits for the compute
        stream's work queued so far."""
        self.stream.wait_event(self.cupy.cuda.get_current_stream().record())
        with self.comm._watch("allreduce_sum_bucketed (queued during the backward)"), self.stream:
            self.report += self.comm._queue_buckets(items, self.bucket_bytes, self.buffers)
