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
    else:
        u = SQRT_2_OVER_PI * (x + COEFF * x * x * x)
        y = 0.5 * x * (1.0 + xp.tanh(u))
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
    t = xp.tanh(SQRT_2_OVER_PI * (x + COEFF * x * x * x))
    du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * COEFF * x * x)
    return {"x": dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)}
