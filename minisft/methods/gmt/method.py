"""GMT — Gradient-Mask Tuning as a fine-tuning method (Li et al. 2024, arXiv 2406.15330; v2 title
"Enhancing Large Language Model Performance with Gradient-Based Parameter Selection";
ALGORITHMS.md §4).

Full fine-tuning whose every optimizer step uses a masked gradient. With Γ the gradient averaged
over the N micro-batches of one update,

    Γ_ij = (1/N) Σ_n ∇_{θ_ij} L(Θ, B_n)                    (the trainer: TrainConfig.accumulation = N)
    θ_ij ← θ_ij − η · M(Γ_ij, k)                            (this method's transform_grads + the optimizer)

where M keeps Γ_ij when |Γ_ij| is not among the floor(drop_ratio · n) smallest magnitudes and
zeroes it otherwise (`minisft.gmt.gradient_masks`; `global_gradient_masks` for scope="global").

Choices (where the paper is ambiguous, or where our trainer decides):
- What trains: every base tensor, as `FullFineTune` (embeddings, LayerNorms, biases, weights): the
  paper applies GMT to all parameters of the LLM under SFT. Adapter parameters, if a model
  carried any, would be masked the same way; `prepare` attaches none.
- Accumulation belongs to the trainer alone: `TrainConfig.accumulation` averages the micro-batch
  gradients before `transform_grads` sees them, so the mask is taken on Γ exactly as in the paper.
  The method has no accumulation option (one mechanism, no way for two counts to disagree).
- scope="tensor" (default): one ranking per parameter tensor. scope="global": one ranking over
  every trainable tensor together, in the model's parameter order (the tie-break between tensors).
- freeze_masked=False (default, the paper's masked gradient): the dropped entries' gradients are
  set to 0 and AdamW still moves them through momentum and decoupled weight decay
  (proofs/adamw_masks.md). freeze_masked=True: the masks also go to the optimizer
  (`optimizer_masks`), so dropped entries and their moments stay exactly as they were.
- Dropped entries are zeroed in both modes before the trainer's gradient clipping, so the clipping
  norm is the norm of M(Γ), the gradient actually applied.
- `masks` holds the last step's masks (one bool per trainable entry between steps).
- Overhead: the wall time of `transform_grads`, ending with a device synchronisation on CuPy (the
  trainer's clipping synchronises right after anyway, so no stall is added); `report()` gives the
  median in ms. The kept counts summed over steps travel in checkpoints; timings do not.
Derivations: proofs/gmt_mgpp_methods.md.
"""

import time

import numpy as np

from ...backend import synchronize
from ...errors import boolean, real_in, require
from ...select import zero_where_dropped
from ..base import Method
from .masks import global_gradient_masks, gradient_masks

SCOPES = ("tensor", "global")


class GMT(Method):
    """Gradient-Mask Tuning: full fine-tuning with the smallest-|Γ| gradient entries dropped at
    every step (module docstring)."""

    name = "gmt"
    trains_base = True

    def __init__(self, drop_ratio=0.5, scope="tensor", freeze_masked=False):
        self.drop_ratio = real_in("drop_ratio", drop_ratio, 0.0, 1.0, low_open=False, high_open=True)
        require(scope in SCOPES, "scope", scope, f"one of {SCOPES}")
        self.scope, self.freeze_masked = scope, boolean("freeze_masked", freeze_masked)
        self._reset()

    def _reset(self):
        self.masks = {}  # name -> (shape) bool, True = kept, of the last step
        self._kept = {}  # name -> kept entries summed over the steps (a device scalar)
        self._sizes = {}  # name -> entries of the tensor
        self._steps = 0
        self._seconds = []

    def options(self):
        return {"drop_ratio": self.drop_ratio, "scope": self.scope, "freeze_masked": self.freeze_masked}

    def prepare(self, model, task, rng):
        model.unfreeze()
        self._reset()
        self._sizes = {name: int(p.size) for name, p in model.trainable_params().items()}

    def keep_masks(self, grads):
        """{name: (shape) float gradient} -> {name: (shape) bool}, True = kept (scope's ranking)."""
        if self.scope == "global":
            return global_gradient_masks(grads, self.drop_ratio)
        return gradient_masks(grads, self.drop_ratio)

    def transform_grads(self, model, grads, step):
        """Zero the dropped entries of every gradient in place; grads: {name: (shape) array}."""
        t0 = time.perf_counter()
        ordered = {name: grads[name] for name in model.trainable_params() if name in grads}
        self.masks = self.keep_masks(ordered)
        xp = model.xp
        for name, keep in self.masks.items():
            zero_where_dropped(grads[name], keep)
            self._kept[name] = self._kept.get(name, 0) + xp.count_nonzero(keep)
        self._steps += 1
        synchronize(xp)
        self._seconds.append(time.perf_counter() - t0)
        return grads

    def optimizer_masks(self, model):
        return self.masks if self.freeze_masked else {}

    def state_arrays(self):
        arrays = {f"kept/{name}": np.asarray(int(v), dtype=np.int64) for name, v in self._kept.items()}
        arrays["steps"] = np.asarray(self._steps, dtype=np.int64)
        return arrays

    def load_state_arrays(self, arrays):
        self._steps = int(arrays["steps"])
        self._kept = {k[len("kept/"):]: int(v) for k, v in arrays.items() if k.startswith("kept/")}

    def report(self):
        """Realised kept fraction per tensor and overall (mean over the steps), masking overhead."""
        if not self._steps:
            return {"steps": 0}
        kept = {name: int(v) for name, v in self._kept.items()}
        entries = self._steps * sum(self._sizes[name] for name in kept)
        return {
            "steps": self._steps,
            "kept_fraction": {name: n / (self._steps * self._sizes[name]) for name, n in kept.items()},
            "kept_fraction_overall": sum(kept.values()) / entries,
            "mask_ms_per_step": 1000 * float(np.median(self._seconds)) if self._seconds else None,
        }
