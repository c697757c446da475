"""MGPP as a fine-tuning method: the `MGPP` class the trainer drives (map, hooks and choices:
minisft/methods/mgpp/__init__.py; derivations: proofs/gmt_mgpp_methods.md)."""

from ...batches import disjoint_windows
from ...errors import bad_value, boolean, positive_int, real_in, require
from ...model import linear_layer_names
from ...select import ratio_count, zero_where_dropped
from ..base import Method
from .prior import DEFAULT_LAMBDA, DEFAULT_SIGMA0, DEFAULT_SIGMA1, check_prior, neg_log_prior_grad
from .schedule import (
    DEFAULT_PRUNE_END_FRACTION,
    DEFAULT_PRUNE_EVERY,
    DEFAULT_PRUNE_START_FRACTION,
    SCOPES,
    cubic_sparsity,
    magnitude_masks,
)

class MGPP(Method):
    """Mixture-Gaussian-prior magnitude pruning during full fine-tuning (package docstring, minisft.methods.mgpp)."""

    name = "mgpp"
    trains_base = True

    def __init__(self, final_sparsity=0.8, lam=DEFAULT_LAMBDA, sigma0=DEFAULT_SIGMA0, sigma1=DEFAULT_SIGMA1,
                 t_start=DEFAULT_PRUNE_START_FRACTION, t_end=DEFAULT_PRUNE_END_FRACTION,
                 every=DEFAULT_PRUNE_EVERY, prior=True, scope="global", n_train=None, total_steps=None):
        self.final_sparsity = real_in("final_sparsity", final_sparsity, 0.0, 1.0, low_open=False, high_open=True)
        self.lam, self.sigma0, self.sigma1 = check_prior(lam, sigma0, sigma1)
        self.t_start = real_in("t_start", t_start, 0.0, 1.0, low_open=False, high_open=True)
        self.t_end = real_in("t_end", t_end, 0.0, 1.0, low_open=True, high_open=False)
        require(self.t_end > self.t_start, "t_end", t_end, f"a fraction greater than t_start={t_start!r}")
        self.every = positive_int("every", every)
        self.prior = boolean("prior", prior)
        require(scope in SCOPES, "scope", scope, f"one of {SCOPES}")
        self.scope = scope
        self.n_train = None if n_train is None else positive_int("n_train", n_train)
        self.total_steps = None if total_steps is None else positive_int("total_steps", total_steps)
        self.t_i, self.t_f = (None, None) if self.total_steps is None else self._window(self.total_steps)
        self._pruning_steps = set() if self.total_steps is None else set(self.pruning_steps())
        self.prunable, self.sizes, self.n, self.masks = [], {}, None, {}  # set by prepare

    def _window(self, total_steps):
        """(t_i, t_f): the first and last step of the schedule's ramp, t_f > t_i."""
        t_i = ratio_count(self.t_start, total_steps, "floor")
        t_f = ratio_count(self.t_end, total_steps, "floor")
        require(t_f > t_i, "total_steps", total_steps,
                f"enough steps that floor(t_end * total_steps) = {t_f} exceeds floor(t_start * total_steps) = {t_i}")
        return t_i, t_f

    def options(self):
        return {"final_sparsity": self.final_sparsity, "lam": self.lam, "sigma0": self.sigma0,
                "sigma1": self.sigma1, "t_start": self.t_start, "t_end": self.t_end, "every": self.every,
                "prior": self.prior, "scope": self.scope, "n_train": self.n_train, "total_steps": self.total_steps}

    def pruning_steps(self):
        """The steps t (updates done) after which `after_step` prunes, ascending."""
        return list(range(self.t_i + self.every, self.t_f, self.every)) + [self.t_f]

    def prepare(self, model, task, rng):
        if self.total_steps is None:
            raise bad_value("total_steps", None, "the number of training steps (TrainConfig.steps): "
                            "t_start and t_end are fractions of it")
        model.unfreeze()
        self.prunable = [f"{layer}.weight" for layer in linear_layer_names(model.config)]
        self.sizes = {name: int(model.params[name].size) for name in self.prunable}
        self.n = self.n_train if self.n_train is not None else disjoint_windows(task.train_ids, task.block_size)[1]
        self.masks = {}

    def transform_grads(self, model, grads, step):
        """grads[w] += (1/n) ∇(−log π)(w) for each prunable weight w (prior=True); pruned entries'
        gradients set to 0. In place; grads: {name: (shape) array}."""
        for name in self.prunable:
            g = grads[name]
            if self.prior:
                g += (1.0 / self.n) * neg_log_prior_grad(model.params[name], self.lam, self.sigma0, self.sigma1)
            if name in self.masks:
                zero_where_dropped(g, self.masks[name])
        return grads

    def optimizer_masks(self, model):
        return self.masks

    def target_counts(self, sparsity):
        """Pruned entries required at `sparsity`: [total] (global) or one count per prunable matrix."""
        if self.scope == "global":
            return [ratio_count(sparsity, sum(self.sizes.values()), "half_up")]
        return [ratio_count(sparsity, self.sizes[name], "half_up") for name in self.prunable]

    def after_step(self, model, step):
        if step + 1 in self._pruning_steps:
            self.prune(model, cubic_sparsity(step + 1, self.final_sparsity, self.t_i, self.t_f))

    def prune(self, model, sparsity):
        """Prune the prunable (d_out, d_in) weights in place to exactly the target counts at
        `sparsity` (a float in [0, 1)): `magnitude_masks` over the survivors of the last pruning
        step; newly pruned entries are set to 0 and the masks ((d_out, d_in) bool, True = kept)
        only ever lose True entries."""
        weights = {name: model.params[name] for name in self.prunable}
        self.masks = magnitude_masks(weights, sparsity, self.scope, kept=self.masks or None)
        for name, mask in self.masks.items():
            zero_where_dropped(weights[name], mask)

    def state_arrays(self):
        return {f"mask/{name}": m for name, m in self.masks.items()}

    def load_state_arrays(self, arrays):
        self.masks = {k[len("mask/"):]: v.astype(bool) for k, v in arrays.items() if k.startswith("mask/")}

    def report(self):
        """Schedule, realised sparsity per prunable matrix and overall (from the masks)."""
        if not self.prunable:
            return {"prepared": False}
        pruned = {name: int(m.size - m.sum()) if (m := self.masks.get(name)) is not None else 0
                  for name in self.prunable}
        schedule = [{"step": t, "sparsity": s, "pruned": sum(self.target_counts(s))}
                    for t in self.pruning_steps()
                    for s in [cubic_sparsity(t, self.final_sparsity, self.t_i, self.t_f)]]
        total = sum(self.sizes.values())
        return {
            "prior": self.prior,
            "n_train": self.n,
            "prunable_params": total,
            "t_start_step": self.t_i,
            "t_end_step": self.t_f,
            "schedule": schedule,
            "sparsity": {name: p / self.sizes[name] for name, p in pruned.items()},
            "sparsity_overall": sum(pruned.values()) / total,
            "pruned": sum(pruned.values()),
            "target_pruned": sum(self.target_counts(self.final_sparsity)),
        }
