"""PyTorch twins of the GMT and MGPP training loops (minisft.methods.gmt, minisft.methods.mgpp): the
parity oracles. GMT: Li et al. 2024, arXiv 2406.15330; MGPP: Zhang, Sun & Liang 2024, arXiv 2411.00969.

Written from the definitions on a float64 `TorchGPT` whose every parameter trains, with
torch.optim.AdamW (torch defaults but lr and weight_decay), no gradient clipping:
- the accumulated gradient by autograd: each micro-batch's mean loss divided by N is
  back-propagated into .grad (Γ = (1/N) Σ_n ∇L_n);
- masks from reference_models.primitives (torch.kthvalue with index tie-breaks): per tensor
  `gradient_mask`, or `global_masks` over the tensors in named_parameters order;
- a dropped gradient entry: p.grad.masked_fill_(~keep, 0);
- an entry the optimizer must leave untouched (GMT freeze_masked=True, MGPP pruned weights): its
  value and both AdamW moments are saved before opt.step() and written back after it (a freshly
  created moment counts as the zero it starts from);
- MGPP's objective as an explicit loss term: mean CE + (1/n) Σ_w Σ neg_log_prior(w) through
  autograd (prior=True); pruning after the update at the schedule's steps, with masks from
  `global_masks` by |w| over all prunable weights (or each matrix alone) with round-half-up counts
  on the cubic sparsity, and w ← 0 where pruned. The pruned weights are 0, so they are the
  smallest; this twin never ranks survivors apart from them.
Batches are lists (one per step) of (x, y) NumPy int micro-batches; results are NumPy arrays.
"""

import math
from fractions import Fraction

import numpy as np
import torch

from . import primitives

LINEAR = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def prunable_names(config):
    return [f"h.{i}.{s}.weight" for i in range(config.n_layer) for s in LINEAR]


def _accumulate_gradients(twin, micro_batches):
    """.grad = mean over the micro-batches of the gradient of each one's mean loss."""
    for x, y in micro_batches:
        _, loss = twin(torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(y)))
        (loss / len(micro_batches)).backward()


def _step_leaving_untouched(opt, params, untouched):
    """opt.step() with params[name][untouched[name]] and both moments there left as they were."""
    saved = {}
    for name, frozen in untouched.items():
        p = params[name]
        st = opt.state.get(p, {})
        moments = [st[k][frozen].clone() if k in st else torch.zeros(int(frozen.sum()), dtype=p.dtype)
                   for k in ("exp_avg", "exp_avg_sq")]
        saved[name] = (p.detach()[frozen].clone(), *moments)
    opt.step()
    with torch.no_grad():
        for name, (p0, m0, v0) in saved.items():
            p, frozen = params[name], untouched[name]
            p[frozen] = p0
            opt.state[p]["exp_avg"][frozen] = m0
            opt.state[p]["exp_avg_sq"][frozen] = v0


def _numpy(params):
    return {k: p.detach().numpy().copy() for k, p in params.items()}


def train_gmt(twin, batches, lr, weight_decay, drop_ratio, scope, freeze_masked, grad_clip=None, make_scheduler=None):
    """GMT on every parameter -> (params {name: array}, [per step {name: bool keep mask}]).

    grad_clip: torch.nn.utils.clip_grad_norm_ on the masked gradients (after the mask, before the
    step); make_scheduler(opt): a torch lr scheduler, stepped after every optimizer step."""
    params = dict(twin.named_parameters())
    opt = torch.optim.AdamW(params.values(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    scheduler = make_scheduler(opt) if make_scheduler else None
    history = []
    for micro_batches in batches:
        opt.zero_grad(set_to_none=True)
        _accumulate_gradients(twin, micro_batches)
        names = list(params)
        grads = [params[n].grad for n in names]
        if scope == "global":
            keeps = primitives.global_masks(grads, drop_ratio)
        else:
            keeps = [primitives.gradient_mask(g, drop_ratio) for g in grads]
        keep = dict(zip(names, keeps))
        for n in names:
            params[n].grad.masked_fill_(~keep[n], 0.0)
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params.values(), grad_clip)
        _step_leaving_untouched(opt, params, {n: ~keep[n] for n in names} if freeze_masked else {})
        if scheduler is not None:
            scheduler.step()
        history.append({n: k.numpy().copy() for n, k in keep.items()})
    return _numpy(params), history


def schedule_window(t_start, t_end, total_steps):
    """(t_i, t_f) = floor of the fractions times total_steps, in exact decimal arithmetic."""
    return (math.floor(Fraction(repr(float(t_start))) * total_steps),
            math.floor(Fraction(repr(float(t_end))) * total_steps))


def train_mgpp(twin, batches, lr, weight_decay, final_sparsity, lam, sigma0, sigma1, t_start, t_end, every,
               prior, scope, n_train, total_steps):
    """MGPP on every parameter (prior and pruning on the linear weights) ->
    (params {name: array}, {t: {name: bool keep mask}} at each pruning step t)."""
    params = dict(twin.named_parameters())
    prunable = prunable_names(twin.config)
    opt = torch.optim.AdamW(params.values(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    t_i, t_f = schedule_window(t_start, t_end, total_steps)
    pruning_steps = {t for t in range(t_i + 1, t_f + 1) if (t - t_i) % every == 0} | {t_f}
    keep, history = {}, {}
    for t, micro_batches in enumerate(batches, start=1):
        opt.zero_grad(set_to_none=True)
        _accumulate_gradients(twin, micro_batches)
        if prior:
            penalty = sum(primitives.neg_log_prior(params[n], lam, sigma0, sigma1).sum() for n in prunable)
            (penalty / n_train).backward()
        for n, k in keep.items():
            params[n].grad.masked_fill_(~k, 0.0)
        _step_leaving_untouched(opt, params, {n: ~k for n, k in keep.items()})
        if t in pruning_steps:
            s = primitives.cubic_sparsity(t, final_sparsity, t_i, t_f)
            weights = [params[n].detach() for n in prunable]
            if scope == "global":
                keeps = primitives.global_masks(weights, s, half_up=True)
            else:
                keeps = [primitives.global_masks([w], s, half_up=True)[0] for w in weights]
            keep = dict(zip(prunable, keeps))
            with torch.no_grad():
                for n in prunable:
                    params[n].masked_fill_(~keep[n], 0.0)
            history[t] = {n: k.numpy().copy() for n, k in keep.items()}
    return _numpy(params), history
