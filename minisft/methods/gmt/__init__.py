"""GMT — Gradient-Mask Tuning.

Paper: Li et al. 2024, arXiv 2406.15330 (v1 "Gradient-Mask Tuning Elevates the Upper Limits of LLM
Performance", v2 "Enhancing Large Language Model Performance with Gradient-Based Parameter
Selection"). Authors' code: none found released; nothing here follows a codebase.

Full fine-tuning whose every optimizer step uses a masked gradient:

    Γ_ij = (1/N) Σ_n ∇_{θ_ij} L(Θ, B_n)        the trainer: TrainConfig.accumulation = N
                                              (train._accumulated_grads)
    M(Γ_ij, k): keep Γ_ij unless |Γ_ij| is     masks.gradient_masks (per tensor, default),
    among the floor(r·n) smallest              masks.global_gradient_masks (scope="global"),
                                              masks.gradient_mask (one tensor); the ranking is
                                              select.smallest_k_keep_mask(s)
    θ_ij ← θ_ij − η · M(Γ_ij, k)               method.GMT.transform_grads (zeroes the dropped
                                              entries) + the optimizer (freeze_masked: also
                                              method.GMT.optimizer_masks)

Derivations: proofs/gmt_mask.md (the masks), proofs/gmt_mgpp_methods.md (the method),
proofs/adamw_masks.md (what AdamW does with a zeroed gradient).

Choices where the paper is ambiguous, or where minisft's trainer decides (Γ by the trainer's
accumulation and compare's N, the exact count, ties, what trains, freeze_masked, clipping order):
proofs/decisions.md §4 (GMT). `masks` holds the last step's masks; the kept counts stay on the
device until `report()` or a checkpoint reads them (a step's one host read is the masks' NaN check,
select.nan_counts).
"""

from .masks import global_gradient_masks, gradient_mask, gradient_masks
from .method import GMT, SCOPES, GMTConfig

__all__ = ["GMT", "GMTConfig", "SCOPES", "global_gradient_masks", "gradient_mask", "gradient_masks"]
