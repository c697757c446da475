"""Golden trajectories: each method's selection and first training steps on the tiny GPT-2 (float64),
through minisft's generic trainer (minisft.training.train.train) with every option of the method and
of the trainer set explicitly, and every intermediate a re-implementation needs to find where it
parts from minisft.

Given: the batches (the selection's and every step's), every random draw (the probe's and the
training's initial adapter factors) and the state at the first step (`start/`). Expected: the
selection (SPruFT's scores and rows; LoRA-drop's probe losses and trained probe factors, g,
importance, kept and shared layers; AdaPEFT's per-step b, a, influence, the mean influence and the
knapsack's choice) and, stacked over the steps (axis 0), each step's loss, gradient, the method's
transformed gradient, the norm and factor of the clipping, the gradient AdamW receives where a
method adds to it after clipping, AdamW's moments, the masks and every trainable tensor after the
step (manifest conventions "step"; `minisft.testing.check_trajectory` compares a dump with it).

How the intermediates are read off minisft's run: a recorder wraps the method (the trainer calls
its hooks: prepare, transform_grads, transform_grads_after_clip, optimizer_masks, after_step) and a
tap on the model records, during prepare, the adapters added (their initial factors) and the batches
of every loss. AdamW's moments come from a shadow minisft AdamW fed the same parameters, gradients
and masks: the writer checks that the shadow's parameters equal the trainer's bit for bit at every
step, so its moments are the trainer's.
"""

import dataclasses
import inspect

import numpy as np

from ...core.backend import to_numpy
from ...core.errors import bad_value
from ...model.gpt import LINEAR_SUFFIXES, linear_layer_names
from ...training.optim import AdamW
from ...training.train import TrainConfig, train
from .case import CaseWriter
from ...methods.adapeft.groups import build_groups
from .fixtures import (CONFIG, ReplayTask, add_batches, add_model_tensors, explicit_method, fixed_batches, layout,
    snapshot, tiny_model)
from .spruft import BASE as SPRUFT_OPTIONS

STEPS = 4
TRAIN = {"steps": STEPS, "optimizer": "adamw", "weight_decay": 0.01, "schedule": "constant", "warmup": 0,
         "gamma": 0.85, "step_every": 1, "grad_clip": 1.0, "final_lr_fraction": 0.0, "accumulation": 1, "eval_every": STEPS,
         "checkpoint_every": 0, "seed": 0}
BASE_LR, PEFT_LR = 1e-3, 1e-2
PRUNING_LR = 1e-2  # large enough that weights pruned at one pruning step grow back by the next
PRUNING = {"final_sparsity": 0.5, "config": "default", "initial_sparsity": None, "t_start": 0.25, "t_end": 0.5,
           "every": 1, "mode": "regrow", "count_rule": "exact", "scope": "global", "total_steps": STEPS}
# Trainer settings other than TRAIN's: each run's clipping bound lies within its gradient norms, so that
# some steps are clipped and some are not; GMT accumulates two micro-batches per step (its Γ).
RUNS = {  # case -> (method, learning rate, every option, trainer settings other than TRAIN's)
    "full": ("full", BASE_LR, {}, {"grad_clip": 0.6}),
    "lora": ("lora", PEFT_LR, {"r": 2, "alpha": 4, "targets": LINEAR_SUFFIXES, "use_rslora": False},
             {"grad_clip": 0.01}),
    "spruft": ("spruft", PEFT_LR, SPRUFT_OPTIONS, {"grad_clip": 0.04}),
    "loradrop": ("loradrop", PEFT_LR, {"r": 2, "alpha": 4, "threshold": 0.9, "sample_fraction": 0.5, "probe_steps": 3,
                                       "probe_lr": 1e-2, "targets": LINEAR_SUFFIXES, "selection": "joint",
                                       "reinit": True}, {"grad_clip": 0.015}),
    "adapeft": ("adapeft", PEFT_LR, {"budget": 240, "groups": "modules", "estimator": "exact", "direction": "adam",
                                     "probe_steps": 2, "every": 1, "lora_r": 2, "lora_alpha": 4, "probe_lr": 1e-2,
                                     "eta": None}, {"grad_clip": 0.012}),
    "gmt": ("gmt", BASE_LR, {"drop_ratio": 0.5, "scope": "tensor", "freeze_masked": False},
            {"accumulation": 2, "grad_clip": 0.5}),
    "gmt_global_frozen": ("gmt", BASE_LR, {"drop_ratio": 0.5, "scope": "global", "freeze_masked": True},
                          {"accumulation": 2, "grad_clip": 0.5}),
    # pruning at steps 1 and 2 (t_f), the mask re-applied at step 3; weights pruned at step 1 regrow at step 2
    "mgpp": ("mgpp", PRUNING_LR, {**PRUNING, "initial_sparsity": 0.45, "lam": 1e-3, "var0": 1e-6, "var1": 0.05,
                               "lam_final": None, "n_train": 64}, {"grad_clip": 0.6}),
    "magprune": ("magprune", 2 * PRUNING_LR, {**PRUNING, "initial_sparsity": 0.5}, {"grad_clip": 0.6}),
}
MASKING = ("gmt",)  # methods that mask the gradient before clipping
PRIOR = ("mgpp",)  # methods that add a term after clipping
PRUNERS = ("mgpp", "magprune")
STAGE_MEANING = {
    "loss": "the step batch's mean loss before the update",
    "grad": "the gradient of the step's mean loss (the mean over micro-batches with accumulation), before any "
            "method transform",
    "keep": "the method's keep masks (GMT: on this step's gradient; pruning: after this step's pruning)",
    "grad_masked": "the gradient with the method's dropped entries set to 0, before clipping",
    "grad_norm": "the global norm of the gradients before clipping",
    "clip_scale": "the clipping factor applied to every gradient (1.0: none)",
    "update": "the gradient AdamW receives: clipped, plus the method's after-clipping term",
    "exp_avg": "AdamW's first moment m after the step",
    "exp_avg_sq": "AdamW's second moment v after the step",
    "param": "every trainable tensor after the step (after pruning)",
}


def train_config(lr, overrides):
    """TrainConfig with every field given (a changed default must not change a case silently)."""
    values = dict(TRAIN, lr=lr)
    values.update(overrides)
    missing = sorted({f.name for f in dataclasses.fields(TrainConfig)} - set(values))
    if missing:
        raise bad_value("TrainConfig fields of the training cases", missing,
                        "every field set explicitly in minisft/testing/vectors/training.py (then regenerate the kept copy)")
    return TrainConfig(**values)


def _copies(arrays):
    return {k: to_numpy(v).copy() for k, v in arrays.items()}


class _ModelTap:
    """While active, records what `model` is asked during a method's prepare: the adapters added
    (layer, adapter, its parameters' initial values, and how many gradients had been asked before:
    0 for a probe's adapters), and the (x, y, loss) of every loss_and_grads and every loss call."""

    def __init__(self, model):
        self.model, self.added, self.gradient_calls, self.loss_calls = model, [], [], []

    def __enter__(self):
        model = self.model
        add_adapter, loss_and_grads, loss = model.add_adapter, model.loss_and_grads, model.loss

        def tapped_add(layer, adapter):
            self.added.append((layer, adapter, _copies(adapter.params), len(self.gradient_calls)))
            return add_adapter(layer, adapter)

        def tapped_loss_and_grads(x, y, *args, **kwargs):
            out = loss_and_grads(x, y, *args, **kwargs)
            self.gradient_calls.append((to_numpy(x).copy(), to_numpy(y).copy(), float(out[0])))
            return out

        def tapped_loss(x, y):
            value = loss(x, y)
            self.loss_calls.append((to_numpy(x).copy(), to_numpy(y).copy(), float(value)))
            return value

        model.add_adapter, model.loss_and_grads, model.loss = tapped_add, tapped_loss_and_grads, tapped_loss
        return self

    def __exit__(self, *exc):
        for name in ("add_adapter", "loss_and_grads", "loss"):
            del self.model.__dict__[name]  # the class's methods again


class _Recorder:
    """Wraps a method for the trainer: every hook and attribute is the method's; it also records the
    prepare (through a _ModelTap), the state at the first step and each step's intermediates, and
    steps a shadow AdamW alongside the trainer's for the moments."""

    def __init__(self, method, lr, weight_decay, grad_clip):
        self._method, self.start, self.tap, self.steps = method, None, None, []
        self._shadow = AdamW(lr=lr, weight_decay=weight_decay)
        self._clip = grad_clip
        self._before, self._optimizer_masks = None, {}

    def __getattr__(self, name):
        return getattr(self._method, name)

    def prepare(self, model, task, rng):
        with _ModelTap(model) as self.tap:
            self._method.prepare(model, task, rng)

    def transform_grads(self, model, grads, step):
        if self.start is None:
            self.start = snapshot(model)
        self._before = _copies(model.trainable_params())
        record = {"grad": _copies(grads)}
        self.steps.append(record)
        out = self._method.transform_grads(model, grads, step)
        if self._method.name in MASKING:
            record["keep"] = _copies(self._method.masks)
            record["grad_masked"] = _copies(out)
        return out

    def transform_grads_after_clip(self, model, grads, step):
        record = self.steps[step]
        before = record.get("grad_masked", record["grad"])
        norm = float(np.sqrt(sum(float(np.vdot(g, g)) for g in before.values())))
        scale = self._clip / (norm + 1e-6)
        record["grad_norm"], record["clip_scale"] = norm, (scale if scale < 1.0 else 1.0)
        for name, g in grads.items():  # the trainer's clipping, as conventions.clip states it
            if not np.array_equal(to_numpy(g), before[name] * record["clip_scale"] if scale < 1.0 else before[name]):
                raise AssertionError(f"vectors: step {step} {name}: the clipped gradient is not clip_scale * grad")
        out = self._method.transform_grads_after_clip(model, grads, step)
        record["update"] = _copies(out)
        return out

    def optimizer_masks(self, model):
        masks = self._method.optimizer_masks(model)
        self._optimizer_masks = {k: to_numpy(m).copy() for k, m in masks.items()}
        return masks

    def after_step(self, model, step):
        record = self.steps[step]
        updated = self._before
        self._shadow.step(updated, record["update"], masks=self._optimizer_masks)
        trainer = _copies(model.trainable_params())
        for name, value in updated.items():
            if not np.array_equal(value, trainer[name]):
                raise AssertionError(f"vectors: step {step} {name}: the shadow AdamW parts from the trainer's")
        record["exp_avg"] = {k: st["exp_avg"].copy() for k, st in self._shadow.state.items()}
        record["exp_avg_sq"] = {k: st["exp_avg_sq"].copy() for k, st in self._shadow.state.items()}
        self._method.after_step(model, step)
        record["param"] = _copies(model.trainable_params())
        if self._method.name in PRUNERS:
            masks = self._method.masks
            record["keep"] = {n: to_numpy(masks[n]).copy() if n in masks else np.ones(model.params[n].shape, bool)
                              for n in self._method.prunable}


def _adam_settings():
    sig = inspect.signature(AdamW.__init__).parameters
    return {"betas": list(sig["betas"].default), "eps": sig["eps"].default}


# ---------------------------------------------------------------------------------------- rules
PAPERS = {
    "full": "baseline: full fine-tuning", "lora": "LoRA: Hu et al. 2021, arXiv 2106.09685 (as HF PEFT)",
    "spruft": "SPruFT: Li & Bhaskara 2025, arXiv 2502.11439", "loradrop": "LoRA-drop: Zhou et al. 2024, arXiv 2402.07721",
    "adapeft": "AdaPEFT: Xu & Bu 2025, arXiv 2505.12579", "gmt": "GMT: Li et al. 2024, arXiv 2406.15330",
    "mgpp": "MGPP: Zhang, Sun & Liang 2024, arXiv 2411.00969",
    "magprune": "cubic magnitude pruning: Zhu & Gupta 2017, arXiv 1710.01878, as MGPP's authors run it",
}
PRUNING_RULE = (
    "Every base tensor trains; the prunable tensors are the linear layers' weights (settings.prunable). Schedule: "
    "t_i = floor(dec(t_start) * steps), t_f = floor(dec(t_end) * steps) (conventions.decimal); pruning steps t_i, "
    "t_i + every, ... below t_f, and t_f; s_t as the mgpp_primitives case's schedule with s_i = initial_sparsity, "
    "s_f = final_sparsity (settings.options). After AdamW at a pruning step t: masks at sparsity s_t by the "
    "mgpp_primitives mask rule (count 'exact': floor(dec(s_t) n + 1/2) pruned; scope settings.options.scope, "
    "'global' laying the prunable tensors end to end in settings.prunable order), "
    "computed from scratch on the updated weights (mode 'regrow': a weight pruned at an earlier step may be kept "
    "now), and the pruned weights set to 0; after t_f the last masks are re-applied after every update. step/keep "
    "holds the masks in force after each step (all True before the first pruning).")
RULES = {
    "full": "Full fine-tuning: every base tensor trains (settings.trainable); start/ is the base; conventions.step "
            "with no method transform.",
    "lora": "LoRA (conventions.adapters; r, alpha in settings.options) on every linear layer, initial factors given "
            "in start/ (A drawn as PEFT draws it, B = 0); only the factors train; conventions.step.",
    "spruft": "SPruFT with settings.options: the selection of the spruft_select_gpt2 case's rule (importance taylor, "
              "scope layer, `rows` rows per layer) on the calibration batches select/calib gives select/scores/<layer> "
              "and select/rows/<layer>; then a row delta (conventions.adapters) on the chosen rows of every target "
              "layer, bias deltas included, initialised to zero (start/); only the deltas train; conventions.step.",
    "loradrop": "LoRA-drop with settings.options. Probe: a LoRA (r, alpha) on every target layer (settings.layers) "
                "with the initial factors probe/init/; AdamW (conventions.adamw with lr = probe_lr, weight decay 0, "
                "no clipping) on the LoRA factors only, probe step j on probe/batch/x[j], probe/batch/y[j]; "
                "probe/loss[j] is step j's loss before its update, probe/final/ the factors after the last probe step. "
                "Scoring and selection: the loradrop_select case's rule with the probe's factors on the sample batches "
                "probe/sample/x[b], probe/sample/y[b] (select/g, select/importance), selection "
                "settings.options.selection at settings.options.threshold (select/kept, select/shared). Training: the "
                "probe LoRAs are removed; each kept layer gets a fresh LoRA and each module type's dropped layers "
                "share one fresh LoRA (shared.<suffix>.lora_A/B), initial values in start/; base frozen; "
                "conventions.step.",
    "adapeft": "AdaPEFT with settings.options, groups settings.groups (group -> base tensors and LoRA layers; a "
               "LoRA group has a LoRA of rank lora_r, alpha lora_alpha on each of its layers), sizes "
               "settings.group_sizes (entries; a LoRA layer counts r (d_in + d_out)). Probe: every group trains at "
               "once (the base tensors of every group, and LoRAs with the initial factors probe/init/) with AdamW "
               "(conventions.adamw with lr = probe_lr, weight decay 0, no clipping) for probe_steps steps, step j "
               "on probe/batch/x[j], probe/batch/y[j] (probe/loss[j] before its update). At every probe step "
               "(every = 1), before its update, each group's b, a and influence by the adapeft_influence case's "
               "'exact' rule on that step's batch, along d = the AdamW step about to be taken divided by lr: "
               "d = mhat / (sqrt(vhat) + eps), mhat = m' / (1 - b1^t), vhat = v' / (1 - b2^t), m', v' the moments "
               "updated with the step's gradient, t the step's count -> probe/<j>/b, a, influence (NaN where "
               "invalid), valid. select/influence: each group's mean influence over its valid estimates (NaN when "
               "none). select/chosen: the adapeft_knapsack case's solve with values = select/influence (0 where "
               "NaN), weights = settings.group_sizes, capacity = settings.options.budget. Training: every base "
               "tensor is restored to its value before the probe and the probe's LoRAs are removed; the chosen "
               "groups train: their base tensors, and fresh LoRAs (initial values in start/) for chosen LoRA "
               "groups; conventions.step.",
    "gmt": "GMT with settings.options: every base tensor trains. step/grad is Gamma, the mean of the step's "
           "settings.train.accumulation micro-batches' mean-loss gradients; step/keep the gmt_masks case's masks "
           "at drop ratio settings.options.drop_ratio and scope settings.options.scope, computed on Gamma (scope "
           "'global': the tensors laid end to end in settings.param_order, the model's parameter order); "
           "step/grad_masked = Gamma with the dropped entries (keep False) set to +0.0; then clipping and AdamW "
           "(conventions.step). freeze_masked false: AdamW updates every entry (a dropped entry's zero gradient "
           "still moves its m and v, and the weight decay acts on it); freeze_masked true: the step's dropped "
           "entries are excluded by AdamW's optimizer mask (theta, m and v unchanged there).",
    "mgpp": "MGPP with settings.options. " + PRUNING_RULE + " The prior: at every step t <= t_f, after clipping, "
            "(1/n) theta (w1 / v1 + w0 / v0) (the mgpp_primitives prior gradient with lam, v0 = var0, v1 = var1; "
            "lam constant as lam_final is null; n = settings.options.n_train) of each prunable weight's values before "
            "the update is added to its clipped gradient: step/update, never clipped.",
    "magprune": "Cubic magnitude pruning (MGPP's baseline, no prior) with settings.options. " + PRUNING_RULE,
}


REGROWTH = ("pruning_regrowth", "keep", "at each pruning step the masks are computed from scratch (a weight pruned "
            "earlier is kept when it has grown)", "pruned weights stay pruned (masks only shrink)")
AFTER_T_F = ("pruning_mask_after_t_f", "param", "after t_f the last masks are re-applied after every update",
             "after t_f the pruned weights train freely")
READINGS = {  # the close readings of a trajectory's rule that its steps tell apart
    "mgpp": [REGROWTH, AFTER_T_F, ("mgpp_prior_after_clip", "update", "the prior gradient is added after clipping "
                                   "(never clipped)", "the prior gradient is added before clipping (and clipped)")],
    "magprune": [REGROWTH, AFTER_T_F],
    "gmt": [("gmt_freeze_masked", "exp_avg", "freeze_masked: the dropped entries' m, v and values are left unchanged",
             "freeze_masked read as a zeroed gradient only (AdamW still updates m, v and decays the entry)")],
}


# ---------------------------------------------------------------------------------------- cases
def _add_steps(case, recorder, trainable, history, prunable):
    """The per-step tensors, stacked over the steps (axis 0), and settings["stages"]."""
    steps = recorder.steps
    if [r["grad_norm"] for r in history] != [s["grad_norm"] for s in steps]:
        raise AssertionError("vectors: the recorded gradient norms differ from the trainer's")
    scalars = {"loss": np.array([r["loss"] for r in history]), "grad_norm": np.array([r["grad_norm"] for r in history]),
               "clip_scale": np.array([s["clip_scale"] for s in steps])}
    stages = ["loss", "grad"]
    if "grad_masked" in steps[0]:
        stages += ["keep", "grad_masked"]
    stages += ["grad_norm", "clip_scale"]
    if recorder._method.name in PRIOR:
        stages.append("update")
    stages += ["exp_avg", "exp_avg_sq"]
    if recorder._method.name in PRUNERS:
        stages.append("keep")
    stages.append("param")
    for stage in stages:
        if stage in scalars:
            case.expected(f"step/{stage}", scalars[stage], STAGE_MEANING[stage], "(steps,)", STAGE_MEANING[stage],
                          "float64")
            continue
        names = prunable if stage == "keep" and prunable else trainable
        for name in names:
            value = np.stack([s[stage][name] for s in steps])
            case.expected(f"step/{stage}/{name}", value, f"{STAGE_MEANING[stage]}: {name}",
                          f"(steps, {str(value.shape[1:])[1:-1].rstrip(',')})", STAGE_MEANING[stage],
                          "exact" if value.dtype == bool else "float64", layout(name))
    case.settings["stages"] = stages
    case.settings["stage_meaning"] = {s: STAGE_MEANING[s] for s in stages}


def _probe_adapters(tap):
    """The (layer, adapter, initial values) a prepare added before asking any gradient: the probe's."""
    return [(layer, adapter, initial) for layer, adapter, initial, asked in tap.added if asked == 0]


def _add_probe_factors(case, key, added, what):
    """Inputs `key`/<name> of the adapters' parameters when they were added (shared ones once)."""
    seen = set()
    for layer, adapter, initial in added:
        for name, value in initial.items():
            if name not in seen:
                seen.add(name)
                case.input(f"{key}/{name}", value, f"{what}: {name}", str(value.shape))


def _selection(case, name, method, tap, task_batches, prepare_batches):
    """The selection phase's inputs and expected tensors of `name`'s case."""
    layers = linear_layer_names(CONFIG)
    report = method.report()
    if name == "spruft":
        add_batches(case, "select/calib", task_batches[:prepare_batches], "calibration batches, in order")
        for layer in layers:
            case.expected(f"select/scores/{layer}", method.layer_scores[layer]["rows"], f"taylor row scores of {layer}",
                          "(d_out,)", "sum_j |W_ij G_ij|", "float64")
            case.expected(f"select/rows/{layer}", method.selected_rows[layer], f"rows of {layer} chosen", "(k,)",
                          "the `rows` highest scores, ties to the lower index, sorted", "exact")
    elif name == "loradrop":
        probe = _probe_adapters(tap)
        _add_probe_factors(case, "probe/init", probe, "the probe LoRA's initial factor")
        add_batches(case, "probe/batch", [(x, y) for x, y, _ in tap.gradient_calls], "the probe step's batch")
        case.expected("probe/loss", np.array([loss for _, _, loss in tap.gradient_calls]), "probe step j's loss",
                      "(probe_steps,)", "mean loss before the probe step's update", "float64")
        for layer, adapter, _ in probe:
            for pname, value in adapter.params.items():
                case.expected(f"probe/final/{pname}", to_numpy(value), f"{pname} after the probe", str(value.shape),
                              "AdamW on the probe batches", "float64")
        add_batches(case, "probe/sample", [(x, y) for x, y, _ in tap.loss_calls], "the sample D_s, in batches")
        case.expected("select/g", np.array([report["scores"][n] for n in layers]), "g_i per layer", "(layers,)",
                      "g_i = sum over tokens of ||s (x_i A^T) B^T||^2", "float64")
        case.expected("select/importance", np.array([report["importance"][n] for n in layers]), "I_i per layer",
                      "(layers,)", "I_i = g_i / sum_j g_j", "float64")
        case.expected("select/kept", np.array([n in report["kept"] for n in layers]), "layers keeping their own LoRA",
                      "(layers,)", "the shortest prefix by descending g reaching T", "exact")
        shared = {n for ns in report["shared"].values() for n in ns}
        case.expected("select/shared", np.array([n in shared for n in layers]), "layers sharing their type's LoRA",
                      "(layers,)", "not kept", "exact")
    elif name == "adapeft":
        _add_probe_factors(case, "probe/init", _probe_adapters(tap), "the probe LoRA's initial factor")
        add_batches(case, "probe/batch", task_batches[:prepare_batches], "the probe step's batch")
        records = report["probes"]
        case.expected("probe/loss", np.array([r["loss"] for r in records]), "probe step j's loss", "(probe_steps,)",
                      "mean loss before the probe step's update", "float64")
        groups = [g["name"] for g in report["groups"]]
        for r in records:
            est = {e["group"]: e for e in r["estimates"]}
            for field, tol in (("b", "float64"), ("a", 1e-6), ("influence", 1e-6)):
                case.expected(f"probe/{r['step']}/{field}", np.array([np.nan if est[g][field] is None else est[g][field]
                                                                       for g in groups]),
                              f"{field} per group at probe step {r['step']}", "(groups,)",
                              {"b": "b_k = <g_k, d_k>", "a": "a_k = d_k^T H d_k", "influence": "b^2 / (2 a)"}[field], tol)
            case.expected(f"probe/{r['step']}/valid", np.array([est[g]["valid"] for g in groups]),
                          f"estimate valid at probe step {r['step']}", "(groups,)", "a > 0 and b > 0", "exact")
        case.expected("select/influence", np.array([np.nan if g["influence"] is None else g["influence"]
                                                    for g in report["groups"]]), "mean valid influence per group",
                      "(groups,)", "mean of the valid I_k", 1e-6)
        chosen = report["chosen"]["groups"]
        case.expected("select/chosen", np.array([g in chosen for g in groups]), "groups chosen by the knapsack",
                      "(groups,)", "argmax sum I_k s.t. sum n_k <= budget", "exact")


def _train_case(name, method_name, lr, options, overrides):
    cfg = train_config(lr, overrides)
    recorder = _Recorder(explicit_method(method_name, **options), lr, cfg.weight_decay, cfg.grad_clip)
    model = tiny_model()
    task = ReplayTask(fixed_batches(40, seed=91))
    result = train(model, recorder, task, cfg, progress=False)
    trainable = sorted(model.trainable_params())
    method = recorder._method
    used = STEPS * cfg.accumulation
    prepare_batches = task.used - used
    prunable = list(getattr(method, "prunable", []))
    settings = {"config": CONFIG.to_dict(), "method": method_name, "options": method.options(),
                "train": dataclasses.asdict(cfg), "adamw": _adam_settings(), "trainable": trainable,
                "param_order": list(model.trainable_params()), "layers": linear_layer_names(CONFIG)}
    if prunable:
        settings["prunable"] = prunable
    if method_name == "adapeft":
        groups = method.report()["groups"]
        settings["group_order"] = [g["name"] for g in groups]
        settings["group_sizes"] = {g["name"]: g["n"] for g in groups}
        settings["groups"] = {g.name: {"tensors": list(g.tensors), "lora_layers": list(g.lora_layers)}
                              for g in build_groups(CONFIG, method.config.groups, method.config.lora_r)}
    case = CaseWriter(f"train_{name}", f"{method_name}'s selection and first {STEPS} training steps on the tiny GPT-2 "
                      "in float64, with every intermediate of every step", RULES[method_name], PAPERS[method_name],
                      settings)
    add_model_tensors(case, "start", recorder.start, "state at the first step")
    _selection(case, method_name, method, recorder.tap, task.batches, prepare_batches)
    add_batches(case, "batch", task.batches[prepare_batches: task.used], "the micro-batches of the steps, in order")
    _add_steps(case, recorder, trainable, result["history"]["train"], prunable)
    for reading, stage, right, wrong in READINGS.get(method_name, ()):
        if reading != "gmt_freeze_masked" or options["freeze_masked"]:
            case.discriminates(reading, [f"step/{stage}/{n}" for n in (prunable or trainable)], right, wrong)
    return case


def training_cases():
    """One case per run of RUNS."""
    return [_train_case(name, *run) for name, run in RUNS.items()]
