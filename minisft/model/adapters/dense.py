"""Dense delta on a whole weight (and bias), and its element-masked variant.

Dense:        y += x ΔWᵀ + Δb                       (W_eff = W + ΔW; zero-initialised)
ElementMask:  y += x (M ∘ ΔW)ᵀ,  dΔW = M ∘ (dyᵀ x)  (masked-dense sparse fine-tuning: the
              baseline that holds a full d_out×d_in gradient even though few entries train)
"""

import numpy as np

from ...core.errors import bad_value
from ...nn import linear_forward
from .base import Adapter, linear_grads


class Dense(Adapter):
    kind = "dense"

    def __init__(self, model, layer, bias=True):
        W = model.params[layer + ".weight"]
        super().__init__(layer, *W.shape, model.xp, model.dtype)
        self.weight = self._new("weight", np.zeros(W.shape))
        self.bias = self._new("bias", np.zeros(W.shape[0])) if bias else None

    def _effective(self):
        return self.weight

    def _forward(self, x, y):
        part, cache = linear_forward(x, self._effective(), self.bias)
        y += part
        return y, cache

    def _backward(self, dy, cache, dx):
        g = linear_grads(dy, cache, dx)  # y += x ΔWᵀ + Δb
        grads = {self.name("weight"): self._mask_grad(g["weight"])}
        if self.bias is not None:
            grads[self.name("bias")] = g["bias"]
        return grads

    def _mask_grad(self, g):
        return g

    def delta_weight(self):
        return self._effective(), self.bias


class ElementMask(Dense):
    """Dense delta restricted to the entries where `mask` is True (mask may change during training:
    `set_mask`). Masked entries get a zero gradient. `freeze_masked` only decides what
    `optimizer_masks()` returns: True — {weight name: mask}, for whoever steps the optimizer to pass
    as `opt.step(..., masks=...)`, so masked entries and their moments are not touched at all (see
    minisft.training.optim); False — {}, so AdamW's momentum and weight decay still move them. The generic
    trainer does not ask adapters for masks (only a method's `optimizer_masks`); the memory
    benchmark (reference_models.bench.memory) passes them itself."""

    kind = "element_mask"

    def __init__(self, model, layer, mask, freeze_masked=True):
        super().__init__(model, layer, bias=False)
        self.freeze_masked = freeze_masked
        self.set_mask(mask)

    def set_mask(self, mask):
        m = self.xp.asarray(mask)
        if m.shape != self.weight.shape or m.dtype != bool:
            raise bad_value(f"{self.layer} mask", f"{m.dtype} array of shape {m.shape}",
                            f"a bool array of shape {self.weight.shape}")
        self.mask = m

    def _effective(self):
        return self.weight * self.mask

    def _mask_grad(self, g):
        return g * self.mask

    def n_trainable(self):
        return int(self.mask.sum())

    def optimizer_masks(self):
        """{param name: mask} for the optimizer when masked entries must stay untouched."""
        return {self.name("weight"): self.mask} if self.freeze_masked else {}
