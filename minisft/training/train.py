"""The generic trainer: drives any method (minisft.methods) over next-token batches.

One step:  (1) gradients averaged over `accumulation` micro-batches;  (2) a non-finite loss stops
the run (NonFiniteLossError naming the step);  (3) the method's `transform_grads`;  (4) global-norm
clipping (a non-finite gradient norm stops the run);  (4b) the method's `transform_grads_after_clip`
(terms the clipping must not scale: MGPP's prior);  (5) the optimizer step with the method's
`optimizer_masks`;  (6) the method's `after_step`.  Evaluation every `eval_every` steps on fixed
validation batches of the target domain and (for forgetting) the source domain (a non-finite
evaluation stops the run too); a JSON-lines log; checkpoints.

Determinism: one numpy Generator seeded with `seed` feeds the method's selection and then every
training batch. A checkpoint carries the trainable tensors, the optimizer state, the method's state,
the Generator's state and the histories, so `resume=True` continues bit-identically on the CPU.

A run directory (`workdir`) holds, while a run owns it (`fileio.RunLock`: a second run on it is an
error):
    log.jsonl                    one JSON record per step (strict JSON: no NaN)
    checkpoint.safetensors       the last checkpoint, while the run is unfinished
    model/trained.safetensors    every trainable tensor (adapter parameters, trained base tensors)
    model/merged.safetensors     the base model's state dict with the adapters merged (a plain GPT:
                                 `GPT.from_state_dict` loads it; minisft names, (out, in) weights)
    model/manifest.json          what produced it: method and options, configurations, provenance
                                 (preset, data and tokenizer fingerprints from the caller), seed,
                                 minisft version and git commit
    result.json                  the result (written last: a run with a result.json is finished)
Checkpoints: every `checkpoint_every` steps, or by default (None) whenever the training time since
the last checkpoint reaches 100 times what the last checkpoint took to write, so after the first
(at 5% of the steps) they cost at most 1% of the training time (measured 2026-11-27 on a 2-core
CPU, `small` preset: 0.8% of a full fine-tuning run's wall time, 0.7% of a LoRA run's); 0 writes none. A checkpoint is a safetensors file
with a SHA-256 of its content (`checkpoint.py`); on resume every tensor's name, shape and dtype and
every metadata field are checked, and a checkpoint of another run (another base model, data,
method, option or configuration: everything but `checkpoint_every`) is refused, naming the fields
that differ. A run that stops on a non-finite value writes no result.

Reruns (`check_run_dir`, run before any work, by the trainer and by its callers before theirs): a
run directory holding an earlier run (a result, a checkpoint, a log or a model) is never reused
silently. `resume=True` continues it from its checkpoint, or returns a finished run's result after
checking that its model files are present and are its own; `overwrite=True` deletes it and starts
afresh, with a note; without either the trainer refuses, naming both, and deletes nothing. Every
file of the directory is checked first (a directory, a FIFO or a device where a file goes, a name
too long: an error before step 1). On resume the log is written again from the checkpoint's
history, so it holds exactly the steps the run has done, whatever happened to it (deleted,
truncated, edited). The model files carry the run's identity (a digest of its fingerprint) and the
base model's digest in their manifest, so `minisft export` can tell they belong together.

Data parallel (`Task.comm`, a minisft.distributed Communicator of N > 1 ranks): every rank draws the
same global batch from the same Generator and computes its rows' share (minisft.distributed.
data_parallel); ONE bucketed all-reduce of the trainable gradients and the loss per optimizer step,
after the accumulation and before (3): so the finiteness checks, `transform_grads` (GMT's mask on
the global gradient), the clipping (of the global norm), `transform_grads_after_clip` (MGPP's prior
added once) and the optimizer see the single process's numbers on every rank. Evaluation batches are spread over the ranks. Only rank 0 touches
the run directory (lock, log, checkpoints, model, result); what it reads on resume reaches the others
by broadcast, so the ranks need no shared filesystem and a checkpoint resumes with any number of
ranks (it holds no per-rank state; the global batch is part of the task's fingerprint). After the
first step and at the end the ranks check that their states are bit-identical.
"""

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..model.adapters import adapter_delta_weights
from ..core.backend import rng as make_rng
from ..core.backend import to_numpy
from ..data.batches import TokenStream, random_windows
from ..model.budgets import count_params
from .checkpoint import arrays_digest, check_arrays, checkpoint_meta, load_checkpoint, save_checkpoint
from ..distributed import Communicator
from ..distributed.data_parallel import (check_replicas, local_loss_and_grads, loss_and_grads_overlapped,
    mean_batch_loss, reduce_loss_and_grads, world_size)
from ..distributed.rank0 import broadcast_arrays, on_rank0
from ..core.errors import (CheckpointError, MinisftError, NonFiniteLossError, bad_type, bad_value, boolean,
    nonnegative_int, positive_int, real_in, require)
from ..core.fileio import (RunLock, append_line, as_path, atomic_write_json, atomic_write_text, check_output_file,
    ensure_writable_dir, owned_folder, read_json, remove_stale_temps, replaced_folder)
from ..model.memory import memory_report
from ..model.gpt import GPT, linear_layer_names
from .optim import clip_grad_norm, lr_at, make_optimizer
from ..core.progress import Progress, mode_of, note
from ..core.version import __version__, git_commit

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")
CHECKPOINT_COST = 0.01  # the default policy's bound on checkpoint time / training time (after the first)


EVAL_SPLITS = ("val_target", "val_source", "test_target", "test_source")


@dataclass
class Task:
    """Training stream and fixed evaluation batches: validation batches (evaluated during training,
    for choices) and test batches (evaluated once, at the end, for the reported numbers) of the
    target domain and of the source domain (forgetting). `comm`: the Communicator of a data-parallel
    run (None: one process); `batch_size` is the GLOBAL batch."""

    train_ids: object
    val_target: list
    val_source: list = field(default_factory=list)
    batch_size: int = 16
    block_size: int = 64
    comm: object = None
    test_target: list = field(default_factory=list)
    test_source: list = field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.train_ids, TokenStream):
            self.train_ids = TokenStream(self.train_ids, "train_ids")
        for split in EVAL_SPLITS:
            if not isinstance(getattr(self, split), (list, tuple)):
                raise bad_type(split, getattr(self, split), "a list of (x, y) evaluation batches")
        self.batch_size = positive_int("batch_size", self.batch_size)
        self.block_size = positive_int("block_size", self.block_size)
        if self.comm is not None and not isinstance(self.comm, Communicator):
            raise bad_type("comm", self.comm, "None or a minisft.distributed Communicator")

    def sample(self, generator):
        return random_windows(self.train_ids, self.batch_size, self.block_size, generator)

    def digest(self):
        """SHA-256 (hex) of the training stream and every validation batch: equal digests, equal data."""
        arrays = {"train": self.train_ids.ids}
        for split in EVAL_SPLITS:
            for i, (x, y) in enumerate(getattr(self, split)):
                arrays[f"{split}/{i}/x"], arrays[f"{split}/{i}/y"] = x, y
        return arrays_digest({k: to_numpy(v) for k, v in arrays.items()}, {"B": self.batch_size, "T": self.block_size})


@dataclass
class TrainConfig:
    """Every field is checked on construction (a clear error naming the field, the value and what is
    expected), so a bad configuration fails before any data is read or any step is taken.

    grad_clip: the global-norm bound, or None for no clipping. checkpoint_every: None for the
    default policy (module docstring), 0 for no checkpoints, N for every N steps.
    """

    steps: int = 100
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup: int = 0
    gamma: float = 0.85
    step_every: int = 1
    grad_clip: float | None = 1.0
    final_lr_fraction: float = 0.0
    accumulation: int = 1
    eval_every: int = 50
    checkpoint_every: int | None = None
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "step_every", "accumulation", "eval_every"):
            positive_int(name, getattr(self, name))
        for name in ("warmup", "seed"):
            nonnegative_int(name, getattr(self, name))
        if self.checkpoint_every is not None:
            nonnegative_int("checkpoint_every", self.checkpoint_every)
        real_in("lr", self.lr, 0.0, math.inf, low_open=True, high_open=True)
        real_in("weight_decay", self.weight_decay, 0.0, math.inf, low_open=False, high_open=True)
        real_in("gamma", self.gamma, 0.0, 1.0, low_open=True, high_open=False)
        real_in("final_lr_fraction", self.final_lr_fraction, 0.0, 1.0, low_open=False, high_open=False)
        if self.grad_clip is not None:
            real_in("grad_clip", self.grad_clip, 0.0, math.inf, low_open=True, high_open=True)
        require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        require(self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {SCHEDULES}")
        require(self.schedule != "cosine" or self.warmup < self.steps, "warmup", self.warmup,
                f"fewer steps than steps={self.steps} for the cosine schedule")


def evaluate(model, batches, comm=None):
    """Mean loss over fixed (x, y) batches (None for no batches); comm: spread over the ranks."""
    _check_model(model)
    if not isinstance(batches, (list, tuple)):
        raise bad_type("batches", batches, "a list of (x, y) batches")
    return mean_batch_loss(model, batches, comm)


def _check_model(model):
    if not isinstance(model, GPT):
        raise bad_type("model", model, "a minisft.GPT")


HOOKS = ("check_config", "prepare", "transform_grads", "transform_grads_after_clip", "optimizer_masks", "after_step",
         "report", "options", "state_arrays", "load_state_arrays")  # the protocol of minisft.methods.base


def _json_ready(arg, value):
    """`value` (a dict or None) after checking it is strict JSON (no NaN or infinities)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_type(arg, value, "a dict of JSON-ready facts")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise bad_value(arg, value, f"JSON-ready facts with finite numbers ({e})") from None
    return value


def _fingerprint(model, method, cfg, base_digest, task_digest, provenance):
    """What a checkpoint must match to be resumed: everything that shapes the run but how often it
    checkpoints."""
    train_cfg = {k: v for k, v in asdict(cfg).items() if k != "checkpoint_every"}
    return {"model": model.config.to_dict(), "dtype": model.dtype.name, "method": method.name,
            "method_options": method.options(), "train": train_cfg, "base_model": base_digest,
            "task": task_digest, **(provenance or {})}


def _fingerprint_differences(saved, current, prefix=""):
    """["field: <saved> then, <current> now"] for every field (nested dicts: "train.lr") that differs."""
    out = []
    saved = saved if isinstance(saved, dict) else {}
    for key in sorted(set(saved) | set(current), key=str):
        a, b = saved.get(key, "(absent)"), current.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _fingerprint_differences(a, b, f"{prefix}{key}.")
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append(f"{prefix}{key}: {_short(a)} then, {_short(b)} now")
    return out


def _short(value, limit=40):
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse_other_run(what, path, saved, current):
    diff = _fingerprint_differences(saved, current)
    if diff:
        expected = (f"{what} of the same run, but it differs: {'; '.join(diff)} (--overwrite (overwrite=True) "
                    "replaces it, or choose another --label)")
        raise CheckpointError(f"resume={str(path)!r}: expected {expected}", "resume", str(path), expected)


def _checkpoint_arrays(model, opt, method):
    arrays = {f"param/{k}": v for k, v in model.trainable_params().items()}
    arrays.update({f"opt/{k}": v for k, v in opt.state_arrays().items()})
    arrays.update({f"method/{k}": v for k, v in method.state_arrays().items()})
    return arrays


def _check_meta(path, meta, cfg):
    """The checkpoint's metadata fields, checked: step in [1, steps], a PCG64 state, histories of
    the right lengths."""
    step = meta.get("step")
    ok = isinstance(step, int) and not isinstance(step, bool) and 1 <= step <= cfg.steps
    if not ok:
        raise CheckpointError(f"checkpoint={str(path)!r}: step={step!r}: expected an integer in [1, {cfg.steps}]")
    rng_state = meta.get("rng")
    if not (isinstance(rng_state, dict) and rng_state.get("bit_generator") == "PCG64"
            and isinstance(rng_state.get("state"), dict)):
        raise CheckpointError(f"checkpoint={str(path)!r}: rng: expected a numpy PCG64 generator state")
    history = meta.get("history")
    if not (isinstance(history, dict) and isinstance(history.get("train"), list) and isinstance(history.get("eval"), list)
            and len(history["train"]) == step and [r.get("step") for r in history["train"]] == list(range(1, step + 1))):
        raise CheckpointError(f"checkpoint={str(path)!r}: history: expected one training record per step 1..{step}")


def _check_optimizer_state(path, opt_arrays, params):
    """Optimizer state for exactly the trainable tensors, the same entries for each, each entry of
    its tensor's shape and dtype (the step count: a 0-d integer)."""
    by_name = {}
    for key, v in opt_arrays.items():
        name, k = key.rsplit(".", 1)
        by_name.setdefault(name, {})[k] = v
    if set(by_name) != set(params):
        missing, unexpected = sorted(set(params) - set(by_name)), sorted(set(by_name) - set(params))
        raise CheckpointError(f"checkpoint={str(path)!r}: optimizer state: missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}: expected the state of every trainable tensor")
    keys = {frozenset(d) for d in by_name.values()}
    if len(keys) != 1 or "step" not in next(iter(keys)):
        raise CheckpointError(f"checkpoint={str(path)!r}: optimizer state: expected the same entries, step "
                              f"included, for every tensor (found {sorted(map(sorted, keys))[:2]})")
    expected = {}
    for name, entries in by_name.items():
        for k in entries:
            p = params[name]
            expected[f"{name}.{k}"] = ((), np.dtype(np.int64)) if k == "step" else (tuple(p.shape), np.dtype(p.dtype.name))
    check_arrays(path, "optimizer state", opt_arrays, expected)


def _load_on_rank0(comm, path):
    """(arrays, meta) of the checkpoint at `path`, read by rank 0 and broadcast."""
    read = {}

    def load():
        read["arrays"], meta = load_checkpoint(path)
        return meta

    meta = on_rank0(comm, load)
    return broadcast_arrays(comm, read.get("arrays")), meta


def _restore(model, opt, method, path, fingerprint, cfg, comm=None):
    arrays, meta = _load_on_rank0(comm, path)
    _refuse_other_run("a checkpoint", path, meta.get("fingerprint"), fingerprint)
    _check_meta(path, meta, cfg)
    params = model.trainable_params()
    saved = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    check_arrays(path, "trainable tensors", saved,
                 {k: (tuple(v.shape), np.dtype(v.dtype.name)) for k, v in params.items()})
    opt_arrays = {k[len("opt/"):]: v for k, v in arrays.items() if k.startswith("opt/")}
    _check_optimizer_state(path, opt_arrays, params)
    for k, v in saved.items():
        params[k][...] = model.xp.asarray(v)
    opt.load_state_arrays({k: (v if v.ndim == 0 else model.xp.asarray(v)) for k, v in opt_arrays.items()})
    method.load_state_arrays({k[7:]: model.xp.asarray(v) for k, v in arrays.items() if k.startswith("method/")})
    return meta


class _CheckpointClock:
    """When to write the next checkpoint (module docstring): every `every` steps, never (0), or by
    default when the training time since the last one reaches (1/CHECKPOINT_COST) x its write time."""

    def __init__(self, every, steps):
        self.every, self.steps = every, steps
        self.first = max(1, steps // 20)
        self.train_seconds, self.write_seconds = 0.0, None

    def due(self, step, step_seconds):
        """After step `step` (1-based) that took `step_seconds`."""
        if step >= self.steps:  # the run's end saves the model: no checkpoint needed
            return False
        if self.every is not None:
            return self.every > 0 and step % self.every == 0
        self.train_seconds += step_seconds
        if self.write_seconds is None:
            return step >= self.first
        return self.train_seconds * CHECKPOINT_COST >= self.write_seconds

    def written(self, seconds):
        self.train_seconds, self.write_seconds = 0.0, seconds


def _finite(what, value, step, where):
    if value is not None and not math.isfinite(value):
        raise NonFiniteLossError(f"{what}={value} at step {step}: expected a finite value; the run stopped. {where}")


def train(model, method, task, cfg, workdir=None, resume=False, progress=None, label="train", provenance=None,
          record=None, overwrite=False):
    """Fine-tune `model` with `method` on `task`; returns a JSON-ready result dict.

    method: any object with every hook of minisft.methods.base's protocol (HOOKS; a Method subclass
        or not): one that lacks a hook is refused before any work, and `method.check_config(model.
        config)` runs before `prepare`.
    workdir: the run directory (module docstring), or None to keep nothing on disk.
    resume: continue the run in `workdir` from its last checkpoint; a finished run (its result.json
        of this very configuration, with its model files) is returned as it is, with a note, and
        nothing is changed.
    overwrite: delete an earlier run in `workdir` and start afresh. Without resume or overwrite, a
        `workdir` holding an earlier run is an error (module docstring: reruns).
    provenance: JSON-ready facts the caller knows and the trainer cannot (preset, data and tokenizer
        fingerprints): written into the manifest and the result, and part of what a resumed
        checkpoint must match.
    record: JSON-ready facts added to the result as they are (the caller's label, the base model's
        losses).
    """
    _check_model(model)
    missing = [h for h in HOOKS if not callable(getattr(method, h, None))]
    if missing:
        raise bad_type("method", method, f"a minisft method (minisft.methods.base's protocol; it lacks {missing})")
    method.check_config(model.config)  # options that depend on the model's shape, before any work
    if not isinstance(task, Task):
        raise bad_type("task", task, "a minisft.training.train.Task")
    if not isinstance(cfg, TrainConfig):
        raise bad_type("cfg", cfg, "a minisft.training.train.TrainConfig")
    require(task.batch_size >= world_size(task.comm), "batch_size", task.batch_size,
            f"at least one row per rank: a global batch of >= {world_size(task.comm)} rows")
    resume, overwrite = boolean("resume", resume), boolean("overwrite", overwrite)
    require(not (resume and overwrite), "overwrite", overwrite, "False with resume=True (continue, or replace: one)")
    require(not (resume or overwrite) or workdir is not None, "resume" if resume else "overwrite", True,
            "a workdir to resume or overwrite")
    mode_of(progress)
    _check_schedule_length(method, cfg, progress)
    provenance, record = _json_ready("provenance", provenance), _json_ready("record", record)
    if workdir is None:
        return _train(model, method, task, cfg, None, False, False, progress, label, provenance, record)
    if not _lead(task.comm):  # rank 0 owns the run directory
        return _train(model, method, task, cfg, workdir, resume, overwrite, progress, label, provenance, record)
    workdir = ensure_writable_dir(workdir, "workdir")
    with RunLock(workdir):
        for folder in (workdir, workdir / "model"):
            remove_stale_temps(folder)
        check_run_dir(workdir, resume, overwrite)
        return _train(model, method, task, cfg, workdir, resume, overwrite, progress, label, provenance, record)


RUN_FILES = ("result.json", "checkpoint.safetensors", "log.jsonl")  # with model/: an earlier run's traces
MODEL_FILES = ("trained.safetensors", "merged.safetensors", "manifest.json")


def check_run_dir(workdir, resume=False, overwrite=False):
    """Before any work (module docstring, reruns): every file a run writes in `workdir` can be
    written there, and an earlier run in it is either to be resumed, to be overwritten, or an error
    naming both options. Returns a description of the earlier run ("" when there is none)."""
    workdir = as_path("workdir", workdir)
    resume, overwrite = boolean("resume", resume), boolean("overwrite", overwrite)
    for name in (*RUN_FILES, ".lock"):
        check_output_file(workdir / name, "workdir")
    owned_folder(workdir / "model", "manifest.json", "workdir")
    for name in MODEL_FILES:
        check_output_file(workdir / "model" / name, "workdir")
    earlier = earlier_run(workdir)
    if earlier and not (resume or overwrite):
        expected = (f"a new run directory; it holds {earlier}: continue it with --resume (resume=True), replace it "
                    "with --overwrite (overwrite=True), or choose another --label")
        raise MinisftError(f"workdir={str(workdir)!r}: expected {expected}", "rerun", str(workdir), expected)
    return earlier


def earlier_run(workdir):
    """What an earlier run left in `workdir`, in words ("" when nothing): a finished run, an
    unfinished one with its checkpoint's step, a log without a checkpoint, or a model only."""
    workdir = as_path("workdir", workdir)
    if os.path.lexists(workdir / "result.json"):
        return "a finished run (result.json)"
    if os.path.lexists(workdir / "checkpoint.safetensors"):
        step = _checkpoint_step(workdir / "checkpoint.safetensors")
        return f"an unfinished run (its checkpoint{'' if step is None else f' at step {step}'})"
    log = workdir / "log.jsonl"
    if os.path.lexists(log) and (not log.is_file() or log.stat().st_size > 0):
        return "an unfinished run without a checkpoint (log.jsonl)"
    if os.path.lexists(workdir / "model") and any((workdir / "model").iterdir()):
        return "the model of an earlier run (model/)"
    return ""


def _checkpoint_step(path):
    """The step of the checkpoint at `path` (None when its header cannot be read)."""
    try:
        step = checkpoint_meta(path).get("step")
    except MinisftError:
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _check_schedule_length(method, cfg, progress):
    """A method that schedules by the run's length (MGPP, magnitude pruning: `total_steps`) told a
    longer run than it gets does not finish its schedule (nor start it, when it starts after the
    run's last step): a note says so (a short run of a long schedule can be meant, to measure a
    step; the command line refuses it)."""
    total = method.options().get("total_steps")
    if total is not None and total > cfg.steps and progress is not False:
        note(f"{method.name}: total_steps={total} is beyond the run's {cfg.steps} steps: its schedule, a fraction of "
             "total_steps, will not finish within the run (its sparsity stays below final_sparsity, 0 if pruning "
             "starts after the last step)")


def _lead(comm):
    """Whether this process writes: the only process, or rank 0 of a data-parallel run."""
    return world_size(comm) == 1 or comm.rank == 0


def _train(model, method, task, cfg, workdir, resume, overwrite, progress, label, provenance, record):
    comm, lead = task.comm, _lead(task.comm)
    progress = progress if lead else False  # rank 0 reports
    base_digest = arrays_digest(model.state_dict())
    fingerprint = _fingerprint(model, method, cfg, base_digest, task.digest(), provenance)
    if world_size(comm) > 1:  # before the first collective whose sizes depend on the settings
        check_replicas(comm, arrays_digest({}, fingerprint), "the run's settings (model, method, options, "
                       "configuration, data)")
    generator = make_rng(cfg.seed)
    history = {"train": [], "eval": []}
    start = 0
    ckpt = log_path = result_path = None
    if workdir is not None:
        workdir = Path(workdir)
        ckpt, log_path, result_path = workdir / "checkpoint.safetensors", workdir / "log.jsonl", workdir / "result.json"
    if overwrite and lead:
        _delete_earlier_run(workdir, label)
    if resume:
        finished = on_rank0(comm, lambda: _finished_result(workdir, fingerprint))
        if finished is not None:
            if lead:
                note(f"{label}: the run in {str(workdir)!r} is finished ({cfg.steps} steps); nothing to do")
            return finished
    method.prepare(model, task, generator)
    opt = make_optimizer(cfg.optimizer, cfg.lr, cfg.weight_decay)
    if resume:
        if on_rank0(comm, ckpt.exists):
            meta = _restore(model, opt, method, ckpt, fingerprint, cfg, comm)
            start, history = meta["step"], meta["history"]
            generator.bit_generator.state = meta["rng"]
        elif lead:
            note(f"{label}: no checkpoint in {str(workdir)!r} yet; starting from step 0")
    if not lead:
        ckpt = log_path = result_path = None  # rank 0 writes
    if log_path is not None:
        atomic_write_text(log_path, "".join(_log_line(rec, history["eval"]) + "\n" for rec in history["train"]))
    bar = Progress(cfg.steps, label, progress, start)
    clock = _CheckpointClock(cfg.checkpoint_every, cfg.steps)
    tokens_per_step = cfg.accumulation * task.batch_size * task.block_size
    step_times, grads, peak, reduced = [], {}, None, None
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        loss, grads, reduced = _step_grads(model, task, generator, cfg.accumulation)
        last = (f"Last checkpoint: {str(ckpt)!r} (--resume continues from it)." if ckpt is not None and ckpt.exists()
                else "No checkpoint.")
        _finite("loss", loss, step + 1, f"{last} No result was written.")
        grads = method.transform_grads(model, grads, step)
        grad_norm = clip_grad_norm(grads, cfg.grad_clip)
        _finite("gradient norm", grad_norm, step + 1, f"{last} No result was written.")
        grads = method.transform_grads_after_clip(model, grads, step)
        lr = lr_at(step, cfg.lr, cfg.schedule, cfg.steps, cfg.warmup, cfg.gamma, cfg.step_every, cfg.final_lr_fraction)
        opt.step(model.trainable_params(), grads, masks=method.optimizer_masks(model), lr=lr, check_finite=False)
        method.after_step(model, step)
        step_times.append(time.perf_counter() - t0)
        if peak is None:
            peak = memory_report(model, grads, opt)
            _check_replicas(comm, model, opt, method, generator, step + 1)
        rec = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm}
        history["train"].append(rec)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            ev = {"step": step + 1, "target": evaluate(model, task.val_target, comm),
                  "source": evaluate(model, task.val_source, comm)}
            for split in ("target", "source"):
                _finite(f"{split} validation loss", ev[split], step + 1, f"{last} No result was written.")
            history["eval"].append(ev)
        if log_path is not None:
            append_line(log_path, _log_line(rec, history["eval"]))
        bar.update(step + 1, loss, (step + 1 - start) * tokens_per_step)
        if ckpt is not None and clock.due(step + 1, step_times[-1]):
            t1 = time.perf_counter()
            meta = {"fingerprint": fingerprint, "step": step + 1, "rng": generator.bit_generator.state, "history": history}
            save_checkpoint(ckpt, _checkpoint_arrays(model, opt, method), meta)
            clock.written(time.perf_counter() - t1)
    bar.close()
    _check_replicas(comm, model, opt, method, generator, cfg.steps)
    test = {"target": evaluate(model, task.test_target, comm), "source": evaluate(model, task.test_source, comm)}
    for split in ("target", "source"):
        _finite(f"{split} test loss", test[split], cfg.steps, f"The model after step {cfg.steps} is not saved; no result was written.")
    result = {
        "method": method.name,
        "options": method.options(),
        "train": asdict(cfg),  # grad_clip, accumulation, ...: what clipped which gradient
        "counts": count_params(model),
        "memory": peak or memory_report(model, grads, opt),
        "ms_per_step": 1000 * float(np.median(step_times)) if step_times else None,  # None: no step ran
        "final": history["eval"][-1] if history["eval"] else None,
        "test": test,
        "history": history,
        "report": method.report(),
        "sparsity": weight_sparsity(model),
        "provenance": _provenance(provenance, cfg),
        "fingerprint": fingerprint,
        **(record or {}),
    }
    if world_size(comm) > 1:
        result["distributed"] = {"world_size": comm.world_size, "backend": comm.backend,
                                 "allreduce": None if reduced is None else {"bytes_per_step": reduced.bytes,
                                                                            "buckets": reduced.buckets,
                                                                            "tensors": reduced.tensors}}
    if result_path is not None:
        save_model(workdir / "model", model, {"method": method.name, "options": method.options(),
                                              "model": model.config.to_dict(), "dtype": model.dtype.name,
                                              "train": asdict(cfg), **result["provenance"],
                                              "run": run_identity(fingerprint), "base_model": base_digest,
                                              "report_sha256": arrays_digest({}, result["report"])})
        atomic_write_json(result_path, result)  # the commit point: from here on the run is finished
        ckpt.unlink(missing_ok=True)
    return result


def run_identity(fingerprint):
    """The digest of a run's fingerprint that its model files carry (module docstring)."""
    return arrays_digest({}, fingerprint)


def _log_line(rec, evals):
    """The log.jsonl line of training record `rec`, with the evaluation of its step when there is one."""
    line = {"step": rec["step"], "loss": rec["loss"], "lr": rec["lr"], "grad_norm": rec["grad_norm"]}
    ev = next((e for e in reversed(evals) if e["step"] == rec["step"]), None)
    if ev is not None:
        line["eval"] = {"step": ev["step"], "target": ev["target"], "source": ev["source"]}
    return json.dumps(line, allow_nan=False)


def _delete_earlier_run(workdir, label):
    """overwrite=True: remove what an earlier run left (check_run_dir has checked every path)."""
    earlier = earlier_run(workdir)
    if not earlier:
        return
    note(f"{label}: replacing {earlier} in {str(workdir)!r} (overwrite)")
    for name in RUN_FILES:
        (workdir / name).unlink(missing_ok=True)
    shutil.rmtree(workdir / "model", ignore_errors=True)


def _finished_result(workdir, fingerprint):
    """The result of the finished run in `workdir` (None when unfinished), after checking it is this
    run's (its fingerprint) and that its model files are there and carry its identity."""
    path = workdir / "result.json"
    if not os.path.lexists(path):
        return None
    finished = read_json(path)
    if not isinstance(finished, dict):
        raise CheckpointError(f"resume={str(path)!r}: expected a result of this run (a JSON object); it is "
                              f"{type(finished).__name__}: --overwrite trains the run again", "resume", str(path),
                              "a result of this run")
    _refuse_other_run("a finished result", path, finished.get("fingerprint"), fingerprint)
    for name in MODEL_FILES:
        model_file = workdir / "model" / name
        problem = None if model_file.is_file() else "missing"
        if problem is None and name.endswith(".safetensors"):
            problem = _model_file_problem(model_file, run_identity(fingerprint))
        if problem:
            expected = (f"a finished run with its model files, but model/{name} is {problem}: --overwrite trains "
                        "the run again")
            raise CheckpointError(f"resume={str(workdir)!r}: expected {expected}", "resume", str(workdir), expected)
    return finished


def _model_file_problem(path, identity):
    """Why the model file `path` is not the finished run's (None when it is): read from its header."""
    try:
        manifest = checkpoint_meta(path).get("manifest")
    except MinisftError:
        return "damaged (not a complete minisft safetensors file)"
    if not isinstance(manifest, dict) or manifest.get("run", identity) != identity:
        return "another run's"
    return None


def _provenance(provenance, cfg):
    """The caller's provenance with the seed, minisft's version and the git commit (None outside a checkout)."""
    return {**(provenance or {}), "seed": cfg.seed, "minisft_version": __version__, "git_commit": git_commit()}


def weight_sparsity(model):
    """Fraction of exactly-zero entries of the effective linear weights (base + adapter deltas)."""
    _check_model(model)
    deltas = adapter_delta_weights(model)
    zeros = total = 0
    for layer in linear_layer_names(model.config):
        W = model.params[layer + ".weight"]
        if layer in deltas:
            W = W + deltas[layer][0]
        zeros += int((W == 0).sum())
        total += int(W.size)
    return zeros / total


def merged_state_dict(model):
    """{name: host array}: the base tensors with every adapter's delta added (the model unchanged)."""
    _check_model(model)
    sd = model.state_dict()
    for layer, (dW, db) in adapter_delta_weights(model).items():
        sd[layer + ".weight"] = sd[layer + ".weight"] + to_numpy(dW)
        sd[layer + ".bias"] = sd[layer + ".bias"] + to_numpy(db)
    return sd


def save_model(folder, model, manifest):
    """Write folder/trained.safetensors (every trainable tensor), folder/merged.safetensors (the
    merged base state dict) and folder/manifest.json, as one folder (`fileio.replaced_folder`: a kill
    leaves the old folder or the new one); returns the folder."""
    _check_model(model)
    manifest = _json_ready("manifest", manifest)
    folder = as_path("folder", folder)
    with replaced_folder(folder, "manifest.json", "folder") as tmp:
        save_checkpoint(tmp / "trained.safetensors", model.trainable_params(), {"manifest": manifest})
        save_checkpoint(tmp / "merged.safetensors", merged_state_dict(model), {"manifest": manifest})
        atomic_write_json(tmp / "manifest.json", {**manifest, "files": {
            "trained.safetensors": "every trainable tensor (adapter parameters and trained base tensors), minisft names",
            "merged.safetensors": "the base model with the adapters merged: GPT.from_state_dict(arrays, config) loads it"}})
    return folder


def _check_replicas(comm, model, opt, method, generator, step):
    """Data parallel: every rank's trainable tensors, optimizer and method state and generator must be
    bit-identical (one digest each, all-gathered)."""
    if world_size(comm) > 1:
        digest = arrays_digest(_checkpoint_arrays(model, opt, method), {"rng": generator.bit_generator.state})
        check_replicas(comm, digest, f"the replicas after step {step}")


def _step_grads(model, task, generator, accumulation):
    """(global mean loss, {name: global mean gradient}, ReduceReport or None) of one step: one
    micro-batch's gradients all-reduced while its backward runs (minisft.distributed.overlap; on the
    GPU), or `accumulation` > 1 micro-batches' summed first and all-reduced once (as DDP's no_sync)."""
    if accumulation == 1 and world_size(task.comm) > 1:
        x, y = task.sample(generator)
        return loss_and_grads_overlapped(model, x, y, task.comm)
    loss, grads = _accumulated_grads(model, task, generator, accumulation)
    return reduce_loss_and_grads(task.comm, loss, grads)  # the one collective of a step


def _accumulated_grads(model, task, generator, accumulation):
    """Mean loss and mean gradient over `accumulation` fresh micro-batches (this rank's share of each
    global batch in a data-parallel run: not yet reduced)."""
    total, grads = 0.0, {}
    for _ in range(accumulation):
        x, y = task.sample(generator)
        loss, g = local_loss_and_grads(model, x, y, task.comm)
        total += loss
        for k, v in g.items():
            if k in grads:
                grads[k] += v  # fresh arrays from this step's backward: add in place
            else:
                grads[k] = v
    if accumulation > 1:
        for k in grads:
            grads[k] /= accumulation
    return total / accumulation, grads
