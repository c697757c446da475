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

`minisft adapeft-front` (minisft/adapeft_front.py) writes and plots the whole front.
Derivations: proofs/adapeft.md (influence, HVP steps, GeN's fit), proofs/knapsack.md (the exact
knapsack and front; knapsack.py's docstring defines "exact": the value f(S), the tie rule, costs).

Choices where the paper or GeN's code leave room:
- Groups ("modules", the default): the PEFT modules of the paper — one LoRA group per module type
  over all blocks (lora:attn.c_attn, lora:attn.c_proj, lora:mlp.c_fc, lora:mlp.c_proj); "bias" —
  every linear bias (BitFit on the linear layers); "layernorm" — every LayerNorm weight and bias,
  ln_f included; "embeddings" — wte (which is also the tied LM head) and wpe, trained densely.
  "tensors" — fine-grained: every base tensor its own group, trained densely in place (a weight
  matrix is not turned into LoRA: the partition's sizes add up to the base parameter count).
- Probe optimizer: AdamW (direction "adam", β = (0.9, 0.999), no weight decay) or plain SGD
  (direction "sgd"), at `probe_lr` (constant), no gradient clipping, one fresh task batch per step.
  The direction is computed once per probed step from the optimizer's state without writing it,
  d = m̂/(√v̂ + ε_adam) + λθ; the optimizer then advances once, in the probe's own step (GeN's
  released code calls optimizer.step() to get d and then steps again, advancing the moments twice
  per probed step).
- HVP step: ε = u^{1/(p+1)} · ℓ_p / max_i |d_i| for a scheme of error order p (u the unit roundoff
  of the dtype): the classical balance of the O(ε^p) truncation against the O(u/ε) rounding of the
  gradient difference, for a loss whose derivatives change over a length ℓ_p per coordinate.
  ℓ_p = c_p · RMS(θ_S), θ_S the parameters on the support of d (RMS taken as 1 when they are all
  zero, as fresh LoRA B or biases), with c_2 = 0.1 for the central difference and c_4 = 0.02 for its
  Richardson extrapolation (4 D(ε/2) − D(ε)) / 3, the default (`richardson=True`). The c_p are
  measured, not derived: over 80 random float64 tiny GPTs (1–3 blocks, width 8–32, every group of
  the "modules" partition, random and gradient directions) they put each scheme near its smallest
  worst-case error against PyTorch double backward (≈ 4e-8 central, ≈ 4e-9 Richardson). LayerNorm
  and softmax make a GPT's loss curve on a finer scale than its 0.02-scale weights, hence c_p < 1.
  Per coordinate (max |d_i|) rather than per norm: a direction concentrated on a few rows (the
  gradient of wte) must not take an outsized step on them.
- GeN: the step unit η defaults to `probe_lr` (GeN evaluates multiples of the current learning
  rate). R² is the ordinary centred R² (as sklearn's r2_score in GeN's code) of the 4 perturbed
  points; the anchor L(θ) enters exactly (it is subtracted), not as a fitted point. With the anchor
  and only 2 perturbed points the fit interpolates and R² = 1 whatever the loss — hence the 4
  points. Every perturbed loss and the anchor are taken on one fresh minibatch per probed step,
  drawn after the step's gradient batch, shared by all 4K + 1 forward passes; a_k and b_k both come
  from the fit.
- Reset after the probe: base tensors are restored bit-exactly from a copy, the probe's adapters are
  dropped, and the chosen LoRA groups get *fresh* adapters (drawn from the same generator) — the
  probe only measures, its updates are discarded.
- A group with no valid estimate gets influence 0, which the knapsack never picks (its tie rule
  leaves zero-value items out); `report()` lists why each estimate was invalid. If no group with a
  valid estimate fits the budget, prepare raises rather than train nothing.
- `budget`: an int is a parameter count; a float in (0, 1] a fraction of the base parameter count
  (floor). A budget below the smallest group's size is refused before the probe runs.
- Learning rate class (`trains_base`, which picks the preset's rate in minisft.experiment): the PEFT
  rate for partitions with LoRA groups ("modules" — its dense groups are the small BitFit,
  LayerNorm and embedding tensors); the full fine-tuning rate for all-dense partitions ("tensors").
"""

from . import curvature, groups, knapsack
from .method import AdaPEFT, GroupSubset, probe

__all__ = ["AdaPEFT", "GroupSubset", "curvature", "groups", "knapsack", "probe"]
