"""PyTorch (autograd) reference of LoRA-drop (Zhou et al. 2024, arXiv 2402.07721) on a TorchGPT,
written from the paper's steps and the sampling, probe and draw-order conventions documented in
minisft/methods/loradrop/__init__.py (they are the specification, not shared code):

    probe    LoRA on every target layer, torch.optim.AdamW(lr, weight_decay=0) on batches drawn from
             the sample D_s (k of the stream's m disjoint windows of T + 1 tokens)
    score    g_i = sum over the sample's tokens of ||s (x_i A^T) B^T||^2, with x_i the layer input
             captured by a forward hook and the product formed explicitly from A and B
    select   reference_models.primitives.select_layers (torch sort + float64 cumsum), over all
             target layers ("joint") or per module type ("per_type")
    reset    kept layers: fresh LoRALinear (or the probe's factors); the dropped layers of each
             module type: ONE LoRAFactors module reused by all of them, so autograd sums its gradient

Initialisation as PEFT: A ~ U(-1/sqrt(d_in), 1/sqrt(d_in)) drawn with the same numpy Generator
calls as minisft, B = 0, s = alpha / r. Parameters are exposed under minisft's names
(`<layer>.lora.lora_A`, `shared.<suffix>.lora_A`, ...).
"""

import math
from fractions import Fraction

import numpy as np
import torch

from reference_models.adapters import LoRAFactors, LoRALinear, wrap_linear
from reference_models.primitives import select_layers

SUFFIXES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _suffix(layer):
    return layer.split(".", 2)[2]


def new_factors(base, r, alpha, rng):
    """Fresh PEFT-initialised factors for the nn.Linear `base` (A drawn from `rng`)."""
    d_out, d_in = base.weight.shape
    bound = 1.0 / math.sqrt(d_in)
    A = rng.uniform(-bound, bound, size=(r, d_in))
    return LoRAFactors(A, np.zeros((d_out, r)), alpha / r).to(base.weight.dtype)


def attach(ref, layer, factors):
    return wrap_linear(ref, layer, lambda b: LoRALinear(b, factors))


def detach(ref, layer):
    """Put the original nn.Linear back in place of the LoRALinear at `layer`."""
    parent_path, attr = layer.rsplit(".", 1)
    parent = ref.get_submodule(parent_path)
    setattr(parent, attr, getattr(parent, attr).base)


def lora_output_sq_norms(ref, layers, batches):
    """{layer: g} for the LoRALinear modules at `layers`: hooks capture each layer's input x and
    g accumulates ||s (x A^T) B^T||^2 over the batches' tokens (no gradient)."""
    g = {n: torch.zeros((), dtype=torch.float64) for n in layers}

    def hook(layer):
        def fn(module, inputs, output):
            f = module.factors
            g[layer] += ((f.scaling * ((inputs[0] @ f.A.T) @ f.B.T)) ** 2).sum()
        return fn

    handles = [ref.get_submodule(n).register_forward_hook(hook(n)) for n in layers]
    try:
        with torch.no_grad():
            for x, y in batches:
                ref(torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(y)))
    finally:
        for h in handles:
            h.remove()
    return {n: float(v) for n, v in g.items()}


def adamw_steps(ref, params, batches, lr):
    """One torch.optim.AdamW step (weight_decay=0, no clipping) per (x, y) batch."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for x, y in batches:
        opt.zero_grad()
        _, loss = ref(torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(y)))
        loss.backward()
        opt.step()


class ReferenceLoRADrop:
    def __init__(self, r, alpha, threshold, sample_fraction, probe_steps, probe_lr,
                 targets=SUFFIXES, selection="joint", reinit=True):
        self.r, self.alpha, self.threshold = r, alpha, threshold
        self.fraction, self.probe_steps, self.probe_lr = sample_fraction, probe_steps, probe_lr
        self.targets, self.selection, self.reinit = tuple(targets), selection, reinit

    def prepare(self, ref, ids, batch_size, block_size, rng):
        """Probe, score, select and reset `ref` (base frozen) in place; ids: (n,) numpy token ids.
        Sets kept, shared, scores, probe_factors and params ({minisft name: nn.Parameter})."""
        T, B = block_size, batch_size
        layers = [f"h.{i}.{s}" for i in range(ref.config.n_layer) for s in SUFFIXES if s in self.targets]
        m = len(ids) // (T + 1)
        k = math.floor(Fraction(repr(float(self.fraction))) * m)
        starts = (T + 1) * np.sort(rng.choice(m, size=k, replace=False))
        w = torch.as_tensor(np.asarray(ids, dtype=np.int64)[starts[:, None] + np.arange(T + 1)])  # (k, T + 1)

        def batch(i):
            return w[torch.as_tensor(i), :-1], w[torch.as_tensor(i), 1:]

        probe = {n: new_factors(ref.get_submodule(n), self.r, self.alpha, rng) for n in layers}
        for n in layers:
            attach(ref, n, probe[n])
        probe_batches = (batch(rng.integers(0, k, size=B)) for _ in range(self.probe_steps))
        adamw_steps(ref, [p for f in probe.values() for p in (f.A, f.B)], probe_batches, self.probe_lr)
        self.scores = lora_output_sq_norms(ref, layers, [batch(np.arange(i, min(i + B, k))) for i in range(0, k, B)])

        pools = [layers] if self.selection == "joint" else [[n for n in layers if _suffix(n) == s] for s in SUFFIXES]
        kept = set()
        for pool in (p for p in pools if p):
            idx = select_layers(torch.tensor([self.scores[n] for n in pool], dtype=torch.float64), self.threshold)
            kept.update(pool[int(i)] for i in idx)
        self.kept = [n for n in layers if n in kept]
        self.shared = {s: [n for n in layers if _suffix(n) == s and n not in kept] for s in SUFFIXES}
        self.shared = {s: d for s, d in self.shared.items() if d}
        self.probe_factors = probe

        for n in layers:
            detach(ref, n)
        self.params = {}
        for n in self.kept:
            f = new_factors(ref.get_submodule(n), self.r, self.alpha, rng) if self.reinit else probe[n]
            attach(ref, n, f)
            self.params[f"{n}.lora.lora_A"], self.params[f"{n}.lora.lora_B"] = f.A, f.B
        for s, dropped in self.shared.items():
            f = new_factors(ref.get_submodule(dropped[0]), self.r, self.alpha, rng)
            for n in dropped:
                attach(ref, n, f)
            self.params[f"shared.{s}.lora_A"], self.params[f"shared.{s}.lora_B"] = f.A, f.B
        return self

    def train(self, ref, batches, lr):
        """The LoRA-drop fine-tuning: AdamW over every kept and shared factor."""
        adamw_steps(ref, list(self.params.values()), batches, lr)
