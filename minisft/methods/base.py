"""The method protocol the trainer drives, and the two baselines every comparison includes.

A method decides *what* trains; the trainer (minisft.training.train) does the rest. Hooks, in call order:
    check_config(config)               options that depend on the model's shape, checked against a
                                       GPTConfig before any data is read (a rank above a layer's width)
    prepare(model, task, rng)          select and wrap (may run probe steps on task's batches)
    transform_grads(model, grads, step) -> grads    e.g. GMT's mask (before the trainer's clipping)
    transform_grads_after_clip(model, grads, step) -> grads   e.g. MGPP's prior gradient (never clipped)
    optimizer_masks(model) -> {name: bool array}    entries the optimizer must leave untouched
    after_step(model, step)            e.g. MGPP's pruning on its schedule
    report() -> dict                   JSON-ready: what was selected, counts, method-specific facts
    state_arrays() / load_state_arrays(arrays)     method state a checkpoint must carry (masks)
`prepare` is deterministic given the rng, so a resumed run re-selects the same way.

Options: one frozen dataclass per method, its `Config` (minisft.methods.config: each field typed,
with a default and a one-line meaning; checked when made). A method is built from keyword options,
`SPruFT(ratio=0.1)` (or positionally, in the config's field order), or from its config,
`SPruFT(SPruFTConfig(ratio=0.1))`; `method.config` holds them. The class says its source in
`paper`. `minisft methods` prints every option as a table, and a test checks every registered
method has it all.
"""

import math
from dataclasses import dataclass

from ..model.adapters import LoRA
from ..model.budgets import check_targets, lora_trainable, target_layers
from ..core.errors import bad_type, bad_value, require
from ..model.gpt import LINEAR_SUFFIXES
from .config import MethodConfig, option, specs


class Method:
    name = "method"
    paper = ""  # one line: authors, year, arXiv id (or "baseline")
    Config = MethodConfig  # the options' dataclass
    trains_base = False  # True: the method updates base tensors in place (full-FT learning rate)

    def __init__(self, *args, **options):
        """From its `Config`, or from the Config's arguments (options by keyword, or positionally in
        the Config's field order), which the Config checks."""
        names = [spec.name for spec in specs(self.Config)]
        if len(args) == 1 and not options and isinstance(args[0], MethodConfig):
            if type(args[0]) is not self.Config:
                raise bad_type("config", args[0], f"a {self.Config.__name__}")
            self.config = args[0]
            return
        unknown = sorted(set(options) - set(names))
        if unknown or len(args) > len(names):
            raise bad_value(f"{self.name} options", unknown or list(args), f"options among {names}")
        self.config = self.Config(*args, **options)

    def check_config(self, config):
        pass

    def prepare(self, model, task, rng):
        raise TypeError(f"{type(self).__name__} must implement prepare(model, task, rng)")

    def transform_grads(self, model, grads, step):
        return grads

    def transform_grads_after_clip(self, model, grads, step):
        """Terms added after the trainer's gradient clipping: clipping scales the loss gradient only."""
        return grads

    def optimizer_masks(self, model):
        return {}

    def after_step(self, model, step):
        pass

    def state_arrays(self):
        return {}

    def load_state_arrays(self, arrays):
        pass

    def options(self):
        """The options, JSON-ready, for logs and checkpoint compatibility checks."""
        return self.config.to_dict()

    def report(self):
        return {}


class FullFineTune(Method):
    """Every base tensor trains in place (weights, biases, LayerNorms, embeddings)."""

    name = "full"
    paper = "baseline: every base tensor trains"
    trains_base = True

    def prepare(self, model, task, rng):
        model.unfreeze()


@dataclass(frozen=True)
class LoRAConfig(MethodConfig):
    r: int = option(8, "rank of the A (r, in) and B (out, r) factors")
    alpha: float = option(8.0, "scaling numerator: the update is (alpha / r) B A (alpha / sqrt(r) with use_rslora)")
    targets: tuple[str, ...] = option(LINEAR_SUFFIXES, "linear-layer suffixes to adapt, among "
                                      + ", ".join(LINEAR_SUFFIXES))
    use_rslora: bool = option(False, "rank-stabilised scaling alpha / sqrt(r) (PEFT's use_rslora)")

    def check(self):
        require(self.r > 0, "r", self.r, "a positive integer")
        require(0 < self.alpha < math.inf, "alpha", self.alpha, "a number in (0, inf)")
        self._set("targets", check_targets(self.targets))


class LoRAMethod(Method):
    """LoRA (PEFT defaults: r=8, α=8, kaiming-uniform A, zero B) on every target linear layer."""

    name = "lora"
    paper = "baseline: Hu et al. 2021, arXiv 2106.09685 (LoRA exactly as HF PEFT)"
    Config = LoRAConfig

    def check_config(self, config):
        lora_trainable(config, self.config.r, self.config.targets)

    def prepare(self, model, task, rng):
        layers = target_layers(model, self.config.targets)
        if any(model.adapters.get(layer) for layer in layers):
            raise bad_value("model", "a model whose target layers have adapters already",
                            "a model without adapters on the target layers (prepare each model once)")
        model.freeze()
        c = self.config
        for layer in layers:
            model.add_adapter(layer, LoRA(model, layer, r=c.r, alpha=c.alpha, use_rslora=c.use_rslora, generator=rng))
