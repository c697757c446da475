"""MGPP — magnitude pruning with a mixture Gaussian prior.

Paper: Zhang, Sun & Liang 2024, "Magnitude Pruning of Large Pretrained Transformer Models with a
Mixture Gaussian Prior", arXiv 2411.00969 (Journal of Data Science, doi:10.6339/24-JDS1156).
Authors' code: github.com/MingxuanZhangPurdue/PTMGP (pruners/MWA.py, GLUE/train.py, SQuAD/train.py)
and github.com/MingxuanZhangPurdue/BayesianPruner (GPT-2 causal-LM configs). minisft's defaults and
conventions below are its own and do not yet follow that code (σ read as standard deviations,
n = windows, monotone masks; issue 16).

Fine-tune every base tensor on the regularised objective and prune by magnitude on a schedule:

    π(θ) = λ N(θ; 0, σ1²) + (1 − λ) N(θ; 0, σ0²)            prior.neg_log_prior (−log π),
                                                            prior.check_prior
    ∇(−log π)(θ) = θ (w1/σ1² + w0/σ0²), w = responsibilities prior.neg_log_prior_grad
    J(θ) = (1/B) Σ_b ℓ_b(θ) + (1/n) Σ_{w prunable} −log π(w) method.MGPP.transform_grads (adds
                                                            (1/n)∇(−log π) to the mean-loss gradient)
    s_t = s_f + (s_i − s_f)(1 − (t − t_i)/(t_f − t_i))³      schedule.cubic_sparsity (Zhu & Gupta 2017)
    prune the round(s_t · n_prunable) smallest |w|           schedule.magnitude_masks, called by
                                                            method.MGPP.prune at MGPP.pruning_steps
    pruned entries never move again                          method.MGPP.optimizer_masks (the
                                                            optimizer leaves weight and moments alone)

prior=False is the plain cubic magnitude-pruning baseline on the same schedule.
Derivations: proofs/mgpp_prior.md (prior, its gradient, the counts), proofs/gmt_mgpp_methods.md §3
(the method's gradient is ∇J).

Choices where the paper is ambiguous, or where minisft's trainer decides:
- σ0 and σ1 are standard deviations (N(0, σ²)), 1e-150 ≤ σ0 < σ1 < ∞ (prior.MIN_SIGMA keeps 1/σ²
  finite). Defaults λ = 1e-3, σ0 = 1e-4, σ1 = 0.05 are minisft's own.
- Prunable: the weight matrices of the linear layers (attn.c_attn, attn.c_proj, mlp.c_fc,
  mlp.c_proj of every block), not biases, LayerNorms or the embeddings (the tied LM head is wte);
  the prior acts on the prunable weights only. Every base tensor trains (full fine-tuning).
- n (`n_train`): the number of training examples. Default: the training stream's disjoint windows
  of block_size + 1 tokens, floor(len / (T + 1)) (batches.disjoint_windows), the unit one sample of
  `task.sample` is made of. The loss is a mean over the T tokens of each window, so the exact
  posterior scaling would be n·T (proofs/gmt_mgpp_methods.md §3): pass n_train to use it.
- The pruned count is round(s · n) rounded half up, floor(s · n + 1/2), exactly, with s read as its
  shortest decimal (select.ratio_count): monotone in s and independent of n's parity (Python's round
  would take 0.5 · 5 to 2 and 0.5 · 7 to 4). Ties in |θ| are pruned by (tensor order, lower flat
  index); scope="global" (default) ranks all prunable matrices together in model order,
  scope="layer" each matrix alone.
- Re-pruning ranks only the surviving weights (magnitude_masks' `kept`): the pruned ones enter the
  ranking as +inf and round(s_t · n) − (already pruned) survivors are pruned. As pruned weights are
  0 this equals ranking every weight by |w|, except when a survivor is exactly 0: then the index
  tie-break could otherwise revive a pruned weight.
- s_f < 1 (s_f = 1 would prune every weight); 0 ≤ s_i ≤ s_f; interior schedule values are clamped
  into [s_i, s_f], which only removes float rounding and keeps the schedule monotone as computed.
- Step counting: t = the number of optimizer updates done (`after_step(model, step)` runs with
  t = step + 1). t_start, t_end are fractions of `total_steps`: t_i = floor(t_start · total_steps),
  t_f = floor(t_end · total_steps) (exact decimal reading), t_f > t_i required. The trainer does
  not tell a method its step count, so `total_steps` is an option (experiment.build_method sets it
  to the run's steps); `prepare` refuses to start without it.
- Pruning steps: t = t_i + k·every (k ≥ 1) below t_f, and t_f itself, so the final sparsity is
  reached at t_f ≤ total_steps whatever `every`; afterwards the mask is fixed.
- Gradients of pruned entries are set to 0 in `transform_grads` (they are no longer parameters),
  so they are left out of the trainer's clipping norm as well.
- State: the masks travel in checkpoints (`state_arrays`), so a resumed run prunes on from them.
"""

from .method import MGPP
from .prior import DEFAULT_LAMBDA, DEFAULT_SIGMA0, DEFAULT_SIGMA1, MIN_SIGMA, check_prior, neg_log_prior, neg_log_prior_grad
from .schedule import (DEFAULT_PRUNE_END_FRACTION, DEFAULT_PRUNE_EVERY, DEFAULT_PRUNE_START_FRACTION, SCOPES, cubic_sparsity,
                       magnitude_masks)

__all__ = ["DEFAULT_LAMBDA", "DEFAULT_PRUNE_END_FRACTION", "DEFAULT_PRUNE_EVERY", "DEFAULT_PRUNE_START_FRACTION",
           "DEFAULT_SIGMA0", "DEFAULT_SIGMA1", "MGPP", "MIN_SIGMA", "SCOPES", "check_prior", "cubic_sparsity",
           "magnitude_masks", "neg_log_prior", "neg_log_prior_grad"]
