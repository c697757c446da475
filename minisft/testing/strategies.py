"""The hypothesis strategies minisft's own property tests draw from, offered for testing another
implementation with the same inputs (hypothesis is optional: it is imported when a strategy is
first called, with an error saying how to install it).

Each strategy below is drawn by at least one of minisft's tests (tests/test_testing_kit.py checks
it): `layer_shapes` by the finite-difference and PyTorch tests of every layer, `gpt_configs` by the
model tests, `float_arrays`, `wide_floats`, `tied_floats`, `ratios` by the GMT mask tests,
`same_shape`, `sides`, `seeds` by the importance tests, `knapsack_*` by the knapsack tests,
`integer_importances`, `percent_thresholds` by the LoRA-drop selection tests. `layer_inputs` builds
a layer's keyword arguments from `layer_shapes`, so a user's property test sees the shapes
minisft's finite-difference tests see (attention up to T = 64 positions and head dim 32).
"""

import math

import numpy as np

from ..core.config import GPTConfig
from ..core.errors import bad_value


def _hypothesis():
    try:
        import hypothesis.extra.numpy as hnp
        from hypothesis import strategies as st
    except ImportError:
        raise ImportError("minisft.testing's strategies need hypothesis: pip install hypothesis "
                          "(or minisft's test extra, pip install 'minisft[test]')") from None
    return st, hnp


def seeds():
    """Seeds for numpy.random.default_rng: any 32-bit unsigned integer."""
    st, _ = _hypothesis()
    return st.integers(0, 2**32 - 1)


def sides(max_side=5, min_side=1):
    """One dimension of a tensor shape, in [min_side, max_side]."""
    st, _ = _hypothesis()
    return st.integers(min_side, max_side)


def gpt_configs(max_vocab=40, max_block=12, max_layers=3, max_heads=3, head_dims=(3, 6)):
    """Small GPTConfigs. head_dim >= 3 keeps n_embd >= 3: the LayerNorm of a 1- or 2-vector barely
    depends on its input (C=1: output = bias; C=2: dx ~ eps/σ²), so every gradient below the first
    LayerNorm would be zero or eps-sized and rounding noise of the same size in two implementations
    makes a relative comparison meaningless. Hypothesis found both in tests/test_model.py:
    (V=2, T=1, L=1, H=1, hd=1, seed=0) and, in float32, (V=2, T=1, L=1, H=1, hd=2, seed=3)."""
    st, _ = _hypothesis()
    return st.builds(
        lambda V, T, L, H, hd: GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=H * hd),
        V=st.integers(2, max_vocab), T=st.integers(1, max_block), L=st.integers(1, max_layers),
        H=st.integers(1, max_heads), hd=st.integers(*head_dims),
    )


def wide_floats(width=64):
    """Any finite or infinite float of `width` bits (64, 32 or 16), no NaN."""
    st, _ = _hypothesis()
    return st.floats(allow_nan=False, allow_infinity=True, width=width)


def tied_floats():
    """Few distinct magnitudes (signed zeros, a subnormal, inf): many ties in |x|."""
    st, _ = _hypothesis()
    return st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 5e-324, math.inf])


def ratios():
    """A ratio in [0, 1)."""
    st, _ = _hypothesis()
    return st.floats(0.0, 1.0, exclude_max=True)


def float_arrays(elements=None, dtype=np.float64, max_dims=3, max_side=6):
    """Arrays of 0 to `max_dims` dimensions (sides 0..max_side, empty arrays included); elements
    default to wide_floats() | tied_floats()."""
    st, hnp = _hypothesis()
    elements = st.one_of(wide_floats(), tied_floats()) if elements is None else elements
    shapes = hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side)
    return hnp.arrays(dtype, shapes, elements=elements)


def same_shape(n, elements=None, max_side=6):
    """n float64 matrices of one shape (d_out, d_in), sides 1..max_side; elements default to
    floats in [-8, 8]."""
    st, hnp = _hypothesis()
    elements = st.floats(-8.0, 8.0, allow_nan=False, width=64) if elements is None else elements

    @st.composite
    def draw_matrices(draw):
        shape = (draw(sides(max_side)), draw(sides(max_side)))
        return tuple(draw(hnp.arrays(np.float64, shape, elements=elements)) for _ in range(n))

    return draw_matrices()


KNAPSACK_TRICKY = [0.0, 1.0, 3.0, 0.1, 0.2, 0.3, 2.0**-53, 1e-16, 1.0 + 2.0**-52, 1e-300, 5e-324]


def knapsack_values(small_integers=False):
    """Item values: floats in [0, 10], small integers, and values that make float sums round or
    absorb (2**-53 + 1.0 == 1.0), subnormals and zeros; only small integers when asked."""
    st, _ = _hypothesis()
    small = st.integers(0, 4).map(float)
    if small_integers:
        return small
    return st.one_of(st.floats(0, 10, allow_nan=False, allow_infinity=False), small, st.sampled_from(KNAPSACK_TRICKY))


def knapsack_instances(max_n=12, max_weight=12, value=None):
    """(values (n,), weights (n,) int64, capacity) with capacity from 0 to just over the total weight."""
    st, _ = _hypothesis()
    value = knapsack_values() if value is None else value

    @st.composite
    def draw_instance(draw):
        n = draw(st.integers(0, max_n))
        values = np.array(draw(st.lists(value, min_size=n, max_size=n)), dtype=np.float64)
        weights = np.array(draw(st.lists(st.integers(1, max_weight), min_size=n, max_size=n)), dtype=np.int64)
        capacity = draw(st.integers(0, int(weights.sum()) + 2))
        return values, weights, capacity

    return draw_instance()


def integer_importances(max_layers=24, max_value=20):
    """Per-layer importances as non-negative integers, not all zero (exact arithmetic oracles)."""
    st, _ = _hypothesis()
    return st.lists(st.integers(0, max_value), min_size=1, max_size=max_layers).filter(any)


def percent_thresholds():
    """A threshold T = percent / 100 as its integer percent, 1..100."""
    st, _ = _hypothesis()
    return st.integers(1, 100)


LAYERS = ("linear", "layernorm", "gelu", "attention", "cross_entropy", "embedding")


def _shape_strategies(st, layer):
    """{dimension: strategy} of one layer: what tests/test_nn_grad.py's finite-difference test of
    the layer draws (its keyword arguments besides `seed`)."""
    small = sides(5)
    table = {
        "linear": {"n": small, "t": small, "d_in": small, "d_out": small, "bias": st.booleans()},
        # the test widens C by 2 (C >= 3): the LayerNorm of a 1- or 2-vector is degenerate (gpt_configs)
        "layernorm": {"C": small, "lead": st.lists(small, min_size=1, max_size=3)},
        "gelu": {"shape": st.lists(small, min_size=1, max_size=3), "scale": st.floats(0.1, 4.0)},
        "attention": {"B": st.integers(1, 2), "T": st.integers(1, 64), "H": st.integers(1, 3),
                      "hd": st.integers(1, 32)},
        "cross_entropy": {"B": st.integers(1, 3), "T": st.integers(1, 5), "V": st.integers(2, 9),
                          "n_ignored": st.integers(0, 3)},
        "embedding": {"B": st.integers(1, 3), "T": st.integers(1, 6), "V": st.integers(1, 7), "C": small},
    }
    if layer not in table:
        raise bad_value("layer", layer, f"one of {LAYERS}")
    return table[layer]


def layer_shapes(layer, *names):
    """{dimension: strategy} of `layer`'s shapes, as minisft's layer tests draw them (all
    dimensions, or only `names`): linear {n, t, d_in, d_out, bias}, layernorm {C (width − 2),
    lead}, gelu {shape, scale}, attention {B, T ≤ 64, H, hd ≤ 32}, cross_entropy {B, T, V,
    n_ignored}, embedding {B, T, V, C}. Use as `@given(seed=seeds(), **layer_shapes("attention"))`."""
    st, _ = _hypothesis()
    table = _shape_strategies(st, layer)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise bad_value("names", unknown, f"dimensions of {layer}: {list(table)}")
    return {n: table[n] for n in (names or table)}


def _build(layer, s, rng):
    """Keyword arguments of `minisft.nn.<layer>_forward` for drawn dimensions `s`."""
    if layer == "linear":
        inputs = {"x": rng.standard_normal((s["n"], s["t"], s["d_in"])),
                  "weight": rng.standard_normal((s["d_out"], s["d_in"]))}
        return dict(inputs, **({"bias": rng.standard_normal(s["d_out"])} if s["bias"] else {}))
    if layer == "layernorm":
        C = s["C"] + 2
        return {"x": rng.standard_normal((*s["lead"], C)) * 3 + 1, "weight": rng.standard_normal(C),
                "bias": rng.standard_normal(C)}
    if layer == "gelu":
        return {"x": rng.standard_normal(s["shape"]) * s["scale"]}
    if layer == "attention":
        return {"qkv": rng.standard_normal((s["B"], s["T"], 3 * s["H"] * s["hd"])), "n_head": s["H"]}
    if layer == "cross_entropy":
        targets = rng.integers(0, s["V"], (s["B"], s["T"]))
        targets.reshape(-1)[: min(s["n_ignored"], s["B"] * s["T"] - 1)] = -100  # at least one target stays
        return {"logits": rng.standard_normal((s["B"], s["T"], s["V"])) * 3, "targets": targets}
    return {"idx": rng.integers(0, s["V"], (s["B"], s["T"])), "wte": rng.standard_normal((s["V"], s["C"])),
            "wpe": rng.standard_normal((s["T"] + 2, s["C"]))}


def layer_inputs(layer, dtype=np.float64):
    """Keyword arguments of `minisft.nn.<layer>_forward` on `layer_shapes(layer)` and seeded random
    values: linear {x, weight[, bias]}, layernorm {x, weight, bias}, gelu {x}, attention {qkv,
    n_head}, cross_entropy {logits, targets (some −100)}, embedding {idx (repeated ids), wte, wpe}.
    Float arrays in `dtype`."""
    st, _ = _hypothesis()
    shapes = st.fixed_dictionaries(layer_shapes(layer))

    def make(args):
        s, seed = args
        inputs = _build(layer, s, np.random.default_rng(seed))
        return {k: (v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v) for k, v in inputs.items()}

    return st.tuples(shapes, seeds()).map(make)
