"""The options of `MagnitudePruning` and `MGPP`, and MGPP's named option sets (decisions and
sources: proofs/decisions.md §MGPP).

    "default"  from the authors' BERT/GLUE runs: λ = 1e-3 (BayesianPruner configs/GLUE/mnli.yaml),
               v0 = 1e-10, v1 = 0.05 (PTMGP scripts/GLUE/mnli.sub, BayesianPruner GLUE), s_i = 0.3
               (PTMGP MNLI/QQP/SST-2), t_i = 10% of the steps (BayesianPruner GLUE)
    "gpt2"     the authors' GPT-2 causal-LM config (BayesianPruner configs/CLM/config.yaml):
               λ = 1e-4, v0 = 1e-10, v1 = 0.01, s_i = 0.1, t_i = 1% of the steps
Both: t_f = 90% of the steps and Δt = 1% of the steps (BayesianPruner), set by the options' own
defaults. An option given explicitly overrides its config value; an option left at None takes it.
"""

from dataclasses import dataclass
from typing import Literal, get_args

from ...core.errors import require
from ..config import MethodConfig, option
from .prior import check_prior
from .schedule import COUNT_RULES, DEFAULT_PRUNE_END_FRACTION, SCOPES

CONFIGS = {
    "default": {"lam": 1e-3, "var0": 1e-10, "var1": 0.05, "initial_sparsity": 0.3, "t_start": 0.1},
    "gpt2": {"lam": 1e-4, "var0": 1e-10, "var1": 0.01, "initial_sparsity": 0.1, "t_start": 0.01},
}
Mode = Literal["regrow", "monotone"]
MODES = get_args(Mode)


@dataclass(frozen=True)
class MagnitudePruningConfig(MethodConfig):
    final_sparsity: float = option(0.8, "s_f: fraction of the prunable weights pruned from t_f on, in [0, 1)")
    config: Literal[tuple(CONFIGS)] = option("default", "named option set: fills the options left at None")
    initial_sparsity: float | None = option(None, "s_i: sparsity of the first pruning step t_i (None: the config's, "
                                                  "0.3 / gpt2 0.1)")
    t_start: float | None = option(None, "t_i as a fraction of total_steps, floored (None: the config's, "
                                         "0.1 / gpt2 0.01)")
    t_end: float = option(DEFAULT_PRUNE_END_FRACTION, "t_f as a fraction of total_steps, floored, < 1: the last "
                                                      "pruning step; mask fixed after")
    every: int | None = option(None, "Δt in steps between pruning steps, counted from t_i (None: 1% of total_steps, "
                                     "at least 1)")
    mode: Mode = option("regrow", "'regrow': masks recomputed from scratch, pruned weights may regrow (authors); "
                                  "'monotone': pruned weights frozen, masks only shrink")
    count_rule: Literal[COUNT_RULES] = option("exact", "'exact': round(s·n) pruned; 'authors': |w| strictly below "
                                                       "the int(n·s)-th smallest")
    scope: Literal[SCOPES] = option("global", "'global': one ranking over all prunable matrices (authors); 'layer': "
                                              "each matrix alone")
    total_steps: int | None = option(None, "the run's optimizer steps (compare sets it); the schedule is a fraction "
                                           "of it")

    def _fill(self, *names):
        """The options left at None take the named config's values."""
        for name in names:
            if getattr(self, name) is None:
                self._set(name, CONFIGS[self.config][name])

    def check(self):
        self._fill("initial_sparsity", "t_start")
        require(0 <= self.final_sparsity < 1, "final_sparsity", self.final_sparsity, "a number in [0, 1)")
        require(0 <= self.initial_sparsity <= self.final_sparsity, "initial_sparsity", self.initial_sparsity,
                f"a number in [0, final_sparsity={self.final_sparsity!r}]")
        require(0 <= self.t_start < 1, "t_start", self.t_start, "a number in [0, 1)")
        require(0 < self.t_end < 1, "t_end", self.t_end, "a number in (0, 1)")
        require(self.t_end > self.t_start, "t_end", self.t_end, f"a fraction greater than t_start={self.t_start!r}")
        require(self.every is None or self.every > 0, "every", self.every, "a positive integer or None")
        require(self.total_steps is None or self.total_steps > 0, "total_steps", self.total_steps,
                "a positive integer or None")


@dataclass(frozen=True)
class MGPPConfig(MagnitudePruningConfig):
    lam: float | None = option(None, "λ: weight of the slab N(0, var1) in the prior (None: the config's, "
                                     "1e-3 / gpt2 1e-4)")
    var0: float | None = option(None, "VARIANCE of the spike N(0, var0) (None: the config's, 1e-10)")
    var1: float | None = option(None, "VARIANCE of the slab N(0, var1) (None: the config's, 0.05 / gpt2 0.01)")
    lam_final: float | None = option(None, "None: λ constant; a float: PTMGP's annealing, λ up to t_i then linear "
                                           "to lam_final at t_f")
    n_train: int | None = option(None, "n of the prior's 1/n: None = predicted training tokens (disjoint windows x "
                                       "block_size)")

    def check(self):
        super().check()
        self._fill("lam", "var0", "var1")
        check_prior(self.lam, self.var0, self.var1)
        require(self.lam_final is None or 0 < self.lam_final < 1, "lam_final", self.lam_final,
                "a number in (0, 1) or None")
        require(self.n_train is None or self.n_train > 0, "n_train", self.n_train, "a positive integer or None")
