"""Data parallelism, exact: N ranks compute what one process computes on the same global batch.

Every rank holds the same seeded Generator and draws the same GLOBAL batch (B rows); rank r keeps
the contiguous rows [lo, hi) = [r·B // N, (r+1)·B // N) (`shard_rows`) and runs forward and backward
on them with the backward seeded by its share w_r = (hi − lo) / B (`GPT.loss_and_grads(...,
grad_scale=w_r)`). Every row has the same number of target tokens T, so the mean loss over the B·T
tokens is

    L = (1/(B·T)) Σ_rows Σ_t ℓ = Σ_r w_r · L_r          L_r the mean over rank r's rows,

and ∇L = Σ_r w_r ∇L_r: one sum over the ranks (an all-reduce) of the weighted local gradients is
the single process's gradient, up to the order of the floating-point additions. The weight sits
INSIDE the backward, not on its result, so anything formed from dY during the backward (SPruFT's
calibration probes, per-sample gradients) is the single process's share too.

    local_loss_and_grads(model, x, y, comm)   (w_r·L_r, w_r ∇L_r): this rank's share, not reduced
    reduce_loss_and_grads(comm, loss, grads)  their sums over the ranks: one bucketed all-reduce
    loss_and_grads_overlapped(model, x, y, comm)  both, the all-reduce overlapped with the backward
                                              on GPUs (minisft.distributed.overlap) -> (L, ∇L, report)
    loss_and_grads(model, x, y, comm)         both: drop-in for model.loss_and_grads (global L, ∇L)
    loss(model, x, y, comm)                   forward only: the global L (one 8-byte all-reduce)
    rank_batches(batches, comm)               whole batches per rank (batch i on rank i mod N), for sums
    mean_batch_loss(model, batches, comm)     mean of L over fixed batches (rank_batches, one all-reduce)
    check_replicas(comm, digest)              every rank holds the same state (its digest)

`comm=None` (or a world of one) is exactly today's single-process call: no slicing, grad_scale 1,
no collective, so every number is unchanged bit for bit. Nothing random is drawn per rank.

Choices: contiguous row blocks (one view per rank, no copy); B need not be divisible by N (the
weights handle unequal blocks) but B >= N (no rank without rows); targets with ignored entries are
refused when N > 1 (their ranks would hold unequal token counts, and the weight would have to count
valid tokens across ranks: a caller with padded targets must do that itself).
"""

import numpy as np

from ..core.errors import bad_value, positive_int
from .buckets import DEFAULT_BUCKET_BYTES
from .communicator import DistributedError
from .overlap import make_reducer, reduce_all


def world_size(comm):
    """comm.world_size, 1 for comm=None."""
    return 1 if comm is None else comm.world_size


def comm_of(task):
    """The communicator a task carries (`Task.comm`), None for a task without one (single process)."""
    return getattr(task, "comm", None)


def shard_rows(batch_size, rank, world_size):
    """(lo, hi): the rows [lo, hi) of a global batch of `batch_size` rows that rank `rank` of
    `world_size` keeps; lo = rank·B // N, hi = (rank+1)·B // N (every row on exactly one rank)."""
    B, N = positive_int("batch_size", batch_size), positive_int("world_size", world_size)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < N:
        raise bad_value("rank", rank, f"a rank in [0, {N})")
    if B < N:
        raise bad_value("batch_size", B, f"at least one row per rank: a global batch of >= {N} rows "
                        f"(world size {N})")
    return rank * B // N, (rank + 1) * B // N


def _share(x, y, comm):
    """(x rows, y rows, weight w_r) of this rank."""
    B = int(x.shape[0])
    lo, hi = shard_rows(B, comm.rank, comm.world_size)
    if y is not None and bool((y < 0).any()):
        raise bad_value("targets", "ignored entries (< 0)", f"targets without ignored entries in a data-parallel "
                        f"run (world size {comm.world_size}): each rank's share is weighted by its rows, "
                        "which equals its token share only when every target counts")
    return x[lo:hi], (None if y is None else y[lo:hi]), (hi - lo) / B


def local_loss_and_grads(model, x, y, comm=None, reducer=None):
    """(w_r · L_r, {name: w_r ∇L_r}) on this rank's rows of the global batch (x, y) (B, T); not
    reduced. Sums over the ranks give the single process's (L, ∇L) (module docstring). reducer: a
    minisft.distributed.overlap reducer told of each gradient once it is final (`on_ready`), whose
    `finish` then gives the sums; None: nobody is told."""
    if world_size(comm) == 1:
        return model.loss_and_grads(x, y)
    xs, ys, w = _share(x, y, comm)
    on_ready = None if reducer is None else reducer.ready
    loss, grads = model.loss_and_grads(xs, ys, grad_scale=w, on_ready=on_ready)
    return w * loss, grads


def reduce_loss_and_grads(comm, loss, grads, bucket_bytes=DEFAULT_BUCKET_BYTES):
    """(Σ_r loss, {name: Σ_r grad}, ReduceReport or None): one bucketed all-reduce of the gradients
    (in place, names in sorted order) and the float64 loss. comm=None: the inputs and None."""
    if world_size(comm) == 1:
        return loss, grads, None
    return reduce_all(comm, loss, grads, bucket_bytes)


def loss_and_grads_overlapped(model, x, y, comm=None, bucket_bytes=DEFAULT_BUCKET_BYTES):
    """reduce_loss_and_grads(comm, *local_loss_and_grads(model, x, y, comm)), the same sums, with the
    gradients' all-reduce overlapped with the backward where the backend can (NCCL: each block's
    gradients reduced on a side stream while the blocks below run; minisft.distributed.overlap)."""
    if world_size(comm) == 1:
        return (*model.loss_and_grads(x, y), None)
    reducer = make_reducer(comm, bucket_bytes)
    loss, grads = local_loss_and_grads(model, x, y, comm, reducer)
    return reducer.finish(grads, loss)


def loss_and_grads(model, x, y, comm=None):
    """The global (L, {name: ∇L}) of the batch (x, y), identical on every rank: model.loss_and_grads
    data-parallel."""
    loss, grads, _ = reduce_loss_and_grads(comm, *local_loss_and_grads(model, x, y, comm))
    return loss, grads


def loss(model, x, y, comm=None):
    """The global mean loss L of the batch (x, y), forward only: Σ_r w_r L_r (one all-reduce). A
    batch of fewer rows than ranks is computed whole on every rank instead (the same number on
    each, no collective)."""
    if world_size(comm) == 1 or x.shape[0] < comm.world_size:
        return model.loss(x, y)
    xs, ys, w = _share(x, y, comm)
    total = comm.xp.asarray([w * model.loss(xs, ys)], dtype=np.float64)
    comm.allreduce_sum([total])
    return float(total[0])


def rank_batches(batches, comm=None):
    """This rank's whole batches of a list: batch i on rank i mod N (all of them for one process).
    For sums over batches (evaluation losses, calibration statistics): each batch counted once."""
    if world_size(comm) == 1:
        return list(batches)
    return [b for i, b in enumerate(batches) if i % comm.world_size == comm.rank]


def mean_batch_loss(model, batches, comm=None):
    """Mean of model.loss over the fixed (x, y) `batches` (None for none), identical on every rank:
    batch i is evaluated whole on rank i mod N, the sum of the losses all-reduced once."""
    if not batches:
        return None
    if world_size(comm) == 1:
        return float(np.mean([model.loss(x, y) for x, y in batches]))
    mine = [model.loss(x, y) for x, y in rank_batches(batches, comm)]
    total = comm.xp.asarray([sum(mine)], dtype=np.float64)
    comm.allreduce_sum([total])
    return float(total[0]) / len(batches)


def check_replicas(comm, digest, what="replica state"):
    """Raise DistributedError unless every rank passes the same `digest` (a string: e.g. a SHA-256 of
    its trainable tensors, optimizer and method state and generator state), naming the first rank
    that differs: data parallelism's premise, checked by one allgather. (MPI and NCCL all-reduces give
    every rank the same bytes in practice; the MPI standard only recommends it. This turns a silent
    divergence into an error.)"""
    if world_size(comm) == 1:
        return
    digests = comm.allgather_object(digest)
    for r, d in enumerate(digests):
        if d != digests[0]:
            raise DistributedError(f"{what}: rank {r} differs from rank 0 (digest {str(d)[:12]} vs {str(digests[0])[:12]}); "
                                   "expected bit-identical replicas on every rank")
