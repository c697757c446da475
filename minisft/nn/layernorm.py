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
    else:
        xhat = x - xp.mean(x, axis=-1, keepdims=True)  # x − μ, normalised in place below
        var = xp.mean(xhat * xhat, axis=-1, keepdims=True)  # biased variance, as torch.nn.LayerNorm
        rstd = 1.0 / xp.sqrt(var + eps)
        xhat *= rstd
        y = xhat * weight
        y += bias
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
    lead = tuple(range(dy.ndim - 1))
    grads = {}
    fused = kernels.enabled(dy)
    if "weight" in need:  # y = xhat·w + b
        grads["weight"] = kernels.column_sums(dy, cache.xhat) if fused else xp.sum(dy * cache.xhat, axis=lead)
    if "bias" in need:
        grads["bias"] = kernels.column_sums(dy) if fused else xp.sum(dy, axis=lead)
    if "x" in need and fused:
        grads["x"] = kernels.layernorm_backward_x(dy, cache.xhat, cache.rstd, cache.weight)
    elif "x" in need:
        # xhat = (x − μ)·rstd:  dx = rstd · (dxhat − mean(dxhat) − xhat · mean(dxhat · xhat))
        dx = dy * cache.weight  # dxhat, turned into dx in place
        mean_dxhat_xhat = xp.mean(dx * cache.xhat, axis=-1, keepdims=True)
        dx -= xp.mean(dx, axis=-1, keepdims=True)
        dx -= cache.xhat * mean_dxhat_xhat
        dx *= cache.rstd
        grads["x"] = dx
    return grads
