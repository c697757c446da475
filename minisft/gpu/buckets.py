"""The bucket copies' fast path: a data-parallel bucket of several segments packed into (and unpacked
from) its buffer in one launch (kernels.copy_many) instead of one slice copy per segment, which cost
~10 ms of host time per step for a LoRA model's ~100 gradients, with the GPU idle."""

from ..core.fastpath import on_device, register
from ..distributed import buckets
from . import kernels


def _copy_segments(bucket, flats, buffer, into_buffer):
    """Every segment of the bucket between its tensor and the buffer, in one kernels.copy_many launch."""
    item = bucket.dtype.itemsize
    at_tensor = [flats[s.tensor].data.ptr + s.start * item for s in bucket.segments]
    at_buffer = [buffer.data.ptr + s.offset * item for s in bucket.segments]
    sizes = [s.size for s in bucket.segments]
    if into_buffer:
        kernels.copy_many(at_tensor, at_buffer, sizes, item)
    else:
        kernels.copy_many(at_buffer, at_tensor, sizes, item)


def pack(bucket, flats, buffer):
    _copy_segments(bucket, flats, buffer, into_buffer=True)


def unpack(bucket, buffer, flats):
    _copy_segments(bucket, flats, buffer, into_buffer=False)


register(buckets.pack, pack, lambda bucket, flats, buffer: len(bucket.segments) > 1 and on_device(buffer))
register(buckets.unpack, unpack, lambda bucket, buffer, flats: len(bucket.segments) > 1 and on_device(buffer))
