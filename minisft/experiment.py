"""Experiments on the embedded data: presets, the cached pretrained base, fine-tuning runs and the
side-by-side comparison that `minisft compare` prints.

Domains: the base model is pretrained on the standard library's source code ("code", the source
domain) and fine-tuned on its documentation topics ("docs", the target domain, or the user's own
text with --data). Every fine-tuning run reports the target validation loss and, to measure
forgetting, the source validation loss.

Layout of a workdir:
    cache/                   trained tokenizers
    pretrain/<key>.safetensors   the pretrained base of a preset (reused by later commands)
    runs/<method-label>/     log.jsonl, checkpoint.safetensors, result.json of each fine-tuning run
    compare.json, compare-timings.json, compare.png

`finetune(..., init=DIR)` (`minisft finetune --init DIR`) starts from a local HF GPT-2 folder
instead of the pretrained base (`init_model`): its config and weights (minisft.interop.load_hf_gpt2,
safetensors only, nothing downloaded); its tokenizer.json when the folder has one, else minisft's
byte-level BPE trained on the same corpora with the model's vocabulary size (cached like any other;
at least 257 entries). Training windows are the preset's block size, or the model's positions if fewer.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .batches import corpus_streams, random_windows, validation_batches
from .budgets import lora_trainable
from .checkpoint import load_checkpoint, save_checkpoint
from .config import GPTConfig
from .corpus import load_corpus
from .errors import bad_value
from .fileio import atomic_write_json, ensure_writable_dir
from .interop import load_hf_gpt2
from .methods import FullFineTune, make_method, method_options
from .methods.spruft import rows_matching_lora
from .model import GPT
from .tokenizer import N_BYTES, BPETokenizer, build_tokenizer
from .train import Task, TrainConfig, evaluate, train


@dataclass(frozen=True)
class Preset:
    name: str
    model: GPTConfig
    max_chars: int  # per split and domain
    batch_size: int
    pretrain_steps: int
    pretrain_lr: float
    finetune_steps: int
    finetune_lr: float  # methods that update the base tensors (full, GMT, MGPP)
    peft_lr: float  # adapter methods (LoRA, LoRA-drop, SPruFT, AdaPEFT): 10x, the usual PEFT ratio
    eval_batches: int
    lora_r: int


PRESETS = {
    "tiny": Preset("tiny", GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=64),
                   max_chars=1_000_000, batch_size=16, pretrain_steps=300, pretrain_lr=3e-3,
                   finetune_steps=60, finetune_lr=1e-3, peft_lr=1e-2, eval_batches=4, lora_r=4),
    "small": Preset("small", GPTConfig(vocab_size=1024, block_size=64, n_layer=4, n_head=4, n_embd=128),
                    max_chars=3_000_000, batch_size=16, pretrain_steps=600, pretrain_lr=2e-3,
                    finetune_steps=150, finetune_lr=1e-3, peft_lr=1e-2, eval_batches=8, lora_r=8),
    "gpt2": Preset("gpt2", GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
                   max_chars=None, batch_size=8, pretrain_steps=2000, pretrain_lr=6e-4,
                   finetune_steps=300, finetune_lr=1e-4, peft_lr=1e-3, eval_batches=8, lora_r=8),
}


def get_preset(name, steps=None):
    if name not in PRESETS:
        raise bad_value("preset", name, f"one of {sorted(PRESETS)}")
    p = PRESETS[name]
    return p if steps is None else replace(p, finetune_steps=steps)


@dataclass
class Data:
    tokenizer: object
    config: GPTConfig  # the preset's model with vocab_size set to the tokenizer's actual size
    code: tuple  # (train stream, val stream)
    target: tuple
    corpora: tuple = None  # (code corpus, target corpus): to tokenize them again for an --init model


def build_data(preset, workdir, data=None):
    """Corpora, the cached tokenizer and token streams for a preset (target = docs or `data`)."""
    code = load_corpus("code", max_chars=preset.max_chars)
    target = load_corpus("docs" if not data else data, max_chars=preset.max_chars)
    tok = build_tokenizer([code, target], vocab_size=preset.model.vocab_size, cache_dir=Path(workdir) / "cache")
    cfg = replace(preset.model, vocab_size=tok.vocab_size)
    data = Data(tok, cfg, corpus_streams(code, tok), corpus_streams(target, tok), (code, target))
    for train_stream, val_stream in (data.code, data.target):  # fail now, not after pretraining
        random_windows(train_stream, 1, preset.model.block_size, np.random.default_rng(0))
        validation_batches(val_stream, preset.batch_size, preset.model.block_size, 1)
    return data


def _n_val_batches(stream, preset):
    fit = len(stream) // ((preset.model.block_size + 1) * preset.batch_size)
    return max(1, min(preset.eval_batches, fit))


def make_task(train_stream, val_target, val_source, preset):
    B, T = preset.batch_size, preset.model.block_size
    return Task(train_ids=train_stream,
                val_target=validation_batches(val_target, B, T, _n_val_batches(val_target, preset)),
                val_source=validation_batches(val_source, B, T, _n_val_batches(val_source, preset)) if val_source is not None else [],
                batch_size=B, block_size=T)


def _key(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def pretrained(preset, workdir, data, backend="auto", dtype="float32", seed=0, progress=None):
    """The base model of `preset`, pretrained on the code corpus; cached under workdir/pretrain."""
    workdir = ensure_writable_dir(workdir)
    cfg = TrainConfig(steps=preset.pretrain_steps, lr=preset.pretrain_lr, schedule="cosine",
                      warmup=max(1, preset.pretrain_steps // 20), weight_decay=0.1,
                      eval_every=preset.pretrain_steps, seed=seed)
    key = _key({"preset": asdict(preset), "vocab": data.tokenizer.vocab_size, "tok": str(data.tokenizer.path),
                "train": asdict(cfg), "dtype": dtype})
    path = workdir / "pretrain" / f"{preset.name}-{key}.safetensors"
    if path.exists():
        arrays, _ = load_checkpoint(path)
        return GPT.from_state_dict(arrays, data.config, backend=backend, dtype=dtype), None
    model = GPT(data.config, backend=backend, dtype=dtype, seed=seed)
    task = make_task(data.code[0], data.code[1], None, preset)
    result = train(model, FullFineTune(), task, cfg, progress=progress, label=f"pretrain[{preset.name}]")
    ensure_writable_dir(path.parent)
    save_checkpoint(path, model.state_dict(), {"config": data.config.to_dict(), "result": result["final"]})
    return model, result


def unigram_entropy(stream, vocab_size):
    """Entropy (nats) of the stream's unigram distribution: the loss of the best context-free model."""
    counts = np.bincount(np.asarray(stream.ids), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def method_lr(preset, method):
    """The preset's learning rate for `method`: finetune_lr if it trains base tensors, else peft_lr."""
    return preset.finetune_lr if method.trains_base else preset.peft_lr


def init_model(folder, workdir, data, backend="auto", dtype="float32"):
    """(model, data) of a local HF GPT-2 folder (module docstring): the model with the folder's
    config and weights, and `data`'s corpora tokenized with the folder's tokenizer.json, or with
    minisft's BPE of the model's vocabulary size."""
    config, state_dict = load_hf_gpt2(folder)
    path = Path(folder) / "tokenizer.json"
    if path.is_file():
        tok = BPETokenizer.from_file(path)
    elif config.vocab_size < N_BYTES + 1:
        raise bad_value("init vocab_size", config.vocab_size, f"at least {N_BYTES + 1} to train minisft's byte-level "
                        f"BPE for {folder}, or a tokenizer.json in the folder")
    else:
        tok = build_tokenizer(list(data.corpora), vocab_size=config.vocab_size, cache_dir=Path(workdir) / "cache")
    if tok.vocab_size > config.vocab_size:
        raise bad_value("init tokenizer vocab_size", tok.vocab_size, f"at most the model's {config.vocab_size} ({path})")
    code, target = data.corpora
    data = Data(tok, config, corpus_streams(code, tok), corpus_streams(target, tok), data.corpora)
    return GPT.from_state_dict(state_dict, config, backend=backend, dtype=dtype), data


def finetune(preset, workdir, data, method, label, backend="auto", dtype="float32", seed=0,
             resume=False, progress=None, checkpoint_every=0, lr=None, init=None):
    """Fine-tune a fresh copy of the pretrained base (or of the HF GPT-2 folder `init`) on the target
    domain with `method`."""
    if init is None:
        model, _ = pretrained(preset, workdir, data, backend, dtype, seed, progress)
    else:
        model, data = init_model(init, workdir, data, backend, dtype)
        block = min(preset.model.block_size, model.config.block_size)
        preset = replace(preset, model=replace(preset.model, block_size=block))
    task = make_task(data.target[0], data.target[1], data.code[1], preset)
    cfg = TrainConfig(steps=preset.finetune_steps, lr=lr or method_lr(preset, method),
                      eval_every=max(1, preset.finetune_steps // 5), seed=seed,
                      checkpoint_every=checkpoint_every)
    base_eval = {"target": evaluate(model, task.val_target), "source": evaluate(model, task.val_source)}
    result = train(model, method, task, cfg, workdir=Path(workdir) / "runs" / label, resume=resume,
                   progress=progress, label=label)
    result["label"] = label
    result["base"] = base_eval
    result["sparsity"] = weight_sparsity(model)
    return model, result


def weight_sparsity(model):
    """Fraction of exactly-zero entries of the effective linear weights (base + adapter deltas)."""
    from .adapters import adapter_delta_weights
    from .model import linear_layer_names

    deltas = adapter_delta_weights(model)
    zeros = total = 0
    for layer in linear_layer_names(model.config):
        W = model.params[layer + ".weight"]
        if layer in deltas:
            W = W + deltas[layer][0]
        zeros += int((W == 0).sum())
        total += int(W.size)
    return zeros / total


def spruft_label(budget):
    """The compare row's label of a SPruFT budget {"rows": k} or {"ratio": ρ} (rows_matching_lora's
    "options"): spruft-rows<k> or spruft-ratio<ρ>, so the label says which one was chosen."""
    return f"spruft-rows{budget['rows']}" if "rows" in budget else f"spruft-ratio{budget['ratio']!r}"


def compare_runs(preset):
    """(label, method name, options) of every row of the comparison, at matched budgets."""
    r = preset.lora_r
    budget = rows_matching_lora(preset.model, r)["options"]  # SPruFT at LoRA's trainable budget
    return [
        ("full", "full", {}),
        (f"lora-r{r}", "lora", {"r": r, "alpha": r}),
        (spruft_label(budget), "spruft", {**budget, "importance": "taylor"}),
        (f"loradrop-r{r}", "loradrop", {"r": r, "alpha": r, "probe_lr": preset.peft_lr}),
        (f"adapeft-r{r}", "adapeft", {"budget": lora_trainable(preset.model, r), "lora_r": r, "lora_alpha": r,
                                       "probe_lr": preset.peft_lr}),
        ("gmt-d0.5", "gmt", {"drop_ratio": 0.5}),
        ("gmt-d0.9", "gmt", {"drop_ratio": 0.9}),
        *[(f"mgpp-s{round(100 * s)}", "mgpp", {"final_sparsity": s}) for s in (0.5, 0.8, 0.9)],
        *[(f"magprune-s{round(100 * s)}", "mgpp", {"final_sparsity": s, "prior": False}) for s in (0.5, 0.8, 0.9)],
    ]


def build_method(name, options, preset, steps=None):
    """make_method, telling a method that schedules by step count (MGPP) the run's length unless
    the options already say it."""
    options = dict(options)
    if "total_steps" in method_options(name) and options.get("total_steps") is None:
        options["total_steps"] = steps or preset.finetune_steps
    return make_method(name, **options)


def compare(preset, workdir, data, backend="auto", dtype="float32", seed=0, progress=None, only=None):
    """Run every method of `compare_runs` and write compare.json (deterministic on the CPU),
    compare-timings.json and compare.png; returns (rows, timings)."""
    workdir = ensure_writable_dir(workdir)
    base_model, pre = pretrained(preset, workdir, data, backend, dtype, seed, progress)
    rows, timings = [], {}
    for label, name, options in compare_runs(preset):
        if only and name not in only:
            continue
        _, r = finetune(preset, workdir, data, build_method(name, options, preset), label, backend, dtype, seed,
                        progress=progress)
        timings[label] = r.pop("ms_per_step")
        for key in [k for k in r["report"] if k.endswith("ms_per_step")]:  # timings stay out of compare.json
            timings[f"{label}:{key}"] = r["report"].pop(key)
        rows.append(r)
    out = {"preset": asdict(preset), "vocab_size": data.tokenizer.vocab_size, "backend": base_model.backend,
           "dtype": dtype, "seed": seed, "rows": rows}
    atomic_write_json(workdir / "compare.json", out)
    atomic_write_json(workdir / "compare-timings.json", {"ms_per_step": timings})
    return rows, timings
