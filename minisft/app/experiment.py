"""Experiments on the embedded data: presets, the cached pretrained base, fine-tuning runs and the
side-by-side comparison that `minisft compare` prints.

Domains: the base model is pretrained on the standard library's source code ("code", the source
domain) and fine-tuned on its documentation topics ("docs", the target domain), or on the user's
own text (`data`: files or folders, named in the tables by the first path's name). Every fine-tuning
run reports the target validation loss and, to measure forgetting, the source validation loss.
The tokenizer is trained on code + target text, so other `data` means another tokenizer, hence
another base model: both are trained once and cached (keyed by content).

Layout of a workdir:
    cache/bpe-*.json                the tokenizers (with their SHA-256)
    pretrain/<preset>-<key>.safetensors   a pretrained base; key: SHA-256 of what it depends on (the
                                    preset's model and pretraining settings, the tokenizer, the code
                                    corpus, the seed, the dtype), never of paths or fine-tuning settings
    runs/<experiment>/              one experiment: <preset>-<data>, then -seed<s> (the base's seed),
                                    -steps<n>, -lr<x>, -float64 when not the defaults; <data> is "docs"
                                    or "data-" + 10 hex digits of the target corpus's fingerprint
        <label>/seed<s>/            one fine-tuning run (minisft.training.train: log, checkpoint, model/, result)
        compare.json, compare-timings.json, compare.png    the comparison of one seed; with K seeds
                                    compare-seeds<K>.json, ... (compare_files)
        adapeft-front<options>.json/.png    the front; <options> names the options that are not the
                                    defaults (minisft.app.adapeft_front.front_name)
So runs of different presets, data or settings never share a path; a rerun in the same path
resumes, is refused, or replaces the earlier run only when told to (`overwrite`; the trainer's
reruns). Cached files hold the key they were made for (the tokenizer its cache key, the base model
its pretraining key), checked when they are loaded: a file of another key under the name is an
error, a damaged one is rebuilt.

`finetune(..., init=DIR)` (`minisft finetune --init DIR`) starts from a local HF GPT-2 folder
instead of the pretrained base (`init_model`): its config and weights (minisft.model.interop.load_hf_gpt2,
safetensors only, nothing downloaded); its tokenizer.json when the folder has one, else minisft's
byte-level BPE trained on the same corpora with the model's vocabulary size (cached like any other;
at least 257 entries). Training windows are the preset's block size, or the model's positions if
fewer. Its runs go to an experiment directory ending in -init<10 hex digits of the folder's
config.json and weights>.

Seeds (`compare(seeds=K)`): every row is fine-tuned with seeds seed, seed+1, ..., seed+K-1 on ONE
base model, pretrained with `seed`. A fixed public base fine-tuned many ways is how fine-tuning
methods are used and compared; sharing it pairs the rows (every method starts from the same
weights), so the spread measures the methods' own randomness (selection, initialisation, batches),
and it costs one pretraining instead of K.
"""

import json
import math
import os
import re
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from ..data.batches import corpus_streams
from ..model.budgets import lora_trainable
from ..training.checkpoint import arrays_digest, load_checkpoint, save_checkpoint
from ..core.config import GPTConfig
from ..data.corpus import load_corpus
from ..distributed.data_parallel import world_size
from ..distributed.rank0 import broadcast_arrays, on_rank0
from ..core.errors import MinisftError, foreign_file, bad_type, bad_value, nonnegative_int, positive_int, real_in
from ..core.fileio import (RunLock, as_path, atomic_write_json, bad_path, check_name, check_output_file, ensure_writable_dir,
    read_json, read_regular_file, remove_stale_temps, sha256_hex)
from ..model.interop import HF_CONFIG, HF_WEIGHTS, load_hf_gpt2
from ..methods import FullFineTune, make_method, method_options
from ..methods.spruft import rows_matching_lora
from ..model.gpt import GPT
from ..core.progress import note, phase
from ..data.tokenizer import N_BYTES, BPETokenizer, build_tokenizer
from ..training.train import Task, TrainConfig, check_run_dir, evaluate, train
from ..core.version import __version__, git_commit

PRETRAIN_RECIPE = "minisft-pretrain-v1"


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
    """The preset `name`, with `steps` fine-tuning steps when given."""
    if name not in PRESETS:
        raise bad_value("preset", name, f"one of {sorted(PRESETS)}")
    p = PRESETS[name]
    return p if steps is None else replace(p, finetune_steps=positive_int("steps", steps))


@dataclass
class Data:
    tokenizer: object
    config: GPTConfig  # the preset's model with vocab_size set to the tokenizer's actual size
    code: tuple  # (train stream, val stream)
    target: tuple
    domains: dict  # {"target": name for tables, "source": "code"}
    fingerprints: dict  # {"target": corpus SHA-256, "source": corpus SHA-256, "tokenizer": SHA-256}
    key: str  # "docs", or "data-" + 10 hex digits of the target corpus's fingerprint
    corpora: tuple = None  # (code corpus, target corpus): to tokenize them again for an --init model


def data_name(paths):
    """The name tables give user data: the first path's file or folder name (+N more paths)."""
    if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths) \
            or not all(os.fspath(p) for p in paths):
        raise bad_type("paths", paths, "a non-empty list of paths")
    stem = Path(paths[0]).stem or Path(paths[0]).resolve().name or "data"
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", stem)[:24]
    return name + (f"+{len(paths) - 1}" if len(paths) > 1 else "")


def build_data(preset, workdir, data=None, encoding="utf-8", progress=None):
    """Corpora, the cached tokenizer and token streams for a preset (target = docs or `data`)."""
    workdir = ensure_writable_dir(workdir, "workdir")
    if data is None:
        paths = None
    elif isinstance(data, (str, os.PathLike)):
        paths = [data]
    elif isinstance(data, (list, tuple)) and data:
        paths = list(data)
    else:
        raise bad_type("data", data, "None (the docs corpus), or a path or non-empty list of paths to text")
    target_what = "the standard library's documentation (docs)" if paths is None else f"your data {paths}"
    phase(f"reading the code corpus (the standard library's sources) and {target_what}", progress)
    code = load_corpus("code", max_chars=preset.max_chars)
    target = load_corpus("docs" if paths is None else paths, max_chars=preset.max_chars, encoding=encoding)
    phase(f"tokenizer: byte-level BPE, vocabulary {preset.model.vocab_size}, on code + "
          f"{'docs' if paths is None else 'your data'} (trained once, then cached in {workdir / 'cache'})", progress)
    tok = build_tokenizer([code, target], vocab_size=preset.model.vocab_size, cache_dir=workdir / "cache")
    cfg = replace(preset.model, vocab_size=tok.vocab_size)
    fingerprints = {"source": code.fingerprint(), "target": target.fingerprint(), "tokenizer": tok.fingerprint()}
    out = Data(tok, cfg, corpus_streams(code, tok), corpus_streams(target, tok),
               {"target": "docs" if paths is None else data_name(paths), "source": "code"}, fingerprints,
               "docs" if paths is None else f"data-{fingerprints['target'][:10]}", (code, target))
    origin = {"code": "the code corpus", "target": "the docs corpus" if paths is None else f"--data {paths}"}
    need = preset.batch_size * (preset.model.block_size + 1)
    for domain, streams in (("code", out.code), ("target", out.target)):  # fail now, not after pretraining
        for split, stream in zip(("training", "validation"), streams):
            if len(stream) < need:
                raise MinisftError(f"data: {origin[domain]}: its {split} split holds {len(stream)} tokens: expected at "
                                   f"least {need} (one batch: batch_size {preset.batch_size} x (block_size "
                                   f"{preset.model.block_size} + 1)); give more text", "data", paths,
                                   f"at least {need} tokens in each split")
    return out


def _n_val_batches(stream, preset):
    fit = len(stream) // ((preset.model.block_size + 1) * preset.batch_size)
    return max(1, min(preset.eval_batches, fit))


def make_task(train_stream, val_target, val_source, preset, comm=None):
    from ..data.batches import validation_batches

    B, T = preset.batch_size, preset.model.block_size
    return Task(train_ids=train_stream,
                val_target=validation_batches(val_target, B, T, _n_val_batches(val_target, preset)),
                val_source=validation_batches(val_source, B, T, _n_val_batches(val_source, preset)) if val_source is not None else [],
                batch_size=B, block_size=T, comm=comm)


def pretrain_config(preset, seed):
    """The pretraining run's configuration."""
    return TrainConfig(steps=preset.pretrain_steps, lr=preset.pretrain_lr, schedule="cosine",
                       warmup=max(1, preset.pretrain_steps // 20), weight_decay=0.1,
                       eval_every=preset.pretrain_steps, seed=seed, checkpoint_every=0)


def pretrain_key(preset, data, dtype, seed):
    """SHA-256 (hex) of everything the pretrained base depends on (module docstring)."""
    cfg = pretrain_config(preset, seed)
    content = {"recipe": PRETRAIN_RECIPE, "model": data.config.to_dict(), "dtype": str(np.dtype(dtype)),
               "batch_size": preset.batch_size, "train": asdict(cfg), "tokenizer": data.fingerprints["tokenizer"],
               "code": data.fingerprints["source"]}
    return arrays_digest({}, content)


def pretrained_file(preset, data, dtype, seed):
    """The cached base model's path relative to the workdir: pretrain/<preset>-<key>.safetensors."""
    return Path("pretrain") / f"{preset.name}-{pretrain_key(preset, data, dtype, seed)[:20]}.safetensors"


def _lead(comm):
    """Whether this process writes files and prints: the only process, or rank 0 of a job."""
    return world_size(comm) == 1 or comm.rank == 0


def pretrained(preset, workdir, data, backend="auto", dtype="float32", seed=0, progress=None, comm=None,
               split=True):
    """The base model of `preset`, pretrained on the code corpus; cached under workdir/pretrain
    (verified by its checksum when loaded; a damaged file is retrained, with a message).
    Returns (model, pretraining result or None when loaded from the cache).

    comm (a job of several ranks): rank 0 reads and writes the cache, its weights reach every rank
    by broadcast (no shared filesystem needed); a missing base is pretrained data-parallel (split),
    or by every rank alone (split=False, a sweep's ranks: each then holds the single process's
    model, bit for bit on the CPU) and every rank goes on with rank 0's weights."""
    lead = _lead(comm)
    folder = Path(workdir) / "pretrain"
    if lead:
        ensure_writable_dir(folder, "workdir")
        remove_stale_temps(folder)
    key = pretrain_key(preset, data, dtype, seed)
    path = Path(workdir) / pretrained_file(preset, data, dtype, seed)
    loaded = {}

    def load_cached():
        check_output_file(path, "workdir")  # a directory or a FIFO there: an error now, not after pretraining
        if not os.path.lexists(path):
            return False
        try:
            loaded["arrays"], meta = load_checkpoint(path)
        except MinisftError as e:
            note(f"the cached base model is damaged ({e}); pretraining it again")
            return False
        if meta.get("key") != key:
            raise foreign_file("workdir", path, f"the base model of key {key[:20]} (its file name); it holds the one "
                               f"of key {str(meta.get('key'))[:20]} (another seed, preset, data or tokenizer, put "
                               "there by hand?): move it away and run again")
        loaded["model"] = GPT.from_state_dict(loaded["arrays"], data.config, backend=backend, dtype=dtype)
        return True

    if on_rank0(comm, load_cached):
        arrays = broadcast_arrays(comm, loaded.get("arrays"))
        model = loaded.get("model") or GPT.from_state_dict(arrays, data.config, backend=backend, dtype=dtype)
        phase(f"base model: {preset.name}, loaded from {path}", progress if lead else False)
        return model, None
    cfg = pretrain_config(preset, seed)
    phase(f"pretraining the {preset.name} base model on code: {cfg.steps} steps (once; cached in {folder})",
          progress if lead else False)
    model = GPT(data.config, backend=backend, dtype=dtype, seed=seed)
    task = make_task(data.code[0], data.code[1], None, preset, comm if split else None)
    result = train(model, FullFineTune(), task, cfg, progress=progress if lead else False,
                   label=f"pretrain[{preset.name}]")
    if lead:
        save_checkpoint(path, model.state_dict(), {"key": key, "config": data.config.to_dict(), "result": result["final"]})
    if not split and world_size(comm) > 1:  # every rank continues from rank 0's copy
        arrays = broadcast_arrays(comm, model.state_dict() if lead else None)
        if not lead:
            model = GPT.from_state_dict(arrays, data.config, backend=backend, dtype=dtype)
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
    data = replace(data, tokenizer=tok, config=config, code=corpus_streams(code, tok), target=corpus_streams(target, tok),
                   fingerprints={**data.fingerprints, "tokenizer": tok.fingerprint()})
    return GPT.from_state_dict(state_dict, config, backend=backend, dtype=dtype), data


def init_key(folder):
    """10 hex digits of SHA-256 over an HF folder's config.json and weights (what an --init run starts from)."""
    folder = as_path("folder", folder)
    return sha256_hex(b"".join(read_regular_file(folder / name, "init") for name in (HF_CONFIG, HF_WEIGHTS)))[:10]


def finetune_config(preset, method, seed=0, lr=None, checkpoint_every=None):
    """The fine-tuning run's configuration (validated: build it before reading any data)."""
    return TrainConfig(steps=preset.finetune_steps, lr=method_lr(preset, method) if lr is None else lr,
                       eval_every=max(1, preset.finetune_steps // 5), seed=seed, checkpoint_every=checkpoint_every)


def experiment_name(preset, data_key, base_seed=0, lr=None, dtype="float32", init=None):
    """runs/<this>: the preset and data, then what differs from the defaults (module docstring)."""
    name = f"{preset.name}-{data_key}"
    if base_seed:
        name += f"-seed{base_seed}"
    if preset.finetune_steps != PRESETS.get(preset.name, preset).finetune_steps:
        name += f"-steps{preset.finetune_steps}"
    if lr is not None:
        name += f"-lr{lr!r}"
    if str(np.dtype(dtype)) != "float32":
        name += f"-{np.dtype(dtype)}"
    if init is not None:
        name += f"-init{init}"
    return name


def experiment_dir(workdir, preset, data, base_seed=0, lr=None, dtype="float32", init=None):
    return Path(workdir) / "runs" / experiment_name(preset, data.key, base_seed, lr, dtype, init)


def run_dir(workdir, preset, data, label, seed=0, base_seed=None, lr=None, dtype="float32", init=None):
    """runs/<experiment>/<label>/seed<seed> (init: init_key of an --init folder)."""
    seed = nonnegative_int("seed", seed)
    base_seed = seed if base_seed is None else nonnegative_int("base_seed", base_seed)
    return (experiment_dir(workdir, preset, data, base_seed, lr, dtype, init) / check_name("label", label)
            / f"seed{seed}")


def provenance(preset, data, base_seed):
    """What produced a run, beyond its configurations (recorded in results and manifests)."""
    return {"preset": preset.name, "domains": data.domains, "data": {k: data.fingerprints[k] for k in ("target", "source")},
            "tokenizer": data.fingerprints["tokenizer"], "base_seed": base_seed}


def finetune(preset, workdir, data, method, label, backend="auto", dtype="float32", seed=0, resume=False,
             progress=None, checkpoint_every=None, lr=None, base_seed=None, init=None, train_overrides=None,
             comm=None, base=None, overwrite=False):
    """Fine-tune a fresh copy of the pretrained base (pretrained with `base_seed`, default `seed`),
    or of the HF GPT-2 folder `init`, on the target domain with `method`, in run_dir(...); returns
    (model, result). `train_overrides` (a compare row's 4th element, apply_train_overrides): the
    row's own training settings, recorded in the result. comm: data parallel over its ranks
    (minisft.training.train); base: the pretrained base's state dict when the caller holds it already (a
    sweep). resume / overwrite: what to do with an earlier run in the run directory (the trainer's
    reruns), checked before the base model is loaded or pretrained."""
    base_seed = seed if base_seed is None else base_seed
    overrides = dict(train_overrides or {})
    cfg, _ = apply_train_overrides(finetune_config(preset, method, seed, lr, checkpoint_every), None, overrides)
    key = None if init is None else init_key(init)
    folder = run_dir(workdir, preset, data, label, seed, base_seed, lr, dtype, key)
    on_rank0(comm, lambda: check_run_dir(folder, resume, overwrite))  # before any work
    if init is None:
        started_from = {"pretrained": str(pretrained_file(preset, data, dtype, base_seed))}
        if base is not None:
            model = GPT.from_state_dict(base, data.config, backend=backend, dtype=dtype)
        else:
            model, _ = pretrained(preset, workdir, data, backend, dtype, base_seed, progress, comm)
    else:
        started_from = {"init": str(Path(init).resolve())}
        model, data = init_model(init, workdir, data, backend, dtype)
        block = min(preset.model.block_size, model.config.block_size)
        preset = replace(preset, model=replace(preset.model, block_size=block))
    _, task = apply_train_overrides(cfg, make_task(data.target[0], data.target[1], data.code[1], preset, comm),
                                    overrides)
    base_eval = {"target": evaluate(model, task.val_target, comm), "source": evaluate(model, task.val_source, comm)}
    phase(f"fine-tuning {label} (seed {seed}): {cfg.steps} steps in {folder}", progress if _lead(comm) else False)
    result = train(model, method, task, cfg, workdir=folder, resume=resume, progress=progress,
                   label=f"{label}[seed {seed}]", provenance={**provenance(preset, data, base_seed), "init": key, "base": started_from,
                                                               "backend": model.backend},
                   record={"label": label, "base": base_eval, "train_overrides": overrides}, overwrite=overwrite)
    return model, result


def apply_train_overrides(cfg, task, overrides):
    """(cfg, task) with a compare row's per-row training settings: TrainConfig fields (e.g.
    accumulation, grad_clip) and "batch_size" (the training task's micro-batch size; the evaluation
    batches keep the preset's). `task` may be None (only cfg is wanted)."""
    if not isinstance(overrides, dict):
        raise bad_type("train_overrides", overrides, "a dict of TrainConfig fields and/or batch_size")
    allowed = {f.name for f in fields(TrainConfig)} | {"batch_size"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise bad_value("train_overrides", unknown, f"keys among {sorted(allowed)}")
    settings = {k: v for k, v in overrides.items() if k != "batch_size"}
    if "batch_size" in overrides:
        positive_int("batch_size", overrides["batch_size"])
    if "batch_size" in overrides and task is not None:
        task = replace(task, batch_size=overrides["batch_size"])
    return replace(cfg, **settings), task


GMT_MICRO_BATCHES = 4  # N: compare's GMT rows take the mask on Γ averaged over N micro-batches


def spruft_label(budget):
    """The compare row's label of a SPruFT budget {"rows": k} or {"ratio": ρ} (rows_matching_lora's
    "options"): spruft-rows<k> or spruft-ratio<ρ>, so the label says which one was chosen."""
    return f"spruft-rows{budget['rows']}" if "rows" in budget else f"spruft-ratio{budget['ratio']!r}"


def compare_runs(preset):
    """(label, method name, options[, training overrides]) of every row of the comparison, at
    matched budgets. Overrides (finetune's `train_overrides`) keep the tokens per step equal:
    - GMT takes its mask on Γ averaged over N = GMT_MICRO_BATCHES micro-batches of B/N sequences
      (the paper's accumulation, N > 1), B the preset's batch;
    - MGPP and its magnitude-pruning baseline run without gradient clipping, as MGPP's authors do;
    - SPruFT calibrates on 50 batches of one sequence, as the released code does.
    Decisions: proofs/decisions.md."""
    r, B = preset.lora_r, preset.batch_size
    budget = rows_matching_lora(preset.model, r)["options"]  # SPruFT at LoRA's trainable budget
    micro = {"accumulation": GMT_MICRO_BATCHES, "batch_size": B // GMT_MICRO_BATCHES}
    return [
        ("full", "full", {}),
        (f"lora-r{r}", "lora", {"r": r, "alpha": r}),
        (spruft_label(budget), "spruft", {**budget, "importance": "taylor", "calib_batches": 50,
                                          "calib_batch_size": 1}),
        (f"loradrop-r{r}", "loradrop", {"r": r, "alpha": r, "probe_lr": preset.peft_lr}),
        (f"adapeft-r{r}", "adapeft", {"budget": lora_trainable(preset.model, r), "lora_r": r, "lora_alpha": r,
                                       "probe_lr": preset.peft_lr}),
        ("gmt-d0.5", "gmt", {"drop_ratio": 0.5}, micro),
        ("gmt-d0.9", "gmt", {"drop_ratio": 0.9}, micro),
        *[(f"mgpp-s{round(100 * s)}", "mgpp", {"final_sparsity": s}, {"grad_clip": None}) for s in (0.5, 0.8, 0.9)],
        *[(f"magprune-s{round(100 * s)}", "magprune", {"final_sparsity": s}, {"grad_clip": None})
          for s in (0.5, 0.8, 0.9)],
    ]


def build_method(name, options, preset, steps=None):
    """make_method, telling a method that schedules by step count (MGPP) the run's length unless
    the options already say it."""
    options = dict(options)
    if "total_steps" in method_options(name) and options.get("total_steps") is None:
        options["total_steps"] = steps or preset.finetune_steps
    return make_method(name, **options)


def check_only(preset, only):
    """`only` (compare's --only) after checking each entry names a method or a label of compare's rows."""
    if only is None:
        return None
    rows = compare_runs(preset)
    known = sorted({row[1] for row in rows} | {row[0] for row in rows})  # (label, method, options[, settings])
    if not isinstance(only, (list, tuple)) or not only:
        raise bad_value("only", only, f"a non-empty list of methods or labels among {known}")
    for entry in only:
        if entry not in known:
            raise bad_value("only", entry, f"a method or a label of compare's rows: one of {known}")
    return list(only)


def mean_sd(values):
    """{"mean", "sd"} of a list of finite numbers (sd: the sample standard deviation; None for one value)."""
    if not isinstance(values, (list, tuple)) or not values:
        raise bad_type("values", values, "a non-empty list of numbers")
    values = [real_in("values", v, -math.inf, math.inf, True, True) for v in values]
    mean = math.fsum(values) / len(values)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "sd": sd}


def summarize(label, results):
    """One row of compare.json from the per-seed results of one label: what every seed shares
    (method, options, counts, memory), mean ± sd of the final losses and the sparsity, and the runs."""
    first = results[0]
    runs = [{k: r[k] for k in ("final", "history", "report", "sparsity", "base")} | {"seed": r["provenance"]["seed"]}
            for r in results]
    return {"label": label, "method": first["method"], "options": first["options"], "counts": first["counts"],
            "memory": first["memory"], "seeds": [r["seed"] for r in runs],
            "target": mean_sd([r["final"]["target"] for r in results]),
            "source": mean_sd([r["final"]["source"] for r in results]),
            "sparsity": mean_sd([r["sparsity"] for r in results]), "runs": runs}


def compare_files(seeds):
    """The names of compare's result, timings and plot for `seeds` seeds: compare.json,
    compare-timings.json, compare.png for one, compare-seeds<K>.* for K (tables of other seed counts
    never share a file)."""
    stem = "compare" if positive_int("seeds", seeds) == 1 else f"compare-seeds{seeds}"
    return f"{stem}.json", f"{stem}-timings.json", f"{stem}.png"


def compare(preset, workdir, data, backend="auto", dtype="float32", seed=0, progress=None, only=None, seeds=1,
            lr=None, comm=None, overwrite=False):
    """Run the rows of `compare_runs` (those `only` names; all by default) for seeds seed..seed+K-1
    on the base pretrained with `seed`, and write compare.json (compare_files; deterministic on the
    CPU: timings go to compare-timings.json) into the experiment directory; returns (compare dict,
    timings, folder). A run of some rows keeps the other rows of an earlier compare.json of the same
    experiment (the same header: preset, data, base, seeds, backend, dtype, lr; another is an error).

    Every row's run directory is resumed: a finished row of the same settings is reused, an
    unfinished one continues from its checkpoint, one of other settings is an error naming what
    differs; overwrite=True trains the rows again instead. Every output path is checked before the
    first row is trained.

    comm (a job of N ranks, `minisft compare --gpus N` or mpirun): a sweep, not data parallelism:
    the (row, seed) runs are spread over the ranks (`assign_jobs`, longest first by the timings of an
    earlier compare), each run single-process on its rank's device with the serial run's seed and
    base, so compare.json is the serial one (byte for byte on the CPU); rank 0 writes it."""
    only = check_only(preset, only)
    seeds = positive_int("seeds", seeds)
    lead = _lead(comm)
    folder = experiment_dir(workdir, preset, data, seed, lr, dtype)
    result_name, timings_name, _ = compare_files(seeds)
    path = folder / result_name
    rows_all = compare_runs(preset)
    jobs = [(label, name, options, overrides[0] if overrides else None, s)
            for label, name, options, *overrides in rows_all
            if not only or name in only or label in only for s in range(seed, seed + seeds)]
    if lead:
        ensure_writable_dir(folder, "workdir")
    with RunLock(folder, "experiment directory") if lead else nullcontext():
        if lead:
            remove_stale_temps(folder)
            for name in compare_files(seeds):
                check_output_file(folder / name, "workdir")
            for label, *_, s in jobs:
                check_run_dir(run_dir(workdir, preset, data, label, s, seed, lr, dtype), not overwrite, overwrite)
        base_model, _ = pretrained(preset, workdir, data, backend, dtype, seed, progress, comm, split=False)
        base = base_model.state_dict()
        out = {"preset": asdict(preset), "domains": data.domains, "provenance": provenance(preset, data, seed),
               "vocab_size": data.tokenizer.vocab_size, "backend": base_model.backend, "dtype": dtype, "lr": lr,
               "seeds": list(range(seed, seed + seeds))}
        earlier, earlier_base = on_rank0(comm, lambda: _earlier_rows(path, out)) if only else ({}, None)  # checked now
        earlier_timings = on_rank0(comm, lambda: _earlier_timings(folder / timings_name))
        costs = [earlier_timings.get(f"{job[0]}:seed{job[-1]}") for job in jobs]
        mine = assign_jobs(costs, world_size(comm))[0 if comm is None else comm.rank]
        done = []
        for j in mine:
            label, name, options, overrides, s = jobs[j]
            _, r = finetune(preset, workdir, data, build_method(name, options, preset), label, backend, dtype, s,
                            resume=not overwrite, progress=progress, lr=lr, base_seed=seed, train_overrides=overrides,
                            base=base, overwrite=overwrite)
            timing = {f"{label}:seed{s}": r["ms_per_step"]}
            timing.update({f"{label}:seed{s}:{k}": v for k, v in r["report"].items() if k.endswith("ms_per_step")})
            r["report"] = {k: v for k, v in r["report"].items() if not k.endswith("ms_per_step")}
            pool = {f"{label}:seed{s}:{k}": r["memory"].pop(k) for k in POOL_KEYS if k in r["memory"]}
            done.append([j, r, timing, pool])
        if world_size(comm) > 1:
            done = [item for part in comm.allgather_object(done) for item in part]
        by_job = {j: (r, timing, pool) for j, r, timing, pool in done}
        rows, timings, pools = {}, {}, {}
        for j in range(len(jobs)):
            label = jobs[j][0]
            rows.setdefault(label, []).append(by_job[j][0])
            timings.update(by_job[j][1])
            pools.update(by_job[j][2])
        rows = {label: summarize(label, results) for label, results in rows.items()}
        out.update({"base": first_base(rows), "minisft_version": __version__, "git_commit": git_commit()})
        if earlier and earlier_base != out["base"]:
            raise bad_path("--only", path, "a table of this experiment to add rows to; its base model's losses "
                           "differ from this one's (move it aside, or run every row (without --only))")
        order = [label for label, *_ in rows_all]
        merged = {**earlier, **rows}
        out["rows"] = [merged[label] for label in order if label in merged]
        if lead:
            atomic_write_json(path, out)
            timings_all = {**(earlier_timings if only else {}), **timings}
            atomic_write_json(folder / timings_name, {"ms_per_step": timings_all, "device_pool_bytes": pools})
    return out, timings, folder


# CuPy's pool bytes depend on what ran before in the process (another row, another rank's rows): they
# go to compare-timings.json with the timings, so compare.json is the same for any run order
POOL_KEYS = ("device_pool_used", "device_pool_held")


def assign_jobs(costs, n):
    """[[job indices of rank r] for r < n]: longest processing time first (Graham 1969): jobs by
    decreasing cost (ties: lower index first), each to the rank with the least load so far (ties:
    lower rank); a job of unknown cost (None) counts as the mean of the known ones (1 if none is
    known). The makespan is within 4/3 of the best assignment's; the numbers never depend on it."""
    n = positive_int("n", n)
    if not isinstance(costs, (list, tuple)):
        raise bad_type("costs", costs, "a list of job costs (non-negative numbers, or None for unknown)")
    costs = [None if c is None else real_in("costs", c, 0.0, math.inf, low_open=False, high_open=True) for c in costs]
    known = [c for c in costs if c is not None]
    default = sum(known) / len(known) if known else 1.0
    costs = [default if c is None else float(c) for c in costs]
    load, out = [0.0] * n, [[] for _ in range(n)]
    for j in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min(range(n), key=lambda r: (load[r], r))
        load[r] += costs[j]
        out[r].append(j)
    return [sorted(js) for js in out]


def first_base(rows):
    """The base model's losses (the same for every run of one experiment)."""
    return next(iter(rows.values()))["runs"][0]["base"]


COMPARE_HEADER = ("preset", "domains", "provenance", "vocab_size", "backend", "dtype", "lr", "seeds")


def _earlier_rows(path, current):
    """({label: row}, base losses) of the earlier compare table at `path` ({} when there is none), after checking it
    is a table of the same experiment as `current` (COMPARE_HEADER; its base model's losses are
    compared once the rows have them). A table that cannot be read, or of another experiment, is an
    error: its rows would otherwise be lost or mixed in."""
    if not os.path.lexists(path):
        return {}, None
    rerun = "move it aside, or run every row (without --only)"
    try:
        earlier = read_json(path)
    except MinisftError as e:
        raise bad_path("--only", path, f"a readable earlier table whose other rows are kept ({e.expected}); "
                       f"{rerun}") from None
    if not (isinstance(earlier, dict) and isinstance(earlier.get("rows"), list)
            and all(isinstance(row, dict) and isinstance(row.get("label"), str) for row in earlier["rows"])):
        raise bad_path("--only", path, f"a readable earlier table whose other rows are kept ({rerun})")
    header = json.loads(json.dumps({k: current[k] for k in COMPARE_HEADER}, default=str))
    differ = [k for k in COMPARE_HEADER if earlier.get(k) != header[k]]
    if differ:
        raise bad_path("--only", path, f"a table of this experiment to add rows to; it differs in {differ} "
                       f"({rerun})")
    return {row["label"]: row for row in earlier["rows"]}, earlier.get("base")


def _earlier_timings(path):
    try:
        return dict(read_json(path)["ms_per_step"])
    except (MinisftError, KeyError, TypeError, ValueError):
        return {}


def ms_per_step(timings, label):
    """The median over seeds of a label's ms/step (None when unknown)."""
    values = [v for k, v in timings.items() if re.fullmatch(rf"{re.escape(label)}:seed\d+", k) and v is not None]
    return float(np.median(values)) if values else None
