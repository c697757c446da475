"""Golden vectors of SPruFT's selection step: the score primitives on fixed matrices, and the
method's own scores and chosen rows on the tiny GPT-2 for each importance, with the calibration
batches given.

"zeroth_order" is left out: its gradient estimate averages random SPSA directions drawn from the
trainer's numpy Generator, which another implementation cannot be asked to repeat; its scoring is
"taylor" applied to that estimate (checked here on the exact gradient).
"""

import numpy as np

from ...methods.spruft import importance as imp
from ...model.gpt import LINEAR_SUFFIXES, linear_layer_names
from .case import WEIGHT_OUT_IN, CaseWriter
from .fixtures import (CONFIG, B, ReplayTask, add_batches, add_model_tensors, explicit_method, fixed_batches,
    snapshot, tiny_model)

PAPER = "SPruFT: Li & Bhaskara 2025, arXiv 2502.11439 (§3); OBD: LeCun, Denker & Solla 1989"
SCORES_RULE = (
    "Row scores of a weight W (d_out, d_in) reduce over its input axis j, column scores (col_*) over its output "
    "axis i; G is the summed weight gradient and F the Fisher diagonal, both given. magnitude p: sum_j |W_ij|^p "
    "(p = 1, 2); taylor: sum_j |W_ij G_ij|; taylor multivariable: |sum_j W_ij G_ij|; obd: sum_j W_ij^2 F_ij. "
    "quantile_mean: for each column i of S (classes, d_out), the mean over q in linspace(0, 1, 11) of the quantile of "
    "S[:, i] at q by linear interpolation (position q (classes - 1) in ascending order, linear between the two "
    "neighbours: numpy.quantile's default). top_rows_taylor: the 3 indices with the highest row_taylor scores, an "
    "equal score ranking the lower index higher, returned sorted ascending. global_rows: each layer's scores divided "
    "by their mean; the 7 highest of these normalised scores over all layers, ranked as one list with the layers laid "
    "end to end in the order a, b, c (equal scores: the earlier position in that list, i.e. the earlier layer, then "
    "the lower index, ranks higher); returned per layer as sorted local indices (a layer may get none).")


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
                      SCORES_RULE, PAPER, {"top_r": 3, "global_total_rows": 7, "n_quantiles": 11,
                                           "layer_order": list(layer_scores)})
    case.input("W", W, "weight W (rows 1 and 4 equal)", "(d_out, d_in)", WEIGHT_OUT_IN)
    case.input("G", G, "weight gradient G summed over calibration batches (rows 1 and 4 equal)", "(d_out, d_in)",
               WEIGHT_OUT_IN)
    case.input("F", F, "Fisher diagonal F (non-negative)", "(d_out, d_in)", WEIGHT_OUT_IN)
    case.input("S", S, "per-class row scores for the quantile mean", "(classes, d_out)")
    for name, s in layer_scores.items():
        case.input(f"layer_scores/{name}", s, f"row scores of layer {name} (layers in the order a, b, c)", "(d_l,)")
    rows = {
        "row_magnitude_p1": (imp.row_magnitude(W, 1), "Σ_j |W_ij|"),
        "row_magnitude_p2": (imp.row_magnitude(W, 2), "Σ_j W_ij²"),
        "row_taylor": (imp.row_taylor(W, G), "Σ_j |W_ij G_ij|"),
        "row_taylor_multivariable": (imp.row_taylor(W, G, True), "|Σ_j W_ij G_ij|"),
        "row_obd": (imp.row_obd(W, F), "Σ_j W_ij² F_ij"),
        "col_magnitude_p2": (imp.col_magnitude(W, 2), "Σ_i W_ij² (input columns, neuron mode)"),
        "col_taylor": (imp.col_taylor(W, G), "Σ_i |W_ij G_ij|"),
        "col_obd": (imp.col_obd(W, F), "Σ_i W_ij² F_ij"),
        "quantile_mean": (imp.quantile_mean(S, 11), "mean over q in linspace(0, 1, 11) of the linear-interpolation "
                          "quantile of S[:, i] over classes"),
    }
    for key, (value, meaning) in rows.items():
        axes = "(d_in,)" if key.startswith("col") else "(d_out,)"
        case.expected(key, value, meaning, axes, meaning, "float64")
    case.expected("top_rows_taylor", imp.top_rows(rows["row_taylor"][0], 3), "sorted indices of the 3 highest row_taylor "
                  "scores", "(3,)", "the 3 highest row_taylor, ties to the lower index, sorted", "exact")
    chosen = imp.global_threshold_rows(layer_scores, 7)
    for name, idx in chosen.items():
        case.expected(f"global_rows/{name}", idx, f"rows of layer {name} among the 7 highest scores / mean(layer "
                      "scores) over all layers", "(k_l,)", "the 7 highest s / mean(s) over layers a, b, c end to end",
                      "exact")
    case.discriminates("spruft_global_ties", [f"global_rows/{n}" for n in chosen],
                       "equal normalised scores: the earlier layer (then the lower index) ranks higher",
                       "equal normalised scores: the later layer ranks higher")
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


SELECT_RULE = (
    "SPruFT's row selection on the model of conventions.model with the given parameters (params/), for each target "
    "layer in model order (settings.layers). Calibration: batches b = 1..K (calib/x[b], calib/y[b]; B sequences of "
    "T tokens, every target counted); L_b = the batch's mean loss. G = sum over b of dL_b/dW (summed, not "
    "averaged). F = (1/S) sum over b and over the sequences s = 1..B of batch b of (d(l_bs / (B T)) / dW)^2, "
    "S = K B, where l_bs is the sum of sequence s's token losses: the square of the gradient of each sequence's "
    "share of its batch's mean loss (the gradient of the sequence's own mean loss l_bs / T is B times larger). Row "
    "scores of W (d_out, d_in): magnitude sum_j |W_ij|^p; taylor sum_j |W_ij G_ij|; taylor multivariable "
    "|sum_j W_ij G_ij|; obd sum_j W_ij^2 F_ij. Scope 'layer': each layer's `rows` highest scores (equal scores: "
    "the lower index ranks higher), sorted ascending. Scope 'global': each layer's row scores divided by their mean, "
    "ranked as one list over the layers laid end to end in model order (equal scores: the earlier position ranks "
    "higher); the max(1, floor(dec(ratio) * sum of the layers' d_out)) highest are chosen (conventions.decimal); "
    "a layer with no chosen row gets an empty list and no adapter.")


def _select_case():
    batches = fixed_batches(2, seed=41)
    layers = linear_layer_names(CONFIG)
    case = CaseWriter("spruft_select_gpt2", "SPruFT's calibration, row scores and chosen rows on the tiny GPT-2 for "
                      "each importance", SELECT_RULE, PAPER,
                      {"config": CONFIG.to_dict(), "layers": layers,
                       "variants": {v: dict(BASE, **o) for v, o in VARIANTS.items()}})
    add_model_tensors(case, "params", snapshot(tiny_model()), "the model")
    add_batches(case, "calib", batches, "calibration batches, in the order they are used")
    for variant, opts in VARIANTS.items():
        method = explicit_method("spruft", **dict(BASE, **opts))
        model = tiny_model()
        method.prepare(model, ReplayTask(batches), np.random.default_rng(0))
        score = SCORE_FORMULAS[opts["importance"], opts.get("multivariable", False)].format(p=opts.get("p", 2))
        for layer in layers:
            case.expected(f"{variant}/scores/{layer}", method.layer_scores[layer]["rows"],
                          f"{variant} row scores of {layer}", "(d_out,)", score, "float64")
            case.expected(f"{variant}/rows/{layer}", method.selected_rows.get(layer, np.zeros(0, np.int64)),
                          f"rows of {layer} chosen by {variant} (sorted; empty: no adapter)", "(k,)",
                          "top rows per layer, or one global threshold on mean-normalised scores", "exact")
    case.discriminates("spruft_obd_fisher_share", [f"obd/scores/{layer}" for layer in layers],
                       "F from the gradient of each sequence's share l_bs / (B T) of its batch's mean loss",
                       f"F from the gradient of each sequence's own mean loss l_bs / T ({B}^2 = {B * B} times larger)")
    return case


SCORE_FORMULAS = {("magnitude", False): "sum_j |W_ij|^{p}", ("taylor", False): "sum_j |W_ij G_ij|",
                  ("taylor", True): "|sum_j W_ij G_ij|", ("obd", False): "sum_j W_ij^2 F_ij"}


def spruft_cases():
    return [_scores_case(), _select_case()]
