"""The comparison `minisft compare` runs: every method on one pretrained base, under one protocol.

Protocol (what a careful paper runs; decisions: proofs/decisions.md §compare):
- **Rows** (`compare_runs`): full fine-tuning, LoRA at the preset's rank r and at r/2 (the budget
  LoRA-drop keeps), SPruFT at LoRA's exact trainable count, LoRA-drop at rank r, AdaPEFT at LoRA's
  count with its probe at two horizons (P and 4P steps: the transfer across training horizons), GMT
  at drop ratios 0.2 and 0.5, MGPP and cubic magnitude pruning on the same schedule at 80%, 90% and
  95% sparsity (MGPP with λ constant and with PTMGP's annealing 0.1 → 1e-4 at 90%, and at 90% with
  minisft's v0 = MGPP_REACH_VAR0, where the prior acts). Method options are the methods' defaults
  (the authors' where they released code) unless a row says otherwise.
- **The same token budget**: every row takes the preset's steps of the preset's batch (GMT in
  micro-batches of the same total: its Γ is averaged over GMT_MICRO_BATCHES of them, as the paper
  accumulates). Probes and calibration (SPruFT, LoRA-drop, AdaPEFT) read training batches before.
- **Three splits** of each domain (minisft.data.corpus): training, validation, test. Learning rates
  are chosen on validation; every reported number is on test and never informs a choice.
- **Learning rate per row from a grid per family** (`lr_grid`: methods that train base tensors and
  adapter methods have their own): with the first seed, every value of the row's family grid is
  run, and the value of the lowest final target validation loss is chosen (ties: the smaller
  rate); the other seeds run with that value only. compare.json records each row's grid, its
  validation losses and the choice.
- **Seeds**: every row with seeds seed, ..., seed+K-1, on ONE base model pretrained with `seed`,
  so rows are paired (the same base, the same batches for a seed); tables show mean ± sd over seeds.

Runs are resumable: each (row, learning rate, seed) is a `finetune` run with its own directory
(runs/<experiment>/<label>/lr<x>/seed<s>) resumed from its checkpoint, and a finished one is read
back, not trained again. So a comparison cut into pieces (a time limit, a kill) continues where it
stopped when the same command runs again, and compare.json is written when every run is done.
`overwrite=True` (`compare --overwrite`) trains every run again instead. A run folder holding a run
of other settings (a `finetune --label` equal to a row's label, at the same rate) is an error naming
what differs, never replaced.

Files (`compare_files`): compare.json, compare-timings.json and compare.png for one seed,
compare-seeds<K>.* for K seeds, so tables of other seed counts never share a file. Every output
path (these files, every run folder the grid and the seeds can reach) is checked before the first
run; with `only`, the earlier table whose other rows are kept is checked too (`_earlier_rows`: the
same experiment, or an error: never rows dropped or mixed in).
"""

import json
import math
import os
import re
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np

from ..core.errors import MinisftError, bad_type, bad_value, positive_int, real_in
from ..core.fileio import (RunLock, atomic_write_json, bad_path, check_output_file, ensure_writable_dir, read_json,
    remove_stale_temps, sha256_hex)
from ..core.version import __version__, git_commit
from ..distributed.data_parallel import world_size
from ..distributed.rank0 import on_rank0
from ..methods import make_method, method_options
from ..methods.spruft import rows_matching_lora
from ..model.budgets import lora_trainable
from ..training.checkpoint import load_checkpoint
from ..training.train import check_run_dir
from .claims import evaluate_claims
from . import experiment as ex

GMT_MICRO_BATCHES = 4  # N: compare's GMT rows take the mask on Γ averaged over N micro-batches
ADAPEFT_PROBE_STEPS = 8  # P: AdaPEFT's probe horizon (its default); the transfer row probes 4P
# v0 of the row "mgpp-s90-reach", minisft's setting where MGPP's prior acts: the spike's reach
# (claims.prior_reach: |θ*| = 0.015 with λ = 1e-3, v1 = 0.05) at about the median |θ| of a
# GPT-2-style model's prunable weights (0.016 on the small preset's base), where the authors' v0 =
# 1e-10 reaches 5.8e-5 (proofs/decisions.md §compare)
MGPP_REACH_VAR0 = 1e-5
FAMILIES = ("full", "peft")  # methods that train base tensors; adapter methods


def spruft_label(budget):
    """The compare row's label of a SPruFT budget {"rows": k} or {"ratio": ρ} (rows_matching_lora's
    "options"): spruft-rows<k> or spruft-ratio<ρ>, so the label says which one was chosen."""
    return f"spruft-rows{budget['rows']}" if "rows" in budget else f"spruft-ratio{budget['ratio']!r}"


def compare_runs(preset):
    """(label, method name, options[, training overrides]) of every row of the comparison (module
    docstring). Overrides (finetune's `train_overrides`) keep the tokens per step equal:
    GMT's micro-batches; MGPP and its magnitude-pruning baseline run without gradient clipping and
    with a cosine decay of the learning rate to 0.1x, as MGPP's authors run GPT-2 (BayesianPruner)."""
    r, B = preset.lora_r, preset.batch_size
    budget = rows_matching_lora(preset.model, r)["options"]  # SPruFT at LoRA's trainable budget
    micro = {"accumulation": GMT_MICRO_BATCHES, "batch_size": B // GMT_MICRO_BATCHES}
    pruning = {"grad_clip": None, "schedule": "cosine", "final_lr_fraction": 0.1}
    every = {} if preset.prune_every is None else {"every": preset.prune_every}
    adapeft = {"budget": lora_trainable(preset.model, r), "lora_r": r, "lora_alpha": r}
    return [
        ("full", "full", {}),
        (f"lora-r{r}", "lora", {"r": r, "alpha": r}),
        *([(f"lora-r{r // 2}", "lora", {"r": r // 2, "alpha": r // 2})] if r > 1 else []),
        (spruft_label(budget), "spruft", {**budget, "calib_batches": 50, "calib_batch_size": 1}),
        (f"loradrop-r{r}", "loradrop", {"r": r, "alpha": r}),
        (f"adapeft-r{r}", "adapeft", {**adapeft, "probe_steps": ADAPEFT_PROBE_STEPS}),
        (f"adapeft-r{r}-probe{4 * ADAPEFT_PROBE_STEPS}", "adapeft", {**adapeft, "probe_steps": 4 * ADAPEFT_PROBE_STEPS}),
        ("gmt-d0.2", "gmt", {"drop_ratio": 0.2}, micro),
        ("gmt-d0.5", "gmt", {"drop_ratio": 0.5}, micro),
        *[(f"mgpp-s{round(100 * s)}", "mgpp", {"final_sparsity": s, **every}, pruning) for s in (0.8, 0.9, 0.95)],
        ("mgpp-s90-anneal", "mgpp", {"final_sparsity": 0.9, "lam": 0.1, "lam_final": 1e-4, **every}, pruning),
        ("mgpp-s90-reach", "mgpp", {"final_sparsity": 0.9, "var0": MGPP_REACH_VAR0, **every}, pruning),
        *[(f"magprune-s{round(100 * s)}", "magprune", {"final_sparsity": s, **every}, pruning) for s in (0.8, 0.9, 0.95)],
    ]


def build_method(name, options, preset, steps=None):
    """make_method, telling a method that schedules by step count (MGPP) the run's length unless
    the options already say it."""
    options = dict(options)
    if "total_steps" in method_options(name) and options.get("total_steps") is None:
        options["total_steps"] = steps or preset.finetune_steps
    return make_method(name, **options)


def family(method):
    """"full" for a method that trains base tensors, else "peft"."""
    return "full" if method.trains_base else "peft"


def lr_grid(preset, grid=None):
    """{family: tuple of learning rates}: `grid` (a dict of FAMILIES to non-empty lists of positive
    rates) or the preset's."""
    grid = preset.lr_grid_dict() if grid is None else grid
    if not isinstance(grid, dict) or set(grid) != set(FAMILIES):
        raise bad_value("lr_grid", grid, f"a dict with the keys {list(FAMILIES)}")
    out = {}
    for fam, rates in grid.items():
        if not isinstance(rates, (list, tuple)) or not rates:
            raise bad_type(f"lr_grid[{fam!r}]", rates, "a non-empty list of learning rates")
        out[fam] = tuple(sorted({real_in(f"lr_grid[{fam!r}]", lr, 0.0, math.inf, low_open=True, high_open=True)
                                 for lr in rates}))
    return out


def compare_dir(workdir, preset, data, seed, grid, dtype):
    """Where compare.json goes: the experiment directory, or its compare-grid<h>/ for a grid other
    than the preset's (h: 10 hex digits of the grid's SHA-256), so two protocols never share a file."""
    folder = ex.experiment_dir(workdir, preset, data, seed, dtype)
    if grid == lr_grid(preset):
        return folder
    return folder / f"compare-grid{sha256_hex(repr(sorted(grid.items())).encode())[:10]}"


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


def summarize(label, results, lr=None):
    """One row of compare.json from the per-seed results of one label (at its chosen learning rate):
    what every seed shares (method, options, counts, memory), mean ± sd of the test losses (target
    and source), of the final validation loss and of the sparsity, and the runs."""
    first = results[0]
    runs = [{k: r[k] for k in ("final", "test", "history", "report", "sparsity", "base")}
            | {"seed": r["provenance"]["seed"]} for r in results]
    return {"label": label, "method": first["method"], "options": first["options"], "counts": first["counts"],
            "memory": first["memory"], "train": first["train"], "lr": lr, "seeds": [r["seed"] for r in runs],
            "target": mean_sd([r["test"]["target"] for r in results]),
            "source": mean_sd([r["test"]["source"] for r in results]),
            "val_target": mean_sd([r["final"]["target"] for r in results]),
            "sparsity": mean_sd([r["sparsity"] for r in results]), "runs": runs}


def choose_lr(val_losses):
    """The learning rate of the lowest validation loss in {lr: loss} (ties: the smaller rate)."""
    return min(val_losses, key=lambda lr: (val_losses[lr], lr))


def _jobs(rows, seeds, grid, chosen=None):
    """[(label, name, options, overrides, lr, seed)]: with `chosen` None, every rate of each row's
    family grid on the first seed; else each row's chosen rate on the other seeds."""
    out = []
    for label, name, options, overrides, fam in rows:
        if chosen is None:
            out += [(label, name, options, overrides, lr, seeds[0]) for lr in grid[fam]]
        else:
            out += [(label, name, options, overrides, chosen[label], s) for s in seeds[1:]]
    return out


def _run_jobs(jobs, preset, workdir, data, backend, dtype, seed, progress, comm, base, costs, overwrite):
    """{(label, lr, seed): (result, timing, pool)} of every job, spread over the ranks (a sweep)."""
    mine = assign_jobs(costs, world_size(comm))[0 if comm is None else comm.rank]
    done = []
    for j in mine:
        label, name, options, overrides, lr, s = jobs[j]
        started = ex.run_dir(workdir, preset, data, label, s, seed, lr, dtype).exists()  # else a fresh run
        _, r = ex.finetune(preset, workdir, data, build_method(name, options, preset), label, backend, dtype, s,
                           resume=started and not overwrite, progress=progress, lr=lr, base_seed=seed,
                           train_overrides=overrides, base=base, overwrite=overwrite)
        key = f"{label}:lr{lr!r}:seed{s}"
        timing = {key: r["ms_per_step"]}
        timing.update({f"{key}:{k}": v for k, v in r["report"].items() if k.endswith("ms_per_step")})
        r["report"] = {k: v for k, v in r["report"].items() if not k.endswith("ms_per_step")}
        pool = {f"{key}:{k}": r["memory"].pop(k) for k in POOL_KEYS if k in r["memory"]}
        done.append([(label, lr, s), r, timing, pool])
    if world_size(comm) > 1:
        done = [item for part in comm.allgather_object(done) for item in part]
    return {tuple(key): (r, timing, pool) for key, r, timing, pool in done}


def compare_files(seeds):
    """The names of compare's result, timings and plot for `seeds` seeds (module docstring)."""
    stem = "compare" if positive_int("seeds", seeds) == 1 else f"compare-seeds{seeds}"
    return f"{stem}.json", f"{stem}-timings.json", f"{stem}.png"


def compare(preset, workdir, data, backend="auto", dtype="float32", seed=0, progress=None, only=None, seeds=1,
            grid=None, comm=None, overwrite=False):
    """Run the rows of `compare_runs` (those `only` names; all by default) under the protocol of the
    module docstring and write compare.json (deterministic on the CPU: timings go to
    compare-timings.json) into the experiment directory; returns (compare dict, timings, folder).
    A run of some rows keeps the other rows of an earlier compare.json of the same experiment.

    grid: {family: learning rates} (default: the preset's lr_grid). overwrite: train every run again
    (default: finished runs are reused, unfinished ones resumed). comm (a job of N ranks,
    `minisft compare --gpus N` or mpirun): a sweep: the runs are spread over the ranks (`assign_jobs`,
    longest first by the timings of an earlier compare), each run single-process on its rank's
    device with the serial run's seed and base, so compare.json is the serial one (byte for byte on
    the CPU); rank 0 writes it."""
    only = check_only(preset, only)
    files = compare_files(seeds)
    seeds = list(range(seed, seed + positive_int("seeds", seeds)))
    grid = lr_grid(preset, grid)
    lead = ex.is_lead(comm)
    folder = compare_dir(workdir, preset, data, seed, grid, dtype)
    path = folder / files[0]
    rows_all = compare_runs(preset)
    rows = [(label, name, options, overrides[0] if overrides else None, family(build_method(name, options, preset)))
            for label, name, options, *overrides in rows_all if not only or name in only or label in only]
    if lead:
        ensure_writable_dir(folder, "workdir")
    with RunLock(folder, "experiment directory") if lead else nullcontext():
        if lead:
            remove_stale_temps(folder)
            for name in files:  # every output path, before any work
                check_output_file(folder / name, "workdir")
            for label, _, _, _, fam in rows:
                for lr in grid[fam]:
                    for s in seeds:
                        check_run_dir(ex.run_dir(workdir, preset, data, label, s, seed, lr, dtype), not overwrite,
                                      overwrite)
        base_model, _ = ex.pretrained(preset, workdir, data, backend, dtype, seed, progress, comm, split=False)
        base = base_model.state_dict()
        out = {"preset": asdict(preset), "domains": data.domains, "provenance": ex.provenance(preset, data, seed),
               "data": data.sizes, "vocab_size": data.tokenizer.vocab_size, "backend": base_model.backend,
               "dtype": dtype, "lr_grid": {fam: list(v) for fam, v in grid.items()}, "seeds": seeds}
        earlier, earlier_base = on_rank0(comm, lambda: _earlier_rows(path, out)) if only else ({}, None)
        earlier_timings = on_rank0(comm, lambda: _earlier_timings(folder / files[1]))
        results, timings, pools = {}, {}, {}
        chosen = None
        for phase in ("grid", "seeds"):
            jobs = _jobs(rows, seeds, grid, chosen)
            costs = [earlier_timings.get(f"{label}:lr{lr!r}:seed{s}") for label, *_, lr, s in jobs]
            for key, (r, timing, pool) in _run_jobs(jobs, preset, workdir, data, backend, dtype, seed, progress, comm,
                                                    base, costs, overwrite).items():
                results[key] = r
                timings.update(timing)
                pools.update(pool)
            if chosen is None:
                chosen = {label: choose_lr({lr: results[(label, lr, seeds[0])]["final"]["target"] for lr in grid[fam]})
                          for label, _, _, _, fam in rows}
        summary = {}
        for label, name, options, overrides, fam in rows:
            lr = chosen[label]
            summary[label] = summarize(label, [results[(label, lr, s)] for s in seeds], lr={
                "grid": list(grid[fam]), "chosen": lr, "chosen_on_seed": seeds[0],
                "val_target": {repr(x): results[(label, x, seeds[0])]["final"]["target"] for x in grid[fam]}})
        _add_mask_differences(summary, workdir, preset, data, seed, grid, dtype, seeds)
        out.update({"base": first_base(summary), "minisft_version": __version__, "git_commit": git_commit()})
        if earlier and earlier_base != out["base"]:
            raise bad_path("--only", path, "a table of this experiment to add rows to; its base model's losses differ "
                           "from this one's (move it aside, or run every row (without --only))")
        order = [label for label, *_ in rows_all]
        merged = {**earlier, **summary}
        out["rows"] = [merged[label] for label in order if label in merged]
        out["claims"] = evaluate_claims(out)
        if lead:
            atomic_write_json(path, out)
            timings_all = {**(earlier_timings if only else {}), **timings}
            atomic_write_json(folder / files[1], {"ms_per_step": timings_all, "device_pool_bytes": pools})
    return out, timings, folder


# CuPy's pool bytes depend on what ran before in the process (another row, another rank's rows): they
# go to compare-timings.json with the timings, so compare.json is the same for any run order
POOL_KEYS = ("device_pool_used", "device_pool_held")


def _add_mask_differences(summary, workdir, preset, data, seed, grid, dtype, seeds):
    """For each MGPP row with a magnitude-pruning row of the same final sparsity: per seed, the share
    of MGPP's pruned weights that magnitude pruning keeps (the two prune equal counts, so it is also
    the share of magnitude pruning's pruned weights MGPP keeps), from the runs' final weights."""
    for label, row in summary.items():
        if row["method"] != "mgpp":
            continue
        partner = next((other for other, r in summary.items() if r["method"] == "magprune"
                        and r["options"]["final_sparsity"] == row["options"]["final_sparsity"]), None)
        if partner is None:
            continue
        shares = []
        for s in seeds:
            a, b = (pruned_masks(ex.run_dir(workdir, preset, data, lab, s, seed, summary[lab]["lr"]["chosen"], dtype))
                    for lab in (label, partner))
            pruned = sum(int(m.sum()) for m in a.values())
            shares.append(sum(int((a[k] & ~b[k]).sum()) for k in a) / pruned if pruned else 0.0)
        row["mask_difference"] = {"vs": partner, "share_of_pruned": mean_sd(shares), "per_seed": shares}


def pruned_masks(folder):
    """{weight name: bool array, True = 0.0} of every linear weight in a run's model/trained.safetensors."""
    arrays, _ = load_checkpoint(folder / "model" / "trained.safetensors")
    return {k: np.asarray(v) == 0 for k, v in arrays.items() if k.endswith(".weight") and np.asarray(v).ndim == 2
            and not k.startswith(("wte", "wpe"))}


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


COMPARE_HEADER = ("preset", "domains", "provenance", "data", "vocab_size", "backend", "dtype", "lr_grid", "seeds")


def _earlier_rows(path, current):
    """({label: row}, base losses) of the earlier compare table at `path` (({}, None) when there is
    none), after checking it is a table of the same experiment as `current` (COMPARE_HEADER; its
    base model's losses are compared once the rows have them). A table that cannot be read, or of
    another experiment, is an error: its rows would otherwise be lost or mixed in."""
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
        raise bad_path("--only", path, f"a table of this experiment to add rows to; it differs in {differ} ({rerun})")
    return {row["label"]: row for row in earlier["rows"]}, earlier.get("base")


def _earlier_timings(path):
    try:
        return dict(read_json(path)["ms_per_step"])
    except (MinisftError, KeyError, TypeError, ValueError):
        return {}


def ms_per_step(timings, label, lr=None):
    """The median over seeds of a label's ms/step at rate `lr` (any rate when None); None when unknown."""
    rate = re.escape(repr(lr)) if lr is not None else r"[^:]+"
    values = [v for k, v in timings.items()
              if re.fullmatch(rf"{re.escape(label)}:lr{rate}:seed\d+", k) and v is not None]
    return float(np.median(values)) if values else None
