"""PyTorch (autograd) reference of AdaPEFT's curvature: Hessian-vector products by double backward
and the second-order influence I = (gᵀd)² / (2 dᵀHd) (Xu & Bu, arXiv 2505.12579).

Independent of minisft.methods.adapeft.curvature: H d = ∇_θ ⟨∇_θ L, d⟩ by `torch.autograd.grad(..., create_graph=True)`
on a TorchGPT twin that carries the same trainable tensors (base tensors with requires_grad, LoRA
factors wrapped with reference_models.adapters).
"""

import numpy as np
import torch

from .adapters import LoRAFactors, LoRALinear, freeze_base, wrap_linear
from .torch_gpt import TorchGPT


def twin(model, dtype=torch.float64):
    """(TorchGPT, {minisft trainable name: torch Parameter}) mirroring model.trainable_params():
    the same base values, requires_grad on the trainable base tensors, and each LoRA adapter as
    LoRAFactors (A, B, scaling) around the frozen nn.Linear."""
    ref = TorchGPT.from_minisft(model.state_dict(), model.config, dtype=dtype)
    freeze_base(ref)
    own = dict(ref.named_parameters())
    names = {}
    for k in model.trainable:
        own[k].requires_grad_(True)
        names[k] = own[k]
    for layer, ads in model.adapters.items():
        for ad in ads:
            A = np.asarray(ad.params[ad.name_A])
            B = np.asarray(ad.params[ad.name_B])
            f = LoRAFactors(A, B, ad.scaling).to(dtype)
            wrap_linear(ref, layer, lambda base: LoRALinear(base, f))
            names[ad.name_A], names[ad.name_B] = f.A, f.B
    return ref, names


def _batch(idx, tgt):
    return torch.as_tensor(np.asarray(idx)), torch.as_tensor(np.asarray(tgt))


def gradient(ref, names, idx, tgt):
    """(loss, {name: gradient}) by autograd."""
    loss = ref(*_batch(idx, tgt))[1]
    keys = list(names)
    g = torch.autograd.grad(loss, [names[k] for k in keys])
    return float(loss.detach()), {k: v.detach().numpy() for k, v in zip(keys, g)}


def hvp(ref, names, idx, tgt, direction):
    """{name: (H d)[name]} for every trainable name, by double backward; direction {name: array}."""
    keys = list(names)
    params = [names[k] for k in keys]
    loss = ref(*_batch(idx, tgt))[1]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((g * torch.as_tensor(np.asarray(direction[k]), dtype=g.dtype)).sum()
              for k, g in zip(keys, grads) if k in direction)
    hv = torch.autograd.grad(dot, params, allow_unused=True)
    return {k: (torch.zeros_like(p) if h is None else h).detach().numpy() for k, p, h in zip(keys, params, hv)}


def group_influence(ref, names, idx, tgt, groups, direction):
    """{group: (a, b, I)} with b = g_kᵀd_k, a = d_kᵀ (H d_k), I = b² / (2a), d_k = d on group k."""
    _, g = gradient(ref, names, idx, tgt)
    out = {}
    for group, members in groups.items():
        d_k = {k: np.asarray(direction[k]) for k in members}
        hd = hvp(ref, names, idx, tgt, d_k)
        b = sum(float(np.vdot(g[k], d_k[k])) for k in members)
        a = sum(float(np.vdot(d_k[k], hd[k])) for k in members)
        out[group] = (a, b, b * b / (2 * a))
    return out
