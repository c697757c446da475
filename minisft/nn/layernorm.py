"""LayerNorm over the last axis:  y = (x − μ) / sqrt(σ² + eps) · w + b  (GPT-2: eps = 1e-5).

Shapes: x (..., C), w (C,), b (C,)  ->  y (..., C).
Derivation: proofs/layernorm.md (tests/test_nn_grad.py::test_layernorm_fd, ::test_layernorm_torch).
"""

from dataclasses import dataclass

from .. import kernels
from ..backend import array_module
from .need import backward_need, need_set

ALL = ("x", "weight", "bias")
EPS = 1e-5


@dataclass
class LayerNormCache:
    xhat: object  # (..., C) normalised input; needed by dx and dw
    rstd: object  # (..., 1) 1/sqrt(var + eps); needed by dx only
    weight: object  # (C,) reference; needed by dx only
    need: frozenset


def layernorm_forward(x, weight, bias, eps=EPS, need=ALL):
    """Normalise each vector x[..., :] to zero mean and unit variance, then scale and shift."""
    need = need_set(need, ALL, "layernorm")
    xp = array_module(x)
    keep_xhat = "x" in need or "weight" in need
    if kernels.enabled(x):
        y, xhat, rstd = kernels.layernorm(x, weight, bias, eps, keep_xhat, "x" in need)
    else:  # row reductions as one matrix-vector product or einsum each: one read, no temporary
        C = x.shape[-1]
        x2 = x.reshape(-1, C)  # (N, C)
        xhat = x2 - (x2 @ xp.ones(C, dtype=x2.dtype) / C)[:, None]  # x − μ, normalised in place below
        var = xp.einsum("nc,nc->n", xhat, xhat) / C  # biased variance, as torch.nn.LayerNorm
        rstd = (1.0 / xp.sqrt(var + eps))[:, None]  # (N, 1)
        xhat *= rstd
        y = xhat * weight
        y += bias
        y, xhat, rstd = y.reshape(x.shape), xhat.reshape(x.shape), rstd.reshape(*x.shape[:-1], 1)
    cache = LayerNormCache(
        xhat=xhat if keep_xhat else None,
        rstd=rstd if "x" in need else None,
        weight=weight if "x" in need else None,
        need=need,
    )
    return y, cache


def layernorm_backward(dy, cache, need=None):
    """Gradients of the LayerNorm for the inputs named in `need`."""
    need = backward_need(need, cache.need, "layernorm")
    xp = array_module(dy)
    grads = {}
    fused = kernels.enabled(dy)
    C = dy.shape[-1]
    dy2 = dy.reshape(-1, C)  # (N, C)
    xhat = None if cache.xhat is None else cache.xhat.reshape(-1, C)
    if "weight" in need:  # y = xhat·w + b
        grads["weight"] = kernels.column_sums(dy, cache.xhat) if fused else xp.einsum("nc,nc->c", dy2, xhat)
    if "bias" in need:
        grads["bias"] = kernels.column_sums(dy) if fused else xp.ones(dy2.shape[0], dtype=dy2.dtype) @ dy2
    if "x" in need and fused:
        grads["x"] = kernels.layernorm_backward_x(dy, cache.xhat, cache.rstd, cache.weight)
    elif "x" in need:
        # xhat = (x − μ)·rstd:  dx = rstd · (dxhat − mean(dxhat) − xhat · mean(dxhat · xhat))
        dx = dy2 * cache.weight  # dxhat, turned into dx in place
        mean_dxhat_xhat = xp.einsum("nc,nc->n", dx, xhat) / C
        dx -= (dx @ xp.ones(C, dtype=dx.dtype) / C)[:, None]
        dx -= xhat * mean_dxhat_xhat[:, None]
        dx *= cache.rstd.reshape(-1, 1)
        grads["x"] = dx.reshape(dy.shape)
    return grads
