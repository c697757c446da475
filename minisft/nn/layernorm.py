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
        mean = xp.mean(x, axis=-1, keepdims=True)
        xc = x - mean
        var = xp.mean(xc * xc, axis=-1, keepdims=True)  # biased variance, as torch.nn.LayerNorm
        rstd = 1.0 / xp.sqrt(var + eps)
        xhat = xc * rstd
        y = xhat * weight + bias
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
    if "weight" in need:
        grads["weight"] = xp.sum(dy * cache.xhat, axis=lead)  # y = xhat·w + b
    if "bias" in need:
        grads["bias"] = xp.sum(dy, axis=lead)
    if "x" in need and kernels.enabled(dy):
        grads["x"] = kernels.layernorm_backward_x(dy, cache.xhat, cache.rstd, cache.weight)
    elif "x" in need:
        # xhat = (x − μ)·rstd:  dx = rstd · (dxhat − mean(dxhat) − xhat · mean(dxhat · xhat))
        dxhat = dy * cache.weight
        mean_dxhat = xp.mean(dxhat, axis=-1, keepdims=True)
        mean_dxhat_xhat = xp.mean(dxhat * cache.xhat, axis=-1, keepdims=True)
        grads["x"] = cache.rstd * (dxhat - mean_dxhat - cache.xhat * mean_dxhat_xhat)
    return grads
