"""The adapter contract shared by every trainable view of a frozen linear layer.

An adapter of layer `layer` with base weight W (d_out, d_in) owns `params` ({global name: array})
and implements
    forward(x, y) -> (y, cache)              add its contribution to the base output y in place
    backward(dy, cache, dx) -> {name: grad}   add its share of the input gradient into dx in place
                                              (dx is None when no input gradient is wanted)
    delta_weight() -> (ΔW (d_out, d_in), Δb (d_out,) | None)   its effect as a dense weight change
`merge(model)` adds delta_weight() into the model's base tensors and turns the adapter off;
`unmerge(model)` subtracts it again and turns it back on (a round trip up to rounding).
"""

import numpy as np

from ...core.errors import bad_value
from ...nn import linear_backward


class Adapter:
    """Common state: the layer it wraps, its parameters, and whether it is merged into the base."""

    kind = "adapter"

    def __init__(self, layer, d_out, d_in, xp, dtype):
        self.layer, self.d_out, self.d_in = layer, d_out, d_in
        self.xp, self.dtype = xp, dtype
        self.params = {}
        self.merged = False

    def name(self, local):
        return f"{self.layer}.{self.kind}.{local}"

    def _new(self, local, host_array):
        """Register a trainable parameter from a host array (moved to the layer's backend/dtype)."""
        a = self.xp.asarray(np.asarray(host_array), dtype=self.dtype)
        self.params[self.name(local)] = a
        return a

    def n_trainable(self):
        return sum(int(a.size) for a in self.params.values())

    def forward(self, x, y):
        if self.merged:
            return y, None
        return self._forward(x, y)

    def backward(self, dy, cache, dx):
        if cache is None:  # merged: the adapter is part of the base weight and trains no more
            return {}
        return self._backward(dy, cache, dx)

    def merge(self, model):
        if self.merged:
            raise bad_value(f"{self.layer} adapter", "already merged", "an unmerged adapter")
        self._apply_delta(model, +1.0)
        self.merged = True

    def unmerge(self, model):
        if not self.merged:
            raise bad_value(f"{self.layer} adapter", "not merged", "a merged adapter")
        self._apply_delta(model, -1.0)
        self.merged = False

    def _apply_delta(self, model, sign):
        dW, db = self.delta_weight()
        model.params[self.layer + ".weight"] += sign * dW
        if db is not None:
            model.params[self.layer + ".bias"] += sign * db


def linear_grads(dy, cache, dx, params=("weight", "bias")):
    """Backward of an adapter's inner linear map: its parameter gradients, with its input gradient
    added into `dx` (when one is wanted)."""
    want = set(params) & cache.need
    g = linear_backward(dy, cache, need=want | ({"x"} if dx is not None else set()))
    if dx is not None:
        dx += g.pop("x")
    return g


def adapter_delta_weights(model):
    """{layer: (ΔW, Δb)} summed over every adapter attached to each layer."""
    out = {}
    for layer, ads in model.adapters.items():
        dW = model.xp.zeros_like(model.params[layer + ".weight"])
        db = model.xp.zeros_like(model.params[layer + ".bias"])
        for ad in ads:
            w, b = ad.delta_weight()
            dW += w
            if b is not None:
                db += b
        out[layer] = (dW, db)
    return out


def merge_adapters(model):
    for ads in model.adapters.values():
        for ad in ads:
            ad.merge(model)


def unmerge_adapters(model):
    for ads in model.adapters.values():
        for ad in ads:
            ad.unmerge(model)


def check_indices(arg, indices, size):
    """Sorted unique int64 host indices in [0, size), at least one; a clear error otherwise."""
    a = np.asarray(indices)
    if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iu":
        raise bad_value(arg, indices, f"a non-empty 1-D integer array of indices into {size}")
    if a.size > size:
        raise bad_value(f"len({arg})", a.size, f"at most {size}")
    if a.min() < 0 or a.max() >= size:
        raise bad_value(arg, a[(a < 0) | (a >= size)][:5].tolist(), f"indices in [0, {size})")
    s = np.sort(a)
    dup = s[1:][s[1:] == s[:-1]]
    if dup.size:
        raise bad_value(arg, f"duplicates {dup[:5].tolist()}", "distinct indices")
    return s.astype(np.int64)


def kaiming_uniform(generator, shape, fan_in, a=np.sqrt(5.0)):
    """torch.nn.init.kaiming_uniform_(a=√5) as PEFT and nn.Linear use it: U(±gain·√(3/fan_in)),
    gain = √(2/(1+a²)); with a = √5 the bound is 1/√fan_in."""
    bound = np.sqrt(2.0 / (1.0 + a * a)) * np.sqrt(3.0 / fan_in)
    return generator.uniform(-bound, bound, size=shape)
