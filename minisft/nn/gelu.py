"""GELU, tanh approximation (GPT-2's "gelu_new"):
    y = ½ x (1 + tanh(u)),   u = √(2/π) (x + 0.044715 x³).

Shapes: x (...)  ->  y (...).
Derivation: proofs/gelu.md (tests/test_nn_grad.py::test_gelu_fd, ::test_gelu_torch).
"""

import math
from dataclasses import dataclass

from .. import kernels
from ..backend import array_module
from .need import backward_need, need_set

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
COEFF = 0.044715


@dataclass
class GeluCache:
    x: object  # the input; dy/dx depends on x alone
    need: frozenset


def gelu_forward(x, need=("x",)):
    """y = 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))."""
    need = need_set(need, ("x",), "gelu")
    xp = array_module(x)
    if kernels.enabled(x):
        y = kernels.gelu(x)
    else:  # in place on one temporary: y = ½ x (1 + tanh(√(2/π)(x + 0.044715 x³)))
        y = x * x
        y *= COEFF
        y += 1.0
        y *= x
        y *= SQRT_2_OVER_PI  # u
        xp.tanh(y, out=y)
        y += 1.0
        y *= x
        y *= 0.5
    return y, GeluCache(x=x if "x" in need else None, need=need)


def gelu_backward(dy, cache, need=None):
    """dy/dx = ½(1 + tanh u) + ½ x (1 − tanh² u) · √(2/π)(1 + 3·0.044715 x²)."""
    need = backward_need(need, cache.need, "gelu")
    if "x" not in need:
        return {}
    xp = array_module(dy)
    x = cache.x
    if kernels.enabled(dy):
        return {"x": kernels.gelu_backward(dy, x)}
    # in place on three temporaries
    du = x * x
    t = du * COEFF
    t += 1.0
    t *= x
    t *= SQRT_2_OVER_PI
    xp.tanh(t, out=t)  # t = tanh(u)
    du *= 3.0 * COEFF * SQRT_2_OVER_PI
    du += SQRT_2_OVER_PI  # du/dx = √(2/π)(1 + 3·0.044715 x²)
    g = t * t
    xp.subtract(1.0, g, out=g)
    g *= x
    g *= du
    g *= 0.5  # ½ x (1 − t²) du/dx
    t += 1.0
    t *= 0.5  # ½ (1 + t)
    g += t
    g *= dy
    return {"x": g}
