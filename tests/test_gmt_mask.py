"""GMT gradient masks (minisft.methods.gmt.masks) and the shared smallest-k selection (minisft.methods.select).

Oracle: a stable argsort of |g| over the tensors concatenated in order, whose first k entries are
dropped, with k = floor(r * n) computed by `decimal` (the documented decimal reading of r).
Derivations: proofs/gmt_mask.md.
"""

import math
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import minisft.testing as mt
from minisft.core.backend import to_numpy
from minisft.methods.gmt.masks import global_gradient_masks, gradient_mask, gradient_masks
from minisft.methods.select import RADIX_BITS
from tests.helpers import spy_fast_paths, stable_argsort_keep, to_device_bits

fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

TIED = mt.tied_floats()  # few distinct magnitudes (signed zeros, a subnormal, inf): many ties
RATIOS = mt.ratios()
arrays = mt.float_arrays  # 0-3 dimensions, sides 0-6; elements: wide floats and TIED


def floor_count(ratio, n):
    return math.floor(Decimal(repr(float(ratio))) * n)


@fixture_ok
@given(g=arrays(), r=RATIOS)
@example(g=np.array([1.0, -1.0, 1.0, 0.0, -0.0]), r=0.5)
@example(g=np.array([np.inf, 5e-324, -5e-324, 1e308, 0.0]), r=0.8)
@example(g=np.array(0.0), r=0.0)  # found on the H100: the kernel path returned a 0-d mask as shape (1,)
@example(g=np.array([8.3e-44, -1e-45, 0.0, 2.0], dtype=np.float32), r=0.5)  # float32 subnormals vs CuPy's -ftz
def test_mask_equals_stable_argsort_oracle(xp, g, r):
    mask = gradient_mask(xp.asarray(g), r)
    assert mask.shape == g.shape and mask.dtype == bool
    (expected,) = stable_argsort_keep([g], floor_count(r, g.size))
    np.testing.assert_array_equal(to_numpy(mask), expected)


@fixture_ok
@given(g=st.one_of(arrays(mt.wide_floats(32), np.float32),
                   arrays(mt.wide_floats(16), np.float16)), r=RATIOS)
@example(g=np.array([0.0, -0.0, 1.0, -1.0, np.inf], dtype=np.float32), r=0.6)
def test_narrow_floats_rank_like_their_float64_values(xp, g, r):
    """Per tensor, float32/float16 are ranked on their own bits (native_magnitude_key): the same masks
    as the stable-argsort oracle on the exact float64 values."""
    mask = gradient_mask(xp.asarray(g), r)
    (expected,) = stable_argsort_keep([g], floor_count(r, g.size))
    np.testing.assert_array_equal(to_numpy(mask), expected)


@fixture_ok
@given(g=arrays(), r=RATIOS)
@example(g=np.array(0.0), r=0.0)  # found on the H100 (0-d input)
def test_exact_count_and_kept_dominate_dropped(xp, g, r):
    mask = to_numpy(gradient_mask(xp.asarray(g), r))
    assert int((~mask).sum()) == floor_count(r, g.size)
    kept, dropped = np.abs(g[mask]), np.abs(g[~mask])
    if kept.size and dropped.size:
        assert kept.min() >= dropped.max()


def test_ties_drop_lower_flat_index_first(xp):
    # the documented rule: among equal |g| the lower flat index is dropped first
    mask = gradient_mask(xp.asarray([[3.0, -1.0], [1.0, 1.0]]), 0.5)
    np.testing.assert_array_equal(to_numpy(mask), [[True, False], [False, True]])
    masks = global_gradient_masks([xp.asarray([2.0, 1.0]), xp.asarray([-1.0, 1.0])], 0.5)
    flat = np.concatenate([to_numpy(m) for m in masks])
    np.testing.assert_array_equal(flat, [True, False, False, True])


@fixture_ok
@given(g=arrays(elements=TIED), r=RATIOS)
def test_ties_deterministic_and_repeatable(xp, g, r):
    first = to_numpy(gradient_mask(xp.asarray(g), r))
    again = to_numpy(gradient_mask(xp.asarray(g.copy()), r))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, stable_argsort_keep([g], floor_count(r, g.size))[0])


@fixture_ok
@given(
    g=arrays(elements=st.floats(-1e6, 1e6, allow_subnormal=False)),
    r=RATIOS,
    signs=st.integers(0, 2**32 - 1),
    power=st.integers(-20, 20),
)
def test_invariant_to_sign_flips_and_exact_positive_scaling(xp, g, r, signs, power):
    flip = np.random.default_rng(signs).choice([-1.0, 1.0], size=g.shape)
    base = to_numpy(gradient_mask(xp.asarray(g), r))
    np.testing.assert_array_equal(to_numpy(gradient_mask(xp.asarray(g * flip), r)), base)
    np.testing.assert_array_equal(to_numpy(gradient_mask(xp.asarray(g * 2.0**power), r)), base)


@fixture_ok
@given(g=arrays())
def test_zero_drop_ratio_keeps_everything(xp, g):
    assert bool(to_numpy(gradient_mask(xp.asarray(g), 0.0)).all())
    masks = global_gradient_masks([xp.asarray(g), xp.asarray(g)], 0.0)
    assert all(bool(to_numpy(m).all()) for m in masks)


@fixture_ok
@given(g=arrays(), r=RATIOS)
def test_global_on_one_tensor_equals_per_tensor(xp, g, r):
    # radix select (global) and partition (per tensor) must agree exactly
    (glob,) = global_gradient_masks([xp.asarray(g)], r)
    np.testing.assert_array_equal(to_numpy(glob), to_numpy(gradient_mask(xp.asarray(g), r)))


@fixture_ok
@given(gs=st.lists(arrays(), min_size=0, max_size=4), r=RATIOS)
@example(gs=[np.array([1.0, 2.0]), np.array([]), np.array([[2.0], [1.0]])], r=0.5)
def test_global_exact_count_equals_bruteforce_oracle(xp, gs, r):
    masks = global_gradient_masks([xp.asarray(g) for g in gs], r)
    total = sum(g.size for g in gs)
    expected = stable_argsort_keep(gs, floor_count(r, total))
    assert len(masks) == len(gs)
    for m, e in zip(masks, expected):
        np.testing.assert_array_equal(to_numpy(m), e)
    assert sum(int((~to_numpy(m)).sum()) for m in masks) == floor_count(r, total)


@fixture_ok
@given(gs=st.lists(arrays(), min_size=0, max_size=4), r=RATIOS)
def test_batched_per_tensor_masks_equal_one_by_one(xp, gs, r):
    """gradient_masks (validated together) is gradient_mask applied to each tensor, as a dict too."""
    batched = gradient_masks({f"t{i}": xp.asarray(g) for i, g in enumerate(gs)}, r)
    assert list(batched) == [f"t{i}" for i in range(len(gs))]
    for i, g in enumerate(gs):
        (expected,) = stable_argsort_keep([g], floor_count(r, g.size))
        np.testing.assert_array_equal(to_numpy(batched[f"t{i}"]), expected)


# every way select.py can run, on every backend: (BATCH_BELOW, TIES_BY_COUNT) as each backend sets them,
# with the fast paths off; "kernels": the fast path, CuPy's radix-select kernels (minisft.gpu.select), on
# (CuPy only: on NumPy no kernel applies, and the case would rerun the NumPy way under the kernels' name)
WAYS = {"numpy-way": (0, False), "cupy-way": (1 << 20, True), "sort-positions": (1 << 40, False),
        "partition-count": (0, True), "kernels": None}


def _use_way(monkeypatch, way, xp):
    """Set up `way`; returns the list of the fast paths that run (spied), to check afterwards that
    the kernels ran exactly in the kernels' way."""
    import minisft.core.fastpath as fastpath
    import minisft.methods.select as select
    if way == "kernels" and xp is np:
        pytest.skip("the radix-select kernels run on CuPy only")
    monkeypatch.setattr(fastpath, "ENABLED", way == "kernels")
    calls = spy_fast_paths(monkeypatch)
    if way != "kernels":
        batch_below, ties_by_count = WAYS[way]
        for backend in ("numpy", "cupy"):
            monkeypatch.setitem(select.BATCH_BELOW, backend, batch_below)
            monkeypatch.setitem(select.TIES_BY_COUNT, backend, ties_by_count)
    return calls


def _ran_as(way, calls, arrays):
    """The kernels ran in the kernels' way wherever they apply (tensors of one float dtype: the
    predicate minisft.gpu.select registers) and nowhere else."""
    if way == "kernels":
        dtypes = {np.asarray(a).dtype.char for a in arrays}
        applies = len(dtypes) == 1 and dtypes <= set("fd")
        assert bool(calls) == applies, f"kernels ran: {sorted(set(calls))}, on tensors of dtypes {dtypes}"
    else:
        assert not calls, f"{way} ran fast paths: {sorted(set(calls))}"


@pytest.mark.parametrize("way", list(WAYS))
def test_per_tensor_paths_agree_with_oracle(xp, monkeypatch, way):
    """Whether tensors are ranked one by one (partition) or together (one sort by tensor, |x|,
    index), and ties found by a cumulative count or by position, every tensor gets its own
    floor(r·n) smallest, ties by lower index."""
    calls = _use_way(monkeypatch, way, xp)
    rng = np.random.default_rng(7)
    tied = [rng.choice([0.0, -0.0, 1.0, -2.0, 2.0, 3.5], size=s) for s in [(5, 4), (0,), (1,), (13,), (3, 3, 3)]]
    normal = [rng.standard_normal(s) for s in [(40,), (2, 7)]]
    for gs in [tied + normal, [g.astype(np.float32) for g in tied + normal], tied + [normal[0].astype(np.float32)]]:
        for r in (0.0, 0.3, 0.5, 0.95):
            masks = gradient_masks([xp.asarray(g) for g in gs], r)
            for g, m in zip(gs, masks):
                (expected,) = stable_argsort_keep([g], floor_count(r, g.size))
                np.testing.assert_array_equal(to_numpy(m), expected)
        _ran_as(way, calls, gs)
        calls.clear()


@pytest.mark.parametrize("way", list(WAYS))
@fixture_ok
@given(gs=st.lists(st.one_of(arrays(), arrays(elements=TIED), arrays(mt.wide_floats(32), np.float32)),
                   min_size=0, max_size=4), r=RATIOS)
@example(gs=[np.array([1.0, 1.0, 1.0]), np.array([1.0, 1.0]), np.array([0.0, 1.0, -1.0])], r=0.5)
@example(gs=[np.array(0.0), np.array([8.3e-44, 8.3e-44], dtype=np.float32), np.array(0.0)], r=0.5)  # found on
# the H100 with the fused kernels off: CuPy compiles with -ftz=true, so a float32 abs/cast ranked subnormals as 0
def test_every_way_equals_oracle_per_tensor_and_global(xp, monkeypatch, way, gs, r):
    """Each of select.py's ways gives the oracle's masks, per tensor (gradient_masks) and over all
    tensors together (global_gradient_masks: ties spanning tensors)."""
    calls = _use_way(monkeypatch, way, xp)
    for g, m in zip(gs, gradient_masks([xp.asarray(g) for g in gs], r)):
        np.testing.assert_array_equal(to_numpy(m), stable_argsort_keep([g], floor_count(r, g.size))[0])
    total = sum(g.size for g in gs)
    for m, e in zip(global_gradient_masks([xp.asarray(g) for g in gs], r), stable_argsort_keep(gs, floor_count(r, total))):
        np.testing.assert_array_equal(to_numpy(m), e)
    _ran_as(way, calls, gs)


def test_global_dict_structure_mixed_dtypes_and_layout(xp):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 7))
    b = rng.standard_normal(11).astype(np.float32)
    c = np.asfortranarray(rng.standard_normal((3, 4))).T  # non-contiguous view
    grads = {"h.0.w": xp.asarray(a), "h.0.b": xp.asarray(b), "h.1.w": xp.asarray(c)}
    masks = global_gradient_masks(grads, 0.37)
    assert list(masks) == list(grads)
    expected = stable_argsort_keep([a, b, c], floor_count(0.37, a.size + b.size + c.size))
    for name, e in zip(masks, expected):
        np.testing.assert_array_equal(to_numpy(masks[name]), e)
    assert isinstance(global_gradient_masks(tuple(grads.values()), 0.5), tuple)
    assert global_gradient_masks([], 0.5) == [] and global_gradient_masks({}, 0.5) == {}


def test_radix_select_on_keys_sharing_high_bits(xp):
    # magnitudes equal in their top 48 key bits, differing only in the last radix digit
    base = np.float64(1.5).view(np.uint64)
    keys = base + np.arange(2 ** (RADIX_BITS + 1), dtype=np.uint64)[::-1].copy()
    values = keys.view(np.float64)
    parts = [values[:1000], -values[1000:50000], values[50000:]]
    masks = global_gradient_masks([xp.asarray(p) for p in parts], 0.61)
    for m, e in zip(masks, stable_argsort_keep(parts, floor_count(0.61, values.size))):
        np.testing.assert_array_equal(to_numpy(m), e)


def test_count_reads_ratio_as_its_decimal(xp):
    # float arithmetic: 0.29 * 100 = 28.999999999999996; the decimal 0.29 * 100 is 29
    assert int((~to_numpy(gradient_mask(xp.arange(100.0) + 1, 0.29))).sum()) == 29
    # binary 0.7 is 0.69999999999999995559...; the decimal 0.7 * 10 is 7
    assert int((~to_numpy(gradient_mask(xp.arange(10.0) + 1, 0.7))).sum()) == 7


@fixture_ok
@given(g=arrays(elements=st.one_of(st.floats(-10, 10), TIED)), r=RATIOS)
@example(g=np.array(0.0), r=0.0)  # found on the H100 (0-d input)
def test_parity_with_torch_reference(xp, g, r):
    torch = pytest.importorskip("torch")
    from reference_models import primitives as ref

    ours = to_numpy(gradient_mask(xp.asarray(g), r))
    theirs = ref.gradient_mask(torch.from_numpy(g), r).numpy()
    assert np.array_equal(ours, theirs), f"{int((ours != theirs).sum())} entries differ"
    parts = [g, np.asarray(-np.flip(g)), np.asarray(g * 3.0)]  # 0-d stays an array
    ours = [to_numpy(m) for m in global_gradient_masks([xp.asarray(p) for p in parts], r)]
    theirs = ref.global_masks([torch.from_numpy(p) for p in parts], r)
    diff = sum(int((o != t.numpy()).sum()) for o, t in zip(ours, theirs))
    assert diff == 0, f"{diff} entries differ from the torch reference"


@fixture_ok
@given(g=st.one_of(arrays(), arrays(st.floats(width=32), np.float32), arrays(st.floats(width=16), np.float16)),
       seed=st.integers(0, 2**32 - 1), transpose=st.booleans())
@example(g=np.array(-0.0, dtype=np.float32), seed=2, transpose=False)  # kept 0-d -0.0: +0.0 on CuPy (H100,
# 2026-11-27), lost in the test's own upload (xp.asarray of a 0-d array fills it, and fill memsets a zero): to_device_bits
@example(g=np.array(-0.0, dtype=np.float32), seed=0, transpose=False)  # the same 0-d tensor dropped
def test_zero_where_dropped_writes_positive_zero_and_keeps_bits(xp, g, seed, transpose):
    """zero_where_dropped(g, keep) is g[~keep] = +0.0: kept entries keep their exact bits (NaN,
    ±inf, -0.0 included), dropped ones become +0.0; also on a non-contiguous view."""
    from minisft.methods.select import zero_where_dropped

    keep = np.random.default_rng(seed).random(g.shape) < 0.5
    if transpose:
        g, keep = g.T, keep.T
    expected = g.copy()
    expected[~keep] = 0.0
    out = to_device_bits(g.copy(), xp) if not transpose else to_device_bits(g.T.copy(), xp).T
    zero_where_dropped(out, xp.asarray(keep))
    bits = f"u{g.dtype.itemsize}"
    np.testing.assert_array_equal(to_numpy(out).view(bits), expected.view(bits))


@pytest.mark.parametrize("batched", [False, True], ids=["per-tensor", "batched-by-size"])
@fixture_ok
@given(gs=st.lists(arrays(elements=st.one_of(st.floats(-10, 10), st.sampled_from([1.0, -1.0, 2.0, -2.0])).filter(bool)),
                   min_size=0, max_size=5), r=RATIOS)
@example(gs=[np.array([1.0, -1.0, 1.0, 2.0]), np.array([2.0, 1.0, 1.0, -1.0]), np.array([3.0])], r=0.5)
def test_torch_gmt_for_the_bench_equals_minisft(batched, gs, r):
    """The benchmark's torch GMT (reference_models.primitives.zero_gmt_dropped_, both groupings) zeroes exactly
    the entries minisft's gradient_masks drop (no zeros drawn, so every dropped entry shows)."""
    torch = pytest.importorskip("torch")
    from reference_models.primitives import zero_gmt_dropped_

    ts = [torch.from_numpy(g.copy()) for g in gs]
    zero_gmt_dropped_(ts, r, batched=batched)
    for g, t, keep in zip(gs, ts, gradient_masks([np.asarray(g) for g in gs], r)):
        assert np.array_equal(t.numpy() != 0, keep), f"{int(((t.numpy() != 0) != keep).sum())} entries differ"
        np.testing.assert_array_equal(t.numpy()[keep], g[keep])


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf"), -float("inf")])
def test_bad_drop_ratio_value(xp, bad):
    with pytest.raises(ValueError, match="drop_ratio"):
        gradient_mask(xp.ones(4), bad)
    with pytest.raises(ValueError, match="drop_ratio"):
        global_gradient_masks([xp.ones(4)], bad)


@pytest.mark.parametrize("bad", ["0.5", None, True, [0.5]])
def test_bad_drop_ratio_type(xp, bad):
    with pytest.raises(TypeError, match="drop_ratio"):
        gradient_mask(xp.ones(4), bad)


def test_bad_grads(xp):
    with pytest.raises(ValueError, match="grad"):
        gradient_mask(xp.asarray([1.0, float("nan")]), 0.5)
    with pytest.raises(ValueError, match=r"grads\['b'\]"):
        global_gradient_masks({"a": xp.ones(3), "b": xp.asarray([float("nan")])}, 0.5)
    with pytest.raises(TypeError, match="grad"):
        gradient_mask(xp.arange(4), 0.5)  # integer gradient
    with pytest.raises(TypeError, match="grad"):
        gradient_mask([1.0, 2.0], 0.5)  # not an array
    with pytest.raises(TypeError, match="grads"):
        global_gradient_masks({"a set, not a list or dict"}, 0.5)
    with pytest.raises(ValueError, match=r"grads\['w'\]"):
        gradient_masks({"v": xp.ones(2), "w": xp.asarray([float("nan")])}, 0.5)


@given(bits=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=50))
@example(bits=[0, 1, 0x7FFFFF, 0x800000, 0x80000001, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x3F800000])
def test_float32_magnitudes_widen_exactly_from_their_bits(bits):
    """The GPU's key for float32 (select.float32_magnitude_as_float64: no float32 arithmetic, which
    CuPy flushes to zero for subnormals) equals NumPy's exact |x| cast to float64, subnormals, zeros
    and infinities included (NaN patterns skipped: NaN has no rank)."""
    x = np.array(bits, dtype=np.uint32).view(np.float32)
    x = x[~np.isnan(x)]
    from minisft.methods.select import float32_magnitude_as_float64

    np.testing.assert_array_equal(float32_magnitude_as_float64(x), np.abs(x).astype(np.float64))
