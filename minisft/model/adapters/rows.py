"""SPruFT's row delta and its column counterpart (Li & Bhaskara 2025, arXiv 2502.11439, §3).

RowDelta on rows `idx` (r of them):
    forward   Y[:, idx] += X ΔW_rᵀ + Δb_r                       W_eff = W + Mᵀ ΔW_r
    backward  dΔW_r = dY[:, idx]ᵀ X   (r × d_in, never d_out × d_in)
              dΔb_r = Σ_n dY[n, idx],   dX += dY[:, idx] ΔW_r
It equals LoRA with B fixed to the one-hot selector Mᵀ (d_out × r), A = ΔW_r and scaling 1.

ColumnDelta on input columns `cols` (c of them; SPruFT's neuron mode trains the columns of the
next layer that read a selected neuron):
    forward   Y += X[:, cols] ΔW_cᵀ                             W_eff[:, cols] = W[:, cols] + ΔW_c
    backward  dΔW_c = dYᵀ X[:, cols],   dX[:, cols] += dY ΔW_c
On the GPU the fast path (minisft.gpu.adapters) computes the same equations in fewer passes.
Derivation: proofs/row_delta.md.
"""

import numpy as np

from ...core.backend import rng as make_rng
from ...core.errors import bad_value
from ...core.fastpath import has_fast_path
from ...nn import linear_backward, linear_forward
from .base import Adapter, check_indices, kaiming_uniform, linear_grads

INITS = ("zeros", "kaiming_uniform")


def _init(init, generator, shape, fan_in):
    if init == "zeros":
        return np.zeros(shape)
    if init == "kaiming_uniform":
        return kaiming_uniform(make_rng(generator), shape, fan_in)
    raise bad_value("init", init, f"one of {INITS}")


class RowDelta(Adapter):
    kind = "row_delta"

    def __init__(self, model, layer, rows, bias=True, init="zeros", generator=0):
        W = model.params[layer + ".weight"]
        super().__init__(layer, *W.shape, model.xp, model.dtype)
        self.rows_host = check_indices(f"{layer} rows", rows, self.d_out)
        self.rows = self.xp.asarray(self.rows_host)
        r = self.rows_host.size
        self.weight = self._new("weight", _init(init, generator, (r, self.d_in), self.d_in))
        # the bias delta starts at zero whatever `init` says (a kaiming initialiser needs a fan-in,
        # which a 1-D bias lacks: the released code's crash on it is a regression test here)
        self.bias = self._new("bias", np.zeros(r)) if bias else None

    @has_fast_path
    def _forward(self, x, y):
        part, cache = linear_forward(x, self.weight, self.bias)  # (..., r)
        y[..., self.rows] += part
        return y, cache

    @has_fast_path
    def _backward(self, dy, cache, dx):
        d_part = dy[..., self.rows]  # Y[:, idx] += part  =>  d part = dY[:, idx]  (N, r)
        g = linear_grads(d_part, cache, dx)
        grads = {self.name("weight"): g["weight"]}
        if self.bias is not None:
            grads[self.name("bias")] = g["bias"]
        return grads

    def delta_weight(self):
        dW = self.xp.zeros((self.d_out, self.d_in), dtype=self.dtype)
        dW[self.rows] = self.weight
        db = None
        if self.bias is not None:
            db = self.xp.zeros(self.d_out, dtype=self.dtype)
            db[self.rows] = self.bias
        return dW, db


class ColumnDelta(Adapter):
    kind = "column_delta"

    def __init__(self, model, layer, cols, init="zeros", generator=0):
        W = model.params[layer + ".weight"]
        super().__init__(layer, *W.shape, model.xp, model.dtype)
        self.cols_host = check_indices(f"{layer} cols", cols, self.d_in)
        self.cols = self.xp.asarray(self.cols_host)
        c = self.cols_host.size
        self.weight = self._new("weight", _init(init, generator, (self.d_out, c), c))

    @has_fast_path
    def _forward(self, x, y):
        x_cols = x[..., self.cols]  # (..., c): a gathered copy, the only activation it adds
        part, cache = linear_forward(x_cols, self.weight)
        y += part
        return y, cache

    @has_fast_path
    def _backward(self, dy, cache, dx):
        g = linear_backward(dy, cache, need={"weight"} | ({"x"} if dx is not None else set()))
        if dx is not None:
            dx[..., self.cols] += g["x"]  # x_cols = x[:, cols]  =>  dx[:, cols] += d x_cols
        return {self.name("weight"): g["weight"]}

    def delta_weight(self):
        dW = self.xp.zeros((self.d_out, self.d_in), dtype=self.dtype)
        dW[:, self.cols] = self.weight
        return dW, None
