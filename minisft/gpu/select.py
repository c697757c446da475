"""Selection's fast paths: minisft.methods.select's exact smallest-k selections, NaN counts and
masking of many tensors, as a few launches for all tensors together (kernels.smallest_k_keep_masks:
the same radix select on the bits of |x|, 8 bits a pass, ties ranked by a per-chunk count; about a
dozen launches and one host synchronisation per call whatever the number of tensors).

They take float32 or float64 CuPy arrays of one dtype (and, for the masking, C-contiguous ones);
tests/test_kernels.py and tests/test_gmt_mask.py check them against the reference bodies on the GPU.
"""

from ..core.backend import array_module
from ..core.fastpath import on_device, register
from ..methods import select
from . import kernels


def _ranked_by_kernels(arrays):
    """CuPy arrays of one dtype, float32 or float64."""
    return bool(arrays) and on_device(arrays[0]) and arrays[0].dtype.char in "fd" and \
        all(a.dtype == arrays[0].dtype for a in arrays)


def _contiguous(a):
    return array_module(a).ascontiguousarray(a)


def nan_counts(arrays):
    return [int(n) for n in kernels.nan_counts([_contiguous(a) for a in arrays]).get()]


def smallest_k_keep_mask(x, k):
    return kernels.smallest_k_keep_masks([x], [k])[0]


def smallest_k_keep_mask_each(arrays, ks):
    return kernels.smallest_k_keep_masks(arrays, ks)


def smallest_k_keep_masks(arrays, k):
    return kernels.smallest_k_keep_masks(arrays, [k], [0] * len(arrays))


def _masking_takes(grads, masks):
    return bool(grads) and on_device(grads[0]) and len({g.dtype for g in grads}) == 1 and \
        all(g.flags.c_contiguous and keep.flags.c_contiguous for g, keep in zip(grads, masks))


register(select.nan_counts, nan_counts, _ranked_by_kernels)
register(select.smallest_k_keep_mask, smallest_k_keep_mask, lambda x, k: k > 0 and _ranked_by_kernels([x]))
register(select.smallest_k_keep_mask_each, smallest_k_keep_mask_each, lambda arrays, ks: _ranked_by_kernels(arrays))
register(select.smallest_k_keep_masks, smallest_k_keep_masks, lambda arrays, k: k > 0 and _ranked_by_kernels(arrays))
register(select.zero_where_dropped_all, kernels.zero_dropped_count_kept, _masking_takes)
