"""Smallest-k selection by magnitude with deterministic ties: the one mechanism behind GMT's
gradient masks (`minisft.methods.gmt.masks`) and MGPP's magnitude pruning (`minisft.methods.mgpp.schedule`).

Order. Entries are ranked by the key (|x|, tensor position, flat C-order index), ascending. Among
equal magnitudes the earlier tensor, then the LOWER flat index, is dropped first. This is exactly
the order of a stable argsort of |x| over the tensors concatenated in order, the oracle the tests
use (tests/test_gmt_mask.py, tests/test_mgpp_primitives.py).

Magnitude key. |x| is widened to float64 (exact for float16/32/64) and its bits are read as uint64.
For non-negative, non-NaN floats the bit pattern is monotone in the value, so ranking keys ranks
magnitudes; -0.0 and +0.0 are the same magnitude; +inf is the largest. NaN has no rank: an error.

Threshold t = the k-th smallest key (k >= 1):
- one tensor: `xp.partition` of the keys at k-1 (a selection, average O(n), not a sort);
- several tensors: radix select over the 64 key bits, 16 bits per pass (the algorithm of PyTorch's
  CUDA kthvalue/topk): each of the 4 passes histograms (bincount) the next 16 bits of the keys that
  match the prefix found so far, tensor by tensor, recomputing each tensor's keys. No concatenated
  copy is made and no keys are kept: the extra memory is one tensor's temporaries and 65 536
  counters.
Masks: drop every key < t, and of the keys == t the first `need = k - #{key < t}` in (tensor, index)
order. On CuPy those ties are found by a running cumulative count, so no step synchronises with the
host; on NumPy by their positions (`flatnonzero`), since a cumulative count over every entry costs
more on a CPU than the selection itself.

On the GPU the fast path (minisft.gpu.select) runs the exact smallest-k selections
(`smallest_k_keep_mask`, `smallest_k_keep_mask_each`, `smallest_k_keep_masks`: one tensor, each of
many tensors, all tensors together), the NaN counts and `zero_where_dropped_all` as a few kernels for
all tensors together (tests/test_kernels.py checks them against the oracle). The ways below are the
reference bodies.

Per-tensor selections of many tensors (GMT's default scope, `smallest_k_keep_mask_each`): on NumPy
each tensor is selected alone by `partition`; on CuPy the tensors under 2^20 entries are ranked
together by one stable sort on (tensor, |x|, index), because a dozen small kernels per tensor cost
more there than the selection. Each backend's way is a setting in `BATCH_BELOW` / `TIES_BY_COUNT`;
the tests run both ways on every backend against the oracle.

Counts. `ratio_count` reads a ratio as the shortest decimal that round-trips to the float (Python's
repr) and rounds the exact product: floor(0.7 * 10) = 7 and floor(0.29 * 100) = 29, where float
arithmetic gives 7 and 28 and the binary value of 0.7 (0.6999...) would give 6.
Derivations: proofs/gmt_mask.md.
"""

import functools
import math
import numbers
from fractions import Fraction

import numpy as np

from ..core.backend import array_module
from ..core.errors import bad_type, bad_value, real_in, require
from ..core.fastpath import has_fast_path

RADIX_BITS = 16
_NBINS = 1 << RADIX_BITS
_KEY_BITS = 64
_ALL_ONES = (1 << _KEY_BITS) - 1
ROUNDINGS = ("floor", "half_up")

# How each backend runs fastest; both ways of each are exact and tested on every backend.
BATCH_BELOW = {"numpy": 0, "cupy": 1 << 20}  # per-tensor selections of tensors under this size: one sort
TIES_BY_COUNT = {"numpy": False, "cupy": True}  # ties ranked by a cumulative count (no host sync)


def _backend(xp):
    return "numpy" if xp is np else "cupy"


def decimal_fraction(value):
    """The exact rational value of the shortest decimal that round-trips to float `value` (finite)."""
    return Fraction(repr(real_in("value", value, -math.inf, math.inf, True, True)))


@functools.lru_cache(maxsize=1024)  # GMT asks for every tensor at every step
def ratio_count(ratio, n, rounding):
    """floor(ratio * n) ("floor") or floor(ratio * n + 1/2) ("half_up"), in exact arithmetic on the
    decimal reading of `ratio` (see the module docstring)."""
    require(rounding in ROUNDINGS, "rounding", rounding, f"one of {ROUNDINGS}")
    exact = decimal_fraction(ratio) * n
    return math.floor(exact + Fraction(1, 2) if rounding == "half_up" else exact)


def tensor_list(arg, arrays):
    """Validate a list/tuple or dict of float arrays on one backend; return (arrays as a list,
    rebuild) where rebuild(values) puts a list of results back into the input's structure."""
    if isinstance(arrays, dict):
        names = list(arrays)
        values = [arrays[name] for name in names]
        labels = [f"{arg}[{name!r}]" for name in names]

        def rebuild(results):
            return dict(zip(names, results))

    elif isinstance(arrays, (list, tuple)):
        values = list(arrays)
        labels = [f"{arg}[{i}]" for i in range(len(values))]
        kind = type(arrays)

        def rebuild(results):
            return kind(results)

    else:
        raise bad_type(arg, arrays, "a list, tuple or dict of float arrays")
    for label, a in zip(labels, values):
        if not (hasattr(a, "dtype") and hasattr(a, "shape")) or not np.issubdtype(a.dtype, np.floating):
            raise bad_type(label, a, "a NumPy or CuPy array of a floating dtype")
    modules = {array_module(a).__name__ for a in values}
    require(len(modules) <= 1, arg, sorted(modules), "arrays all on one backend (numpy or cupy)")
    if values:  # the one host synchronisation: an error must be raised here
        nans = nan_counts(values)
        if any(nans):
            label = labels[int(np.flatnonzero(nans)[0])]
            raise bad_value(label, "an array with NaN entries", "no NaN (NaN has no magnitude rank)")
    return values, rebuild


@has_fast_path
def nan_counts(arrays):
    """The number of NaN entries of each array, as host integers (one count over all of them
    first: in the usual case, no NaN, that is the only pass and the only synchronisation)."""
    xp = array_module(*arrays)
    if not int(sum(xp.count_nonzero(xp.isnan(a)) for a in arrays)):
        return [0] * len(arrays)
    return [int(xp.count_nonzero(xp.isnan(a))) for a in arrays]


def magnitude_key(x):
    """(x.size,) uint64: the bits of float64 |x| in C order, monotone in |x| (NaN excluded).

    No float32 arithmetic touches the values: CuPy compiles every kernel with -ftz=true, so a float32
    abs or cast on the GPU would flush subnormal magnitudes to 0 and rank them with the zeros. A
    float32 |x| is widened from its bits instead, exactly: (m + 2^23·[e > 0]) · 2^(max(e, 1) − 150)
    in float64 (e, m its exponent and mantissa fields; e = 255: inf), which never flushes."""
    xp = array_module(x)
    if x.dtype == xp.float64:
        return native_magnitude_key(x)
    if x.dtype == xp.float32 and xp is not np:  # NumPy keeps subnormals: its abs and cast are 20x faster
        return float32_magnitude_as_float64(x).view(xp.uint64)
    return xp.abs(x).astype(xp.float64, copy=False).ravel().view(xp.uint64)


def float32_magnitude_as_float64(x):
    """(x.size,) float64: |x| of a float32 array in C order, exactly, from its bits (integer operations
    and float64 arithmetic only; see magnitude_key). NaN excluded."""
    xp = array_module(x)
    bits = native_magnitude_key(x)
    exponent = (bits >> xp.uint32(23)).astype(xp.int32)
    mantissa = (bits & xp.uint32(0x7FFFFF)).astype(xp.float64) + xp.where(exponent > 0, 2.0**23, 0.0)
    widened = xp.ldexp(mantissa, xp.maximum(exponent, 1) - 150)
    return xp.where(exponent == 255, xp.inf, widened)  # exponent 255: inf


def native_magnitude_key(x):
    """(x.size,) unsigned ints as wide as x's floats: the bits of |x| in C order (the sign bit
    cleared: an integer operation, so no flush-to-zero), monotone in |x| (NaN excluded; |−0| = +0).
    For one tensor this ranks exactly as magnitude_key, and for float32 the partition (on the GPU a
    full radix sort) moves half the bytes."""
    if x.dtype.itemsize not in (2, 4, 8):
        return magnitude_key(x)
    xp = array_module(x)
    unsigned = xp.dtype(f"uint{8 * x.dtype.itemsize}")
    magnitude_bits = unsigned.type((1 << (8 * x.dtype.itemsize - 1)) - 1)
    return xp.ascontiguousarray(x).ravel().view(unsigned) & magnitude_bits


def _kth_key_partition(key, k):
    """k-th smallest key t (1 <= k <= key.size) of one tensor, and need = k - #{key < t}."""
    xp = array_module(key)
    t = xp.partition(key, k - 1)[k - 1]
    return t, k - xp.count_nonzero(key < t)


def _kth_key_radix(arrays, k):
    """k-th smallest key t (1 <= k <= total size) over several tensors by radix select, and
    need = the rank of the target among the keys == t, which is k - #{key < t}.

    Keys are recomputed tensor by tensor in each pass, so only one tensor's keys exist at a time.
    """
    xp = array_module(*arrays)
    prefix = xp.zeros((), dtype=xp.uint64)  # the bits of t found so far
    rank = xp.asarray(k, dtype=xp.int64)  # rank of the target among the keys matching `prefix`
    for shift in range(_KEY_BITS - RADIX_BITS, -1, -RADIX_BITS):
        above = xp.uint64(_ALL_ONES ^ ((1 << (shift + RADIX_BITS)) - 1))  # bits already fixed
        hist = xp.zeros(_NBINS, dtype=xp.int64)
        for a in arrays:
            key = magnitude_key(a)
            digit = ((key >> xp.uint64(shift)) & xp.uint64(_NBINS - 1)).astype(xp.int64)
            # keys off the prefix are counted in a discard half, bin _NBINS + digit: spread like the
            # others rather than piled on one counter (GPU atomics on one address serialise)
            digit = xp.where((key & above) == prefix, digit, digit + _NBINS)
            hist += xp.bincount(digit, minlength=2 * _NBINS)[:_NBINS]
        at_or_below = xp.cumsum(hist)
        d = xp.searchsorted(at_or_below, rank.reshape(1))[0]  # first digit whose count reaches rank
        rank = rank - (at_or_below[d] - hist[d])
        prefix = prefix | (d.astype(xp.uint64) << xp.uint64(shift))
    return prefix, rank


def _keep_masks(arrays, t, need, key_of=magnitude_key):
    """Masks (True = kept) dropping every key < t and the first `need` keys == t in (tensor, index)
    order; t is a key of `key_of`."""
    xp = array_module(*arrays)
    by_count = TIES_BY_COUNT[_backend(xp)]
    ties_before = 0  # ties in the earlier tensors
    masks = []
    for a in arrays:
        key = key_of(a)
        keep = key > t
        tie = key == t
        if by_count:  # 1-based rank of each tie over all tensors so far
            keep |= tie & (xp.cumsum(tie) + ties_before > need)
            ties_before = ties_before + xp.count_nonzero(tie)
        else:  # the ties' positions: those past the first need - ties_before are kept
            at = xp.flatnonzero(tie)
            keep[at[max(int(need) - ties_before, 0):]] = True
            ties_before += at.size
        masks.append(keep.reshape(a.shape))
    return masks


def below_kth_smallest_keep_masks(arrays, k):
    """Masks (True = kept) over validated float arrays (see `tensor_list`) dropping every entry whose
    |x| is STRICTLY below the k-th smallest |x| of all of them (0 <= k <= total size; k = 0 keeps
    everything): a threshold rule, k - 1 drops without ties, fewer with ties (MGPP's authors'
    count, minisft.methods.mgpp.schedule.magnitude_masks(count_rule="authors"))."""
    xp = array_module(*arrays)
    if k == 0:
        return [xp.ones(a.shape, dtype=bool) for a in arrays]
    if len(arrays) == 1:
        t, _ = _kth_key_partition(magnitude_key(arrays[0]), k)
    else:
        t, _ = _kth_key_radix(arrays, k)
    return _keep_masks(arrays, t, 0)


def zero_where_dropped(g, keep):
    """g[~keep] = +0.0 in place. g: float, any shape; keep: bool of g's shape.

    The bits of g times keep (0 or 1) in an unsigned view of g's width: all-zero bits (+0.0) where
    dropped, g's own bits where kept. The same as copyto(g, 0, where=~keep), without the masked
    store, which on NumPy is about 20 times slower than a multiply."""
    xp = array_module(g)
    if getattr(keep, "dtype", None) != bool or keep.shape != g.shape:
        raise bad_value("keep", getattr(keep, "shape", keep), f"a bool array of g's shape {g.shape}")
    bits = g.view(xp.dtype(f"uint{8 * g.dtype.itemsize}"))
    xp.multiply(bits, keep, out=bits)


@has_fast_path
def zero_where_dropped_all(grads, masks):
    """zero_where_dropped(g, keep) for every pair (grads[t], masks[t]), and the kept entries of each:
    a (len(grads),) uint64 array of grads' backend (on the GPU the fast path does all in one launch)."""
    if not grads:
        return np.zeros(0, dtype=np.uint64)
    xp = array_module(grads[0])
    for g, keep in zip(grads, masks):
        zero_where_dropped(g, keep)
    return xp.stack([xp.count_nonzero(keep) for keep in masks]).astype(np.uint64)


@has_fast_path
def smallest_k_keep_mask(x, k):
    """(x.shape) bool, True = kept: False at the k smallest |x|, ties dropped by lower flat index first.

    `x` is a validated float array (see `tensor_list`), 0 <= k <= x.size.
    """
    require(isinstance(k, numbers.Integral) and not isinstance(k, bool) and 0 <= k <= x.size, "k", k,
            f"an integer in [0, {x.size}] (x's size)")
    xp = array_module(x)
    if k == 0:
        return xp.ones(x.shape, dtype=bool)
    t, need = _kth_key_partition(native_magnitude_key(x), k)
    return _keep_masks([x], t, need, key_of=native_magnitude_key)[0]


@has_fast_path
def smallest_k_keep_mask_each(arrays, ks):
    """[smallest_k_keep_mask(a, k) for a, k in zip(arrays, ks)]: per-tensor selections of many
    tensors. Those with fewer entries than BATCH_BELOW[backend] (on CuPy, 2^20; on NumPy none) are
    ranked together by one stable sort on (tensor, |x|, flat index), which gives each its own k
    smallest with the same tie rule: on a GPU a dozen small kernels per tensor cost more than the
    selection itself, while on a CPU partition is O(n) and the sort is not."""
    if not arrays:
        return []
    below = BATCH_BELOW[_backend(array_module(*arrays))]
    masks = [None] * len(arrays)
    small = [i for i, a in enumerate(arrays) if a.size < below]
    for i, a in enumerate(arrays):
        if a.size >= below:
            masks[i] = smallest_k_keep_mask(a, ks[i])
    if small:
        for i, m in zip(small, _smallest_k_by_tensor([arrays[i] for i in small], [ks[i] for i in small])):
            masks[i] = m
    return masks


def _smallest_k_by_tensor(arrays, ks):
    xp = array_module(*arrays)
    sizes = [a.size for a in arrays]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    key = xp.concatenate([magnitude_key(a) for a in arrays])
    tensor = xp.repeat(xp.arange(len(arrays)), sizes)  # (total,) which tensor each key belongs to
    order = xp.argsort(key, kind="stable")  # by |x|; ties keep concatenation order = flat index
    order = order[xp.argsort(tensor[order], kind="stable")]  # then by tensor: (tensor, |x|, index)
    tensor_sorted = tensor[order]
    rank = xp.arange(key.size) - xp.asarray(starts)[tensor_sorted]  # place in its tensor's sorted run
    drop = xp.empty(key.size, dtype=bool)
    drop[order] = rank < xp.asarray(np.asarray(ks, dtype=np.int64))[tensor_sorted]
    return [~drop[s:s + n].reshape(a.shape) for s, n, a in zip(starts, sizes, arrays)]


@has_fast_path
def smallest_k_keep_masks(arrays, k):
    """list of bool masks (shapes of `arrays`), True = kept: False at the k smallest |x| over all
    arrays, ties dropped by (tensor position, flat index) first. 0 <= k <= total size."""
    if not arrays:
        return []
    xp = array_module(*arrays)
    if k == 0:
        return [xp.ones(a.shape, dtype=bool) for a in arrays]
    t, need = _kth_key_radix(arrays, k)
    return _keep_masks(arrays, t, need)
