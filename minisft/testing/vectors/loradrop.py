"""Golden vectors of LoRA-drop's selection step (minisft.methods.loradrop; the paper's map is its
package docstring): the layer scores g_i = Σ_tokens ‖s B A x_i‖² of given (trained-looking) LoRA
factors on the tiny GPT-2, the importances I_i = g_i / Σ_j g_j, the kept and shared layers, and
the threshold rule on hand-made importances with ties and exact threshold hits.
"""

import numpy as np

from ...model.adapters import LoRA
from ...methods.loradrop import keep_and_share, layer_importance, layer_scores, select_layers
from ...model.gpt import linear_layer_names
from .case import CaseWriter
from .fixtures import CONFIG, add_batches, add_model_tensors, fixed_batches, snapshot, tiny_model

MAP = "minisft/methods/loradrop/__init__.py (the paper's §3 map); proofs/loradrop_selection.md, loradrop_method.md"
R, ALPHA = 2, 4.0
SELECTIONS = {"joint_0.9": (0.9, "joint"), "joint_0.5": (0.5, "joint"), "per_type_0.9": (0.9, "per_type")}
RULE = {  # name -> (importance, threshold, what it exercises)
    "exact_hit": ([4.0, 3.0, 2.0, 1.0], 0.7, "0.4 + 0.3 reaches T = 0.7 exactly (in rationals): 2 layers kept"),
    "ties": ([1.0, 1.0, 1.0, 1.0], 0.5, "equal importances: lower layer index first"),
    "zeros_at_one": ([0.0, 5.0, 0.0, 5.0], 1.0, "T = 1 keeps exactly the layers with g > 0"),
    "unsorted": ([0.1, 0.7, 0.05, 0.15], 0.9, "the order is by importance, the result sorted by index"),
}


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
                      "on every target layer (layer order: settings.layers)", MAP,
                      {"config": CONFIG.to_dict(), "layers": layers, "r": R, "alpha": ALPHA,
                       "selections": {k: {"threshold": t, "selection": s} for k, (t, s) in SELECTIONS.items()},
                       "rule": {k: {"threshold": t, "what": w} for k, (_, t, w) in RULE.items()}})
    add_model_tensors(case, "params", snapshot(model), "the probe model")
    add_batches(case, "sample", sample, "the sample D_s, in batches")
    case.expected("g", np.array([scores[n] for n in layers]), "g_i = Σ over every token of the sample of "
                  "‖s · (x_i Aᵀ) Bᵀ‖², x_i the input of layer i in the model with every LoRA active", "(layers,)",
                  "minisft.methods.loradrop.layer_scores", "float64")
    case.expected("importance", np.array([importance[n] for n in layers]), "I_i = g_i / Σ_j g_j", "(layers,)",
                  "minisft.methods.loradrop.layer_importance", "float64")
    for key, (threshold, selection) in SELECTIONS.items():
        kept, shared = keep_and_share(layers, scores, threshold, selection)
        case.expected(f"{key}/kept", np.array([n in kept for n in layers]), f"layers keeping their own LoRA "
                      f"(threshold {threshold}, {selection}: the smallest prefix by descending I whose sum reaches T)",
                      "(layers,)", "minisft.methods.loradrop.keep_and_share", "exact")
        case.expected(f"{key}/shared", np.array([any(n in d for d in shared.values()) for n in layers]),
                      "layers sharing their module type's one LoRA", "(layers,)",
                      "minisft.methods.loradrop.keep_and_share", "exact")
    for key, (g, threshold, _) in RULE.items():
        case.input(f"rule/{key}/importance", np.array(g), "per-layer importance", "(layers,)")
        case.expected(f"rule/{key}/kept", select_layers(np.array(g), threshold), f"kept layer indices at "
                      f"T = {threshold}, sorted", "(k,)", "minisft.methods.loradrop.select_layers", "exact")
    return [case]
