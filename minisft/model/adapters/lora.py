"""LoRA exactly as HF PEFT's `LoraLayer` on a linear layer (Hu et al. 2021; PEFT defaults).

    y += s · (x Aᵀ) Bᵀ,   A (r, d_in) ~ kaiming_uniform(a=√5) = U(±1/√d_in),   B (d_out, r) = 0
    s = α / r   (rsLoRA: α / √r);  dropout is not modelled (PEFT's default lora_dropout=0)
    backward:  dB = s · dyᵀ (x Aᵀ),   dA = s · (dy B)ᵀ x,   dx += s · (dy B) A
    delta_weight() = s · B A

SharedLoRA (LoRA-drop, Zhou et al. 2024, arXiv 2402.07721): one (A, B) pair used by several layers;
every view registers the same arrays under the same names, so the model sums their gradients.
On the GPU the fast path (minisft.gpu.adapters) runs the same equations as four GEMMs.
Derivation: proofs/lora.md.
"""

import math

import numpy as np

from ...core.backend import rng as make_rng
from ...core.errors import bad_value, positive_int, real_in
from ...core.fastpath import has_fast_path
from ...nn import linear_forward
from ..gpt import linear_layer_names
from .base import Adapter, kaiming_uniform, linear_grads


def lora_scaling(r, alpha, use_rslora):
    return alpha / math.sqrt(r) if use_rslora else alpha / r


class LoRA(Adapter):
    kind = "lora"

    def __init__(self, model, layer, r=8, alpha=8, use_rslora=False, generator=0, shared=None):
        linear = (linear_layer_names(model.config) if hasattr(model, "config")  # a GPT; else a bare stand-in
                  else [name[: -len(".weight")] for name in model.params])
        if layer not in linear:
            raise bad_value("layer", layer, f"a linear layer of the model, such as {linear[:2]}")
        W = model.params[layer + ".weight"]
        super().__init__(layer, *W.shape, model.xp, model.dtype)
        if shared is not None:
            self.A, self.B, self.scaling = shared.A, shared.B, shared.scaling
            self.name_A, self.name_B = shared.name_A, shared.name_B
            self.params = {self.name_A: self.A, self.name_B: self.B}
            return
        r = positive_int("r", r)
        alpha = real_in("alpha", alpha, 0.0, math.inf, low_open=True, high_open=True)
        if r > min(self.d_out, self.d_in):
            raise bad_value("r", r, f"at most min(d_out, d_in) = {min(self.d_out, self.d_in)} for {layer}")
        self.scaling = lora_scaling(r, alpha, use_rslora)
        self.A = self._new("lora_A", kaiming_uniform(make_rng(generator), (r, self.d_in), self.d_in))
        self.B = self._new("lora_B", np.zeros((self.d_out, r)))
        self.name_A, self.name_B = self.name("lora_A"), self.name("lora_B")

    @has_fast_path
    def _forward(self, x, y):
        h, cache_a = linear_forward(x, self.A)  # (..., r)
        part, cache_b = linear_forward(h, self.B)  # (..., d_out)
        y += self.scaling * part
        return y, (cache_a, cache_b)

    @has_fast_path
    def _backward(self, dy, cache, dx):
        cache_a, cache_b = cache
        dh = self.xp.zeros((*dy.shape[:-1], self.A.shape[0]), dtype=dy.dtype)
        g_b = linear_grads(self.scaling * dy, cache_b, dh, params=("weight",))  # part = h Bᵀ
        g_a = linear_grads(dh, cache_a, dx, params=("weight",))  # h = x Aᵀ
        return {self.name_A: g_a["weight"], self.name_B: g_b["weight"]}

    def delta_weight(self):
        return self.scaling * (self.B @ self.A), None


class SharedLoRA:
    """One LoRA (A, B) for several layers of the same shape; `attach(model, layers)` adds a view to
    each. Parameters are named `shared.<group>.lora_A/B`, so gradients from all views add up."""

    def __init__(self, model, group, like_layer, r=8, alpha=8, use_rslora=False, generator=0):
        proto = LoRA(model, like_layer, r=r, alpha=alpha, use_rslora=use_rslora, generator=generator)
        self.group = group
        self.A, self.B, self.scaling = proto.A, proto.B, proto.scaling
        self.name_A, self.name_B = f"shared.{group}.lora_A", f"shared.{group}.lora_B"
        self.params = {self.name_A: self.A, self.name_B: self.B}
        self.shape = model.params[like_layer + ".weight"].shape
        self.layers = []

    def attach(self, model, layers):
        for layer in layers:
            shape = model.params[layer + ".weight"].shape
            if shape != self.shape:
                raise bad_value(f"layer {layer} shape", shape, f"{self.shape}, the shared LoRA's shape")
            model.add_adapter(layer, LoRA(model, layer, shared=self))
            self.layers.append(layer)
        return self

    def n_trainable(self):
        return int(self.A.size + self.B.size)
