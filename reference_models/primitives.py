"""PyTorch twins of the GMT, MGPP and LoRA-drop primitives (minisft.methods.gmt.masks,
minisft.methods.mgpp.prior and .schedule's exact count, minisft.methods.loradrop.selection; MGPP's
schedule and the authors' count: reference_models/mgpp.py), written independently
with torch's own tools as the parity oracle:
torch.kthvalue for the mask threshold, torch.logsumexp for the prior and autograd for its gradient,
torch.sort + cumsum for the layer selection. `zero_gmt_dropped_` is GMT's masking in the fast form
the benchmark times (reference_models.bench.step), tested equal to minisft's masks.

Conventions shared with minisft (they are the specification, not shared code): masks are True where
kept; the k smallest |x| are dropped with ties dropped at the lower flat index first (and, across
tensors, the earlier tensor first); k = floor(r * n) for GMT and floor(s * n + 1/2) for MGPP, with
the ratio read as its shortest decimal (Fraction(repr(r))).
"""

import math
from collections import defaultdict
from fractions import Fraction

import torch


def _count(ratio, n, half_up):
    exact = Fraction(repr(float(ratio))) * n + (Fraction(1, 2) if half_up else 0)
    return math.floor(exact)


def _drop_k_smallest(flat_abs, k):
    """(n,) magnitudes -> (n,) bool, True = kept: the k smallest dropped, ties by lower index."""
    keep = torch.ones_like(flat_abs, dtype=torch.bool)
    if k == 0:
        return keep
    t = torch.kthvalue(flat_abs, k).values
    below = flat_abs < t
    tie = flat_abs == t
    need = k - int(below.sum())
    return keep & ~below & ~(tie & (torch.cumsum(tie.long(), 0) <= need))


def gradient_mask(grad, drop_ratio):
    """(shape) float tensor -> (shape) bool, floor(drop_ratio * n) smallest |grad| False."""
    flat = grad.detach().abs().reshape(-1).double()
    return _drop_k_smallest(flat, _count(drop_ratio, flat.numel(), False)).reshape(grad.shape)


def zero_gmt_dropped_(grads, drop_ratio, batched=None):
    """GMT's per-tensor masking in place, as a careful PyTorch user writes it: in each tensor the
    floor(drop_ratio·n) entries of smallest |g| are zeroed, ties at the lower flat index first
    (minisft's count and tie rule; tests/test_gmt_mask.py::test_torch_gmt_for_the_bench_equals_minisft).

    One kthvalue per group of tensors: with `batched` (default: on the GPU) the tensors that share a
    size are stacked and ranked by one batched kthvalue (few kernels); otherwise (default on the CPU)
    each tensor is its own group (a flat view, no stacked copy). Ties at the threshold are ranked by
    a cumulative count only when some row keeps part of them."""
    groups = defaultdict(list)
    for i, g in enumerate(grads):
        groups[g.numel() if (g.is_cuda if batched is None else batched) else i].append(g)
    with torch.no_grad():
        for group in groups.values():
            k = _count(drop_ratio, group[0].numel(), False)
            if k == 0:
                continue
            flat = [g.reshape(1, -1) for g in group]
            a = torch.cat(flat).abs_() if len(flat) > 1 else flat[0].abs()  # (m, n)
            t = a.kthvalue(k, dim=1, keepdim=True).values  # (m, 1) the k-th smallest |g| of each row
            drop = a < t
            tie = a == t
            need = k - drop.sum(1, keepdim=True)  # ties to drop in each row, lowest index first
            if bool((tie.sum(1, keepdim=True) > need).any()):
                drop |= tie & (tie.cumsum(1) <= need)
            else:
                drop |= tie
            for g, d in zip(group, drop):
                g.masked_fill_(d.view_as(g), 0)


def global_masks(tensors, ratio, half_up=False):
    """list of float tensors -> list of bool masks over all of them together (a concatenated copy
    here: the reference favours plainness over memory)."""
    if not tensors:
        return []
    flat = torch.cat([t.detach().abs().reshape(-1).double() for t in tensors])
    keep = _drop_k_smallest(flat, _count(ratio, flat.numel(), half_up))
    return [m.reshape(t.shape) for m, t in zip(torch.split(keep, [t.numel() for t in tensors]), tensors)]


def neg_log_prior(theta, lam, var0, var1):
    """-log(lam N(theta; 0, var1) + (1 - lam) N(theta; 0, var0)) via torch.logsumexp (var: variances)."""

    def log_normal(var):
        return -0.5 * theta**2 / var - 0.5 * math.log(var) - 0.5 * math.log(2 * math.pi)

    parts = torch.stack([math.log(lam) + log_normal(var1), math.log(1 - lam) + log_normal(var0)])
    return -torch.logsumexp(parts, dim=0)


def neg_log_prior_grad(theta, lam, var0, var1):
    """Elementwise derivative of `neg_log_prior` by autograd."""
    theta = theta.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(neg_log_prior(theta, lam, var0, var1).sum(), theta)
    return grad


def select_layers(importance, threshold):
    """(n_layers,) importance -> sorted int64 tensor of kept layers: stable sort descending, then the
    shortest prefix whose share of the total reaches the threshold, in exact rational arithmetic
    (the importances' binary values, the threshold read as its shortest decimal: a float cumulative
    sum can fall short of the threshold by one rounding and keep one layer more)."""
    g = importance.double()
    order = torch.sort(g, descending=True, stable=True).indices
    values = [Fraction(float(v)) for v in g[order]]
    target = Fraction(repr(float(threshold))) * sum(values)
    running, n_kept = Fraction(0), len(values)
    for i, v in enumerate(values):
        running += v
        if running >= target:
            n_kept = i + 1
            break
    return torch.sort(order[:n_kept]).values
