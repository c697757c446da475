"""MGPP as a fine-tuning method: the `MGPP` class the trainer drives, `MagnitudePruning` plus the
prior's gradient (map: minisft/methods/mgpp/__init__.py; decisions: proofs/decisions.md §MGPP;
derivations: proofs/gmt_mgpp_methods.md)."""

from ...data.batches import disjoint_windows
from ...core.errors import positive_int, real_in
from .configs import config_value
from .prior import check_prior, neg_log_prior_grad, refuse_renamed
from .pruning import MagnitudePruning
from .schedule import DEFAULT_PRUNE_END_FRACTION, annealed_lambda


class MGPP(MagnitudePruning):
    """Mixture-Gaussian-prior magnitude pruning during full fine-tuning (package docstring,
    minisft.methods.mgpp): `MagnitudePruning`'s schedule and masks, and at every step t <= t_f the
    prior's gradient (1/n) θ (w1/v1 + w0/v0) added to the loss gradient after the trainer's
    clipping, before the optimizer step."""

    name = "mgpp"
    paper = "Zhang, Sun & Liang 2024, arXiv 2411.00969"
    renamed_options = {"sigma0": "var0", "sigma1": "var1"}
    option_help = {
        **MagnitudePruning.option_help,
        "lam": "λ: weight of the slab N(0, var1) in the prior (None: the config's, 1e-3 / gpt2 1e-4)",
        "var0": "VARIANCE of the spike N(0, var0) (None: the config's, 1e-10)",
        "var1": "VARIANCE of the slab N(0, var1) (None: the config's, 0.05 / gpt2 0.01)",
        "lam_final": "None: λ constant; a float: PTMGP's annealing, λ up to t_i then linear to lam_final at t_f",
        "n_train": "n of the prior's 1/n: None = predicted training tokens (disjoint windows x block_size)",
    }

    def __init__(self, final_sparsity: float = 0.8, config: str = "default", lam: float | None = None,
                 var0: float | None = None, var1: float | None = None, lam_final: float | None = None,
                 initial_sparsity: float | None = None, t_start: float | None = None,
                 t_end: float = DEFAULT_PRUNE_END_FRACTION, every: int | None = None, mode: str = "regrow",
                 count_rule: str = "exact", scope: str = "global", n_train: int | None = None,
                 total_steps: int | None = None, **renamed):
        refuse_renamed(renamed, ", ".join(self.option_help))
        super().__init__(final_sparsity, config, initial_sparsity, t_start, t_end, every, mode, count_rule, scope,
                         total_steps)
        self.lam, self.var0, self.var1 = check_prior(config_value(config, "lam", lam),
                                                     config_value(config, "var0", var0),
                                                     config_value(config, "var1", var1))
        self.lam_final = None if lam_final is None else real_in("lam_final", lam_final, 0.0, 1.0,
                                                                low_open=True, high_open=True)
        self.n_train = None if n_train is None else positive_int("n_train", n_train)
        self.n = None  # set by prepare

    def options(self):
        return {**super().options(), "lam": self.lam, "var0": self.var0, "var1": self.var1,
                "lam_final": self.lam_final, "n_train": self.n_train}

    def prepare(self, model, task, rng):
        super().prepare(model, task, rng)
        self.n = self.n_train or disjoint_windows(task.train_ids, task.block_size)[1] * task.block_size

    def lam_at(self, step):
        return annealed_lambda(step, self.lam, self.lam_final, self.t_i, self.t_f)

    def transform_grads_after_clip(self, model, grads, step):
        """For t <= t_f: grads[w] += (1/n) ∇(−log π_t)(w) for each prunable weight w, in place,
        on the pre-update weights (after the trainer's clipping: the prior is never clipped)."""
        if step <= self.t_f:
            lam = self.lam_at(step)
            for name in self.prunable:
                grads[name] += (1.0 / self.n) * neg_log_prior_grad(model.params[name], lam, self.var0, self.var1)
        return grads

    def report(self):
        rep = super().report()
        if rep.get("prepared", True):
            rep.update({"n_train": self.n, "lam": self.lam, "lam_final": self.lam_final, "var0": self.var0,
                        "var1": self.var1, "prior_gradient": "added after the trainer's clipping, "
                                                            "for steps t <= t_f: never clipped"})
        return rep
