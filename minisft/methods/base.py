"""The method protocol the trainer drives, and the two baselines every comparison includes.

A method decides *what* trains; the trainer (minisft.train) does the rest. Hooks, in call order:
    prepare(model, task, rng)          select and wrap (may run probe steps on task's batches)
    transform_grads(model, grads, step) -> grads    e.g. GMT's mask, MGPP's prior gradient
    optimizer_masks(model) -> {name: bool array}    entries the optimizer must leave untouched
    after_step(model, step)            e.g. MGPP's pruning on its schedule
    report() -> dict                   JSON-ready: what was selected, counts, method-specific facts
    state_arrays() / load_state_arrays(arrays)     method state a checkpoint must carry (masks)
`prepare` is deterministic given the rng, so a resumed run re-selects the same way.
"""

from ..adapters import LoRA
from ..budgets import target_layers
from ..model import LINEAR_SUFFIXES


class Method:
    name = "method"
    trains_base = False  # True: the method updates base tensors in place (full-FT learning rate)

    def prepare(self, model, task, rng):
        raise TypeError(f"{type(self).__name__} must implement prepare(model, task, rng)")

    def transform_grads(self, model, grads, step):
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
    trains_base = True

    def prepare(self, model, task, rng):
        model.unfreeze()

    def report(self):
        return {}


class LoRAMethod(Method):
    """LoRA (PEFT defaults: r=8, α=8, kaiming-uniform A, zero B) on every target linear layer."""

    name = "lora"

    def __init__(self, r=8, alpha=8, targets=LINEAR_SUFFIXES, use_rslora=False):
        self.r, self.alpha, self.targets, self.use_rslora = r, alpha, tuple(targets), use_rslora

    def options(self):
        return {"r": self.r, "alpha": self.alpha, "targets": list(self.targets), "use_rslora": self.use_rslora}

    def prepare(self, model, task, rng):
        model.freeze()
        for layer in target_layers(model, self.targets):
            model.add_adapter(layer, LoRA(model, layer, r=self.r, alpha=self.alpha,
                                          use_rslora=self.use_rslora, generator=rng))
