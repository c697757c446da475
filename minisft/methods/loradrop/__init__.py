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

Choices where the paper is ambiguous:
- The sample D_s ("a sampled fraction of the training data"; the paper samples a stratified α% of a
  labelled data set): the training stream is cut into its m = floor(n / (T + 1)) disjoint windows
  of T + 1 tokens (batches.disjoint_windows), and k = floor(sample_fraction · m) of them (fraction
  read as its shortest decimal) are drawn without replacement; k = 0 is an error. D_s is fixed for
  the run.
- Probe: plain LoRA (same r, α) on every target layer, base frozen; AdamW(lr=probe_lr,
  weight_decay=0, torch defaults otherwise), constant lr, no clipping, one batch per step of
  task.batch_size windows drawn uniformly with replacement from D_s.
- Scoring batches: every window of D_s exactly once, in order, in batches of task.batch_size (the
  last one may be smaller), with every probe LoRA active. x_i runs over every token position.
- "Reaches T" means cumulative I ≥ T. The comparison is exact: Σ_{j ∈ prefix} g_j ≥ T · Σ_j g_j
  evaluated in rational arithmetic on the exact values of the float importances (a loop over
  layers, not elements), with T read as its shortest decimal (0.9 means 9/10). So no rounding in a
  float cumsum can stop early or late; T = 1 keeps exactly the layers with g > 0.
- Ties in importance: the lower layer index comes first (a stable sort of −g). Importance is
  normalised internally, so any positive rescaling of g that is exact in floating point (e.g. by a
  power of two) leaves the selection unchanged.
- Selection scope: `selection="joint"` (default) sorts all target layers together by I, normalised
  over all of them (the paper's step 3 sorts one list of layers); g is a sum over output
  coordinates, so wide layers (c_attn: 3C, c_fc: 4C outputs) tend to outrank narrow ones.
  `selection="per_type"` applies the threshold to each module type (attn.c_attn, attn.c_proj,
  mlp.c_fc, mlp.c_proj) separately, each normalised within its type. Sharing is always per module
  type (the layer shapes differ between types).
- Re-initialisation: `reinit=True` (default) gives kept layers fresh LoRA; `reinit=False` keeps the
  probe's trained LoRA on them. The shared LoRA is always fresh (no single probe LoRA is its origin).
- Random draws, all from the trainer's Generator, in this order: D_s (rng.choice(m, k,
  replace=False), sorted); the probe LoRAs' A, target layers in model order; per probe step, the
  batch (rng.integers(0, k, batch_size)); the fresh A of each kept layer in model order
  (reinit=True only); each shared LoRA's A in the order of LINEAR_SUFFIXES.
"""

from .method import SELECTIONS, LoRADrop, keep_and_share, layer_importance, layer_scores
from .selection import layer_output_sq_norm, normalize_importance, select_layers

__all__ = ["SELECTIONS", "LoRADrop", "keep_and_share", "layer_importance", "layer_output_sq_norm", "layer_scores",
           "normalize_importance", "select_layers"]
