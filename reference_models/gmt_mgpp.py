"""PyTorch twin of the GMT training loop (minisft.methods.gmt; Li et al. 2024, arXiv 2406.15330): the
parity oracle. (MGPP's twin is reference_models/mgpp.py.)

Written from the definitions on a float64 `TorchGPT` whose every parameter trains, with
torch.optim.AdamW (torch defaults but lr and weight_decay), no gradient clipping:
- the accumulated gradient by autograd: each micro-batch's mean loss divided by N is
  back-propagated into .grad (Γ = (1/N) Σ_n ∇L_n);
- masks from reference_models.primitives (torch.kthvalue with index tie-breaks): per tensor
  `gradient_mask`, or `global_masks` over the tensors in named_parameters order;
- a dropped gradient entry: p.grad.masked_fill_(~keep, 0);
- an entry the optimizer must leave untouched (GMT freeze_masked=True): its value and both AdamW
  moments are saved before opt.step() and written back after it (a freshly created moment counts
  as the zero it starts from).
Batches are lists (one per step) of (x, y) NumPy int micro-batches; results are NumPy arrays.
"""

import numpy as np
import torch

from . import primitives


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
