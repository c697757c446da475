"""GMT as a fine-tuning method: the `GMT` class the trainer drives (map: minisft/methods/gmt/__init__.py;
decisions: proofs/decisions.md §4; derivations: proofs/gmt_mgpp_methods.md)."""

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from ...core.backend import to_numpy
from ...core.errors import require
from ..config import MethodConfig, option
from ..select import zero_where_dropped_all
from ..base import Method
from .masks import global_gradient_masks, gradient_masks

Scope = Literal["tensor", "global"]
SCOPES = get_args(Scope)


@dataclass(frozen=True)
class GMTConfig(MethodConfig):
    drop_ratio: float = option(0.5, "fraction of each gradient's entries dropped (the smallest |g|), in [0, 1)")
    scope: Scope = option("tensor", "rank entries within each tensor (tensor) or across all tensors (global)")
    freeze_masked: bool = option(False, "also freeze the dropped entries' Adam moments and weight decay")

    def check(self):
        require(0 <= self.drop_ratio < 1, "drop_ratio", self.drop_ratio, "a number in [0, 1)")


class GMT(Method):
    """Gradient-Mask Tuning: full fine-tuning with the smallest-|Γ| gradient entries dropped at
    every step (package docstring, minisft.methods.gmt)."""

    name = "gmt"
    paper = "Li et al. 2024, arXiv 2406.15330"
    Config = GMTConfig
    trains_base = True

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        self._reset()

    def _reset(self):
        self.masks = {}  # name -> (shape) bool, True = kept, of the last step
        self._kept = {}  # name -> kept entries summed over the steps folded so far (an int)
        self._pending = {}  # names -> (len(names),) kept counts on the device, summed since the last fold
        self._sizes = {}  # name -> entries of the tensor
        self._steps = 0

    def prepare(self, model, task, rng):
        model.unfreeze()
        self._reset()
        self._sizes = {name: int(p.size) for name, p in model.trainable_params().items()}

    def keep_masks(self, grads):
        """{name: (shape) float gradient} -> {name: (shape) bool}, True = kept (scope's ranking)."""
        if self.config.scope == "global":
            return global_gradient_masks(grads, self.config.drop_ratio)
        return gradient_masks(grads, self.config.drop_ratio)

    def transform_grads(self, model, grads, step):
        """Zero the dropped entries of every gradient in place; grads: {name: (shape) array}. The kept
        counts stay on the device (folded into ints by `_fold_pending`)."""
        ordered = {name: grads[name] for name in model.trainable_params() if name in grads}
        self.masks = self.keep_masks(ordered)
        names = tuple(self.masks)
        kept = zero_where_dropped_all([grads[n] for n in names], [self.masks[n] for n in names])
        self._pending[names] = kept if names not in self._pending else self._pending[names] + kept
        self._steps += 1
        return grads

    def optimizer_masks(self, model):
        return self.masks if self.config.freeze_masked else {}

    def _fold_pending(self):
        """Add the device count vectors into `_kept` (one transfer each): no host read in the step."""
        for names, counts in self._pending.items():
            for name, n in zip(names, to_numpy(counts).tolist()):
                self._kept[name] = self._kept.get(name, 0) + int(n)
        self._pending = {}

    def state_arrays(self):
        self._fold_pending()
        arrays = {f"kept/{name}": np.asarray(int(v), dtype=np.int64) for name, v in self._kept.items()}
        arrays["steps"] = np.asarray(self._steps, dtype=np.int64)
        return arrays

    def load_state_arrays(self, arrays):
        self._steps = int(arrays["steps"])
        self._kept = {k[len("kept/"):]: int(v) for k, v in arrays.items() if k.startswith("kept/")}
        self._pending = {}

    def report(self):
        """Realised kept fraction per tensor and overall (mean over the steps)."""
        if not self._steps:
            return {"steps": 0}
        self._fold_pending()
        kept = self._kept
        entries = self._steps * sum(self._sizes[name] for name in kept)
        return {
            "steps": self._steps,
            "kept_fraction": {name: n / (self._steps * self._sizes[name]) for name, n in kept.items()},
            "kept_fraction_overall": sum(kept.values()) / entries,
        }

