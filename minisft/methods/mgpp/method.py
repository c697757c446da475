"""MGPP as a fine-tuning method: the `MGPP` class the trainer drives, `MagnitudePruning` plus the
prior's gradient (map: minisft/methods/mgpp/__init__.py; decisions: proofs/decisions.md §MGPP;
derivations: proofs/gmt_mgpp_methods.md)."""

from ...data.batches import disjoint_windows
from .configs import MGPPConfig
from .prior import neg_log_prior_grad
from .pruning import MagnitudePruning
from .schedule import annealed_lambda


class MGPP(MagnitudePruning):
    """Mixture-Gaussian-prior magnitude pruning during full fine-tuning (package docstring,
    minisft.methods.mgpp): `MagnitudePruning`'s schedule and masks, and at every step t <= t_f the
    prior's gradient (1/n) θ (w1/v1 + w0/v0) added to the loss gradient after the trainer's
    clipping, before the optimizer step."""

    name = "mgpp"
    paper = "Zhang, Sun & Liang 2024, arXiv 2411.00969"
    Config = MGPPConfig

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        self.n = None  # set by prepare

    def prepare(self, model, task, rng):
        super().prepare(model, task, rng)
        self.n = self.config.n_train or disjoint_windows(task.train_ids, task.block_size)[1] * task.block_size

    def lam_at(self, step):
        return annealed_lambda(step, self.config.lam, self.config.lam_final, self.t_i, self.t_f)

    def transform_grads_after_clip(self, model, grads, step):
        """For t <= t_f: grads[w] += (1/n) ∇(−log π_t)(w) for each prunable weight w, in place,
        on the pre-update weights (after the trainer's clipping: the prior is never clipped)."""
        if step <= self.t_f:
            lam, c = self.lam_at(step), self.config
            for name in self.prunable:
                grads[name] += (1.0 / self.n) * neg_log_prior_grad(model.params[name], lam, c.var0, c.var1)
        return grads

    def report(self):
        rep = super().report()
        if rep.get("prepared", True):
            prior = {key: getattr(self.config, key) for key in ("lam", "lam_final", "var0", "var1")}
            rep.update({"n_train": self.n, **prior,
                        "prior_gradient": "added after the trainer's clipping, for steps t <= t_f: never clipped"})
        return rep
