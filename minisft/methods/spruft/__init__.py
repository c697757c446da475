"""SPruFT — row-based sparse fine-tuning.

Paper: Li & Bhaskara 2025, "An Efficient Row-Based Sparse Fine-Tuning", arXiv 2502.11439, §3.
Authors' code: github.com/CenjhihLi/sparsity_finetuning — scores in methods/finetuner_importance.py
(per layer) and methods/tp_finetuner_importance.py (dependency groups), the LLM script
finetune_text_generation_model_ours.py. Scores come from structural pruning (Torch-Pruning,
LLM-Pruner).

Score the output neurons (rows) of every target linear layer Y = X Wᵀ + b once, on calibration
batches of the frozen base model; keep the top rows; train a dense delta on exactly those rows:

    W_eff = W + Mᵀ ΔW_r,  b_eff = b + Mᵀ Δb_r      adapters.RowDelta (M the one-hot row selector),
                                                  attached by method.SPruFT.prepare
    G = Σ_batches dYᵀX (calibration)              calibration.GradientProbe, run_calibration,
                                                  calibration_batches
    "magnitude"     Σ_j |W_ij|^p, p ∈ {1, 2}      importance.row_magnitude (no batch drawn)
    "taylor"        Σ_j |W_ij G_ij|               importance.row_taylor
    multivariable   |Σ_j W_ij G_ij|               importance.row_taylor(..., True); streamed as
                    = |Σ_b Σ_n dY_ni (XWᵀ)_ni|    |Σ_b Σ_n dY_ni (XWᵀ)_ni| by
                                                  calibration.StreamingTaylorProbe (importance.
                                                  row_taylor_streaming, TaylorAccumulator)
    "obd"           Σ_j W_ij² F_ij,               importance.row_obd; F by
                    F = mean per-sequence G_s²    calibration.SquaredGradientProbe
                                                  (importance.per_sample_sq_grad_sum)
    "zeroth_order"  Σ_j |W_ij Ĝ_ij|, Ĝ the SPSA   importance.zeroth_order_gradient,
                    estimate of G (forward only)  calibration.zeroth_order_weight_gradients
    quantile mean over classes                    importance.quantile_mean (not offered by SPruFT:
                                                  below)
    top r rows per layer / one global threshold   importance.top_rows / importance.global_threshold_rows
                    on layer-mean-normalised      (importance.normalize_by_layer_mean)
                    scores
    rows per layer from a ratio                   budget.rows_for_ratio, budget.unit_count
    exact trainable counts; LoRA's budget         budget.spruft_trainable, budget.rows_matching_lora
                                                  (budgets.lora_trainable)

Neuron mode ("fine-tune the weights involving the selected neurons"): an MLP hidden neuron is {row
of mlp.c_fc (+ its bias), column of mlp.c_proj}, an attention head {its q, k, v rows of attn.c_attn
(+ biases), its columns of attn.c_proj} (structure.mlp_neuron_groups, attention_head_groups); a
group's score is the mean of its members' row / column scores (structure.group_scores, with the
col_* scores of importance.py); a selected group trains its rows (RowDelta) and columns
(adapters.ColumnDelta, no bias) (structure.group_adapter_indices).
Derivations: proofs/spruft.md (method, counts), proofs/importance.md (scores), proofs/row_delta.md.

Choices where the paper or its released code is ambiguous:
- Budget, scope="layer": per layer `rows_for_ratio(d_out, ratio)` rows — floor(ratio · d_out), ratio
  read as its shortest decimal (0.7 · 10 = 7, select.ratio_count), rounded down to a multiple of 4,
  at least 1 (so d_out < 8 gives a single row below ratio 1, and 4 ≤ d_out < 8 gives 4 at ratio
  1) — or exactly `rows`; ratio defaults to 0.05 when neither is given. scope="global": the same
  total (floor(ratio · Σ d_out), at least 1, without the multiple-of-4 rounding; or rows × number of
  layers) spent under ONE threshold on layer-mean-normalised scores; a layer may then get no row
  (an empty index array, and no adapter). A layer whose scores have a non-positive mean cannot be
  normalised: an error. `rows` must fit every target layer in both scopes.
- Neuron mode counts groups: per block and kind `rows_for_ratio(n_groups, ratio)` groups (so a model
  with few heads trains at least one head per block) or `rows` groups; scope="global" puts one
  threshold per kind (heads compete with heads, neurons with neurons: a head holds 4·hd rows and
  columns, a neuron 2, so a count of mixed groups would mean nothing). Targets must then hold both
  members of each kind: (attn.c_attn, attn.c_proj) and/or (mlp.c_fc, mlp.c_proj).
- Group importance = the mean of the scores of ALL member rows and columns of the group (2 scores
  for an MLP neuron, 4·hd for a head). That equals the mean of the block means over equal-sized
  blocks (c_fc row | c_proj column; q rows | k rows | v rows | c_proj columns, hd each), not the
  mean of the two tensors' means for a head (c_attn holds 3·hd of its indices, c_proj hd).
- Ties go to the lower row (group) index and, globally, to the earlier layer (block). NaN scores
  are an error.
- Bias entries are not scored: a row's score involves only W's row. With bias=True each kept row
  trains its bias entry too; a column of c_proj owns no bias entry.
- Calibration: `calib_batches` batches of `task.batch_size` sequences (the released LLM script uses
  50 batches of size 1), drawn with `task.sample(rng)`. Every statistic is a SUM over calibration
  batches of the batch-mean-loss gradients (what autograd's `.grad` holds after one backward per
  batch without zeroing); the absolute value of the multivariable score is taken only after the
  sum. For equally shaped batches without ignored targets the scale (1/(B·T) in dY, its square in
  F) is one positive constant per layer: no selection, per layer or mean-normalised global, changes.
- OBD: a sample is one sequence (index b of a (B, T, ·) batch); its gradient is that of its share
  (1/(B·T)) Σ_t ℓ_bt of the batch's mean loss, so Σ_s over a batch of the per-sample gradients is the
  batch gradient. F divides the summed squares by the number of samples seen
  (SquaredGradientProbe.fisher).
- The released code's pitfalls are regression tests here: per-batch gradients are never carried
  over (each batch adds only its own), the OBD accumulator sums its squares, and every score is
  reduced over the input axis j of W (d_out, d_in).
- Zeroth order: fresh directions z for every calibration batch (K · zo_samples directions in all),
  drawn jointly over all probed weights in layer order; target weights only are perturbed (the
  released code also perturbs biases on GPT-2); the model's tensors are swapped, never written,
  and restored even on an error.
- Draw order from `rng`: the calibration batches; then (zeroth order) the directions, batch by batch;
  then the kaiming draws of each adapter (init="kaiming_uniform") in linear-layer order. "magnitude"
  draws no batch. Bias deltas start at zero whatever `init` (kaiming needs a fan-in a 1-D bias lacks).
- Memory: "taylor" and "obd" hold one d_out×d_in statistic per target layer during `prepare` (one
  full gradient's worth, as the released code's `.grad`), freed before training; the multivariable
  score holds only (d_out,) vectors. Training holds only the row/column deltas' gradients and AdamW
  moments (no d_out×d_in buffer).
- "quantile_taylor" is not offered by the method. The paper's quantile mean is taken over the
  per-class Taylor scores of a CLASSIFICATION objective so that a neuron important for any class
  survives. Our objective is next-token prediction: grouping calibration batches as "classes" would
  only take quantiles over exchangeable replicates of one distribution (a noisy L-estimator, not a
  class-robust score), and grouping positions by their target token gives thousands of classes that
  mostly have no sample (zero scores dominate every quantile). The primitive stays public API:
  `importance.quantile_mean` over per-class scores the caller defines (tested there, per-class
  gradients recomputed from zero for each class).
- `prepare` needs a model without adapters and freezes every base tensor.
"""

from . import calibration, importance, structure
from .budget import DEFAULT_RATIO, rows_for_ratio, rows_matching_lora, spruft_rows_per_layer, spruft_trainable
from .method import IMPORTANCES, MODES, SCOPES, SPruFT

__all__ = ["DEFAULT_RATIO", "IMPORTANCES", "MODES", "SCOPES", "SPruFT", "calibration", "importance", "rows_for_ratio",
           "rows_matching_lora", "spruft_rows_per_layer", "spruft_trainable", "structure"]
