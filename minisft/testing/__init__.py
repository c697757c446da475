"""Check another implementation against minisft: load a golden-vector case, compare with a readable
message, and draw inputs with the hypothesis strategies minisft's own tests use.

    import minisft.testing as mt
    case = mt.load_case("vectors", "nn_linear_float64")        # after `minisft vectors --out vectors`
    y = my_linear(case["x"], case["weight"], case["bias"])
    mt.assert_close(y, case["y"], **case.tolerance("y"), name="nn_linear_float64:y")
    case.check({"y": y, "dx": dx, "dweight": dW, "dbias": db})   # each against its own tolerance

The suite (`minisft vectors --out DIR`, written by minisft.testing.vectors) is one safetensors file per case
and a `manifest.json`:

    {"schema_version": 1, "minisft_version": ..., "cases": {name: {
        "file": "<name>.safetensors", "description": ..., "checks": "equation / section / function",
        "settings": {...},                                    # the case's constants (shapes, options)
        "tensors": {key: {"role": "input" | "expected", "meaning": ..., "axes": ..., "dtype": ...,
                          "shape": [...], "layout": ..., "equation": ..., "rtol": r, "atol": a}}}}}

A float tensor `actual` passes when |actual − expected| ≤ atol + rtol·|expected| elementwise (numpy's
`allclose` rule); integer and bool tensors (token ids, selected rows, masks) must be equal. The
manifest gives every expected tensor its own rtol and atol; atol is a multiple of the tensor's
largest |entry|, so an entry that is small next to the rest of its tensor is judged by the tensor's
scale, as minisft's own parity tests do (max |a − b| / max |b|).

Strategies (hypothesis is an optional dependency: it is imported when a strategy function is first
called, with an error saying how to install it): `seeds`, `sides`, `gpt_configs`, `float_arrays`,
`tied_floats`, `wide_floats`, `ratios`, `same_shape`, `knapsack_instances`, `knapsack_values`,
`integer_importances`, `percent_thresholds`, `layer_inputs`. minisft's tests draw from these.
"""

import json
import math
from pathlib import Path

import numpy as np

from ..core.config import GPTConfig
from ..core.errors import MinisftError, bad_type, bad_value

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ROLES = ("input", "expected")


class VectorMismatch(AssertionError):
    """An implementation's tensor differs from a golden vector beyond the tolerance."""


# ---------------------------------------------------------------------------------- cases
def read_manifest(directory):
    """The manifest.json of a suite folder as a dict; a clear error for a missing, foreign or newer one."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise MinisftError(f"directory={str(directory)!r}: expected a vector suite folder with {MANIFEST} "
                           "(write one with `minisft vectors --out DIR`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MinisftError(f"{path}: expected a JSON manifest ({e})") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise bad_value(f"{path} schema_version", version,
                        f"{SCHEMA_VERSION} (this minisft.testing reads schema {SCHEMA_VERSION})")
    return manifest


def list_cases(directory):
    """Names of every case in a suite folder, in manifest order."""
    return list(read_manifest(directory)["cases"])


def load_case(directory, name):
    """The case `name` of the suite in `directory`: a Case (tensors as NumPy arrays + their manifest
    entries)."""
    from safetensors import SafetensorError, safe_open

    manifest = read_manifest(directory)
    cases = manifest["cases"]
    if name not in cases:
        raise bad_value("name", name, f"a case of {directory}: {sorted(cases)[:8]}{' ...' if len(cases) > 8 else ''}")
    entry = cases[name]
    path = Path(directory) / entry["file"]
    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise MinisftError(f"{path}: expected the case file of {name!r} ({e})") from None
    if set(tensors) != set(entry["tensors"]):
        raise MinisftError(f"{path}: tensors {sorted(set(tensors) ^ set(entry['tensors']))[:5]} differ from the "
                           "manifest's list: a mixed-up suite folder (regenerate it)")
    return Case(name, entry, tensors)


class Case:
    """One golden-vector case: `case[key]` is a tensor, `case.info(key)` its manifest entry."""

    def __init__(self, name, entry, tensors):
        self.name, self.entry, self.tensors = name, entry, tensors
        self.description, self.checks = entry["description"], entry["checks"]
        self.settings = entry.get("settings", {})

    def __getitem__(self, key):
        if key not in self.tensors:
            raise KeyError(f"{self.name}: no tensor {key!r}; it has {sorted(self.tensors)[:10]}")
        return self.tensors[key]

    def __contains__(self, key):
        return key in self.tensors

    def keys(self):
        return list(self.entry["tensors"])

    def info(self, key):
        self[key]
        return self.entry["tensors"][key]

    def inputs(self, prefix=""):
        """{key: array} of the inputs (keys starting with `prefix`, which is stripped)."""
        return self._role("input", prefix)

    def expected(self, prefix=""):
        """{key: array} of the expected tensors (keys starting with `prefix`, which is stripped)."""
        return self._role("expected", prefix)

    def _role(self, role, prefix):
        return {k[len(prefix):]: self.tensors[k] for k, e in self.entry["tensors"].items()
                if e["role"] == role and k.startswith(prefix)}

    def tolerance(self, key):
        """{"rtol": r, "atol": a} of an expected tensor (0, 0 for integer and bool tensors)."""
        e = self.info(key)
        if e["role"] != "expected":
            raise bad_value("key", key, f"an expected tensor of {self.name} ({key!r} is an input)")
        return {"rtol": e["rtol"], "atol": e["atol"]}

    def check(self, actual, prefix=""):
        """assert_close every tensor of `actual` ({key: array}; keys are `prefix` + key in the case)
        against its expected tensor and tolerance; raises VectorMismatch listing every failure."""
        if not isinstance(actual, dict) or not actual:
            raise bad_type("actual", actual, "a non-empty dict {tensor key: array}")
        failures = []
        for key, value in actual.items():
            full = prefix + key
            try:
                assert_close(value, self[full], **self.tolerance(full), name=f"{self.name}:{full}")
            except VectorMismatch as e:
                failures.append(str(e))
        if failures:
            raise VectorMismatch("\n".join(failures))


# ------------------------------------------------------------------------------ comparison
def _index(flat, shape):
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def assert_close(actual, expected, rtol, atol, name="tensor"):
    """Raise VectorMismatch unless `actual` matches `expected`: same shape; floats within
    |a − e| ≤ atol + rtol·|e| everywhere (NaN only where expected is NaN); integers and bools equal.

    The message names the tensor, the shapes, the largest absolute and relative error with the
    index where each occurs (and both values there), and how many entries fail."""
    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape:
        hint = ""
        if a.ndim == 2 and a.shape == e.shape[::-1]:
            hint = (" — the transpose of the expected shape: a weight in the other layout? minisft weights "
                    "are (out, in), HF GPT-2 Conv1D weights (in, out)")
        raise VectorMismatch(f"{name}: shape {a.shape}, expected {e.shape}{hint}")
    if e.dtype.kind in "biu" and a.dtype.kind in "biu":
        bad = np.flatnonzero(a.ravel() != e.ravel())
        if bad.size:
            where = [_index(i, e.shape) for i in bad[:5]]
            shown = ", ".join(f"{w}: {a[w].item()!r} vs {e[w].item()!r}" for w in where)
            raise VectorMismatch(f"{name}: {bad.size} of {e.size} entries differ (exact match expected; "
                                 f"dtype {a.dtype} vs {e.dtype}); first at {shown}")
        return
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    same = (np.isnan(a64) & np.isnan(e64)) | (a64 == e64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(same, 0.0, np.abs(a64 - e64))
        err = np.where(np.isnan(err), np.inf, err)  # NaN against a number, or inf against another value
        bad = (err > 0) & ~(err <= atol + rtol * np.abs(e64))  # a NaN bound (0 · inf) accepts only equality
    if not bad.any():
        return
    worst = np.unravel_index(int(np.argmax(err)), e.shape) if e.ndim else ()
    lines = [f"{name}: {int(bad.sum())} of {e.size} entries outside |actual - expected| <= atol + rtol*|expected| "
             f"(rtol={rtol:.1e}, atol={atol:.1e}); shape {e.shape}",
             f"  max abs error {float(err[worst]):.3e} at index {_index_text(worst)}: actual {float(a64[worst])!r}, "
             f"expected {float(e64[worst])!r}"]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(np.abs(e64) > 0, err / np.abs(e64), 0.0)  # over the entries whose expected value is not 0
    at = np.unravel_index(int(np.argmax(rel)), e.shape) if e.ndim else ()
    if rel[at] > 0:
        lines.append(f"  max rel error {float(rel[at]):.3e} at index {_index_text(at)}: actual {float(a64[at])!r}, "
                     f"expected {float(e64[at])!r}")
    raise VectorMismatch("\n".join(lines))


def _index_text(index):
    return str(tuple(int(i) for i in index))


# ------------------------------------------------------------------------------ strategies
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
    """Any finite or infinite float (no NaN)."""
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


def _layer_shapes(st, layer):
    """(strategy of a shape dict, builder(shape dict, rng, dtype) -> inputs) of one layer."""
    small = sides(5)
    if layer == "linear":
        return (st.fixed_dictionaries({"lead": st.lists(small, min_size=1, max_size=2), "d_in": small,
                                       "d_out": small, "bias": st.booleans()}),
                lambda s, rng: dict({"x": rng.standard_normal((*s["lead"], s["d_in"])),
                                     "weight": rng.standard_normal((s["d_out"], s["d_in"]))},
                                    **({"bias": rng.standard_normal(s["d_out"])} if s["bias"] else {})))
    if layer == "layernorm":
        return (st.fixed_dictionaries({"lead": st.lists(small, min_size=1, max_size=3), "C": sides(7, 3)}),
                lambda s, rng: {"x": rng.standard_normal((*s["lead"], s["C"])) * 3 + 1,
                                "weight": rng.standard_normal(s["C"]), "bias": rng.standard_normal(s["C"])})
    if layer == "gelu":
        return (st.fixed_dictionaries({"shape": st.lists(small, min_size=1, max_size=3), "scale": st.floats(0.1, 4.0)}),
                lambda s, rng: {"x": rng.standard_normal(s["shape"]) * s["scale"]})
    if layer == "attention":
        return (st.fixed_dictionaries({"B": sides(3), "T": sides(6), "H": sides(3), "hd": sides(4)}),
                lambda s, rng: {"qkv": rng.standard_normal((s["B"], s["T"], 3 * s["H"] * s["hd"])), "n_head": s["H"]})
    if layer == "cross_entropy":
        return (st.fixed_dictionaries({"B": sides(3), "T": sides(5), "V": sides(9, 2), "ignored": st.integers(0, 3)}),
                _cross_entropy_inputs)
    if layer == "embedding":
        return (st.fixed_dictionaries({"B": sides(3), "T": sides(6), "V": sides(7), "C": small}),
                lambda s, rng: {"idx": rng.integers(0, s["V"], (s["B"], s["T"])),
                                "wte": rng.standard_normal((s["V"], s["C"])),
                                "wpe": rng.standard_normal((s["T"] + 2, s["C"]))})
    raise bad_value("layer", layer, f"one of {LAYERS}")


def _cross_entropy_inputs(s, rng):
    targets = rng.integers(0, s["V"], (s["B"], s["T"]))
    targets.reshape(-1)[: min(s["ignored"], s["B"] * s["T"] - 1)] = -100  # at least one target stays
    return {"logits": rng.standard_normal((s["B"], s["T"], s["V"])) * 3, "targets": targets}


LAYERS = ("linear", "layernorm", "gelu", "attention", "cross_entropy", "embedding")


def layer_inputs(layer, dtype=np.float64):
    """Keyword arguments of `minisft.nn.<layer>_forward` on hypothesis-drawn shapes and seeded
    random values (the shapes minisft's finite-difference tests draw): linear {x, weight[, bias]},
    layernorm {x, weight, bias}, gelu {x}, attention {qkv, n_head}, cross_entropy {logits, targets
    (some −100)}, embedding {idx (repeated ids), wte, wpe}. Float arrays in `dtype`."""
    st, _ = _hypothesis()
    shapes, build = _layer_shapes(st, layer)

    def make(args):
        s, seed = args
        inputs = build(s, np.random.default_rng(seed))
        return {k: (v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v) for k, v in inputs.items()}

    return st.tuples(shapes, seeds()).map(make)
