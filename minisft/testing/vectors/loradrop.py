"""Golden vectors of LoRA-drop's selection step: the layer scores g_i = Σ_tokens ‖s B A x_i‖² of given (trained-looking) LoRA
factors on the tiny GPT-2, the importances I_i = g_i / Σ_j g_j, the kept and shared layers, and
the threshold rule on hand-made importances with ties and exact threshold hits.
"""

import numpy as np

from ...model.adapters import LoRA
from ...methods.loradrop import keep_and_share, layer_importance, layer_scores, select_layers
from ...model.gpt import linear_layer_names
from .case import CaseWriter
from .fixtures import CONFIG, add_batches, add_model_tensors, fixed_batches, snapshot, tiny_model

PAPER = "LoRA-drop: Zhou et al. 2024, arXiv 2402.07721 (§3)"
RULE_TEXT = (
    "LoRA-drop's scoring and selection on the model of conventions.model with the given parameters (params/) and a "
    "LoRA (conventions.adapters; r, alpha in settings) on every linear layer (settings.layers, in model order). "
    "g_i = the sum over every token position of every sample batch (sample/x[b]) of ||s (x_i A_i^T) B_i^T||^2, x_i "
    "the input of layer i in the forward pass of the model with every LoRA active (each layer's output includes its "
    "LoRA), s = alpha / r. importance I_i = g_i / sum_j g_j. Selection with threshold T: order the layers of a pool "
    "by g descending (equal g: the lower position first); keep the shortest prefix whose g sum reaches T of the "
    "pool's total, compared exactly: sum over the prefix of g >= dec(T) * sum over the pool of g, in rational "
    "arithmetic on the float64 values (conventions.decimal). 'joint': one pool of all layers; 'per_type': one pool "
    "per module type (the layers with one suffix: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj), i.e. the "
    "importance renormalised within each type. kept: the layers kept (True), by position in settings.layers; "
    "shared: the layers not kept (each type's dropped layers then share one LoRA). rule/<name>/kept: the prefix rule "
    "on a given importance vector (one pool), the kept indices sorted ascending. rule_per_type/<key>: the per-type "
    "selection on given g (layers as settings.layers).")
R, ALPHA = 2, 4.0
SELECTIONS = {"joint_0.9": (0.9, "joint"), "joint_0.5": (0.5, "joint"), "per_type_0.9": (0.9, "per_type")}
RULE = {  # name -> (importance, threshold, what it exercises)
    "exact_hit": ([4.0, 3.0, 2.0, 1.0], 0.7, "0.4 + 0.3 reaches T = 0.7 exactly (in rationals): 2 layers kept"),
    "ties": ([1.0, 1.0, 1.0, 1.0], 0.5, "equal importances: lower layer index first"),
    "zeros_at_one": ([0.0, 5.0, 0.0, 5.0], 1.0, "T = 1 keeps exactly the layers with g > 0"),
    "unsorted": ([0.1, 0.7, 0.05, 0.15], 0.9, "the order is by importance, the result sorted by index"),
    "float_cumsum": ([4.0, 7.0, 6.0, 3.0], 0.65, "7 + 6 = 13 = 0.65 · 20 exactly: 2 kept (the float cumulative sum "
                     "of I, 0.35 + 0.3 = 0.6499999999999999, would keep 3)"),
}
# per-type selection at T = 0.9 on these g (settings.layers order): within each type the top layer holds
# 95%, 80%, 91% and 98% of the type's g, while every type's share of the total is below 0.9
PER_TYPE_G = [9.5, 2.0, 30.0, 1.0, 0.5, 8.0, 3.0, 46.0]


def _scored_model():
    model = tiny_model()
    model.freeze()
    rng = np.random.default_rng(61)
    for layer in linear_layer_names(CONFIG):
        ad = model.add_adapter(layer, LoRA(model, layer, r=R, alpha=ALPHA, generator=rng))
        ad.B[...] = 0.1 * rng.standard_normal(ad.B.shape)
    return model


def loradrop_cases():
    model = _scored_model()
    layers = linear_layer_names(CONFIG)
    sample = fixed_batches(2, seed=63)
    scores, _ = layer_scores(model, sample)
    importance = layer_importance(scores)
    case = CaseWriter("loradrop_select", "LoRA-drop's scoring and selection on the tiny GPT-2 with given LoRA factors "
                      "on every target layer", RULE_TEXT, PAPER,
                      {"config": CONFIG.to_dict(), "layers": layers, "r": R, "alpha": ALPHA,
                       "selections": {k: {"threshold": t, "selection": s} for k, (t, s) in SELECTIONS.items()},
                       "rule": {k: {"threshold": t, "what": w} for k, (_, t, w) in RULE.items()},
                       "rule_per_type": {"threshold": 0.9, "selection": "per_type"}})
    add_model_tensors(case, "params", snapshot(model), "the probe model")
    add_batches(case, "sample", sample, "the sample D_s, in batches")
    case.expected("g", np.array([scores[n] for n in layers]), "g_i = Σ over every token of the sample of "
                  "‖s · (x_i Aᵀ) Bᵀ‖², x_i the input of layer i in the model with every LoRA active", "(layers,)",
                  "g_i = sum over tokens of ||s (x_i A^T) B^T||^2", "float64")
    case.expected("importance", np.array([importance[n] for n in layers]), "I_i = g_i / Σ_j g_j", "(layers,)",
                  "I_i = g_i / sum_j g_j", "float64")
    for key, (threshold, selection) in SELECTIONS.items():
        add_selection(case, key, layers, scores, threshold, selection)
    for key, (g, threshold, _) in RULE.items():
        case.input(f"rule/{key}/importance", np.array(g), "per-layer importance", "(layers,)")
        case.expected(f"rule/{key}/kept", select_layers(np.array(g), threshold), f"kept layer indices at "
                      f"T = {threshold}, sorted", "(k,)", "the shortest prefix by descending importance reaching T",
                      "exact")
    case.input("rule_per_type/g", np.array(PER_TYPE_G), "per-layer g (layers as settings.layers)", "(layers,)")
    add_selection(case, "rule_per_type", layers, dict(zip(layers, PER_TYPE_G)), 0.9, "per_type")
    case.discriminates("loradrop_threshold_exact", ["rule/float_cumsum/kept"],
                       "sum of the prefix's g >= dec(T) * sum g, in exact arithmetic",
                       "the float64 cumulative sum of I = g / sum(g) >= T")
    case.discriminates("loradrop_ties", ["rule/ties/kept"], "equal importance: the lower index first",
                       "equal importance: the higher index first")
    case.discriminates("loradrop_per_type_renormalised", ["rule_per_type/kept", "rule_per_type/shared"],
                       "per type: the prefix reaching T of the type's own total g (I renormalised within the type)",
                       "per type: the prefix whose joint importance I = g / sum over all layers reaches T (the whole "
                       "type when it never does)")
    return [case]


def add_selection(case, key, layers, scores, threshold, selection):
    """Expected `key`/kept and `key`/shared ((layers,) bool) of the selection at `threshold`."""
    kept, shared = keep_and_share(layers, scores, threshold, selection)
    case.expected(f"{key}/kept", np.array([n in kept for n in layers]), f"layers keeping their own LoRA "
                  f"(threshold {threshold}, {selection})", "(layers,)",
                  "the shortest prefix by descending g reaching T of the pool's total", "exact")
    case.expected(f"{key}/shared", np.array([any(n in d for d in shared.values()) for n in layers]),
                  "layers sharing their module type's one LoRA", "(layers,)", "not kept", "exact")
