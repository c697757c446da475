"""Linear layer  y = x Wᵀ + b  with W (d_out, d_in) like torch.nn.Linear and llm.c.

Shapes: x (..., d_in), W (d_out, d_in), b (d_out,) or None  ->  y (..., d_out).
Derivation: proofs/linear.md (tests/test_nn_grad.py::test_linear_fd, ::test_linear_torch).
"""

from dataclasses import dataclass

from ..core.errors import bad_value
from .need import backward_need, need_set
from .sums import column_sums

ALL = ("x", "weight", "bias")


@dataclass
class LinearCache:
    x2: object  # (N, d_in) input, flattened; kept only when dW is needed
    weight: object  # (d_out, d_in) reference (no copy); kept only when dx is needed
    x_shape: tuple  # leading shape of x, to unflatten dx
    need: frozenset


def linear_forward(x, weight, bias=None, need=None):
    """y = x @ W.T + b. `need` defaults to every input present (x, weight, and bias if given)."""
    allowed = ALL if bias is not None else ("x", "weight")
    need = need_set(allowed if need is None else need, allowed, "linear")
    if getattr(weight, "ndim", 0) != 2 or getattr(x, "ndim", 0) < 1 or x.shape[-1] != weight.shape[1] or (
            bias is not None and tuple(getattr(bias, "shape", ())) != weight.shape[:1]):
        raise bad_value("x, weight, bias shapes", (getattr(x, "shape", x), getattr(weight, "shape", weight),
                        getattr(bias, "shape", bias)), "x (..., d_in), weight (d_out, d_in), bias None or (d_out,)")
    d_out, d_in = weight.shape
    x2 = x.reshape(-1, d_in)  # (N, d_in), N = prod(leading dims)
    y = x2 @ weight.T  # (N, d_out)
    if bias is not None:
        y += bias
    cache = LinearCache(
        x2=x2 if "weight" in need else None,
        weight=weight if "x" in need else None,
        x_shape=x.shape,
        need=need,
    )
    return y.reshape(*x.shape[:-1], d_out), cache


def linear_backward(dy, cache, need=None):
    """Gradients of `y = x @ W.T + b` for the inputs named in `need`."""
    need = backward_need(need, cache.need, "linear")
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, d_out)
    grads = {}
    if "x" in need:
        grads["x"] = (dy2 @ cache.weight).reshape(cache.x_shape)  # y = x W^T  =>  dx = dy W
    if "weight" in need:
        grads["weight"] = dy2.T @ cache.x2  # y = x W^T  =>  dW = dy^T x
    if "bias" in need:
        grads["bias"] = column_sums(dy2)  # y = ... + b  =>  db = Σ_n dy_n
    return grads
