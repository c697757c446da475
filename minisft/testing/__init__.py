"""Check another implementation against minisft: load a golden-vector case, compare with a readable
message, replay a training run step by step, and draw inputs with the hypothesis strategies
minisft's own tests use.

    import minisft.testing as mt
    case = mt.load_case("vectors", "nn_linear_float64")        # after `minisft vectors --out vectors`
    print(case.rule)                                            # what the case pins, self-contained
    y = my_linear(case["x"], case["weight"], case["bias"])
    mt.assert_close(y, case["y"], **case.tolerance("y"), name="nn_linear_float64:y")
    case.check({"y": y, "dx": dx, "dweight": dW, "dbias": db})   # each against its own tolerance
    mt.check_trajectory(mt.load_case("vectors", "train_gmt"), my_dump)   # first step/tensor that differs

The suite (`minisft vectors --out DIR`, written by minisft.testing.vectors) is one safetensors file per case
and a `manifest.json`:

    {"schema_version": 2, "minisft_version": ..., "conventions": {...},   # the model, AdamW, clipping, ...
     "cases": {name: {
        "file": "<name>.safetensors", "sha256": <hex digest of the file>,
        "description": ..., "rule": <the rule the case pins, as formulas and precise sentences>,
        "references": <papers>, "discriminates": [{"id", "tensors", "right", "wrong"}, ...],
        "settings": {...},                                    # the case's constants (shapes, options)
        "tensors": {key: {"role": "input" | "expected", "meaning": ..., "axes": ..., "dtype": ...,
                          "shape": [...], "layout": ..., "equation": ..., "rtol": r, "atol": a}}}}}

`load_case` checks each file against its SHA-256 and each tensor's dtype and shape against the
manifest (a damaged or mixed-up file is a CorruptFileError). A float tensor `actual` passes when
|actual − expected| ≤ atol + rtol·|expected| elementwise (numpy's `allclose` rule); integer and bool
tensors (token ids, selected rows, masks) must be equal. The manifest gives every expected tensor
its own rtol and atol; atol is a multiple of the tensor's largest |entry|, so an entry that is small
next to the rest of its tensor is judged by the tensor's scale, as minisft's own parity tests do
(max |a − b| / max |b|). A case's `discriminates` entries name readings of the rule that the case
tells apart (each wrong reading fails the case: tests/test_vector_readings.py implements them).

Strategies (minisft.testing.strategies; hypothesis is an optional dependency, imported when a
strategy function is first called): `seeds`, `sides`, `gpt_configs`, `float_arrays`, `tied_floats`,
`wide_floats`, `ratios`, `same_shape`, `knapsack_instances`, `knapsack_values`,
`integer_importances`, `percent_thresholds`, `layer_shapes`, `layer_inputs`. minisft's tests draw
from these.
"""

from .compare import VectorMismatch, assert_close, check_trajectory
from .strategies import (KNAPSACK_TRICKY, LAYERS, float_arrays, gpt_configs, integer_importances, knapsack_instances,
    knapsack_values, layer_inputs, layer_shapes, percent_thresholds, ratios, same_shape, seeds, sides, tied_floats,
    wide_floats)
from .suite import MANIFEST, ROLES, SCHEMA_VERSION, Case, list_cases, load_case, read_manifest

STRATEGIES = ("seeds", "sides", "gpt_configs", "float_arrays", "tied_floats", "wide_floats", "ratios", "same_shape",
              "knapsack_instances", "knapsack_values", "integer_importances", "percent_thresholds", "layer_shapes",
              "layer_inputs")

__all__ = ["KNAPSACK_TRICKY", "LAYERS", "MANIFEST", "ROLES", "SCHEMA_VERSION", "STRATEGIES", "Case", "VectorMismatch",
           "assert_close", "check_trajectory", "float_arrays", "gpt_configs", "integer_importances",
           "knapsack_instances", "knapsack_values", "layer_inputs", "layer_shapes", "list_cases", "load_case",
           "percent_thresholds", "ratios", "read_manifest", "same_shape", "seeds", "sides", "tied_floats",
           "wide_floats"]
