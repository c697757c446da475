"""LoRA-drop as a fine-tuning method: the probe, the scoring by LoRA output and the `LoRADrop` class
the trainer drives (map and choices: minisft/methods/loradrop/__init__.py).

g_i is accumulated during forward-only passes: for the scoring, each layer's LoRA is stood in for by
a wrapper that lets the LoRA add its contribution s (x A^T) B^T into a zero buffer, adds the buffer
into the layer output (so every later layer sees exactly the probe model's hidden states) and adds
its squared norm to a float64 running sum on the device; no per-sample output is kept.
Derivations: proofs/loradrop_method.md.
"""

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from ...model.adapters import LoRA, SharedLoRA
from ...core.backend import array_module, to_numpy
from ...data.batches import disjoint_windows, windows_at
from ...model.budgets import check_targets, lora_param_count, lora_trainable, target_layers
from ...distributed.data_parallel import comm_of, loss_and_grads, mean_batch_loss
from ...core.errors import bad_type, bad_value, require
from ...model.gpt import LINEAR_SUFFIXES
from ...training.optim import make_optimizer
from ..config import MethodConfig, option
from ..select import ratio_count
from ..base import Method
from .selection import layer_output_sq_norm, normalize_importance, select_layers

Selection = Literal["joint", "per_type"]
SELECTIONS = get_args(Selection)


# ---------------------------------------------------------------------------------- scoring
class _OutputNorm:
    """Scoring stand-in for a LoRA adapter: the same contribution to y, plus its squared norm
    accumulated (float64, on the device) into `g`. Forward only."""

    def __init__(self, lora):
        self.lora, self.params = lora, lora.params
        self.g = array_module(lora.A).zeros((), dtype=np.float64)

    def forward(self, x, y):
        """x: (..., d_in), y: (..., d_out) base output; adds s (x A^T) B^T into y in place."""
        delta = array_module(y).zeros_like(y)
        self.lora.forward(x, delta)  # delta = s (x A^T) B^T exactly (added to zeros)
        self.g = self.g + layer_output_sq_norm(delta.reshape(-1, delta.shape[-1]))
        y += delta
        return y, None


def _scored_loras(model):
    """{layer: its one LoRA adapter} over the layers that carry a LoRA."""
    found = {}
    for layer, ads in model.adapters.items():
        loras = [ad for ad in ads if isinstance(ad, LoRA)]
        if len(loras) > 1:
            raise bad_value(f"model.adapters[{layer!r}]", f"{len(loras)} LoRA adapters", "at most one LoRA per layer")
        if loras:
            require(not loras[0].merged, f"model.adapters[{layer!r}]", "a merged LoRA",
                    "an unmerged LoRA (a merged one's output is inside the base weight)")
            found[layer] = loras[0]
    require(bool(found), "model", "a model without LoRA adapters", "a model with a LoRA adapter on at least one layer")
    return found


def layer_scores(model, batches, comm=None):
    """g_i = sum over the batches' tokens of ||s B A x_i||^2 for every layer i with a LoRA.

    batches: non-empty list of (x, y), each (B, T) token ids (forward-only passes; y only feeds the
    loss) -> ({layer: g_i as a Python float}, mean loss over the batches). comm (data parallel):
    batch i is scored on rank i mod N and the g_i are summed over the ranks (one all-reduce), so
    every rank holds the single process's g."""
    if not isinstance(batches, (list, tuple)):
        raise bad_type("batches", batches, "a list of (x, y) token batches")
    require(len(batches) > 0, "batches", batches, "a non-empty list of (x, y) token batches (the sample)")
    loras = _scored_loras(model)
    probes = {layer: _OutputNorm(ad) for layer, ad in loras.items()}
    saved = {layer: list(ads) for layer, ads in model.adapters.items()}
    try:
        for layer, probe in probes.items():
            model.adapters[layer] = [probe if ad is loras[layer] else ad for ad in saved[layer]]
        loss = mean_batch_loss(model, batches, comm)
    finally:
        model.adapters.update(saved)
    xp = array_module(next(iter(loras.values())).A)
    g = xp.stack([p.g for p in probes.values()])
    if comm is not None:
        comm.allreduce_sum([g])
    g = to_numpy(g)  # one host transfer
    return dict(zip(probes, (float(v) for v in g))), loss


def layer_importance(scores):
    """I_i = g_i / sum_j g_j: {layer: g_i} (from `layer_scores`) -> {layer: I_i}, summing to 1, with
    the cause named when g cannot be normalised (a diverged or an untrained probe)."""
    g = np.array(list(scores.values()), dtype=np.float64)
    require(bool(np.isfinite(g).all()), "importance", scores,
            "finite LoRA output norms (a NaN/inf LoRA output: the probe diverged; lower probe_lr)")
    require(bool((g > 0).any()), "importance", scores,
            "a non-zero LoRA output on some layer; every LoRA output is zero on the sample "
            "(B still at its zero initialisation: an untrained probe)")
    return dict(zip(scores, (float(v) for v in normalize_importance(g))))


# -------------------------------------------------------------------------------- selection
def _suffix(layer):
    return layer.split(".", 2)[2]


def keep_and_share(layers, scores, threshold, selection="joint"):
    """Which layers keep their own LoRA. layers: target layer names (model order); scores:
    {layer: g_i}. -> (kept layer names in model order, {suffix: dropped layers of that type}) with
    an entry only for types that drop a layer, suffixes in LINEAR_SUFFIXES order."""
    require(selection in SELECTIONS, "selection", selection, f"one of {SELECTIONS}")
    if not isinstance(layers, (list, tuple)) or not all(isinstance(n, str) for n in layers):
        raise bad_type("layers", layers, "a list of layer names")
    if not isinstance(scores, dict) or set(layers) - set(scores):
        raise bad_type("scores", scores, f"a dict {{layer: g_i}} with every one of the layers {list(layers)[:3]}...")
    pools = [layers] if selection == "joint" else [[n for n in layers if _suffix(n) == s] for s in LINEAR_SUFFIXES]
    kept = set()
    for pool in (p for p in pools if p):
        idx = select_layers(np.array([scores[n] for n in pool], dtype=np.float64), threshold)
        kept.update(pool[i] for i in idx)
    shared = {s: [n for n in layers if _suffix(n) == s and n not in kept] for s in LINEAR_SUFFIXES}
    return [n for n in layers if n in kept], {s: d for s, d in shared.items() if d}


# ------------------------------------------------------------------------------------ method
@dataclass(frozen=True)
class LoRADropConfig(MethodConfig):
    r: int = option(8, "LoRA rank")
    alpha: float = option(8.0, "LoRA scaling numerator (alpha / r)")
    threshold: float = option(0.9, "keep the most important layers until their normalised importance sums to this")
    sample_fraction: float = option(0.1, "fraction of the training windows the importance is measured on")
    probe_steps: int = option(20, "LoRA training steps before measuring the importance")
    probe_lr: float = option(1e-3, "learning rate of those probe steps")
    targets: tuple[str, ...] = option(LINEAR_SUFFIXES, "linear-layer suffixes to adapt, among "
                                      + ", ".join(LINEAR_SUFFIXES))
    selection: Selection = option("joint", "rank all target layers together (joint) or each module type alone "
                                           "(per_type)")
    reinit: bool = option(True, "re-initialise the kept LoRAs after the probe (else keep the probe's weights)")

    def check(self):
        require(self.r > 0, "r", self.r, "a positive integer")
        require(0 < self.alpha < math.inf, "alpha", self.alpha, "a number in (0, inf)")
        require(0 < self.threshold <= 1, "threshold", self.threshold, "a number in (0, 1]")
        require(0 < self.sample_fraction <= 1, "sample_fraction", self.sample_fraction, "a number in (0, 1]")
        require(self.probe_steps > 0, "probe_steps", self.probe_steps, "at least 1: an untrained probe has B = 0, "
                "so every LoRA output, and with it every layer's importance, is zero")
        require(0 < self.probe_lr < math.inf, "probe_lr", self.probe_lr, "a number in (0, inf)")
        self._set("targets", check_targets(self.targets))


class LoRADrop(Method):
    """LoRA-drop: probe, score by LoRA output, keep the important layers, share one LoRA per
    module type among the rest (package docstring)."""

    name = "loradrop"
    paper = "Zhou et al. 2024, arXiv 2402.07721"
    Config = LoRADropConfig

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        self._report = {}

    def check_config(self, config):
        lora_trainable(config, self.config.r, self.config.targets)

    def sample(self, task, rng):
        """D_s: (starts (k,) host int64 of the sampled windows, m the number of disjoint windows,
        batch(indices into starts) -> (x, y) each (len(indices), T)) (package docstring)."""
        T = task.block_size
        stream, m = disjoint_windows(task.train_ids, T)
        k = ratio_count(self.config.sample_fraction, m, "floor")
        require(k >= 1, "sample_fraction", self.config.sample_fraction,
                f"a fraction keeping at least one of the {m} windows of {stream.name} (got floor(fraction * {m}) = 0)")
        starts = (T + 1) * np.sort(rng.choice(m, size=k, replace=False)).astype(np.int64)
        return starts, m, (lambda i: windows_at(stream.ids, starts[i], T))

    def prepare(self, model, task, rng):
        model.freeze()
        c = self.config
        layers = target_layers(model, c.targets)
        comm = comm_of(task)
        starts, m, batch = self.sample(task, rng)
        k, B = len(starts), task.batch_size
        probe = {n: model.add_adapter(n, LoRA(model, n, r=c.r, alpha=c.alpha, generator=rng)) for n in layers}
        opt = make_optimizer("adamw", c.probe_lr, weight_decay=0.0)
        for _ in range(c.probe_steps):
            probe_loss, grads = loss_and_grads(model, *batch(rng.integers(0, k, size=B)), comm)
            opt.step(model.trainable_params(), grads)
        sample = [batch(np.arange(i, min(i + B, k))) for i in range(0, k, B)]
        scores, sample_loss = layer_scores(model, sample, comm)
        importance = layer_importance(scores)
        kept, shared = keep_and_share(layers, scores, c.threshold, c.selection)
        for n in layers:
            if not (n in kept and not c.reinit):
                _detach(model, n, probe[n])
        if c.reinit:
            for n in kept:
                model.add_adapter(n, LoRA(model, n, r=c.r, alpha=c.alpha, generator=rng))
        for suffix, dropped in shared.items():
            SharedLoRA(model, suffix, dropped[0], r=c.r, alpha=c.alpha, generator=rng).attach(model, dropped)
        n_all, n_kept, n_shared = (lora_param_count((model.params[n + ".weight"].shape for n in names), c.r)
                                   for names in (layers, kept, [d[0] for d in shared.values()]))
        self._report = {
            "sample": {"windows": k, "of_windows": m, "tokens": k * task.block_size},
            "probe": {"steps": c.probe_steps, "lr": c.probe_lr, "last_loss": probe_loss, "sample_loss": sample_loss},
            "scores": scores,
            "importance": importance,
            "kept": kept,
            "shared": shared,
            "params": {"loradrop": n_kept + n_shared, "kept": n_kept, "shared": n_shared, "lora_all_targets": n_all},
            "retained_fraction": (n_kept + n_shared) / n_all,
        }

    def report(self):
        return self._report


def _detach(model, layer, adapter):
    """Remove one adapter object from a layer (the layer's entry goes when it is the last)."""
    rest = [ad for ad in model.adapters[layer] if ad is not adapter]
    if rest:
        model.adapters[layer] = rest
    else:
        del model.adapters[layer]
