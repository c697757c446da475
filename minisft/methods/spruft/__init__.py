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
    "wanda"         Σ_j |W_ij| ‖X_j‖₂ (forward    importance.row_wanda, calibration.ActivationNormProbe
                    only, norms over the tokens)
    "random"        i.i.d. U[0, 1) per row        importance.random_scores (no batch drawn)
    quantile mean over classes                    importance.quantile_mean (not offered by SPruFT:
                                                  proofs/decisions.md §1)
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

Choices where the paper or its released code is ambiguous (init, each importance against the
released code, calibration, budgets and rounding, ties, neuron groups, draw order, the released
code's pitfalls): proofs/decisions.md §1 (SPruFT), with the released files and lines they follow.
"""

from . import calibration, importance, structure
from .budget import DEFAULT_RATIO, rows_for_ratio, rows_matching_lora, spruft_rows_per_layer, spruft_trainable
from .config import IMPORTANCES, MODES, SCOPES, SPruFTConfig
from .method import SPruFT

__all__ = ["DEFAULT_RATIO", "IMPORTANCES", "MODES", "SCOPES", "SPruFT", "SPruFTConfig", "calibration", "importance",
           "rows_for_ratio", "rows_matching_lora", "spruft_rows_per_layer", "spruft_trainable", "structure"]
