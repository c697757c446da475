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

Choices where the paper is ambiguous, or where minisft's trainer decides:
- "Below the quantile" is made exact: a count, floor(r · n), not a threshold comparison, so ties at
  the quantile cannot make the count drift. r is read as its shortest decimal (0.7 · 10 = 7;
  select.ratio_count). r in [0, 1); r = 0 keeps everything (vanilla fine-tuning, exactly).
- Ties in |G| are broken by position: the LOWER flat (C-order) index is dropped first; globally, the
  earlier tensor (list order / dict insertion order; the model's parameter order in the method)
  first. Hence the result equals dropping the first k entries of a stable argsort of |G| (the test
  oracle). Sign is ignored (|−0.0| = |+0.0|); +inf is the largest magnitude; NaN is an error.
- What trains: every base tensor, as FullFineTune (embeddings, LayerNorms, biases, weights): the
  paper applies GMT to all parameters of the LLM under SFT. Adapter parameters, if a model carried
  any, would be masked the same way; `prepare` attaches none.
- Accumulation belongs to the trainer alone: TrainConfig.accumulation averages the micro-batch
  gradients before `transform_grads` sees them, so the mask is taken on Γ exactly as in the paper.
  The method has no accumulation option (one mechanism, no way for two counts to disagree).
- freeze_masked=False (default, the paper's masked gradient): the dropped entries' gradients are set
  to 0 and AdamW still moves them through momentum and decoupled weight decay. freeze_masked=True:
  the masks also go to the optimizer (`optimizer_masks`), so dropped entries and their moments stay
  exactly as they were.
- Dropped entries are zeroed in both modes before the trainer's gradient clipping, so the clipping
  norm is the norm of M(Γ), the gradient actually applied.
- `masks` holds the last step's masks (one bool per trainable entry between steps).
- Overhead: the wall time of `transform_grads`, ending with a device synchronisation on CuPy (the
  trainer's clipping synchronises right after anyway, so no stall is added); `report()` gives the
  median in ms. The kept counts summed over steps travel in checkpoints; timings do not.
"""

from .masks import global_gradient_masks, gradient_mask, gradient_masks
from .method import GMT, SCOPES

__all__ = ["GMT", "SCOPES", "global_gradient_masks", "gradient_mask", "gradient_masks"]
