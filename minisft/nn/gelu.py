"""GELU, tanh approximation (GPT-2's "gelu_new"):
    y = ½ x (1 + tanh(u)),   u = √(2/π) (x + 0.044715 x³),
evaluated as y = x·σ(2u) = x / (1 + e^{−2u}) and dy/dx = σ(2u) + ½ x sech²(u) u'(x), identities that
keep their relative precision in the tails, where 1 + tanh u and 1 − tanh² u cancel (proofs/gelu.md).

Shapes: x (...)  ->  y (...).
Derivation: proofs/gelu.md (tests/test_nn_grad.py::test_gelu_fd, ::test_gelu_torch).
"""

import math
from dataclasses import dataclass

import numpy as np

from ..core.backend import array_module
from ..core.fastpath import has_fast_path
from .blocks import row_blocks
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
    return gelu(x), GeluCache(x=x if "x" in need else None, need=need)


@has_fast_path
def gelu(x):
    """GELU of every entry of x, a new array of x's shape."""
    xp = array_module(x)
    x1 = x.reshape(-1)
    y = xp.empty_like(x1)
    for b in row_blocks(x1.size, 1, xp):
        _gelu(x1[b], y[b])
    return y.reshape(x.shape)


def _gelu(x, y):
    """y = ½ x (1 + tanh u) = x / (1 + e^{−2u}), u = √(2/π)(x + 0.044715 x³), in place on y (e^{−2u}
    overflows to inf for x ≪ 0, and y is then x/inf = −0.0, as ½ x (1 + tanh u) gives)."""
    xp = array_module(x)
    xp.multiply(x, x, out=y)
    y *= COEFF
    y += 1.0
    y *= x
    y *= -2.0 * SQRT_2_OVER_PI  # −2u
    with np.errstate(over="ignore"):
        xp.exp(y, out=y)
    y += 1.0
    xp.divide(x, y, out=y)


def gelu_backward(dy, cache, need=None):
    """dy/dx = ½(1 + tanh u) + ½ x (1 − tanh² u) · √(2/π)(1 + 3·0.044715 x²)
             = σ(2u) + ½ x sech²(u) · √(2/π)(1 + 3·0.044715 x²)."""
    need = backward_need(need, cache.need, "gelu")
    return {"x": gelu_input_grad(dy, cache.x)} if "x" in need else {}


@has_fast_path
def gelu_input_grad(dy, x):
    """dy · dGELU/dx at x, a new array of x's shape."""
    xp = array_module(dy)
    x1, dy1 = x.reshape(-1), dy.reshape(-1)
    g = xp.empty_like(x1)
    for b in row_blocks(x1.size, 1, xp):
        _gelu_grad(dy1[b], x1[b], g[b])
    return g.reshape(dy.shape)


def _gelu_grad(dy, x, g):
    """g = dy · (σ(2u) + ½ x sech²(u) du/dx) at x, in place on g and two temporaries (cosh u and
    e^{−2u} overflow to inf in the tails: sech² u = 0, σ(2u) = 0, as the limits are)."""
    xp = array_module(x)
    du = x * x
    t = du * COEFF
    t += 1.0
    t *= x
    t *= SQRT_2_OVER_PI  # t = u
    du *= 3.0 * COEFF * SQRT_2_OVER_PI
    du += SQRT_2_OVER_PI  # du/dx = √(2/π)(1 + 3·0.044715 x²)
    with np.errstate(over="ignore"):
        xp.cosh(t, out=g)
        g *= g
        xp.divide(du, g, out=g)  # sech²(u) du/dx
        g *= x
        g *= 0.5
        t *= -2.0
        xp.exp(t, out=t)
    t += 1.0
    xp.divide(1.0, t, out=t)  # σ(2u) = ½(1 + tanh u)
    g += t
    g *= dy
