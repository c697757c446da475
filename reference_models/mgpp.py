"""PyTorch twin of MGPP and of cubic magnitude pruning (minisft.methods.mgpp; Zhang, Sun & Liang
2024, arXiv 2411.00969): the parity oracle.

Written from the authors' code, not from minisft's: github.com/MingxuanZhangPurdue/PTMGP
pruners/MWA.py (`apply_prior_grad`, `annealing_scheduler`, `calculate_mask_threshold`,
`create_pruning_mask`, `prune_with_mask`) and github.com/MingxuanZhangPurdue/BayesianPruner
BayesianPruner/sparsity.py (`CubicSparsityScheduler.calculate_sparsity`, `define_pruning_action`:
the Δt grid counted from t_i), on a float64 `TorchGPT` whose every parameter trains, with
torch.optim.AdamW. One step t (0-based, the authors' train_step_index), as the authors' Composer
event order runs it:
 1. .grad = the mean over the micro-batches of each one's mean-loss gradient (autograd);
 2. (monotone mode only) .grad of the pruned entries set to 0; then, if `grad_clip`,
    torch.nn.utils.clip_grad_norm_ on these loss gradients (the authors never clip: option);
 3. if the prior is on and t <= t_f: MWA's update in place,
       c1 = log λ_t − log(1 − λ_t) + ½ log v0 − ½ log v1,   c2 = ½/v0 − ½/v1,
       w0 = 1 / (1 + exp(c2 θ² + c1)),
       p.grad −= p · (w0 · (v0 − v1)/(n v0 v1) − 1/(n v1))
    with λ_t from MWA.annealing_scheduler (alpha_i = 1, alpha_f = lam_final / lam), or constant;
 4. opt.step() (monotone mode: the pruned entries' values and AdamW moments restored after it);
 5. on the UPDATED weights, the scheduler's action at t: "sparsity" at t_i, t_i + kΔt < t_f and t_f,
    with s = s_f + (s_i − s_f)(1 − (t − t_i)/(t_f − t_i))**3 (0 before t_i); "mask" for t > t_f:
    the masks of t_f re-applied (regrow mode; monotone mode freezes them in step 4 instead).
    Masks over all prunable weights (or each matrix alone, scope="layer"):
      count_rule="authors": threshold = torch.kthvalue(all |θ|, int(N · s)), prune |θ| < threshold
                            (k = 0: nothing, where torch.kthvalue would raise);
      count_rule="exact":   minisft's documented count, floor(dec(s) · N + 1/2) smallest |θ| by a
                            stable sort (ties: earlier matrix, lower flat index);
    mode "regrow": ranked from scratch (pruned weights may have regrown); "monotone": the pruned
    entries stay pruned (exact: the count taken among the survivors; authors: or-ed with them).
    The pruned weights are set to 0 (p.detach().masked_fill_).
The prunable weights are the linear layers' weight matrices (BayesianPruner configs/CLM/config.yaml:
c_attn, c_proj, c_fc). Batches are lists (one per step) of (x, y) NumPy int micro-batches.
"""

import math
from fractions import Fraction

import numpy as np
import torch

LINEAR = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def prunable_names(config):
    return [f"h.{i}.{s}.weight" for i in range(config.n_layer) for s in LINEAR]


def sparsity_and_action(t, s_i, s_f, t_i, t_f, every):
    """(sparsity, "sparsity" | "mask" | None) at 0-based step t (BayesianPruner's cubic scheduler)."""
    if t < t_i:
        return 0.0, None
    if t > t_f:
        return s_f, "mask"
    frac_of_total = 1 - (t - t_i) / (t_f - t_i)
    sparsity = s_f + (s_i - s_f) * (frac_of_total ** 3)
    if t in (t_i, t_f) or (t - t_i) % every == 0:
        return sparsity, "sparsity"
    return sparsity, None


def lambda_at(t, lam, lam_final, t_i, t_f):
    """MWA.annealing_scheduler: lambda_mix * alpha, alpha = 1 before t_i, alpha_i = 1 at t_i,
    alpha_f + (alpha_i - alpha_f) * frac between, alpha_f from t_f on."""
    if lam_final is None or t <= t_i:
        return lam
    alpha_f = lam_final / lam
    if t >= t_f:
        return alpha_f * lam
    frac_of_total = 1 - (t - t_i) / (t_f - t_i)
    return (alpha_f + (1.0 - alpha_f) * frac_of_total) * lam


def apply_prior_grad(params, prunable, lam, var0, var1, train_size):
    c1 = math.log(lam) - math.log(1 - lam) + 0.5 * math.log(var0) - 0.5 * math.log(var1)
    c2 = 0.5 / var0 - 0.5 / var1
    factor1 = (var0 - var1) / (train_size * var0 * var1)
    factor2 = -1 / (train_size * var1)
    with torch.no_grad():
        for n in prunable:
            p = params[n]
            p.grad.sub_(p.mul(p.pow(2).mul(c2).add(c1).exp().add(1).pow(-1).mul(factor1).add(factor2)))


def _authors_pruned(weights, sparsity):
    """{name: bool, True = pruned}: |θ| strictly below the int(N * s)-th smallest |θ| of `weights`."""
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    k = int(flat.shape[0] * sparsity)
    if k == 0:
        return {n: torch.zeros_like(w, dtype=torch.bool) for n, w in weights.items()}
    threshold = torch.kthvalue(flat, k)[0].item()
    return {n: w.detach().abs() < threshold for n, w in weights.items()}


def _exact_pruned(weights, sparsity, pruned_before):
    """{name: bool, True = pruned}: floor(dec(s) N + 1/2) pruned, the smallest |θ| by a stable sort;
    entries of `pruned_before` (or None) count and rank last (+inf)."""
    names = list(weights)
    flat = torch.cat([weights[n].detach().abs().reshape(-1) for n in names])
    if pruned_before is not None:
        old = torch.cat([pruned_before[n].reshape(-1) for n in names])
        flat = torch.where(old, torch.full_like(flat, math.inf), flat)
    target = math.floor(Fraction(repr(float(sparsity))) * flat.numel() + Fraction(1, 2))
    k = target - (0 if pruned_before is None else int(old.sum()))
    drop = torch.zeros(flat.numel(), dtype=torch.bool)
    drop[torch.sort(flat, stable=True).indices[:k]] = True
    if pruned_before is not None:
        drop |= old
    sizes = [weights[n].numel() for n in names]
    return {n: d.reshape(weights[n].shape) for n, d in zip(names, torch.split(drop, sizes))}


def pruning_masks(weights, sparsity, count_rule, scope, pruned_before=None):
    """{name: bool, True = pruned} over {name: weight} (global) or each matrix alone (layer)."""
    groups = [list(weights)] if scope == "global" else [[n] for n in weights]
    out = {}
    for names in groups:
        part = {n: weights[n] for n in names}
        if count_rule == "authors":
            pruned = _authors_pruned(part, sparsity)
            if pruned_before is not None:
                pruned = {n: pruned[n] | pruned_before[n] for n in names}
        else:
            pruned = _exact_pruned(part, sparsity, None if pruned_before is None else
                                   {n: pruned_before[n] for n in names})
        out.update(pruned)
    return out


def _snapshot(opt, params, pruned):
    """Values and AdamW moments of the parameters with pruned entries (zeros for a moment not yet created)."""
    out = {}
    for n in pruned:
        p = params[n]
        st = opt.state.get(p, {})
        moments = [st[k].clone() if k in st else torch.zeros_like(p) for k in ("exp_avg", "exp_avg_sq")]
        out[n] = [p.detach().clone()] + moments
    return out


def _restore_pruned(opt, params, pruned, snapshot):
    with torch.no_grad():
        for n, frozen in pruned.items():
            p = params[n]
            value, m, v = snapshot[n]
            p.copy_(torch.where(frozen, value, p))
            st = opt.state[p]
            st["exp_avg"].copy_(torch.where(frozen, m, st["exp_avg"]))
            st["exp_avg_sq"].copy_(torch.where(frozen, v, st["exp_avg_sq"]))


def train(twin, batches, *, lr, weight_decay, final_sparsity, initial_sparsity, t_i, t_f, every,
          prior=True, lam=1e-3, var0=1e-10, var1=0.05, lam_final=None, train_size=None, mode="regrow",
          count_rule="exact", scope="global", grad_clip=None):
    """MGPP (prior=True) or cubic magnitude pruning (prior=False) on every parameter of `twin` ->
    (params {name: array}, {t: {name: bool kept mask}} at each pruning step t)."""
    params = dict(twin.named_parameters())
    prunable = prunable_names(twin.config)
    opt = torch.optim.AdamW(params.values(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    pruned, history = None, {}
    for t, micro_batches in enumerate(batches):
        opt.zero_grad(set_to_none=True)
        for x, y in micro_batches:
            _, loss = twin(torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(y)))
            (loss / len(micro_batches)).backward()
        frozen = pruned if mode == "monotone" and pruned is not None else {}
        for n, m in frozen.items():
            params[n].grad.masked_fill_(m, 0.0)
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params.values(), grad_clip)
        if prior and t <= t_f:
            apply_prior_grad(params, prunable, lambda_at(t, lam, lam_final, t_i, t_f), var0, var1, train_size)
        snapshot = _snapshot(opt, params, frozen)
        opt.step()
        _restore_pruned(opt, params, frozen, snapshot)
        sparsity, action = sparsity_and_action(t, initial_sparsity, final_sparsity, t_i, t_f, every)
        if action == "sparsity":
            weights = {n: params[n] for n in prunable}
            pruned = pruning_masks(weights, sparsity, count_rule, scope, pruned if mode == "monotone" else None)
            with torch.no_grad():
                for n in prunable:
                    params[n].masked_fill_(pruned[n], 0.0)
            history[t] = {n: (~m).numpy().copy() for n, m in pruned.items()}
        elif action == "mask" and mode == "regrow":
            with torch.no_grad():
                for n in prunable:
                    params[n].masked_fill_(pruned[n], 0.0)
    return {k: p.detach().numpy().copy() for k, p in params.items()}, history
