"""`minisft adapeft-front`: AdaPEFT's influence–size Pareto front on a preset (Xu & Bu, arXiv
2505.12579, the knapsack of minisft/methods/adapeft/ read off its Pareto front, as the paper's figures do).

On the pretrained base of a preset and the target-domain task, AdaPEFT's probe measures every
group's influence I_k; the exact front of (Σ n_k, Σ I_k) over all subsets, the greedy chain
(descending PPI) and the knapsack's choice at the budget are written to adapeft-front.json, and
plotted to adapeft-front.png (influence against trainable parameters), both in the experiment
directory runs/<experiment>/ (minisft.app.experiment). With `train_front`, every
non-empty front point is fine-tuned for the preset's steps (runs/<experiment>/adapeft-front-<i>/) and its
realised validation loss is recorded — the test of whether predicted influence ranks subsets the
way training does. Fronts of other options never share a file: the file names (and the trained
points' labels) add every option that is not the default (`front_name`), e.g.
adapeft-front-tensors-exact-sgd-b100000.json.

Default budget: the LoRA baseline's trainable count (rank preset.lora_r on all four linear layers
of every block), so the front's chosen point is comparable with the compare table's LoRA row.
"""

from dataclasses import asdict

from ..core.backend import rng as make_rng
from ..model.budgets import lora_trainable
from .experiment import experiment_dir, finetune, make_task, method_lr, pretrained
from ..core.errors import bad_value
from ..core.fileio import RunLock, atomic_write_json, check_output_file, ensure_writable_dir
from ..methods.adapeft import AdaPEFT, AdaPEFTConfig, GroupSubset
from .report import save_png


DEFAULTS = {"budget": None, "groups": AdaPEFTConfig.groups, "estimator": AdaPEFTConfig.estimator,
            "direction": AdaPEFTConfig.direction, "probe_steps": AdaPEFTConfig.probe_steps,
            "every": AdaPEFTConfig.every, "train_front": False}
SHORT = {"budget": "b", "probe_steps": "p", "every": "e"}  # values of the other options name themselves


def front_name(**options):
    """The stem of the front's files for `options` (keywords of DEFAULTS): "adapeft-front", then
    one part per option that differs from its default (module docstring)."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise bad_value("options", unknown, f"options among {sorted(DEFAULTS)}")
    parts = []
    for key, default in DEFAULTS.items():
        value = options.get(key, default)
        if value == default:
            continue
        parts.append("trained" if key == "train_front" else f"{SHORT.get(key, '')}{value}")
    return "-".join(["adapeft-front", *parts])


def adapeft_front(preset, workdir, data, backend="auto", dtype="float32", seed=0, train_front=False,
                  budget=None, groups=AdaPEFTConfig.groups, estimator=AdaPEFTConfig.estimator,
                  direction=AdaPEFTConfig.direction, probe_steps=AdaPEFTConfig.probe_steps,
                  every=AdaPEFTConfig.every, progress=None, lr=None):
    """Measure, write and plot the front into the experiment directory (experiment.experiment_dir;
    with `lr`, its folder adapeft-front-lr<lr>); returns (result dict, that folder, png path or None,
    reason or None).

    budget: None for LoRA's trainable count at rank preset.lora_r on every linear layer, else as
    AdaPEFT's. LoRA groups use rank preset.lora_r (α = r). The probe, and every trained front
    point, run at `lr`, by default the preset's learning rate for AdaPEFT (experiment.method_lr),
    and selection uses the seed's generator exactly as `minisft finetune --method adapeft` with
    these options would.
    """
    folder = experiment_dir(workdir, preset, data, seed, dtype)
    folder = ensure_writable_dir(folder if lr is None else folder / f"adapeft-front-lr{lr!r}", "workdir")
    name = front_name(budget=budget, groups=groups, estimator=estimator, direction=direction, probe_steps=probe_steps,
                      every=every, train_front=train_front)
    with RunLock(folder, "experiment directory"):
        for suffix in (".json", ".png"):
            check_output_file(folder / f"{name}{suffix}", "workdir")
        out, png, why = _front(preset, workdir, folder, name, data, backend, dtype, seed, train_front, budget, groups,
                               estimator, direction, probe_steps, every, progress, lr)
    return out, folder, png, why


def _front(preset, workdir, folder, name, data, backend, dtype, seed, train_front, budget, groups, estimator, direction,
           probe_steps, every, progress, lr):
    model, _ = pretrained(preset, workdir, data, backend, dtype, seed, progress)
    task = make_task(data.target, preset, data.code)
    options = {"budget": lora_trainable(model.config, preset.lora_r) if budget is None else budget,
               "groups": groups, "estimator": estimator, "direction": direction, "probe_steps": probe_steps,
               "every": every, "lora_r": preset.lora_r, "lora_alpha": preset.lora_r}
    probe_lr = method_lr(preset, AdaPEFT(**options)) if lr is None else lr
    method = AdaPEFT(**options, probe_lr=probe_lr)
    method.prepare(model, task, make_rng(seed))
    out = {"preset": asdict(preset), "vocab_size": data.tokenizer.vocab_size, "backend": model.backend,
           "dtype": dtype, "seed": seed, "options": method.options(), "report": method.report()}
    if train_front:
        out["trained"] = []
        for i, point in enumerate(out["report"]["front"][1:], start=1):  # the empty set trains nothing
            subset = GroupSubset(point["groups"], groups, preset.lora_r, preset.lora_r)
            # runs/<experiment>/<name>-<i>/seed<seed>, at probe_lr (a subset's method_lr is AdaPEFT's); a
            # finished point of the same settings is reused (the trainer's resume)
            _, r = finetune(preset, workdir, data, subset, f"{name}-{i:03d}", backend, dtype, seed,
                            resume=True, progress=progress, lr=lr)
            out["trained"].append({"params": point["params"], "influence": point["influence"],
                                   "groups": point["groups"], "base": r["base"], "final": r["final"]})
    atomic_write_json(folder / f"{name}.json", out)
    png, why = plot_front(out, folder / f"{name}.png")
    return out, png, why


def plot_front(result, path):
    """Influence against trainable parameters: the front as a step line, the greedy chain, the
    chosen point and the budget; with trained points, their validation loss on a second panel.
    Returns (path, None), or (None, reason) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "matplotlib is not installed (pip install 'minisft[plot]'); no plot written"
    rep = result["report"]
    trained = result.get("trained")
    fig, axes = plt.subplots(1, 2 if trained else 1, figsize=(11 if trained else 6, 4), squeeze=False)
    ax = axes[0][0]
    front = [p for p in rep["front"] if p["params"] > 0]
    greedy = [p for p in rep["greedy"] if p["params"] > 0]
    ax.step([p["params"] for p in front], [p["influence"] for p in front], where="post", label="exact Pareto front")
    ax.step([p["params"] for p in greedy], [p["influence"] for p in greedy], "o--", where="post", ms=3, alpha=0.7,
            label="greedy (descending PPI)")
    ax.plot([rep["chosen"]["params"]], [rep["chosen"]["influence"]], "r*", ms=14, label="knapsack choice")
    ax.axvline(rep["budget"]["capacity"], color="grey", ls=":", label="budget")
    ax.set(xscale="log", xlabel="trainable parameters", ylabel="predicted influence Σ I_k",
           title=f"AdaPEFT front ({rep['estimator']}, {rep['direction']})")
    ax.legend(fontsize=7)
    if trained:
        ax2 = axes[0][1]
        ax2.plot([t["params"] for t in trained], [t["final"]["target"] for t in trained], "o-", label="front points")
        ax2.axhline(trained[0]["base"]["val"]["target"], color="grey", ls=":", label="base model")
        ax2.set(xscale="log", xlabel="trainable parameters", ylabel="target validation loss",
                title="realised after fine-tuning")
        ax2.legend(fontsize=7)
    return save_png(fig, path), None
