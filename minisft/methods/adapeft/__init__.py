"""AdaPEFT — adaptive PEFT by Hessian-informed subset selection.

Paper: Xu & Bu 2025, "Adaptive PEFT via Hessian-informed subset selection", arXiv 2505.12579; its
forward-only curvature estimator is GeN (Bu & Xu, arXiv 2407.02772). Authors' code: GeN's,
github.com/ShiyunXu/AutoGeN (GeN/GeN.py); no AdaPEFT code is cited.

Choose which parameter groups to train by their predicted loss decrease, within a parameter budget:

    groups k with sizes n_k (LoRA per module type,   groups.build_groups ("modules", "tensors", or
    biases, LayerNorms, embeddings, or tensors)      the user's patterns), groups.Group.activate
    probe: train every group a few steps; at steps   method.probe
    0, Φ, 2Φ, … measure each group's influence
    d = the step direction (SGD: g; AdamW: the step) curvature.step_direction
    b_k = g_kᵀ d_k,  a_k = d_kᵀ H_kk d_k              curvature.group_influence; "exact":
                                                     curvature.hvp (central difference of
                                                     gradients, Richardson); "gen": curvature.
                                                     gen_losses + curvature.quadratic_fit
    I_k = b_k² / (2 a_k) (valid iff a_k, b_k > 0,     curvature.influence, curvature.validity
    R² > 0.99 for GeN),  PPI_k = I_k / n_k
    I_k averaged over the valid estimates            method.summarize
    max_z Σ_k z_k I_k  s.t.  Σ_k z_k n_k ≤ budget     knapsack.solve (exact: DP or branch-and-bound)
    the Pareto front of (Σ n_k, Σ I_k); the greedy    knapsack.pareto_front, knapsack.greedy_chain,
    chain by descending PPI (the paper's figures)    method.front_report
    train the chosen groups (fresh adapters)         groups.apply_groups_by_name, from
                                                     method.AdaPEFT.prepare; method.GroupSubset trains
                                                     a named subset (transfer by name)

`minisft adapeft-front` (minisft/app/adapeft_front.py) writes and plots the whole front.
Derivations: proofs/adapeft.md (influence, HVP steps, GeN's fit), proofs/knapsack.md (the exact
knapsack and front; knapsack.py's docstring defines "exact": the value f(S), the tie rule, costs).

Choices where the paper or GeN's code leave room (groups, probe optimizer and direction, the HVP
step, GeN's fit and R², the reset after the probe, invalid estimates, budgets, learning-rate class):
proofs/decisions.md §2 (AdaPEFT).
"""

from . import curvature, groups, knapsack
from .config import AdaPEFTConfig, GroupSubsetConfig
from .method import AdaPEFT, GroupSubset, probe

__all__ = ["AdaPEFT", "AdaPEFTConfig", "GroupSubset", "GroupSubsetConfig", "curvature", "groups", "knapsack", "probe"]
