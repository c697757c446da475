"""Data-parallel training step, minisft vs PyTorch DDP, on 1, 2, 4, ... devices of one machine.

    python -m reference_models.bench.data_parallel --preset gpt2 --world-size 1,2,4 --methods full spruft lora

For each world size N the benchmark starts N ranks (one process per GPU through `minisft launch` for
CuPy; `mpiexec -n N` for NumPy), and every rank times, for each method:

- minisft: the trainer's data-parallel step (minisft.distributed.data_parallel): every rank draws the
  same global batch of N·B rows and keeps its B rows, forward + backward with its share of the loss
  (grad_scale = 1/N), the bucketed all-reduce of the trainable gradients and the loss (NCCL / MPI),
  AdamW. On GPUs the all-reduce overlaps the backward, each block's gradients reduced on a side
  stream once final (minisft.distributed.overlap); with MPI it follows the backward. With N = 1 no
  collective runs (the single-process trainer).
- minisft-no-overlap (with --no-overlap): the same step with the all-reduce after the whole backward.
- torch: the PyTorch twin (reference_models.torch_gpt, scaled_dot_product_attention) wrapped in
  DistributedDataParallel (NCCL on GPUs, gloo on CPUs, 25 MB buckets as ours), the same B rows per
  rank, AdamW; with N = 1 the plain module (no DDP), PyTorch's own single-device step.

B is the PER-DEVICE batch (the issue's weak scaling: 8 × 1024 per GPU on gpt2), so every rank does the
same work at every N. Time of one step = the slowest rank's (host clock around the step after the
device finished it; per-step times all-gathered), median over `steps` timed steps after `warmup`.
Scaling efficiency at N = T_1 / T_N (N × single-device throughput vs N-device throughput for the same
per-device batch), per implementation. Bytes all-reduced per step: minisft's ReduceReport (gradients
of the trainable tensors + the 8-byte loss); DDP's: the bytes of its parameters that require grad.

The model and adapters come from reference_models.bench.step (`minisft_step_fn` / `torch_step_fn` build
them; only their step is replaced here by the data-parallel one), so both sides train the same
tensors from the same initial weights. One JSON (`--out`) and a table on stdout.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from minisft.distributed.rank_threads import THREAD_VARIABLES
from reference_models.bench.step import PRESETS, _device_name, _free, _versions, minisft_step_fn, time_steps, torch_step_fn

METHODS = ("full", "lora", "spruft")  # the three; GMT's mask would need the same in DDP's hooks
ROOT = Path(__file__).resolve().parents[1]


class _WallClock:
    """A timing "event" for bench.time_steps: record() waits for the device, then reads the host clock
    (one clock for both libraries and for the collectives on any stream)."""

    def __init__(self, sync):
        self.sync, self.t = sync, None

    def record(self):
        self.sync()
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return 1000 * (end.t - self.t)


# ------------------------------------------------------------------------------------- a rank
def _global_batch(cfg, B, T, N, seed, xp):
    """The same (N·B, T) tokens and targets on every rank (drawn on the host, moved)."""
    rng = np.random.default_rng(seed + 1)
    x = rng.integers(0, cfg.vocab_size, (N * B, T))
    y = rng.integers(0, cfg.vocab_size, (N * B, T))
    return xp.asarray(x), xp.asarray(y)


def minisft_dp_step(method, cfg, B, T, backend, dtype, seed, comm, phases=None, sync=None, overlap=True):
    """(step, model, {"bytes", "buckets", "tensors"} all-reduced per step) of minisft's data-parallel step,
    its all-reduce overlapped with the backward where the backend can (`overlap`) or after it.
    With a `phases` list, each step appends {phase: ms} for forward+backward, the all-reduce (which
    includes waiting for the slowest rank; overlapped: what is left of it after the backward) and
    AdamW, the compute stream synchronised (`sync`) at each boundary, and the plain all-reduce once
    more after a barrier (the collective's own cost)."""
    from minisft.distributed import data_parallel as dp
    from minisft.distributed.overlap import make_reducer
    from minisft.training.optim import AdamW

    _, model = minisft_step_fn(method, cfg, B, T, backend, dtype, seed)
    opt = AdamW(lr=1e-4, weight_decay=0.0)
    x, y = _global_batch(cfg, B, T, comm.world_size, seed, model.xp)
    reduced = {}

    def step():
        marks = [time.perf_counter()]

        def mark():
            if phases is not None:
                sync()
                marks.append(time.perf_counter())

        reducer = make_reducer(comm) if overlap and comm.world_size > 1 else None
        loss, grads = dp.local_loss_and_grads(model, x, y, comm, reducer)
        mark()
        if reducer is None:
            loss, grads, report = dp.reduce_loss_and_grads(comm, loss, grads)
        else:  # = dp.loss_and_grads_overlapped, split where the backward ends
            loss, grads, report = reducer.finish(grads, loss)
        mark()
        if report is not None:
            reduced.update(bytes=report.bytes, buckets=report.buckets, tensors=report.tensors)
        opt.step(model.trainable_params(), grads)
        mark()
        if phases is not None:
            comm.barrier()  # every rank here: the same all-reduce again, without waiting for a slower peer
            mark()
            dp.reduce_loss_and_grads(comm, loss, grads)
            mark()
            times = [1000 * (b - a) for a, b in zip(marks, marks[1:])]
            phases.append({"forward_backward": times[0], "allreduce": times[1], "adamw": times[2],
                           "allreduce_after_barrier": times[4]})
        return loss

    return step, model, reduced


def _phase_medians(phases, warmup):
    """{phase: median ms} over the timed steps (the first `warmup` entries dropped)."""
    timed = phases[warmup:]
    return {k: statistics.median(p[k] for p in timed) for k in timed[0]} if timed else {}


def torch_ddp_step(method, cfg, B, T, device, dtype, seed, comm, state_dict, rows_by_layer):
    """(step, bytes all-reduced per step) of the twin under DDP (the plain module at N = 1)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    _, model = torch_step_fn(method, cfg, B, T, device, dtype, seed, "sdpa", state_dict, rows_by_layer)
    params = [p for p in model.parameters() if p.requires_grad]
    reduced = sum(p.numel() * p.element_size() for p in params) if comm.world_size > 1 else 0
    if comm.world_size > 1:
        model = DDP(model, device_ids=[comm.local_rank] if device != "cpu" else None, bucket_cap_mb=25)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    x, y = _global_batch(cfg, B, T, comm.world_size, seed, np)
    rows = slice(comm.rank * B, (comm.rank + 1) * B)
    x, y = torch.as_tensor(x[rows], device=device), torch.as_tensor(y[rows], device=device)

    def step():
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, reduced


def _timed(step, steps, warmup, sync, comm):
    """Per-step ms of the slowest rank (host clock, device synchronised), over `steps` steps."""
    comm.barrier()
    _, mine = time_steps(step, steps, warmup, sync, lambda: (_WallClock(sync), _WallClock(sync)))
    every = comm.allgather_object(mine)
    return [max(ts) for ts in zip(*every)]


def rank_main(a):
    """One rank of a world: time every method for both implementations; rank 0 writes the JSON part."""
    import torch

    import minisft as ms
    from minisft.distributed import from_environment

    gpu = a.backend == "cupy"
    comm = from_environment(device=a.backend, timeout=600)
    if gpu:
        torch.cuda.set_device(comm.local_rank)  # cupy's device is set by the NCCL communicator
    if a.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    device = f"cuda:{comm.local_rank}" if gpu else "cpu"
    p = dict(PRESETS[a.preset])
    B = a.batch_size or p.pop("batch_size")
    p.pop("batch_size", None)
    cfg = ms.GPTConfig(**p)
    T = cfg.block_size
    N = comm.world_size
    if N > 1:
        torch.distributed.init_process_group("nccl" if gpu else "gloo", init_method=f"tcp://{a.torch_addr}:{a.torch_port}",
                                             rank=comm.rank, world_size=N)
    if gpu:
        import cupy

        from minisft.core.backend import synchronize

        def sync():
            torch.cuda.synchronize(device)
            synchronize(cupy)
    else:
        def sync():
            pass

    rows = []
    with comm.abort_on_failure():
        for method in a.methods:
            for impl, overlap in (("minisft", True), ("minisft-no-overlap", False))[: 1 + a.no_overlap]:
                step, model, reduced = minisft_dp_step(method, cfg, B, T, a.backend, a.dtype, a.seed, comm,
                                                       overlap=overlap)
                sd = model.state_dict()
                rows_by_layer = ({layer: ads[0].rows_host for layer, ads in model.adapters.items()} if method == "spruft"
                                 else {layer: None for layer in ms.model.gpt.linear_layer_names(cfg)})
                times = _timed(step, a.steps, a.warmup, sync, comm)
                rows.append(_row(impl, method, N, times, reduced.get("bytes", 0), B * T))
                del step, model
                if a.phases:
                    _free(gpu)
                    phases = []
                    step, model, _ = minisft_dp_step(method, cfg, B, T, a.backend, a.dtype, a.seed, comm, phases, sync,
                                                     overlap)
                    _timed(step, a.steps, a.warmup, sync, comm)
                    rows[-1]["phases_ms_by_rank"] = comm.allgather_object(_phase_medians(phases, a.warmup))
                    del step, model
                _free(gpu)
            tstep, tbytes = torch_ddp_step(method, cfg, B, T, device, a.dtype, a.seed, comm, sd, rows_by_layer)
            times = _timed(tstep, a.steps, a.warmup, sync, comm)
            rows.append(_row("torch-ddp", method, N, times, tbytes, B * T))
            del tstep
            _free(gpu)
            if comm.rank == 0:
                print(f"N={N} {method}: " + ", ".join(f"{r['impl']} {r['ms_per_step']:.2f} ms" for r in rows
                                                      if r["method"] == method), flush=True)
    if N > 1:
        torch.distributed.destroy_process_group()
    if comm.rank == 0:
        Path(a.part).write_text(json.dumps({"world_size": N, "backend": comm.backend, "device": _device_name(gpu),
                                            "rows": rows}))
    comm.close()


def _row(impl, method, N, times, nbytes, tokens_per_rank):
    ms_step = statistics.median(times)
    return {"impl": impl, "method": method, "world_size": N, "ms_per_step": ms_step, "times_ms": times,
            "tokens_per_s": N * tokens_per_rank / (ms_step / 1000), "allreduce_bytes_per_step": nbytes}


# ------------------------------------------------------------------------------------ the driver
def _launcher(backend, N):
    """The command prefix that starts N ranks: minisft launch (CuPy, NCCL) or mpiexec (NumPy, MPI)."""
    if backend == "cupy":
        return [sys.executable, "-m", "minisft.distributed.launch", "--nproc", str(N), "--"]
    local = Path(sys.executable).with_name("mpiexec")
    mpiexec = str(local) if local.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("bench_dp: NumPy ranks need mpiexec (pip install 'minisft[mpi]')")
    return [mpiexec, "-n", str(N)]


def efficiencies(rows):
    """{(impl, method, N): T_1 / T_N} for every N that has its N = 1 row."""
    base = {(r["impl"], r["method"]): r["ms_per_step"] for r in rows if r["world_size"] == 1}
    return {(r["impl"], r["method"], r["world_size"]): base[(r["impl"], r["method"])] / r["ms_per_step"]
            for r in rows if (r["impl"], r["method"]) in base}


def table(rows):
    eff = efficiencies(rows)
    lines = [f"{'method':7s} {'impl':18s} {'N':>2s} {'ms/step':>9s} {'tok/s':>12s} {'efficiency':>10s} {'bytes/step':>12s}"]
    for r in sorted(rows, key=lambda r: (r["method"], r["impl"], r["world_size"])):
        e = eff.get((r["impl"], r["method"], r["world_size"]))
        lines.append(f"{r['method']:7s} {r['impl']:18s} {r['world_size']:2d} {r['ms_per_step']:9.2f} {r['tokens_per_s']:12,.0f} "
                     f"{'-' if e is None else f'{100 * e:.1f}%':>10s} {r['allreduce_bytes_per_step']:12,d}")
    for r in rows:
        for rank, phases in enumerate(r.get("phases_ms_by_rank", [])):
            lines.append(f"  {r['method']} N={r['world_size']} {r['impl']} rank {rank} phases (ms): "
                         + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m reference_models.bench.data_parallel", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="gpt2", choices=sorted(PRESETS))
    ap.add_argument("--backend", default="cupy", choices=["cupy", "numpy"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--tf32", action="store_true", help="TF32 matmuls in both (CUPY_TF32=1, allow_tf32)")
    ap.add_argument("--world-size", default="1,2,4", help="comma-separated world sizes, e.g. 1,2,4")
    ap.add_argument("--batch-size", type=int, help="rows PER DEVICE (default: the preset's, 8 for gpt2)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--phases", action="store_true",
                    help="also time minisft's forward+backward, all-reduce and AdamW apart (synchronised; extra steps)")
    ap.add_argument("--no-overlap", action="store_true",
                    help="also time minisft's step with the all-reduce after the whole backward (minisft-no-overlap rows)")
    ap.add_argument("--out", default="bench-dp.json")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # set by the driver: this process is a rank
    ap.add_argument("--torch-addr", default="127.0.0.1", help=argparse.SUPPRESS)
    ap.add_argument("--torch-port", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.tf32:
        os.environ["CUPY_TF32"] = "1"
    if a.part:
        rank_main(a)
        return 0
    from minisft.core.fileio import atomic_write_json
    from minisft.distributed.launch import free_port

    sizes = [int(s) for s in a.world_size.split(",")]
    rows, parts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for N in sizes:
            part = Path(tmp) / f"world{N}.json"
            forwarded = [arg for arg in (argv if argv is not None else sys.argv[1:])]
            cmd = [*_launcher(a.backend, N), sys.executable, "-m", "reference_models.bench.data_parallel", *forwarded,
                   "--world-size", str(N), "--part", str(part), "--torch-port", str(free_port())]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
            for name in THREAD_VARIABLES:  # each rank its share of the cores (ranks import NumPy before minisft)
                env.setdefault(name, str(max(1, (os.cpu_count() or 1) // N)))
            print(f"world size {N}: {' '.join(cmd)}", flush=True)
            rc = subprocess.call(cmd, cwd=ROOT, env=env)
            if rc != 0:
                raise SystemExit(f"bench_dp: world size {N} failed with exit code {rc}")
            parts.append(json.loads(part.read_text()))
            rows += parts[-1]["rows"]
    eff = efficiencies(rows)
    result = {"preset": a.preset, "per_device_batch": a.batch_size or PRESETS[a.preset]["batch_size"],
              "T": PRESETS[a.preset]["block_size"], "dtype": a.dtype, "tf32": a.tf32, "backend": a.backend,
              "device": parts[0]["device"], "steps": a.steps, "warmup": a.warmup, "rows": rows,
              "scaling_efficiency": {f"{impl} {method} N={n}": e for (impl, method, n), e in eff.items()},
              "versions": _versions(), "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    print(table(rows))
    atomic_write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
