"""LayerNorm over the last axis:  y = (x − μ) / sqrt(σ² + eps) · w + b  (GPT-2: eps = 1e-5).

Shapes: x (..., C), w (C,), b (C,)  ->  y (..., C).
Derivation: proofs/layernorm.md (tests/test_nn_grad.py::test_layernorm_fd, ::test_layernorm_torch).
"""

from dataclasses import dataclass

from ..core.backend import array_module
from ..core.errors import bad_value
from ..core.fastpath import has_fast_path
from .need import backward_need, need_set
from .sums import column_sums

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
    C = getattr(x, "shape", (None,))[-1:]
    if not C or tuple(getattr(weight, "shape", ())) != C or tuple(getattr(bias, "shape", ())) != C:
        raise bad_value("x, weight, bias shapes", (getattr(x, "shape", x), getattr(weight, "shape", weight),
                        getattr(bias, "shape", bias)), "x (..., C), weight (C,), bias (C,)")
    y, xhat, rstd = layernorm(x, weight, bias, eps, keep_xhat="x" in need or "weight" in need, keep_rstd="x" in need)
    return y, LayerNormCache(xhat=xhat, rstd=rstd, weight=weight if "x" in need else None, need=need)


@has_fast_path
def layernorm(x, weight, bias, eps, keep_xhat=True, keep_rstd=True):
    """(y (..., C), xhat (..., C) or None, rstd (..., 1) or None): the LayerNorm of x, with the
    normalised input and 1/sqrt(σ² + eps) when asked for (the backward's needs)."""
    xp = array_module(x)
    # row reductions as one matrix-vector product or einsum each: one read, no temporary
    C = x.shape[-1]
    x2 = x.reshape(-1, C)  # (N, C)
    xhat = x2 - (x2 @ xp.ones(C, dtype=x2.dtype) / C)[:, None]  # x − μ, normalised in place below
    var = xp.einsum("nc,nc->n", xhat, xhat) / C  # biased variance, as torch.nn.LayerNorm
    rstd = (1.0 / xp.sqrt(var + eps))[:, None]  # (N, 1)
    xhat *= rstd
    y = xhat * weight
    y += bias
    return (y.reshape(x.shape), xhat.reshape(x.shape) if keep_xhat else None,
            rstd.reshape(*x.shape[:-1], 1) if keep_rstd else None)


def layernorm_backward(dy, cache, need=None):
    """Gradients of the LayerNorm for the inputs named in `need`."""
    need = backward_need(need, cache.need, "layernorm")
    grads = {}
    if "weight" in need:  # y = xhat·w + b
        grads["weight"] = column_sums(dy, cache.xhat)
    if "bias" in need:
        grads["bias"] = column_sums(dy)
    if "x" in need:
        grads["x"] = layernorm_backward_x(dy, cache.xhat, cache.rstd, cache.weight)
    return grads


@has_fast_path
def layernorm_backward_x(dy, xhat, rstd, weight):
    """dx of y = xhat·w + b with xhat = (x − μ)·rstd and dxhat = dy·w:
        dx = rstd · (dxhat − mean(dxhat) − xhat · mean(dxhat · xhat))
    dy, xhat (..., C), rstd (..., 1), weight (C,)  ->  dx (..., C)."""
    xp = array_module(dy)
    C = dy.shape[-1]
    xhat2 = xhat.reshape(-1, C)  # (N, C)
    dx = dy.reshape(-1, C) * weight  # dxhat, turned into dx in place
    mean_dxhat_xhat = xp.einsum("nc,nc->n", dx, xhat2) / C
    dx -= (dx @ xp.ones(C, dtype=dx.dtype) / C)[:, None]
    dx -= xhat2 * mean_dxhat_xhat[:, None]
    dx *= rstd.reshape(-1, 1)
    return dx.reshape(dy.shape)
