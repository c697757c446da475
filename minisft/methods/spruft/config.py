"""SPruFT's options (map: minisft/methods/spruft/__init__.py; the defaults and their sources:
proofs/decisions.md §1)."""

import math
from dataclasses import dataclass
from typing import Literal, get_args

from ...core.errors import bad_value, require
from ...model.adapters.rows import INITS
from ...model.budgets import check_targets
from ...model.gpt import LINEAR_SUFFIXES
from ..config import MethodConfig, option
from .budget import check_budget
from .importance import MAGNITUDE_P

Importance = Literal["magnitude", "taylor", "obd", "zeroth_order", "wanda", "random"]
Scope = Literal["layer", "global"]
Mode = Literal["rows", "neurons"]
IMPORTANCES, SCOPES, MODES = get_args(Importance), get_args(Scope), get_args(Mode)
# neuron-mode group kinds: (row member, column member) suffixes of a block
GROUP_KINDS = {"attn": ("attn.c_attn", "attn.c_proj"), "mlp": ("mlp.c_fc", "mlp.c_proj")}


@dataclass(frozen=True)
class SPruFTConfig(MethodConfig):
    ratio: float | None = option(None, "fraction of each unit's rows (or neuron groups) to train, in (0, 1] "
                                       "(the released script's 0.024 when rows is none)")
    rows: int | None = option(None, "rows (or neuron groups) to train per unit, instead of ratio")
    importance: Importance = option("zeroth_order", "row score (the released README's run: "
                                                             "zeroth_order)")
    scope: Scope = option("layer", "rank rows within each layer (layer) or across all layers on mean-normalised "
                                   "scores (global)")
    mode: Mode = option("rows", "rows: output rows of each linear layer; neurons: whole attention heads / MLP neurons")
    init: Literal[INITS] = option("zeros", "initial value of the trained row deltas")
    calib_batches: int = option(50, "calibration batches for data-based scores (the released code's 50)")
    calib_batch_size: int | None = option(1, "sequences per calibration batch (the released code's 1); none: the "
                                             "task's batch size")
    multivariable: bool = option(False, "Taylor score |sum_j W_ij G_ij| instead of sum_j |W_ij G_ij|")
    p: int = option(2, "norm of the magnitude score: 1 or 2")
    targets: tuple[str, ...] = option(LINEAR_SUFFIXES, "linear-layer suffixes to select rows in, among "
                                      + ", ".join(LINEAR_SUFFIXES))
    zo_samples: int = option(2, "random directions of the zeroth-order gradient estimate per calibration batch "
                                "(the released README's --n_estimate 2)")
    zo_eps: float = option(1e-3, "finite-difference step of the zeroth-order estimate")
    bias: bool = option(True, "train the selected rows' bias entries too")

    def __post_init__(self):
        if self.importance == "quantile_taylor":  # before the type check: say why it is not offered
            raise bad_value("importance", self.importance, f"one of {IMPORTANCES}: the quantile mean needs "
                            "classes, which a next-token objective lacks (see minisft.methods.spruft's docstring)")
        super().__post_init__()

    def check(self):
        ratio, rows = check_budget(self.ratio, self.rows)
        self._set("ratio", ratio)
        require(not self.multivariable or self.importance in ("taylor", "zeroth_order"), "multivariable",
                self.multivariable, f"False for importance={self.importance!r} (it is a Taylor-score option)")
        require(self.p in MAGNITUDE_P, "p", self.p, f"one of {MAGNITUDE_P}")
        require(self.calib_batches > 0, "calib_batches", self.calib_batches, "a positive integer")
        require(self.calib_batch_size is None or self.calib_batch_size > 0, "calib_batch_size",
                self.calib_batch_size, "a positive integer or None")
        require(self.zo_samples > 0, "zo_samples", self.zo_samples, "a positive integer")
        require(0 < self.zo_eps < math.inf, "zo_eps", self.zo_eps, "a number in (0, inf)")
        targets = check_targets(self.targets)
        if self.mode == "neurons":
            whole = all(set(pair) <= set(targets) or not set(pair) & set(targets) for pair in GROUP_KINDS.values())
            require(whole, "targets", list(targets),
                    f"in neuron mode, complete groups: {list(GROUP_KINDS.values())} (each pair wholly or not)")
        self._set("targets", targets)
