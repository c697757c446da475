"""Golden vectors of SPruFT's selection step (minisft.methods.spruft; the paper's map is its package
docstring): the score primitives on fixed matrices, and the method's own scores and chosen rows on
the tiny GPT-2 for each importance, with the calibration batches given.

"zeroth_order" is left out: its gradient estimate averages random SPSA directions drawn from the
trainer's numpy Generator, which another implementation cannot be asked to repeat; its scoring is
"taylor" applied to that estimate (checked here on the exact gradient).
"""

import numpy as np

from ...methods.spruft import importance as imp
from ...model.gpt import LINEAR_SUFFIXES, linear_layer_names
from .case import WEIGHT_OUT_IN, CaseWriter
from .fixtures import (CONFIG, ReplayTask, add_batches, add_model_tensors, explicit_method, fixed_batches, snapshot,
    tiny_model)

SCORES = "minisft/methods/spruft/__init__.py (the paper's §3 map); proofs/importance.md"


def _scores_case():
    rng = np.random.default_rng(31)
    W, G = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    W[4], G[4] = W[1], G[1]  # rows 1 and 4 tie under every score: the lower index wins
    F = rng.random((6, 5))
    S = rng.standard_normal((4, 6))
    layer_scores = {"a": np.array([1.0, 2.0, 3.0, 4.0, 2.0, 0.0]), "b": np.array([2.0, 4.0, 6.0, 8.0]),
                    "c": np.array([3.0, 6.0, 3.0, 0.0, 3.0])}  # mean-normalised: ties at 1.0 and 2.0 across layers
    case = CaseWriter("spruft_scores", "SPruFT's row and column scores, the quantile mean, top-r rows and one "
                      "global threshold over mean-normalised layer scores, on fixed inputs with ties",
                      SCORES, {"top_r": 3, "global_total_rows": 7, "n_quantiles": 11,
                               "ties": "equal scores: the lower row index wins; globally the earlier layer, "
                                       "then the lower index"})
    case.input("W", W, "weight W (rows 1 and 4 equal)", "(d_out, d_in)", WEIGHT_OUT_IN)
    case.input("G", G, "weight gradient G summed over calibration batches (rows 1 and 4 equal)", "(d_out, d_in)",
               WEIGHT_OUT_IN)
    case.input("F", F, "Fisher diagonal F (non-negative)", "(d_out, d_in)", WEIGHT_OUT_IN)
    case.input("S", S, "per-class row scores for the quantile mean", "(classes, d_out)")
    for name, s in layer_scores.items():
        case.input(f"layer_scores/{name}", s, f"row scores of layer {name} (layers in the order a, b, c)", "(d_l,)")
    rows = {
        "row_magnitude_p1": (imp.row_magnitude(W, 1), "Σ_j |W_ij|", "importance.row_magnitude(W, p=1)"),
        "row_magnitude_p2": (imp.row_magnitude(W, 2), "Σ_j W_ij²", "importance.row_magnitude(W, p=2)"),
        "row_taylor": (imp.row_taylor(W, G), "Σ_j |W_ij G_ij|", "importance.row_taylor"),
        "row_taylor_multivariable": (imp.row_taylor(W, G, True), "|Σ_j W_ij G_ij|",
                                     "importance.row_taylor(multivariable=True)"),
        "row_obd": (imp.row_obd(W, F), "Σ_j W_ij² F_ij", "importance.row_obd"),
        "col_magnitude_p2": (imp.col_magnitude(W, 2), "Σ_i W_ij² (input columns, neuron mode)", "importance.col_magnitude"),
        "col_taylor": (imp.col_taylor(W, G), "Σ_i |W_ij G_ij|", "importance.col_taylor"),
        "col_obd": (imp.col_obd(W, F), "Σ_i W_ij² F_ij", "importance.col_obd"),
        "quantile_mean": (imp.quantile_mean(S, 11), "mean over q in linspace(0, 1, 11) of the linear-interpolation "
                          "quantile of S[:, i] over classes", "importance.quantile_mean"),
    }
    for key, (value, meaning, eq) in rows.items():
        axes = "(d_in,)" if key.startswith("col") else "(d_out,)"
        case.expected(key, value, meaning, axes, f"minisft.methods.spruft.{eq}", "float64")
    case.expected("top_rows_taylor", imp.top_rows(rows["row_taylor"][0], 3), "sorted indices of the 3 highest row_taylor "
                  "scores", "(3,)", "minisft.methods.spruft.importance.top_rows", "exact")
    chosen = imp.global_threshold_rows(layer_scores, 7)
    for name, idx in chosen.items():
        case.expected(f"global_rows/{name}", idx, f"rows of layer {name} among the 7 highest scores / mean(layer "
                      "scores) over all layers", "(k_l,)", "minisft.methods.spruft.importance.global_threshold_rows",
                      "exact")
    return case


VARIANTS = {  # variant -> the options that differ from BASE
    "magnitude_p1": {"importance": "magnitude", "p": 1},
    "magnitude_p2": {"importance": "magnitude", "p": 2},
    "taylor": {"importance": "taylor"},
    "taylor_multivariable": {"importance": "taylor", "multivariable": True},
    "obd": {"importance": "obd"},
    "taylor_global": {"importance": "taylor", "rows": None, "ratio": 0.25, "scope": "global"},
}
BASE = {"ratio": None, "rows": 2, "importance": "taylor", "scope": "layer", "mode": "rows", "init": "zeros",
        "calib_batches": 2, "calib_batch_size": None, "multivariable": False, "p": 2, "targets": LINEAR_SUFFIXES, "zo_samples": 16,
        "zo_eps": 1e-3, "bias": True}


def _select_case():
    batches = fixed_batches(2, seed=41)
    case = CaseWriter("spruft_select_gpt2", "SPruFT.prepare on the tiny GPT-2 for each importance: each target "
                      "layer's row scores and chosen rows (calibration: the given batches, G = Σ over batches of "
                      "the batch-mean-loss weight gradient; OBD's F = mean over sequences of the squared "
                      "per-sequence gradient)", SCORES,
                      {"config": CONFIG.to_dict(), "variants": {v: dict(BASE, **o) for v, o in VARIANTS.items()}})
    add_model_tensors(case, "params", snapshot(tiny_model()), "the model")
    add_batches(case, "calib", batches, "calibration batches, in the order they are used")
    for variant, opts in VARIANTS.items():
        method = explicit_method("spruft", **dict(BASE, **opts))
        model = tiny_model()
        method.prepare(model, ReplayTask(batches), np.random.default_rng(0))
        for layer in linear_layer_names(CONFIG):
            case.expected(f"{variant}/scores/{layer}", method.layer_scores[layer]["rows"],
                          f"{variant} row scores of {layer}", "(d_out,)", f"SPruFT(importance={opts['importance']!r})",
                          "float64")
            case.expected(f"{variant}/rows/{layer}", method.selected_rows.get(layer, np.zeros(0, np.int64)),
                          f"rows of {layer} chosen by {variant} (sorted; empty: no adapter)", "(k,)",
                          "SPruFT._select: top rows per layer, or one global threshold on mean-normalised scores",
                          "exact")
    return case


def spruft_cases():
    return [_scores_case(), _select_case()]
