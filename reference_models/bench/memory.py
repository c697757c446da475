"""SPruFT's memory claim, measured: one training step (forward, backward, AdamW) of the `small`
preset model with (a) SPruFT row deltas on 5% of the rows of every linear layer, (b) LoRA with the
rank whose trainable count is closest to (a)'s, (c) masked-dense sparse fine-tuning of the same rows
(ElementMask: a dense delta and a dense gradient, updates masked to those rows), (d) full FT.
Bytes come from the memory meter (minisft.model.memory), i.e. from the arrays alive at the step's peak.

    python -m reference_models.bench.memory [--preset small] [--backend numpy]
"""

import argparse

import numpy as np

from minisft.model.adapters import ElementMask, LoRA, RowDelta
from minisft.model.budgets import count_params
from minisft.app.experiment import PRESETS
from minisft.model.memory import CATEGORIES, memory_report
from minisft.methods.spruft.budget import rows_for_ratio
from minisft.methods.spruft.importance import row_magnitude, top_rows
from minisft.model.gpt import GPT, linear_layer_names
from minisft.training.optim import AdamW


def _rows(model, layer, ratio):
    W = model.params[layer + ".weight"]
    return np.asarray(top_rows(row_magnitude(W), rows_for_ratio(W.shape[0], ratio)))


def _setup(kind, cfg, backend, ratio, lora_r):
    model = GPT(cfg, backend=backend, dtype="float32", seed=0)
    if kind == "full":
        return model
    model.freeze()
    for layer in linear_layer_names(cfg):
        rows = _rows(model, layer, ratio)
        if kind == "spruft":
            model.add_adapter(layer, RowDelta(model, layer, rows))
        elif kind == "lora":
            model.add_adapter(layer, LoRA(model, layer, r=lora_r, alpha=lora_r))
        else:
            mask = np.zeros(model.params[layer + ".weight"].shape, dtype=bool)
            mask[rows] = True
            model.add_adapter(layer, ElementMask(model, layer, mask))
    return model


def measure(preset="small", backend="numpy", ratio=0.05, batch_size=None):
    p = PRESETS[preset]
    cfg, B = p.model, batch_size or p.batch_size
    spruft = _setup("spruft", cfg, backend, ratio, 1)
    target = count_params(spruft)["trainable"]
    lora_r = min(range(1, 65), key=lambda r: abs(count_params(_setup("lora", cfg, "numpy", ratio, r))["trainable"] - target))
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (B, cfg.block_size))
    y = rng.integers(0, cfg.vocab_size, (B, cfg.block_size))
    rows = {}
    for kind in ("spruft", "lora", "masked_dense", "full"):
        model = _setup(kind, cfg, backend, ratio, lora_r)
        opt = AdamW(lr=1e-4)
        _, grads = model.loss_and_grads(model.xp.asarray(x), model.xp.asarray(y))
        masks = {k: m for ads in model.adapters.values() for ad in ads if hasattr(ad, "optimizer_masks")
                 for k, m in ad.optimizer_masks().items()}
        opt.step(model.trainable_params(), grads, masks=masks)
        rows[kind] = {"trainable": count_params(model)["trainable"], "memory": memory_report(model, grads, opt)}
    return {"preset": preset, "ratio": ratio, "lora_r": lora_r, "batch_size": B, "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m reference_models.bench.memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--ratio", type=float, default=0.05)
    a = ap.parse_args(argv)
    out = measure(a.preset, a.backend, a.ratio)
    mb = 1024 * 1024
    print(f"{a.preset} preset, B={out['batch_size']}, rows ratio {a.ratio}, LoRA rank {out['lora_r']}: MiB by category")
    print(f"{'run':14s} {'trainable':>10s} " + " ".join(f"{c:>11s}" for c in CATEGORIES) + f" {'total':>9s}")
    for kind, r in out["rows"].items():
        m = r["memory"]
        print(f"{kind:14s} {r['trainable']:10,d} " + " ".join(f"{m[c] / mb:11.2f}" for c in CATEGORIES) + f" {m['total'] / mb:9.2f}")
    return out


if __name__ == "__main__":
    main()
