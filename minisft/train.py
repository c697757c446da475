"""The generic trainer: drives any method (minisft.methods) over next-token batches.

One step:  (1) gradients averaged over `accumulation` micro-batches;  (2) a non-finite loss stops
the run (NonFiniteLossError) — the last checkpoint on disk is the last good state;  (3) the
method's `transform_grads`;  (4) global-norm clipping;  (5) the optimizer step with the method's
`optimizer_masks`;  (6) the method's `after_step`.  Evaluation every `eval_every` steps on fixed
validation batches of the target domain and (for forgetting) the source domain; a JSON-lines log;
checkpoints every `checkpoint_every` steps.

Determinism: one numpy Generator seeded with `seed` feeds the method's selection and then every
training batch. A checkpoint carries the trainable tensors, the optimizer state, the method's state,
the Generator's state and the histories, so `resume=True` continues bit-identically on the CPU.
"""

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .backend import rng as make_rng
from .batches import random_windows
from .budgets import count_params
from .checkpoint import load_checkpoint, save_checkpoint
from .errors import CheckpointError, NonFiniteLossError, bad_value, positive_int
from .fileio import atomic_write_json, atomic_write_text, ensure_writable_dir
from .memory import memory_report
from .optim import clip_grad_norm, lr_at, make_optimizer


@dataclass
class Task:
    """Training stream and fixed evaluation batches. `val_source` measures forgetting."""

    train_ids: object
    val_target: list
    val_source: list = field(default_factory=list)
    batch_size: int = 16
    block_size: int = 64

    def sample(self, generator):
        return random_windows(self.train_ids, self.batch_size, self.block_size, generator)


@dataclass
class TrainConfig:
    steps: int = 100
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup: int = 0
    gamma: float = 0.85
    step_every: int = 1
    grad_clip: float = 1.0
    accumulation: int = 1
    eval_every: int = 50
    checkpoint_every: int = 0
    seed: int = 0

    def __post_init__(self):
        positive_int("steps", self.steps)
        positive_int("accumulation", self.accumulation)
        positive_int("eval_every", self.eval_every)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise bad_value("lr", self.lr, "a positive finite learning rate")


def evaluate(model, batches):
    """Mean loss over fixed (x, y) batches."""
    return float(np.mean([model.loss(x, y) for x, y in batches])) if batches else None


class Progress:
    """One status line on stderr: step, loss, tokens/s, ETA (off when stderr is not a terminal)."""

    def __init__(self, total, label, enabled=None):
        self.total, self.label = total, label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()

    def update(self, step, loss, tokens):
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        rate = tokens / elapsed if elapsed > 0 else 0.0
        eta = elapsed / max(step, 1) * (self.total - step)
        sys.stderr.write(f"\r{self.label} {step}/{self.total} loss {loss:.4f} {rate:,.0f} tok/s ETA {eta:.0f}s ")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")


def _fingerprint(model, method, cfg):
    return {"model": model.config.to_dict(), "dtype": model.dtype.name, "method": method.name,
            "method_options": method.options(), "train": asdict(cfg)}


def _checkpoint_arrays(model, opt, method):
    arrays = {f"param/{k}": v for k, v in model.trainable_params().items()}
    arrays.update({f"opt/{k}": v for k, v in opt.state_arrays().items()})
    arrays.update({f"method/{k}": v for k, v in method.state_arrays().items()})
    return arrays


def _restore(model, opt, method, path, fingerprint):
    arrays, meta = load_checkpoint(path)
    if meta.get("fingerprint") != fingerprint:
        raise CheckpointError(f"checkpoint={str(path)!r}: written by another configuration "
                              f"({meta.get('fingerprint')}); expected {fingerprint}")
    params = model.trainable_params()
    saved = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    if set(saved) != set(params):
        raise CheckpointError(f"checkpoint={str(path)!r}: tensors {sorted(set(saved) ^ set(params))[:5]} "
                              "do not match this model's trainable tensors")
    for k, v in saved.items():
        if v.shape != params[k].shape:
            raise CheckpointError(f"checkpoint={str(path)!r}: {k} has shape {v.shape}, expected {params[k].shape}")
        params[k][...] = model.xp.asarray(v)
    opt.load_state_arrays({k[4:]: (v if v.ndim == 0 else model.xp.asarray(v)) for k, v in arrays.items() if k.startswith("opt/")})
    method.load_state_arrays({k[7:]: model.xp.asarray(v) for k, v in arrays.items() if k.startswith("method/")})
    return meta


def train(model, method, task, cfg, workdir=None, resume=False, progress=None, label="train"):
    """Fine-tune `model` with `method` on `task`; returns a JSON-ready result dict."""
    generator = make_rng(cfg.seed)
    method.prepare(model, task, generator)
    opt = make_optimizer(cfg.optimizer, cfg.lr, cfg.weight_decay)
    fingerprint = _fingerprint(model, method, cfg)
    history = {"train": [], "eval": []}
    start = 0
    ckpt = log_path = None
    if workdir is not None:
        workdir = ensure_writable_dir(workdir)
        ckpt, log_path = workdir / "checkpoint.safetensors", workdir / "log.jsonl"
    if resume:
        if ckpt is None or not ckpt.exists():
            raise bad_value("resume", True, f"a checkpoint at {ckpt} (run without resume first)")
        meta = _restore(model, opt, method, ckpt, fingerprint)
        start, history = meta["step"], meta["history"]
        generator.bit_generator.state = meta["rng"]
    if log_path is not None:
        _reset_log(log_path, start)
    bar = Progress(cfg.steps, label, progress)
    tokens_per_step = cfg.accumulation * task.batch_size * task.block_size
    step_times, grads, peak = [], {}, None
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        loss, grads = _accumulated_grads(model, task, generator, cfg.accumulation)
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"loss={loss} at step {step}: expected a finite loss; the last good "
                                     f"state is the checkpoint {ckpt if ckpt and ckpt.exists() else '(none written)'}")
        grads = method.transform_grads(model, grads, step)
        grad_norm = clip_grad_norm(grads, cfg.grad_clip)
        lr = lr_at(step, cfg.lr, cfg.schedule, cfg.steps, cfg.warmup, cfg.gamma, cfg.step_every)
        opt.step(model.trainable_params(), grads, masks=method.optimizer_masks(model), lr=lr)
        method.after_step(model, step)
        step_times.append(time.perf_counter() - t0)
        if peak is None:
            peak = memory_report(model, grads, opt)
        rec = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm}
        history["train"].append(rec)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            ev = {"step": step + 1, "target": evaluate(model, task.val_target), "source": evaluate(model, task.val_source)}
            history["eval"].append(ev)
            rec = dict(rec, eval=ev)
        if log_path is not None:
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        bar.update(step + 1 - start, loss, (step + 1 - start) * tokens_per_step)
        if ckpt is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            meta = {"fingerprint": fingerprint, "step": step + 1,
                    "rng": generator.bit_generator.state, "history": history}
            save_checkpoint(ckpt, _checkpoint_arrays(model, opt, method), meta)
    bar.close()
    result = {
        "method": method.name,
        "options": method.options(),
        "counts": count_params(model),
        "memory": peak or memory_report(model, grads, opt),
        "ms_per_step": 1000 * float(np.median(step_times)) if step_times else None,  # None: no step ran
        "final": history["eval"][-1] if history["eval"] else None,
        "history": history,
        "report": method.report(),
    }
    if workdir is not None:
        atomic_write_json(workdir / "result.json", result)
    return result


def _reset_log(path, keep_through_step):
    """Keep only the log records of steps <= keep_through_step (0: start a fresh log), atomically."""
    kept = []
    if keep_through_step and path.exists():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= keep_through_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _accumulated_grads(model, task, generator, accumulation):
    """Mean loss and mean gradient over `accumulation` fresh micro-batches."""
    total, grads = 0.0, {}
    for _ in range(accumulation):
        x, y = task.sample(generator)
        loss, g = model.loss_and_grads(x, y)
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
