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

Options: every constructor parameter is an option, with a type annotation (int, float, bool, str,
tuple[str, ...], `int | None`, ...) that `make_method` checks and the command line parses by, a
one-line meaning in the class's `option_help`, and the class says its source in `paper`; the
constructor checks every value (a clear error naming the option, the value and the expectation).
`minisft methods` prints this as a table, and a test checks every registered method has it all.
"""

import math

from ..model.adapters import LoRA
from ..model.budgets import check_targets, lora_trainable, target_layers
from ..core.errors import bad_value, boolean, positive_int, real_in
from ..model.gpt import LINEAR_SUFFIXES


class Method:
    name = "method"
    paper = ""  # one line: authors, year, arXiv id (or "baseline")
    option_help = {}  # {option: one-line meaning}
    trains_base = False  # True: the method updates base tensors in place (full-FT learning rate)

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
        """The constructor arguments, for logs and checkpoint compatibility checks."""
        return {}

    def report(self):
        return {}


class FullFineTune(Method):
    """Every base tensor trains in place (weights, biases, LayerNorms, embeddings)."""

    name = "full"
    paper = "baseline: every base tensor trains"
    trains_base = True

    def prepare(self, model, task, rng):
        model.unfreeze()

    def report(self):
        return {}


class LoRAMethod(Method):
    """LoRA (PEFT defaults: r=8, α=8, kaiming-uniform A, zero B) on every target linear layer."""

    name = "lora"
    paper = "baseline: Hu et al. 2021, arXiv 2106.09685 (LoRA exactly as HF PEFT)"
    option_help = {"r": "rank of the A (r, in) and B (out, r) factors",
                   "alpha": "scaling numerator: the update is (alpha / r) B A (alpha / sqrt(r) with use_rslora)",
                   "targets": f"linear-layer suffixes to adapt, among {', '.join(LINEAR_SUFFIXES)}",
                   "use_rslora": "rank-stabilised scaling alpha / sqrt(r) (PEFT's use_rslora)"}

    def __init__(self, r: int = 8, alpha: float = 8, targets: tuple[str, ...] = LINEAR_SUFFIXES,
                 use_rslora: bool = False):
        self.r = positive_int("r", r)
        self.alpha = real_in("alpha", alpha, 0.0, math.inf, low_open=True, high_open=True)
        self.targets = check_targets(targets)
        self.use_rslora = boolean("use_rslora", use_rslora)

    def options(self):
        return {"r": self.r, "alpha": self.alpha, "targets": list(self.targets), "use_rslora": self.use_rslora}

    def check_config(self, config):
        lora_trainable(config, self.r, self.targets)

    def prepare(self, model, task, rng):
        layers = target_layers(model, self.targets)
        if any(model.adapters.get(layer) for layer in layers):
            raise bad_value("model", "a model whose target layers have adapters already",
                            "a model without adapters on the target layers (prepare each model once)")
        model.freeze()
        for layer in layers:
            model.add_adapter(layer, LoRA(model, layer, r=self.r, alpha=self.alpha,
                                          use_rslora=self.use_rslora, generator=rng))
