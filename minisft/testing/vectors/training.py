"""Golden vectors of each method's first training steps on the tiny GPT-2 (float64), through
minisft's generic trainer (minisft.training.train.train) with every option of the method and of the
trainer set explicitly.

What another implementation is given: the state at the first step (`start/`: every base tensor
and every adapter parameter after the method's prepare — its selection, LoRA initialisation and
probe are done by then), what was selected (settings, and `select/rows/<layer>` for SPruFT), the
batch of every step (`batch/x`, `batch/y`) and the trainer's settings. What it must produce: the
loss of every step (`loss`, before that step's update), every trainable tensor after the last
step (`final/`), and for GMT and MGPP the keep masks in force after each step (`mask/<step>/`).

One step (minisft.training.train's docstring is the reference): the mean-loss gradient of the batch; the
method's gradient transforms (GMT's mask; MGPP's prior and pruned entries, on the side of the
clipping minisft.methods.mgpp says); global-norm clipping of the trainable gradients to grad_clip
(torch.nn.utils.clip_grad_norm_, with its 1e-6); AdamW (torch.optim.AdamW's update, lr constant,
decoupled weight decay, β = 0.9, 0.999, ε = 1e-8, bias correction per tensor); the method's
after-step hook (MGPP's pruning).
"""

import dataclasses
import inspect

import numpy as np

from ...core.backend import to_numpy
from ...core.errors import bad_value
from ...model.gpt import LINEAR_SUFFIXES
from ...training.optim import AdamW
from ...training.train import TrainConfig, train
from .case import CaseWriter
from .fixtures import (CONFIG, ReplayTask, add_batches, add_model_tensors, explicit_method, fixed_batches, layout,
    snapshot, tiny_model)
from .spruft import BASE as SPRUFT_OPTIONS

STEPS = 4
TRAIN = {"steps": STEPS, "optimizer": "adamw", "weight_decay": 0.01, "schedule": "constant", "warmup": 0,
         "gamma": 0.85, "step_every": 1, "grad_clip": 1.0, "accumulation": 1, "eval_every": STEPS,
         "checkpoint_every": 0, "seed": 0}
BASE_LR, PEFT_LR = 1e-3, 1e-2
RUNS = {  # method -> (learning rate, every option)
    "full": (BASE_LR, {}),
    "lora": (PEFT_LR, {"r": 2, "alpha": 4, "targets": LINEAR_SUFFIXES, "use_rslora": False}),
    "spruft": (PEFT_LR, SPRUFT_OPTIONS),
    "loradrop": (PEFT_LR, {"r": 2, "alpha": 4, "threshold": 0.9, "sample_fraction": 0.5, "probe_steps": 3,
                           "probe_lr": 1e-2, "targets": LINEAR_SUFFIXES, "selection": "joint", "reinit": True}),
    "adapeft": (PEFT_LR, {"budget": 200, "groups": "modules", "estimator": "exact", "direction": "adam",
                          "probe_steps": 2, "every": 1, "lora_r": 2, "lora_alpha": 4, "probe_lr": 1e-2, "eta": None}),
    "gmt": (BASE_LR, {"drop_ratio": 0.5, "scope": "tensor", "freeze_masked": False}),
    "mgpp": (BASE_LR, {"final_sparsity": 0.5, "config": "default", "lam": 1e-3, "var0": 1e-6, "var1": 0.05,
                       "lam_final": None, "initial_sparsity": 0.3, "t_start": 0.25, "t_end": 0.75, "every": 1,
                       "mode": "regrow", "count_rule": "exact", "scope": "global", "n_train": 64,
                       "total_steps": STEPS}),
}


def train_config(lr):
    """TrainConfig with every field given (a changed default must not change a case silently)."""
    values = dict(TRAIN, lr=lr)
    missing = sorted({f.name for f in dataclasses.fields(TrainConfig)} - set(values))
    if missing:
        raise bad_value("TrainConfig fields of the training cases", missing,
                        "every field set explicitly in minisft/testing/vectors/training.py (then regenerate the kept copy)")
    return TrainConfig(**values)


class _Recorder:
    """Wraps a method for the trainer: every hook and attribute is the method's; it also takes a
    snapshot of the model at the first gradient transform (after prepare, before any update) and
    keeps the method's keep masks after each step (GMT, MGPP)."""

    def __init__(self, method):
        self._method, self.start, self.masks = method, None, {}

    def __getattr__(self, name):
        return getattr(self._method, name)

    def transform_grads(self, model, grads, step):
        if self.start is None:
            self.start = snapshot(model)
        return self._method.transform_grads(model, grads, step)

    def after_step(self, model, step):
        self._method.after_step(model, step)
        for name, m in getattr(self._method, "masks", {}).items():
            self.masks[f"mask/{step}/{name}"] = to_numpy(m).copy()


SELECTION = {"spruft": ("rows",), "loradrop": ("kept", "shared"), "adapeft": ("chosen",)}  # deterministic report parts


def _adam_settings():
    sig = inspect.signature(AdamW.__init__).parameters
    return {"betas": list(sig["betas"].default), "eps": sig["eps"].default}


def _train_case(name, lr, options):
    method = _Recorder(explicit_method(name, **options))
    model = tiny_model()
    task = ReplayTask(fixed_batches(40, seed=91))
    result = train(model, method, task, train_config(lr), progress=False)
    trainable = sorted(model.trainable_params())
    report = method.report()
    case = CaseWriter(
        f"train_{name}",
        f"the first {STEPS} training steps of {name} on the tiny GPT-2 in float64 (AdamW, lr {lr}, weight decay "
        f"{TRAIN['weight_decay']}, clipping to {TRAIN['grad_clip']}); module docstring of minisft/testing/vectors/training.py",
        f"minisft/methods/{'base.py' if name in ('full', 'lora') else name + '/__init__.py'}; minisft/training/train.py; "
        "minisft/training/optim.py (AdamW as torch.optim.AdamW, clip_grad_norm as torch's)",
        {"config": CONFIG.to_dict(), "method": name, "options": method.options(), "train": dict(TRAIN, lr=lr),
         "adamw": _adam_settings(), "trainable": trainable, "prepare_batches": task.used - STEPS,
         "selection": {k: report[k] for k in SELECTION.get(name, ())}})
    add_model_tensors(case, "start", method.start, "state at the first step")
    for layer, rows in getattr(method._method, "selected_rows", {}).items():
        case.input(f"select/rows/{layer}", rows, f"rows of {layer} SPruFT trains", "(k,)")
    add_batches(case, "batch", task.batches[task.used - STEPS: task.used], "the batch of each training step")
    case.expected("loss", np.array([r["loss"] for r in result["history"]["train"]]),
                  "mean cross-entropy of each step's batch before its update", "(steps,)", "minisft.training.train.train",
                  "float64")
    for k in trainable:
        v = to_numpy(model.trainable_params()[k])
        case.expected(f"final/{k}", v, f"{k} after {STEPS} steps", str(v.shape), "minisft.training.train.train", "float64",
                      layout(k))
    for k, m in method.masks.items():
        _, step, tensor = k.split("/", 2)
        case.expected(k, m, f"keep mask (True = kept) of {tensor} after step {step}", str(m.shape),
                      f"minisft.methods.{name}", "exact")
    return case


def training_cases():
    """One case per method of RUNS."""
    return [_train_case(name, lr, options) for name, (lr, options) in RUNS.items()]
