"""LoRA-drop — LoRA parameter pruning by output evaluation.

Paper: Zhou, Lu, Xu, Zhu, Zhao & Yang, "LoRA-drop: Efficient LoRA Parameter Pruning based on Output
Evaluation", arXiv 2402.07721 (COLING 2025), §3. Authors' code: none found released.

Keep LoRA on the layers whose LoRA *output* matters; the others share one LoRA:

    1. probe    LoRA on every target layer, trained for   method.LoRADrop.prepare (the probe loop),
                `probe_steps` AdamW steps on a sample D_s  method.LoRADrop.sample (D_s)
    2. score    g_i = Σ_{x ∈ D_s} ‖ΔW_i x_i‖²             method.layer_scores (forward only),
                    = Σ_tokens ‖s B A x_i‖²               selection.layer_output_sq_norm (one batch)
                I_i = g_i / Σ_j g_j                       method.layer_importance,
                                                          selection.normalize_importance
    3. select   the smallest prefix of the layers by I    selection.select_layers (T = 0.9),
                descending whose cumulative I reaches T   method.keep_and_share (pools, sharing)
    4. reset    kept layers get their own fresh LoRA; the  method.LoRADrop.prepare, with
                dropped layers of each module type share  adapters.SharedLoRA (gradient summed over
                ONE LoRA                                  the layers that use it)

Parameter counts (report): budgets.lora_param_count. Derivations: proofs/loradrop_selection.md
(selection), proofs/loradrop_method.md (scoring, sharing).

Choices where the paper is ambiguous (the sample D_s, the probe, scoring batches, "reaches T" in
exact arithmetic, ties, joint vs per-type selection, re-initialisation, draw order):
proofs/decisions.md §3 (LoRA-drop).
"""

from .method import SELECTIONS, LoRADrop, LoRADropConfig, keep_and_share, layer_importance, layer_scores
from .selection import layer_output_sq_norm, normalize_importance, select_layers

__all__ = ["SELECTIONS", "LoRADrop", "LoRADropConfig", "keep_and_share", "layer_importance", "layer_output_sq_norm",
           "layer_scores", "normalize_importance", "select_layers"]
