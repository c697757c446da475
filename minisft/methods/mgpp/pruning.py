"""Cubic magnitude pruning during full fine-tuning, as MGPP's authors schedule it: the
`MagnitudePruning` method (registered as "magprune"), MGPP's baseline and the base of `MGPP`
(map: minisft/methods/mgpp/__init__.py; decisions: proofs/decisions.md §MGPP; derivations:
proofs/gmt_mgpp_methods.md)."""

import numpy as np

from ...core.errors import bad_value, require
from ...model.gpt import linear_layer_names
from ..select import ratio_count, zero_where_dropped
from ..base import Method
from .configs import MagnitudePruningConfig
from .schedule import DEFAULT_PRUNE_EVERY_FRACTION, authors_count, cubic_sparsity, magnitude_masks, pruning_steps


class MagnitudePruning(Method):
    """Gradual magnitude pruning of every linear weight matrix on the cubic schedule, all base
    tensors training (package docstring, minisft.methods.mgpp). Step t (0-based), after the
    optimizer update: at a pruning step the masks are computed on the updated weights and the
    pruned weights set to 0; after t_f the fixed masks are re-applied after every update."""

    name = "magprune"
    trains_base = True
    paper = "Zhu & Gupta 2017, arXiv 1710.01878 (cubic schedule), as MGPP's authors run it (arXiv 2411.00969)"
    Config = MagnitudePruningConfig

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        self.t_i = self.t_f = self.delta_t = None
        self._steps = set()
        if self.config.total_steps is not None:
            self.t_i, self.t_f, self.delta_t = self._window(self.config.total_steps)
            self._steps = set(self.pruning_steps())
        self.prunable, self.sizes, self.masks, self.history = [], {}, {}, []  # set by prepare

    def _window(self, total_steps):
        """(t_i, t_f, Δt) in steps: floors of the fractions of total_steps, t_i < t_f < total_steps."""
        t_i = ratio_count(self.config.t_start, total_steps, "floor")
        t_f = ratio_count(self.config.t_end, total_steps, "floor")
        require(t_f > t_i, "total_steps", total_steps,
                f"enough steps that floor(t_end * total_steps) = {t_f} exceeds floor(t_start * total_steps) = {t_i}")
        every = self.config.every or max(1, ratio_count(DEFAULT_PRUNE_EVERY_FRACTION, total_steps, "floor"))
        return t_i, t_f, every

    def pruning_steps(self):
        """The 0-based steps t after whose update `after_step` prunes, ascending (t_i, ..., t_f)."""
        return pruning_steps(self.t_i, self.t_f, self.delta_t)

    def sparsity_at(self, step):
        c = self.config
        return cubic_sparsity(step, c.final_sparsity, self.t_i, self.t_f, c.initial_sparsity)

    def prepare(self, model, task, rng):
        if self.config.total_steps is None:
            raise bad_value("total_steps", None, "the number of training steps (TrainConfig.steps): "
                            "t_start, t_end and the default every are fractions of it")
        model.unfreeze()
        self.prunable = [f"{layer}.weight" for layer in linear_layer_names(model.config)]
        self.sizes = {name: int(model.params[name].size) for name in self.prunable}
        self.masks, self.history = {}, []

    def transform_grads(self, model, grads, step):
        """Monotone mode: the pruned entries' gradients set to 0 (they are no longer parameters,
        and stay out of the clipping norm). Regrow mode: nothing (the authors mask no gradient)."""
        if self.config.mode == "monotone":
            for name, keep in self.masks.items():
                zero_where_dropped(grads[name], keep)
        return grads

    def optimizer_masks(self, model):
        """Monotone mode: pruned entries and their AdamW moments stay untouched. Regrow mode: none."""
        return self.masks if self.config.mode == "monotone" else {}

    def after_step(self, model, step):
        if step in self._steps:
            pruned, regrown = self.prune(model, self.sparsity_at(step))
            self.history.append({"step": step, "pruned": pruned, "regrown": regrown})
        elif step > self.t_f and self.config.mode == "regrow":  # the fixed mask, re-applied after every update
            for name, keep in self.masks.items():
                zero_where_dropped(model.params[name], keep)

    def prune(self, model, sparsity):
        """Prune the prunable (d_out, d_in) weights in place at `sparsity` (a float in [0, 1)) under
        `count_rule` and `scope`: regrow mode ranks every weight afresh, monotone mode keeps the
        last masks' pruned entries pruned. The pruned entries are set to 0; `masks` ((d_out, d_in)
        bool, True = kept) become the new masks. Returns (pruned, regrown): the entries pruned now,
        and those pruned by the last masks that are kept now."""
        weights = {name: model.params[name] for name in self.prunable}
        kept = (self.masks or None) if self.config.mode == "monotone" else None
        new = magnitude_masks(weights, sparsity, self.config.scope, kept=kept, count_rule=self.config.count_rule)
        xp = model.xp
        regrown = sum(int(xp.count_nonzero(~self.masks[name] & new[name])) for name in self.masks)
        for name, keep in new.items():
            zero_where_dropped(weights[name], keep)
        self.masks = new
        return sum(self.sizes[name] - int(xp.count_nonzero(keep)) for name, keep in new.items()), regrown

    def target_counts(self, sparsity):
        """Pruned entries asked for at `sparsity`: [total] (global) or one per prunable matrix;
        count_rule="authors": the kthvalue rank k (at most k - 1 are pruned)."""
        sizes = ([sum(self.sizes.values())] if self.config.scope == "global"
                 else [self.sizes[name] for name in self.prunable])
        if self.config.count_rule == "authors":
            return [authors_count(sparsity, n) for n in sizes]
        return [ratio_count(sparsity, n, "half_up") for n in sizes]

    def state_arrays(self):
        arrays = {f"mask/{name}": m for name, m in self.masks.items()}
        for key in ("step", "pruned", "regrown"):
            arrays[f"history/{key}"] = np.asarray([h[key] for h in self.history], dtype=np.int64)
        return arrays

    def load_state_arrays(self, arrays):
        self.masks = {k[len("mask/"):]: v.astype(bool) for k, v in arrays.items() if k.startswith("mask/")}
        columns = {key: [int(v) for v in np.asarray(arrays[f"history/{key}"]).tolist()]
                   for key in ("step", "pruned", "regrown")}
        self.history = [dict(zip(columns, row)) for row in zip(*columns.values())]

    def report(self):
        """Schedule, the realised pruning history, sparsity per prunable matrix and overall."""
        if not self.prunable:
            return {"prepared": False}
        pruned = {name: int(m.size - m.sum()) if (m := self.masks.get(name)) is not None else 0
                  for name in self.prunable}
        total = sum(self.sizes.values())
        return {
            **{key: getattr(self.config, key) for key in ("mode", "count_rule", "scope")},
            "prunable_params": total,
            "t_start_step": self.t_i,
            "t_end_step": self.t_f,
            "every": self.delta_t,
            "schedule": [{"step": t, "sparsity": s, "target": sum(self.target_counts(s))}
                         for t in self.pruning_steps() for s in [self.sparsity_at(t)]],
            "history": list(self.history),
            "regrown": sum(h["regrown"] for h in self.history),
            "sparsity": {name: p / self.sizes[name] for name, p in pruned.items()},
            "sparsity_overall": sum(pruned.values()) / total,
            "pruned": sum(pruned.values()),
            "target_pruned": sum(self.target_counts(self.config.final_sparsity)),
        }
