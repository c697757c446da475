"""The rank side of tests/test_data_parallel.py, run under `mpiexec -n N` (or `minisft launch` on GPUs).

    python tests/data_parallel_worker.py prepare [cupy]   every method's prepare(): one process vs N ranks
    python tests/data_parallel_worker.py train [cupy]     every method, TRAIN_STEPS training steps: the same
    python tests/data_parallel_worker.py prepare+train [cupy]   both, in one job
    python tests/data_parallel_worker.py run SPEC_JSON    one training run in a run directory, stopped, killed,
                                                          failing or resumed as SPEC says (`run_spec`)
    python tests/data_parallel_worker.py cli ARGS...      `minisft ARGS` with the test suite's micro preset

Every rank first runs the SINGLE-process reference in-process (comm=None, the whole global batch),
then the same thing data-parallel (its rows of every global batch, collectives between the ranks),
and compares the two itself; every rank also checks that all ranks hold bit-identical results
(`check_replicas`). Rank 0 prints one line per case: "RESULT {json}" with the case name, the largest
relative difference of any float (tensors and report numbers), the report entries that differ other
than by float rounding (selections: must be none), and whether the replicas agreed, for every rank.

The model is smaller than the `tiny` preset (2 layers, 32 wide, T 16, B 8) and float64, so a case
takes milliseconds; `tiny_model`, `tiny_task` and `compare_trees` are shared with the test file.
"""

import json
import math
import os
import signal
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from minisft.core.backend import rng as make_rng
from minisft.core.backend import to_numpy
from minisft.training.checkpoint import arrays_digest
from minisft.core.config import GPTConfig
from minisft.distributed import DistributedError, from_environment
from minisft.distributed.data_parallel import check_replicas
from minisft.core.errors import MinisftError
from minisft.methods import make_method
from minisft.training.train import TrainConfig, train
from tests.helpers import counter_task, tiny_gpt

CFG = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
BATCH = 8


def tiny_model(backend="numpy", seed=0):
    """A float64 GPT of CFG whose biases and LayerNorms are perturbed (no symmetric zeros)."""
    return tiny_gpt(CFG, xp=backend, seed=seed, perturbed=True)


def tiny_task(comm=None, xp=np, batch_size=BATCH, n=4000, seed=0):
    """The counter task (tests.helpers) for CFG: 2 validation batches of the target, 1 of the source."""
    return counter_task(CFG.vocab_size, CFG.block_size, batch_size, n, seed, source_batches=1, comm=comm, xp=xp)


# name -> (method, options): every method, and every branch of a method that reduces a statistic
PREPARE_CASES = {
    "spruft-taylor": ("spruft", {"ratio": 0.25, "calib_batches": 3, "importance": "taylor"}),
    "spruft-taylor-multivariable": ("spruft", {"ratio": 0.25, "calib_batches": 3, "importance": "taylor",
                                                "multivariable": True}),
    "spruft-obd": ("spruft", {"ratio": 0.25, "calib_batches": 3, "importance": "obd"}),
    "spruft-zeroth-order": ("spruft", {"ratio": 0.25, "calib_batches": 2, "calib_batch_size": None,
                                       "importance": "zeroth_order", "zo_samples": 3}),  # rows split over ranks
    "spruft-magnitude": ("spruft", {"ratio": 0.25, "importance": "magnitude"}),
    "spruft-wanda": ("spruft", {"ratio": 0.25, "calib_batches": 3, "importance": "wanda"}),
    "spruft-wanda-one-batch": ("spruft", {"ratio": 0.25, "calib_batches": 1, "importance": "wanda"}),
    "spruft-multivariable-one-batch": ("spruft", {"ratio": 0.25, "calib_batches": 1, "importance": "taylor",
                                                  "multivariable": True, "mode": "neurons"}),  # a rank without a batch
    "spruft-task-batches": ("spruft", {"ratio": 0.25, "calib_batches": 2, "calib_batch_size": None,
                                       "importance": "taylor"}),
    "spruft-neurons-global": ("spruft", {"ratio": 0.25, "calib_batches": 3, "importance": "taylor", "mode": "neurons",
                                         "scope": "global"}),
    "spruft-neurons-multivariable": ("spruft", {"ratio": 0.25, "calib_batches": 3, "importance": "taylor",
                                                "mode": "neurons", "multivariable": True}),
    "loradrop-joint": ("loradrop", {"r": 2, "alpha": 4, "probe_steps": 3, "probe_lr": 1e-2, "threshold": 0.8}),
    "loradrop-per-type": ("loradrop", {"r": 2, "alpha": 4, "probe_steps": 3, "probe_lr": 1e-2, "threshold": 0.8,
                                       "selection": "per_type"}),
    "adapeft-exact": ("adapeft", {"budget": 0.05, "lora_r": 2, "lora_alpha": 4, "probe_steps": 3, "every": 2,
                                  "probe_lr": 1e-2, "estimator": "exact"}),
    "adapeft-gen": ("adapeft", {"budget": 0.05, "lora_r": 2, "lora_alpha": 4, "probe_steps": 3, "every": 2,
                                "probe_lr": 1e-2, "estimator": "gen"}),
}


# AdaPEFT's curvature, fit and influence numbers are finite-difference estimates: the exact
# estimator divides a difference of two gradients by 2ε (ε ≈ u^(1/5)·scale, Richardson), GeN fits a
# parabola through loss differences at steps ~η; both amplify the ~1e-16 relative effect of summing
# a batch in another order by several orders of magnitude (measured: up to 3.2e-10 relative, 2 ranks).
FINITE_DIFFERENCE_KEYS = {"a", "b", "r2", "influence", "ppi"}


TRAIN_STEPS = 20
# name -> (method, options, TrainConfig overrides): every method; accumulation 2 in some. Without
# accumulation the trainer overlaps the all-reduce with the backward (on GPUs: NCCL's side stream)
TRAIN_CASES = {
    "full": ("full", {}, {"accumulation": 2}),
    "full-overlapped": ("full", {}, {}),
    "lora": ("lora", {"r": 2, "alpha": 4}, {}),
    "spruft-taylor": ("spruft", {"ratio": 0.25, "calib_batches": 2, "importance": "taylor"}, {"accumulation": 2}),
    "spruft-obd": ("spruft", {"ratio": 0.25, "calib_batches": 2, "importance": "obd"}, {}),
    "loradrop": ("loradrop", {"r": 2, "alpha": 4, "probe_steps": 3, "probe_lr": 1e-2, "threshold": 0.8}, {}),
    "adapeft": ("adapeft", {"budget": 0.05, "lora_r": 2, "lora_alpha": 4, "probe_steps": 3, "every": 2,
                            "probe_lr": 1e-2, "estimator": "exact"}, {}),
    "gmt-tensor": ("gmt", {"drop_ratio": 0.5}, {}),
    "gmt-global-frozen": ("gmt", {"drop_ratio": 0.7, "scope": "global", "freeze_masked": True}, {"accumulation": 2}),
    "mgpp": ("mgpp", {"final_sparsity": 0.5, "total_steps": TRAIN_STEPS}, {}),
    "magprune": ("magprune", {"final_sparsity": 0.5, "total_steps": TRAIN_STEPS}, {}),
}


def train_config(method, overrides):
    lr = 3e-3 if method.trains_base else 1e-2
    return TrainConfig(**{"steps": TRAIN_STEPS, "lr": lr, "eval_every": 5, "seed": 5, **overrides})


def train_case(comm, name, backend):
    """One method's TRAIN_STEPS steps, single process vs data parallel, on this rank."""
    method_name, options, overrides = TRAIN_CASES[name]
    xp = np if backend == "numpy" else __import__("cupy")
    runs = {}
    for which, c in (("single", None), ("parallel", comm)):
        model, method = tiny_model(backend), make_method(method_name, **options)
        result = train(model, method, tiny_task(c, xp), train_config(method, overrides), progress=False)
        runs[which] = (model, method, result)
    (ms, es, rs), (md, ed, rd) = runs["single"], runs["parallel"]
    distributed = rd.pop("distributed", None)
    acts = (rs.pop("memory")["activations"], rd.pop("memory")["activations"])
    diffs, bad = compare_trees(rs, rd, "result")  # losses, evaluations, the method's report
    for a, b, path in ((vars(es), vars(ed), "method"), (ms.params, md.params, "params"),
                       (ms.adapter_params(), md.adapter_params(), "adapters")):
        d, b = compare_trees(a, b, path)
        diffs.update(d)
        bad += b
    arrays = {**md.params, **md.adapter_params(), **{f"state/{k}": v for k, v in ed.state_arrays().items()}}
    return {"case": name, **split_diffs(diffs), "differences": bad[:10],
            "replicas_agree": _replicas_agree(comm, arrays, None), "distributed": distributed,
            "activation_bytes": {"single": acts[0], "parallel": acts[1]},
            "trainable_elements": sum(int(v.size) for v in md.trainable_params().values())}


def compare_trees(a, b, path="", skip=("ms_per_step", "_seconds")):
    """({path: relative difference} of the float leaves (arrays: the largest over the array), [paths
    whose non-float leaves or structure differ]) of two JSON-like trees; keys containing a `skip`
    string are ignored."""
    diffs, bad = {}, []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            if set(a) != set(b):
                bad.append(f"{path}: keys {sorted(map(str, set(a) ^ set(b)))[:4]}")
            for k in a:
                if k in b and not any(s in str(k) for s in skip):
                    walk(a[k], b[k], f"{path}/{k}")
        elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if len(a) != len(b):
                bad.append(f"{path}: lengths {len(a)} vs {len(b)}")
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]")
        elif hasattr(a, "shape") and hasattr(b, "shape"):  # arrays: exact for integers and bools
            a, b = to_numpy(a), to_numpy(b)
            if a.shape != b.shape or a.dtype != b.dtype:
                bad.append(f"{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}")
            elif a.dtype.kind == "f":
                diffs[path] = rel_diff(a, b)
            elif not np.array_equal(a, b):
                bad.append(f"{path}: arrays differ")
        elif isinstance(a, float) and isinstance(b, float):
            diffs[path] = 0.0 if math.isnan(a) and math.isnan(b) else rel_diff(np.array(a), np.array(b))
        elif not (a == b and type(a) is type(b)):
            bad.append(f"{path}: {a!r} vs {b!r}")

    walk(a, b, path)
    return diffs, bad


def split_diffs(diffs):
    """{"max_rel_diff": over every float but the finite-difference estimates,
    "max_rel_diff_finite_difference": over those (FINITE_DIFFERENCE_KEYS)}."""
    fd = {p: d for p, d in diffs.items() if p.rsplit("/", 1)[-1] in FINITE_DIFFERENCE_KEYS}
    return {"max_rel_diff": max((d for p, d in diffs.items() if p not in fd), default=0.0),
            "max_rel_diff_finite_difference": max(fd.values(), default=0.0)}


def rel_diff(a, b):
    """max |a - b| / max(1, max |b|): relative for large values, absolute near zero."""
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _replicas_agree(comm, arrays, generator):
    try:
        check_replicas(comm, arrays_digest(arrays, {"rng": None if generator is None else generator.bit_generator.state}))
        return True
    except DistributedError:
        return False


def prepare_case(comm, name, backend):
    """One method's prepare(), single process vs data parallel, on this rank."""
    method_name, options = PREPARE_CASES[name]
    xp = np if backend == "numpy" else __import__("cupy")
    runs = {}
    for which, c in (("single", None), ("parallel", comm)):
        model, method, gen = tiny_model(backend), make_method(method_name, **options), make_rng(7)
        method.prepare(model, tiny_task(c, xp), gen)
        runs[which] = (model, method, gen)
    (ms, es, gs), (md, ed, gd) = runs["single"], runs["parallel"]
    diffs, bad = compare_trees(vars(es), vars(ed), "method")  # report, selections, scores, masks
    for a, b, path in ((ms.trainable_params(), md.trainable_params(), "params"),
                       (es.state_arrays(), ed.state_arrays(), "state")):
        d, b = compare_trees(a, b, path)
        diffs.update(d)
        bad += b
    if gs.bit_generator.state != gd.bit_generator.state:
        bad.append("generator state")
    arrays = {**md.trainable_params(), **{f"state/{k}": v for k, v in ed.state_arrays().items()}}
    return {"case": name, **split_diffs(diffs), "differences": bad[:10],
            "replicas_agree": _replicas_agree(comm, arrays, gd)}


class Stopped(Exception):
    """The run 'stops' (every rank at once) after a step: a process that ends with its checkpoint on disk."""


def run_spec(comm, spec):
    """One run of TRAIN_CASES[spec["case"]] in spec["workdir"] (resume: spec["resume"]); the hooks
    planted by spec: "stop_after": k (every rank raises Stopped after step k, caught: a clean end),
    "kill_after": [rank, k] (that rank SIGKILLs itself after step k), "raise_after": [rank, k] (that
    rank raises), "kill_in_checkpoint_write": n (rank 0 SIGKILLs itself inside the rename of its n-th
    checkpoint), "lr": another learning rate, "perturb_rank": r (one weight entry of rank r 1e-6 off
    after the first update: the replicas differ). Returns {"error": message or None, "losses", "steps"}."""
    method_name, options, overrides = TRAIN_CASES[spec["case"]]
    backend = spec.get("backend", "numpy")
    model, method = tiny_model(backend), make_method(method_name, **options)
    cfg = train_config(method, {**overrides, "checkpoint_every": spec.get("checkpoint_every", 5),
                                **({"lr": spec["lr"]} if "lr" in spec else {})})
    after_step = method.after_step

    def planted(model_, step):
        after_step(model_, step)
        if step == 0 and spec.get("perturb_rank") == comm.rank:  # a replica that differs in one weight entry
            model_.params["h.0.mlp.c_fc.weight"][0, 0] += 1e-6
        if spec.get("stop_after") == step + 1:
            raise Stopped
        if spec.get("kill_after") == [comm.rank, step + 1]:
            os.kill(os.getpid(), signal.SIGKILL)
        if spec.get("raise_after") == [comm.rank, step + 1]:
            raise RuntimeError(f"planted failure on rank {comm.rank} after step {step + 1}")

    method.after_step = planted
    if spec.get("kill_in_checkpoint_write") and comm.rank == 0:
        replace, writes = os.replace, []

        def dying_replace(src, dst):
            if str(dst).endswith("checkpoint.safetensors"):
                writes.append(dst)
                if len(writes) == spec["kill_in_checkpoint_write"]:
                    os.kill(os.getpid(), signal.SIGKILL)
            return replace(src, dst)

        os.replace = dying_replace  # the atomic write's commit (minisft.core.fileio.atomic_write_bytes)
    try:
        xp = np if backend == "numpy" else __import__("cupy")
        result = train(model, method, tiny_task(comm, xp), cfg, workdir=spec["workdir"],
                       resume=spec.get("resume", False), progress=False)
    except Stopped:
        return {"error": None, "stopped": True}
    except MinisftError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {"error": None, "losses": [r["loss"] for r in result["history"]["train"]],
            "distributed": result.get("distributed")}


def report(comm, mode, result):
    """Rank 0 prints every rank's result of one case as one line "RESULT {json}"."""
    ranks = comm.allgather_object(dict(result, rank=comm.rank, backend=comm.backend, world_size=comm.world_size))
    if comm.rank == 0:
        print("RESULT " + json.dumps({"mode": mode, "case": result["case"], "ranks": ranks}), flush=True)


def cli(argv):
    """`minisft ARGV` with the test suite's micro preset registered (tests/test_train.py's MICRO)."""
    from minisft.app import cli as command
    from minisft.app import experiment
    from tests.test_train import MICRO

    experiment.PRESETS["micro"] = MICRO
    return command.main(argv)


def main(argv):
    if argv[0] == "cli":
        sys.exit(cli(argv[1:]))
    what = argv[0]
    spec = json.loads(argv[1]) if what == "run" else None
    backend = spec.get("backend", "numpy") if what == "run" else (argv[1] if len(argv) > 1 else "numpy")
    comm = from_environment(device=backend, timeout=120)
    with comm.abort_on_failure():
        modes = what.split("+")  # "prepare+train": both in one job (one start-up on GPUs)
        unknown = set(modes) - {"prepare", "train", "run"}
        if unknown:
            raise SystemExit(f"unknown mode {what!r}")
        if "prepare" in modes:
            for name in PREPARE_CASES:
                report(comm, "prepare", prepare_case(comm, name, backend))
        if "train" in modes:
            for name in TRAIN_CASES:
                try:
                    result = train_case(comm, name, backend)
                except MinisftError as e:  # raised on every rank alike (a replica check, a non-finite loss)
                    result = {"case": name, "max_rel_diff": math.inf, "max_rel_diff_finite_difference": math.inf,
                              "differences": [f"{type(e).__name__}: {e}"], "replicas_agree": False, "distributed": None}
                report(comm, "train", result)
        if "run" in modes:
            report(comm, "run", dict(run_spec(comm, spec), case=spec["case"]))
    comm.close()


if __name__ == "__main__":
    main(sys.argv[1:])
