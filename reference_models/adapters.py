"""PyTorch (autograd) references of minisft's adapters, written from their definitions.

Each wraps a frozen `nn.Linear` and is swapped into a TorchGPT by name with `wrap_linear`.
"""

import numpy as np
import torch
from torch import nn


class RowDeltaLinear(nn.Module):
    """y = base(x);  y[..., rows] += x ΔW_rᵀ + Δb_r."""

    def __init__(self, base, rows, weight, bias=None):
        super().__init__()
        self.base, self.rows = base, torch.as_tensor(np.asarray(rows))
        self.weight = nn.Parameter(torch.as_tensor(np.asarray(weight)).clone())
        self.bias = None if bias is None else nn.Parameter(torch.as_tensor(np.asarray(bias)).clone())

    def forward(self, x):
        y = self.base(x)
        part = nn.functional.linear(x, self.weight, self.bias)
        return y.index_add(-1, self.rows, part)


class ColumnDeltaLinear(nn.Module):
    """y = base(x) + x[..., cols] ΔW_cᵀ."""

    def __init__(self, base, cols, weight):
        super().__init__()
        self.base, self.cols = base, torch.as_tensor(np.asarray(cols))
        self.weight = nn.Parameter(torch.as_tensor(np.asarray(weight)).clone())

    def forward(self, x):
        return self.base(x) + x.index_select(-1, self.cols) @ self.weight.T


class DenseDeltaLinear(nn.Module):
    """y = base(x) + x (M ∘ ΔW)ᵀ + Δb, M a fixed 0/1 mask (all ones for a plain dense delta);
    autograd then gives dΔW = M ∘ (dyᵀ x)."""

    def __init__(self, base, weight, bias=None, mask=None):
        super().__init__()
        self.base = base
        self.weight = nn.Parameter(torch.as_tensor(np.asarray(weight)).clone())
        self.bias = None if bias is None else nn.Parameter(torch.as_tensor(np.asarray(bias)).clone())
        self.register_buffer("mask", None if mask is None else torch.as_tensor(np.asarray(mask)))

    def forward(self, x):
        w = self.weight if self.mask is None else self.weight * self.mask
        return self.base(x) + nn.functional.linear(x, w, self.bias)


class LoRAFactors(nn.Module):
    """A (r, d_in), B (d_out, r) and the scaling; one instance may serve several layers."""

    def __init__(self, A, B, scaling):
        super().__init__()
        self.A = nn.Parameter(torch.as_tensor(np.asarray(A)).clone())
        self.B = nn.Parameter(torch.as_tensor(np.asarray(B)).clone())
        self.scaling = scaling


class LoRALinear(nn.Module):
    """y = base(x) + s · (x Aᵀ) Bᵀ with (possibly shared) factors: autograd sums a shared
    module's gradient over every layer that uses it."""

    def __init__(self, base, factors):
        super().__init__()
        self.base, self.factors = base, factors

    def forward(self, x):
        f = self.factors
        return self.base(x) + f.scaling * ((x @ f.A.T) @ f.B.T)


def wrap_linear(model, layer, make):
    """Replace the nn.Linear at dotted path `layer` (e.g. "h.0.mlp.c_fc") by make(linear)."""
    parent_path, attr = layer.rsplit(".", 1)
    parent = model.get_submodule(parent_path)
    wrapped = make(getattr(parent, attr))
    setattr(parent, attr, wrapped)
    return wrapped


def freeze_base(model):
    for p in model.parameters():
        p.requires_grad_(False)
