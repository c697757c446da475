"""Buckets for a fused all-reduce: many tensors flattened into few contiguous buffers of bounded size.

Data-parallel training all-reduces one gradient per trainable tensor. One collective per tensor
pays the per-call latency once per tensor (a LoRA model has ~100 tiny ones); one collective over
everything needs a buffer as large as the whole gradient. Buckets sit in between, as PyTorch DDP's
gradient buckets do (Li et al. 2020, "PyTorch Distributed", §3.2.3, 25 MB by default): the tensors
of one dtype are laid end to end in the given order, that virtual concatenation is cut into
consecutive buckets of at most `bucket_bytes` bytes, and each bucket is copied into one buffer,
reduced by one collective and copied back.

    tensors (one dtype)   |-- t0 --|----- t1 -----|- t2 -|---------- t3 ----------|
    buckets               |----- bucket 0 ------|----- bucket 1 ------|- bucket 2 -|

A tensor larger than a bucket spans several buckets, so no buffer ever exceeds the bound (DDP
instead gives such a tensor its own, larger bucket). A bucket holds one dtype; dtypes are taken in
order of first appearance. `Segment`s say which piece of which tensor sits where in a bucket.

Choices: the plan depends only on (sizes, dtypes, bucket_bytes), so every rank, given the same
tensor layout, makes the same plan (which the collectives require: ranks must reduce the same
buffers in the same order); a bucket holds at least one element even when `bucket_bytes` is smaller
than one item; empty tensors take no segment.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..core.errors import bad_value, positive_int
from ..core.fastpath import has_fast_path

DEFAULT_BUCKET_BYTES = 25 * 2**20  # PyTorch DDP's default bucket_cap_mb


@dataclass(frozen=True)
class Segment:
    """Elements [start, start + size) of flattened tensor `tensor` sit at [offset, offset + size)
    of the bucket."""

    tensor: int
    start: int
    offset: int
    size: int


@dataclass(frozen=True)
class Bucket:
    dtype: np.dtype
    size: int  # elements
    segments: tuple  # of Segment, in bucket order


def plan_buckets(sizes, dtypes, bucket_bytes=DEFAULT_BUCKET_BYTES):
    """[Bucket] covering every element of every tensor exactly once (module docstring).

    sizes: element count of each tensor; dtypes: its dtype (anything np.dtype accepts);
    bucket_bytes: the most bytes one bucket may hold (at least one element per bucket).
    """
    sizes, dtypes = tuple(int(s) for s in sizes), tuple(np.dtype(d) for d in dtypes)
    if len(sizes) != len(dtypes):
        raise bad_value("dtypes", f"{len(dtypes)} dtypes", f"one dtype per tensor ({len(sizes)} sizes)")
    if any(s < 0 for s in sizes):
        raise bad_value("sizes", list(sizes), "non-negative element counts")
    return list(_plan(sizes, dtypes, positive_int("bucket_bytes", bucket_bytes)))


@lru_cache(maxsize=64)
def _plan(sizes, dtypes, bucket_bytes):
    buckets = []
    for dtype in dict.fromkeys(dtypes):
        cap = max(1, bucket_bytes // dtype.itemsize)  # elements per bucket
        segments, filled = [], 0
        for i, (size, dt) in enumerate(zip(sizes, dtypes)):
            if dt != dtype:
                continue
            start = 0
            while start < size:
                n = min(size - start, cap - filled)
                segments.append(Segment(i, start, filled, n))
                start += n
                filled += n
                if filled == cap:
                    buckets.append(Bucket(dtype, filled, tuple(segments)))
                    segments, filled = [], 0
        if filled:
            buckets.append(Bucket(dtype, filled, tuple(segments)))
    return tuple(buckets)


@has_fast_path
def pack(bucket, flats, buffer):
    """Copy the bucket's segments of `flats` (1-D views of the tensors) into buffer[:bucket.size]."""
    for s in bucket.segments:
        buffer[s.offset : s.offset + s.size] = flats[s.tensor][s.start : s.start + s.size]


@has_fast_path
def unpack(bucket, buffer, flats):
    """Copy buffer[:bucket.size] back into the bucket's segments of `flats` (in place)."""
    for s in bucket.segments:
        flats[s.tensor][s.start : s.start + s.size] = buffer[s.offset : s.offset + s.size]
