"""MGPP — magnitude pruning with a mixture Gaussian prior.

Paper: Zhang, Sun & Liang 2024, "Magnitude Pruning of Large Pretrained Transformer Models with a
Mixture Gaussian Prior", arXiv 2411.00969 (Journal of Data Science, doi:10.6339/24-JDS1156).
Authors' code, the ground truth for every convention here: github.com/MingxuanZhangPurdue/PTMGP
(pruners/MWA.py `MWA.apply_prior_grad`, `annealing_scheduler`, `sparsity_scheduler`,
`calculate_mask_threshold`, `magnitude_pruning`; GLUE/train.py, SQuAD/train.py, scripts/*.sub) and
github.com/MingxuanZhangPurdue/BayesianPruner (BayesianPruner/pruner.py, sparsity.py
`CubicSparsityScheduler`, prior.py; configs/CLM/config.yaml: GPT-2; experiments/CLM/train.py).

Fine-tune every base tensor on the regularised objective and prune by magnitude on a schedule:

    π(θ) = λ N(θ; 0, v1) + (1 − λ) N(θ; 0, v0), v VARIANCES   prior.neg_log_prior (−log π),
                                                            prior.check_prior
    ∇(−log π)(θ) = θ (w1/v1 + w0/v0), w = responsibilities  prior.neg_log_prior_grad
    J(θ) = mean loss + (1/n) Σ_{w prunable} −log π(w),       method.MGPP.transform_grads_after_clip
    n = predicted training tokens; for t ≤ t_f only         (adds (1/n)∇(−log π) after the
                                                            trainer's clipping, before AdamW)
    λ_t: constant, or PTMGP's linear annealing              schedule.annealed_lambda
    s_t: 0 before t_i, s_i at t_i, then                     schedule.cubic_sparsity
         s_f + (s_i − s_f)(1 − (t − t_i)/(t_f − t_i))³      (Zhu & Gupta 2017)
    pruning steps t_i, t_i + Δt, ..., t_f                   schedule.pruning_steps
    prune the smallest |w| at s_t, recomputed from scratch  schedule.magnitude_masks, called by
    over all prunable matrices (pruned weights may regrow   pruning.MagnitudePruning.prune at the
    between pruning steps); mask fixed after t_f            pruning steps (MagnitudePruning.after_step)
    named option sets ("default", "gpt2")                   configs.CONFIGS

`MagnitudePruning` (registered as "magprune") is the same schedule and masks without the prior:
the paper's baseline. Choices where the paper is silent or minisft's trainer decides — the
variances, n, where the prior enters the step and clipping, the schedule's step counting and grid,
the pruned count (`count_rule`), regrowth and the monotone mode, the defaults and the configs —
are in proofs/decisions.md §5 (MGPP), each with the authors' file and function it follows.
Derivations: proofs/mgpp_prior.md (prior, its gradient, the counts), proofs/gmt_mgpp_methods.md
(the method's gradient, masks and steps).
"""

from .configs import CONFIGS, MODES, MagnitudePruningConfig, MGPPConfig
from .method import MGPP
from .prior import DEFAULT_LAMBDA, DEFAULT_VAR0, DEFAULT_VAR1, MIN_VAR, check_prior, neg_log_prior, neg_log_prior_grad
from .pruning import MagnitudePruning
from .schedule import (COUNT_RULES, DEFAULT_PRUNE_END_FRACTION, DEFAULT_PRUNE_EVERY_FRACTION, SCOPES, annealed_lambda,
    cubic_sparsity, magnitude_masks, pruning_steps)

__all__ = ["CONFIGS", "COUNT_RULES", "DEFAULT_LAMBDA", "DEFAULT_PRUNE_END_FRACTION", "DEFAULT_PRUNE_EVERY_FRACTION",
           "DEFAULT_VAR0", "DEFAULT_VAR1", "MGPP", "MGPPConfig", "MIN_VAR", "MODES", "MagnitudePruning",
           "MagnitudePruningConfig", "SCOPES", "annealed_lambda",
           "check_prior", "cubic_sparsity", "magnitude_masks", "neg_log_prior", "neg_log_prior_grad", "pruning_steps"]
