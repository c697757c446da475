"""AdaPEFT's options and those of `GroupSubset` (map and choices: minisft/methods/adapeft/__init__.py;
the defaults and their sources: proofs/decisions.md §2)."""

import math
from dataclasses import dataclass
from typing import Literal

from ...core.errors import require
from ..config import MethodConfig, option
from .curvature import DIRECTIONS, ESTIMATORS
from .groups import PARTITIONS, check_groups

GROUPS_HELP = "partition into groups: modules (LoRA per module type, biases, norms, embeddings), tensors, or a " \
              "{name: patterns} dict (Python API)"


def _check_lora(config):
    require(config.lora_r > 0, "lora_r", config.lora_r, "a positive integer")
    require(0 < config.lora_alpha < math.inf, "lora_alpha", config.lora_alpha, "a number in (0, inf)")
    config._set("groups", check_groups(config.groups))


@dataclass(frozen=True)
class AdaPEFTConfig(MethodConfig):
    budget: int | float = option(0.01, "trainable parameters: a count (int) or a fraction of the base model "
                                       "(float in (0, 1])")
    groups: Literal[PARTITIONS] | dict = option("modules", GROUPS_HELP)
    estimator: Literal[ESTIMATORS] = option("gen", "influence estimator (gen: GeN's forward-only fit, the "
                                                   "paper's; exact: Hessian-vector product)")
    direction: Literal[DIRECTIONS] = option("adam", "update direction the influence is measured along")
    probe_steps: int = option(8, "probe training steps (all groups active)")
    every: int = option(4, "measure the influence every this many probe steps")
    lora_r: int = option(8, "rank of the LoRA groups")
    lora_alpha: float = option(8.0, "scaling numerator of the LoRA groups")
    probe_lr: float = option(1e-3, "learning rate of the probe")
    eta: float | None = option(None, "step size the influence is evaluated at (none: probe_lr)")

    def check(self):
        if isinstance(self.budget, int):
            require(self.budget > 0, "budget", self.budget, "a positive parameter count")
        else:
            require(0 < self.budget <= 1, "budget", self.budget, "a fraction of the base model in (0, 1]")
        require(self.probe_steps > 0, "probe_steps", self.probe_steps, "a positive integer")
        require(self.every > 0, "every", self.every, "a positive integer")
        require(0 < self.probe_lr < math.inf, "probe_lr", self.probe_lr, "a number in (0, inf)")
        require(self.eta is None or 0 < self.eta < math.inf, "eta", self.eta, "a number in (0, inf) or None")
        _check_lora(self)


@dataclass(frozen=True)
class GroupSubsetConfig(MethodConfig):
    names: tuple[str, ...] = option(("lora:attn.c_attn",), "the groups to train, by name (see `minisft adapeft-front`)")
    groups: Literal[PARTITIONS] | dict = option("modules", "the partition the names refer to: modules, tensors, or "
                                                           "a {name: patterns} dict (Python API)")
    lora_r: int = option(8, "rank of the LoRA groups")
    lora_alpha: float = option(8.0, "scaling numerator of the LoRA groups")

    def check(self):
        require(bool(self.names), "names", self.names, "a non-empty list of group names")
        _check_lora(self)
