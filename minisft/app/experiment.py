"""Experiments on the embedded data: presets, the cached pretrained base, fine-tuning runs and the
side-by-side comparison that `minisft compare` prints.

Domains (minisft.data.stdlib): the base model is pretrained on the standard library's code without
its docstrings and comments ("code", the source domain) and fine-tuned on its English prose, those
docstrings and comments plus the documentation topics ("prose", the target domain), or on the
user's own text (`data`: files or folders, named in the tables by the first path's name). Each
domain has training, validation and test splits (minisft.data.corpus); every fine-tuning run reports
the target loss and, to measure forgetting, the source loss, on validation during training and on
test at the end. The tokenizer is trained on the training splits of code + target text, so other
`data` means another tokenizer, hence another base model: both are trained once and cached (keyed
by content).

Layout of a workdir:
    cache/bpe-*.json                the tokenizers (with their SHA-256)
    pretrain/<preset>-<key>.safetensors   a pretrained base; key: SHA-256 of what it depends on (the
                                    preset's model and pretraining settings, the tokenizer, the code
                                    corpus, the seed, the dtype), never of paths or fine-tuning settings
    runs/<experiment>/              one experiment: <preset>-<data>, then -seed<s> (the base's seed),
                                    -steps<n>, -float64 when not the defaults; <data> is "prose"
                                    or "data-" + 10 hex digits of the target corpus's fingerprint
        <label>/seed<s>/            one fine-tuning run at the preset's learning rate (minisft.training.train:
                                    log, checkpoint, model/, result)
        <label>/lr<x>/seed<s>/      one fine-tuning run at learning rate x (finetune --lr, compare's grid)
        compare.json, compare-timings.json, compare.png    the comparison of one seed; with K seeds
                                    compare-seeds<K>.json, ... (minisft.app.compare.compare_files)
        adapeft-front<options>.json/.png    the front; <options> names the options that are not the
                                    defaults (minisft.app.adapeft_front.front_name)
        compare-grid<h>/            compare's files for a learning-rate grid other than the preset's
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

import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from ..data.batches import corpus_streams, validation_batches
from ..training.checkpoint import arrays_digest, load_checkpoint, save_checkpoint
from ..core.config import GPTConfig
from ..data.corpus import load_corpus
from ..distributed.data_parallel import world_size
from ..distributed.rank0 import broadcast_arrays, on_rank0
from ..core.backend import to_numpy
from ..core.errors import MinisftError, bad_type, bad_value, foreign_file, nonnegative_int, positive_int
from ..core.fileio import (as_path, check_name, check_output_file, ensure_writable_dir, read_regular_file,
    remove_stale_temps, sha256_hex)
from ..model.interop import HF_CONFIG, HF_WEIGHTS, load_hf_gpt2
from ..methods import FullFineTune
from ..model.gpt import GPT
from ..core.progress import note, phase
from ..data.tokenizer import N_BYTES, BPETokenizer, build_tokenizer
from ..training.train import Task, TrainConfig, check_run_dir, evaluate, train

PRETRAIN_RECIPE = "minisft-pretrain-v2"


@dataclass(frozen=True)
class Preset:
    """A model, its data caps and its schedules. finetune_lr / peft_lr: the fine-tuning learning rate
    of methods that train base tensors / of adapter methods (`finetune`'s default); lr_grid: compare's
    grid per family, ((family, (lr, ...)), ...), empty for those two rates alone; prune_every: Δt
    of compare's pruning rows in steps (None: MGPP's default, 1% of the steps)."""

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
    lr_grid: tuple = ()
    prune_every: int | None = None

    def lr_grid_dict(self):
        """{"full": rates, "peft": rates}: lr_grid, or the preset's two rates alone."""
        return {fam: tuple(v) for fam, v in self.lr_grid} if self.lr_grid else \
            {"full": (self.finetune_lr,), "peft": (self.peft_lr,)}


# Sizes (the study and gpt2 presets; measured on Python 3.11's standard library, docs/study.md):
# prose 4.1 M characters (train 3.5 M), code 7.0 M characters (train 5.7 M).
PRESETS = {
    "tiny": Preset("tiny", GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=64),
                   max_chars=1_000_000, batch_size=16, pretrain_steps=300, pretrain_lr=3e-3,
                   finetune_steps=60, finetune_lr=1e-3, peft_lr=1e-2, eval_batches=4, lora_r=4),
    "small": Preset("small", GPTConfig(vocab_size=1024, block_size=64, n_layer=4, n_head=4, n_embd=128),
                    max_chars=3_000_000, batch_size=16, pretrain_steps=600, pretrain_lr=2e-3,
                    finetune_steps=150, finetune_lr=1e-3, peft_lr=1e-2, eval_batches=8, lora_r=8),
    "study": Preset("study", GPTConfig(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384),
                    max_chars=None, batch_size=16, pretrain_steps=1600, pretrain_lr=1e-3,
                    finetune_steps=600, finetune_lr=3e-4, peft_lr=3e-3, eval_batches=16, lora_r=8,
                    lr_grid=(("full", (1e-4, 3e-4, 1e-3)), ("peft", (1e-3, 3e-3, 1e-2))), prune_every=10),
    "gpt2": Preset("gpt2", GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
                   max_chars=None, batch_size=8, pretrain_steps=2000, pretrain_lr=6e-4,
                   finetune_steps=300, finetune_lr=1e-4, peft_lr=1e-3, eval_batches=8, lora_r=8,
                   lr_grid=(("full", (3e-5, 1e-4, 3e-4)), ("peft", (3e-4, 1e-3, 3e-3))), prune_every=10),
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
    code: tuple  # (train, val, test) streams
    target: tuple
    domains: dict  # {"target": name for tables, "source": "code"}
    fingerprints: dict  # {"target": corpus SHA-256, "source": corpus SHA-256, "tokenizer": SHA-256}
    key: str  # "prose", or "data-" + 10 hex digits of the target corpus's fingerprint
    corpora: tuple = None  # (code corpus, target corpus): to tokenize them again for an --init model
    sizes: dict = None  # {domain: {"chars": {split: n}, "tokens": {split: n}}, "overlap": ...}


def data_name(paths):
    """The name tables give user data: the first path's file or folder name (+N more paths)."""
    if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths) \
            or not all(os.fspath(p) for p in paths):
        raise bad_type("paths", paths, "a non-empty list of paths")
    stem = Path(paths[0]).stem or Path(paths[0]).resolve().name or "data"
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", stem)[:24]
    return name + (f"+{len(paths) - 1}" if len(paths) > 1 else "")


def build_data(preset, workdir, data=None, encoding="utf-8", progress=None):
    """Corpora, the cached tokenizer and token streams for a preset (target = prose or `data`)."""
    workdir = ensure_writable_dir(workdir, "workdir")
    if data is None:
        paths = None
    elif isinstance(data, (str, os.PathLike)):
        paths = [data]
    elif isinstance(data, (list, tuple)) and data:
        paths = list(data)
    else:
        raise bad_type("data", data, "None (the prose corpus), or a path or non-empty list of paths to text")
    target_what = "their docstrings, comments and documentation topics (prose)" if paths is None else f"your data {paths}"
    phase(f"reading the code corpus (the standard library's sources without their prose) and {target_what}", progress)
    code = load_corpus("code", max_chars=preset.max_chars)
    target = load_corpus("prose" if paths is None else paths, max_chars=preset.max_chars, encoding=encoding)
    phase(f"tokenizer: byte-level BPE, vocabulary {preset.model.vocab_size}, on code + "
          f"{'prose' if paths is None else 'your data'} (trained once, then cached in {workdir / 'cache'})", progress)
    tok = build_tokenizer([code, target], vocab_size=preset.model.vocab_size, cache_dir=workdir / "cache")
    cfg = replace(preset.model, vocab_size=tok.vocab_size)
    fingerprints = {"source": code.fingerprint(), "target": target.fingerprint(), "tokenizer": tok.fingerprint()}
    streams = {"code": corpus_streams(code, tok), "target": corpus_streams(target, tok)}
    out = Data(tok, cfg, streams["code"], streams["target"],
               {"target": "prose" if paths is None else data_name(paths), "source": "code"}, fingerprints,
               "prose" if paths is None else f"data-{fingerprints['target'][:10]}", (code, target),
               corpus_sizes(code, target, streams))
    origin = {"code": "the code corpus", "target": "the prose corpus" if paths is None else f"--data {paths}"}
    need = preset.batch_size * (preset.model.block_size + 1)
    for domain, split_streams in (("code", out.code), ("target", out.target)):  # fail now, not after pretraining
        for split, stream in zip(("training", "validation", "test"), split_streams):
            if len(stream) < need:
                raise MinisftError(f"data: {origin[domain]}: its {split} split holds {len(stream)} tokens: expected at "
                                   f"least {need} (one batch: batch_size {preset.batch_size} x (block_size "
                                   f"{preset.model.block_size} + 1)); give more text", "data", paths,
                                   f"at least {need} tokens in each split")
    return out


OVERLAP_NGRAM = 8  # tokens: the window of corpus_sizes' overlap measure


def corpus_sizes(code, target, streams):
    """Characters and tokens of every split of both domains, and their overlap: the share of the
    target test split's distinct OVERLAP_NGRAM-token windows that also occur in the source training
    split (text the base model saw), and the same for the target training split."""
    out = {}
    for domain, corpus in (("code", code), ("target", target)):
        out[domain] = {"chars": corpus.chars(), "tokens": {split: len(s) for split, s in zip(("train", "val", "test"),
                                                                                             streams[domain])}}
    seen = _ngrams(streams["code"][0])
    out["overlap"] = {"ngram": OVERLAP_NGRAM, **{f"target_{split}_in_code_train": _share_in(_ngrams(stream), seen)
                                                for split, stream in (("test", streams["target"][2]),
                                                                      ("train", streams["target"][0]))}}
    return out


def _ngrams(stream):
    ids = np.asarray(to_numpy(stream.ids), dtype=np.int64)
    if ids.size < OVERLAP_NGRAM:
        return set()
    windows = np.lib.stride_tricks.sliding_window_view(ids, OVERLAP_NGRAM)
    return set(map(bytes, np.ascontiguousarray(windows).view(f"V{8 * OVERLAP_NGRAM}").ravel()))


def _share_in(grams, seen):
    return len(grams & seen) / len(grams) if grams else 0.0


def _n_eval_batches(stream, preset):
    fit = len(stream) // ((preset.model.block_size + 1) * preset.batch_size)
    return max(1, min(preset.eval_batches, fit))


def make_task(target, preset, source=None, comm=None):
    """The Task of training on target[0] (streams (train, val, test) of a domain), evaluated on the
    validation and test splits of `target` and of `source` (forgetting; None: no source batches)."""
    B, T = preset.batch_size, preset.model.block_size

    def batches(stream):
        return validation_batches(stream, B, T, _n_eval_batches(stream, preset))

    return Task(train_ids=target[0], val_target=batches(target[1]), test_target=batches(target[2]),
                val_source=[] if source is None else batches(source[1]),
                test_source=[] if source is None else batches(source[2]), batch_size=B, block_size=T, comm=comm)


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


def is_lead(comm):
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
    lead = is_lead(comm)
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
    task = make_task(data.code, preset, comm=comm if split else None)
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


def experiment_name(preset, data_key, base_seed=0, dtype="float32", init=None):
    """runs/<this>: the preset and data, then what differs from the defaults (module docstring)."""
    name = f"{preset.name}-{data_key}"
    if base_seed:
        name += f"-seed{base_seed}"
    if preset.finetune_steps != PRESETS.get(preset.name, preset).finetune_steps:
        name += f"-steps{preset.finetune_steps}"
    if str(np.dtype(dtype)) != "float32":
        name += f"-{np.dtype(dtype)}"
    if init is not None:
        name += f"-init{init}"
    return name


def experiment_dir(workdir, preset, data, base_seed=0, dtype="float32", init=None):
    return Path(workdir) / "runs" / experiment_name(preset, data.key, base_seed, dtype, init)


def run_dir(workdir, preset, data, label, seed=0, base_seed=None, lr=None, dtype="float32", init=None):
    """runs/<experiment>/<label>/seed<seed>, or runs/<experiment>/<label>/lr<lr>/seed<seed> for a
    learning rate other than the preset's (init: init_key of an --init folder)."""
    seed = nonnegative_int("seed", seed)
    base_seed = seed if base_seed is None else nonnegative_int("base_seed", base_seed)
    folder = experiment_dir(workdir, preset, data, base_seed, dtype, init) / check_name("label", label)
    return (folder if lr is None else folder / f"lr{lr!r}") / f"seed{seed}"


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
    _, task = apply_train_overrides(cfg, make_task(data.target, preset, data.code, comm), overrides)
    base_eval = {"val": {"target": evaluate(model, task.val_target, comm), "source": evaluate(model, task.val_source, comm)},
                 "test": {"target": evaluate(model, task.test_target, comm),
                          "source": evaluate(model, task.test_source, comm)}}
    phase(f"fine-tuning {label} (seed {seed}): {cfg.steps} steps in {folder}", progress if is_lead(comm) else False)
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
