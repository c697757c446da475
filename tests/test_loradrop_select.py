"""LoRA-drop layer selection (minisft.methods.loradrop.selection). Oracles: integer arithmetic on integer-valued
importances (exact), a torch sort and an exact rational prefix sum (reference_models.primitives), and
numpy row norms. Derivations: proofs/loradrop_selection.md.
"""

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import minisft.testing as mt
from minisft.core.backend import to_numpy
from minisft.methods.loradrop.selection import layer_output_sq_norm, normalize_importance, select_layers

fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
EPS = np.finfo(np.float64).eps
TINY = np.finfo(np.float64).smallest_subnormal

INT_IMPORTANCE = mt.integer_importances()
FLOAT_IMPORTANCE = hnp.arrays(
    np.float64,
    st.integers(1, 24),
    elements=st.one_of(st.floats(0, 1e6), st.just(0.0), st.floats(1e-300, 1e-250)),
).filter(lambda g: bool((g > 0).any()))
PERCENT = mt.percent_thresholds()  # threshold T = percent / 100


def integer_oracle(g, percent):
    """Exact: layers by (importance desc, index asc); the smallest prefix with
    100 * cumulative >= percent * total."""
    order = sorted(range(len(g)), key=lambda i: (-g[i], i))
    total, running = sum(g), 0
    for n_kept, i in enumerate(order, 1):
        running += g[i]
        if 100 * running >= percent * total:
            return sorted(order[:n_kept])
    raise AssertionError("unreachable: the full prefix reaches any T <= 1")


@fixture_ok
@given(g=FLOAT_IMPORTANCE)
@example(g=np.array([12.0, 1.11253693e-308]))  # a subnormal I_i: absolute, not relative, rounding
def test_normalized_importance_is_a_distribution(xp, g):
    importance = normalize_importance(xp.asarray(g))
    i = to_numpy(importance)
    assert type(importance) is type(xp.asarray(g)) and i.shape == g.shape
    assert bool((i >= 0).all())
    assert abs(i.sum() - 1.0) <= 2 * g.size * EPS
    np.testing.assert_allclose(i * g.sum(), g, rtol=4 * EPS, atol=2 * TINY * g.sum())


@given(g=INT_IMPORTANCE, percent=PERCENT)
@example(g=[9, 1], percent=90)  # exactly at the threshold: 9/10 >= 0.9 keeps one layer
@example(g=[3, 3, 3, 1], percent=60)  # ties: lower index first
def test_selection_equals_exact_integer_oracle(g, percent):
    kept = select_layers(np.asarray(g, dtype=np.float64), percent / 100)
    assert isinstance(kept, np.ndarray) and kept.dtype == np.int64
    assert kept.tolist() == integer_oracle(g, percent)


@fixture_ok
@given(g=INT_IMPORTANCE, percent=PERCENT)
def test_selection_on_device_arrays(xp, g, percent):
    kept = select_layers(xp.asarray(g, dtype=xp.float64), percent / 100)
    assert kept.tolist() == integer_oracle(g, percent)


@given(g=FLOAT_IMPORTANCE, t=st.floats(0.0, 1.0, exclude_min=True))
@example(g=np.array([4.0, 7.0, 6.0, 3.0]), t=0.65)  # a float cumsum reaches 13/20 at 0.6499999999999999
def test_selection_parity_with_torch_sort_and_exact_prefix_sums(g, t):
    torch = pytest.importorskip("torch")
    from reference_models import primitives as ref

    ours = select_layers(g, t)
    theirs = ref.select_layers(torch.from_numpy(g), t).numpy()
    assert ours.tolist() == theirs.tolist(), f"ours {ours.tolist()} vs torch {theirs.tolist()}"


@given(g=FLOAT_IMPORTANCE)
@example(g=np.array([1e20, 1.0, 0.0, 1e-300]))  # a float cumsum would absorb 1.0 and 1e-300
def test_threshold_one_keeps_exactly_the_nonzero_layers(g):
    assert select_layers(g, 1.0).tolist() == np.flatnonzero(g > 0).tolist()


@given(g=FLOAT_IMPORTANCE)
def test_small_threshold_keeps_the_single_most_important_layer(g):
    kept = select_layers(g, 1e-300)
    assert kept.tolist() == [int(np.flatnonzero(g == g.max())[0])]  # ties: lowest index


@given(g=INT_IMPORTANCE, percent=PERCENT, power=st.integers(-60, 60), factor=st.integers(1, 1000))
def test_exact_rescaling_leaves_the_selection_unchanged(g, percent, power, factor):
    base = select_layers(np.asarray(g, dtype=np.float64), percent / 100)
    scaled_pow2 = np.asarray(g, dtype=np.float64) * 2.0**power  # exact in float64
    scaled_int = np.asarray(g, dtype=np.float64) * factor  # integers < 2^53: exact
    assert select_layers(scaled_pow2, percent / 100).tolist() == base.tolist()
    assert select_layers(scaled_int, percent / 100).tolist() == base.tolist()


@given(g=FLOAT_IMPORTANCE, t=st.floats(0.0, 1.0, exclude_min=True))
def test_zero_importance_layer_never_kept(g, t):
    kept = select_layers(g, t)
    assert bool((g[kept] > 0).all())
    # and the kept set is a top set: no dropped layer is more important than a kept one
    dropped = np.setdiff1d(np.arange(g.size), kept)
    if dropped.size:
        assert g[kept].min() >= g[dropped].max()


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.0000001, 2.0, float("nan"), float("inf")])
def test_bad_threshold_value(bad):
    with pytest.raises(ValueError, match="threshold"):
        select_layers(np.ones(3), bad)


@pytest.mark.parametrize("bad", ["0.9", None, True])
def test_bad_threshold_type(bad):
    with pytest.raises(TypeError, match="threshold"):
        select_layers(np.ones(3), bad)


@pytest.mark.parametrize(
    "bad",
    [[1.0, float("nan")], [1.0, float("inf")], [1.0, -0.5], [0.0, 0.0], [], [[1.0, 2.0]], 3.0],
    ids=["nan", "inf", "negative", "all-zero", "empty", "2-D", "scalar"],
)
def test_bad_importance(xp, bad):
    with pytest.raises(ValueError, match="importance"):
        normalize_importance(xp.asarray(bad))
    with pytest.raises(ValueError, match="importance"):
        select_layers(xp.asarray(bad), 0.9)


def test_bad_importance_type():
    with pytest.raises(TypeError, match="importance"):
        select_layers(np.array(["a", "b"]), 0.9)


@fixture_ok
@given(
    out=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=9),
        elements=st.floats(-1e3, 1e3),
    ),
    split=st.integers(0, 9),
)
def test_layer_output_sq_norm_is_the_sum_of_squared_row_norms(xp, out, split):
    total = float(to_numpy(layer_output_sq_norm(xp.asarray(out))))
    expected = float(np.sum(np.linalg.norm(out, axis=1) ** 2))
    assert abs(total - expected) <= 8 * out.size * EPS * expected
    # streaming: the sum over two batches equals the whole
    parts = float(to_numpy(layer_output_sq_norm(xp.asarray(out[:split])))) + float(
        to_numpy(layer_output_sq_norm(xp.asarray(out[split:])))
    )
    assert abs(parts - total) <= 8 * out.size * EPS * total


def test_layer_output_sq_norm_accumulates_float32_in_float64(xp):
    out = xp.full((1000, 64), 0.1, dtype=xp.float32)
    value = layer_output_sq_norm(out)
    assert value.dtype == np.float64
    exact = 64000 * float(np.float32(0.1)) ** 2
    assert abs(float(to_numpy(value)) - exact) <= 64000 * EPS * exact


def test_bad_delta_out(xp):
    with pytest.raises(ValueError, match="delta_out"):
        layer_output_sq_norm(xp.ones(5))
    with pytest.raises(TypeError, match="delta_out"):
        layer_output_sq_norm(xp.ones((2, 2), dtype=xp.int64))
    with pytest.raises(TypeError, match="delta_out"):
        layer_output_sq_norm([[1.0, 2.0]])
