"""`minisft bench`: one training step (forward, backward, AdamW) timed side by side, in one process,
on the same device and configuration, for minisft (NumPy or CuPy) and PyTorch (the twin in
reference_models.torch_gpt): eager with the same naive attention, eager with
scaled_dot_product_attention, and torch.compile of the latter.

It lives in reference_models because it imports torch; minisft itself never does. Every variant
trains from the same initial weights on the same random tokens. Reported per variant and method:
median ms/step over `steps` timed steps after `warmup` (device events on the GPU), tokens/s,
achieved model TFLOP/s (the standard 6·N·P + attention count, the same for every variant, so the
ratio of two rows is the ratio of their speeds), the fraction of a dense GEMM's rate measured in the
same run, and the peak device memory of the step.

Methods: full fine-tuning; LoRA r=8 on every linear layer; SPruFT at 5% of the rows of every linear
layer (rows chosen by magnitude: the selection does not change the step's cost); GMT with drop
ratio 0.5 per tensor (the masking is part of the step: minisft's `GMT.transform_grads`, and on the
torch side `primitives.zero_gmt_dropped_`, the same count and tie rule written as a careful PyTorch user would).

On the CPU the implementations' steps are interleaved (one step of each in turn), so a change in the
machine's load, cache or allocator state falls on all of them alike; each row also reports the
median process CPU time and the minor page faults per step. On the GPU each runs alone in turn (its
peak memory is its own).
"""

import argparse
import os
import resource
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

PRESETS = {
    "tiny": dict(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=64, batch_size=16),
    "small": dict(vocab_size=1024, block_size=64, n_layer=4, n_head=4, n_embd=128, batch_size=16),
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, batch_size=8),
}
METHODS = ("full", "lora", "spruft", "gmt")


def model_flops(cfg, B, T):
    """Standard training FLOPs of one step: 6·tokens·(non-embedding params + head) + attention
    (QKᵀ and PV forward = 4·B·T²·C, times 3 for forward + backward)."""
    C, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    linear = L * 12 * C * C + V * C  # 4 linear layers per block (3C·C + C·C + 4C·C + 4C·C) and the head
    return 6 * B * T * linear + 3 * L * 4 * B * T * T * C


# ------------------------------------------------------------------------------- minisft side
def minisft_step_fn(method, cfg, B, T, backend, dtype, seed):
    import minisft as ms
    from minisft.model.adapters import RowDelta
    from minisft.methods import GMT
    from minisft.methods.spruft.budget import rows_for_ratio
    from minisft.methods.spruft.importance import row_magnitude, top_rows
    from minisft.methods import LoRAMethod
    from minisft.model.gpt import linear_layer_names
    from minisft.training.optim import AdamW

    model = ms.GPT(cfg, backend=backend, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    if method == "lora":
        LoRAMethod(r=8, alpha=8).prepare(model, None, rng)
    elif method == "gmt":
        gmt = GMT(drop_ratio=0.5)
        gmt.prepare(model, None, rng)
    elif method == "spruft":
        model.freeze()
        for layer in linear_layer_names(cfg):
            W = model.params[layer + ".weight"]
            rows = top_rows(row_magnitude(W), rows_for_ratio(W.shape[0], 0.05))
            model.add_adapter(layer, RowDelta(model, layer, ms.backend.to_numpy(rows)))
    opt = AdamW(lr=1e-4, weight_decay=0.0)
    xp = model.xp
    x = xp.asarray(rng.integers(0, cfg.vocab_size, (B, T)))
    y = xp.asarray(rng.integers(0, cfg.vocab_size, (B, T)))

    def step():
        loss, grads = model.loss_and_grads(x, y)
        if method == "gmt":
            grads = gmt.transform_grads(model, grads, None)
        opt.step(model.trainable_params(), grads)
        return loss

    return step, model


# -------------------------------------------------------------------------------- torch side
def torch_step_fn(method, cfg, B, T, device, dtype, seed, variant, state_dict, rows_by_layer):
    import torch

    from reference_models.adapters import LoRAFactors, LoRALinear, RowDeltaLinear, freeze_base, wrap_linear
    from reference_models.primitives import zero_gmt_dropped_
    from reference_models.torch_gpt import TorchGPT

    tdtype = torch.float64 if dtype == "float64" else torch.float32
    model = TorchGPT.from_minisft(state_dict, cfg, dtype=tdtype, device=device, sdpa=variant != "eager")
    if method in ("lora", "spruft"):
        freeze_base(model)
        for layer, rows in rows_by_layer.items():
            lin = model.get_submodule(layer)
            d_out, d_in = lin.weight.shape
            if method == "lora":
                g = torch.Generator().manual_seed(seed)
                A = (torch.rand(8, d_in, generator=g, dtype=torch.float64) * 2 - 1) / d_in ** 0.5
                f = LoRAFactors(A.numpy(), np.zeros((d_out, 8)), 1.0).to(device=device, dtype=tdtype)
                wrap_linear(model, layer, lambda b: LoRALinear(b, f))
            else:
                m = wrap_linear(model, layer, lambda b: RowDeltaLinear(b, rows, np.zeros((len(rows), d_in)), np.zeros(len(rows))))
                m.to(device=device, dtype=tdtype)
                m.rows = m.rows.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.integers(0, cfg.vocab_size, (B, T)), device=device)
    y = torch.as_tensor(rng.integers(0, cfg.vocab_size, (B, T)), device=device)
    fwd = torch.compile(model) if variant == "compile" else model

    def step():
        _, loss = fwd(x, y)
        loss.backward()
        if method == "gmt":
            zero_gmt_dropped_([p.grad for p in params], 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, model


# ---------------------------------------------------------------------------------- timing
def time_steps(step, steps, warmup, cuda_sync=None, events=None):
    for _ in range(warmup):
        step()
    if cuda_sync:
        cuda_sync()
    times = []
    for _ in range(steps):
        if events is not None:
            start, end = events()
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start_elapsed(start, end))
        else:
            t0 = time.perf_counter()
            step()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), times


def start_elapsed(start, end):
    if hasattr(start, "elapsed_time"):  # torch.cuda.Event
        return start.elapsed_time(end)
    import cupy

    return cupy.cuda.get_elapsed_time(start, end)


def gemm_ceiling(device, dtype, n=4096):
    """TFLOP/s of an n×n×n matrix product through torch on this device (fp32 or TF32 as set)."""
    import torch

    tdtype = torch.float64 if dtype == "float64" else torch.float32
    a = torch.randn(n, n, device=device, dtype=tdtype)
    b = torch.randn(n, n, device=device, dtype=tdtype)
    for _ in range(3):
        a @ b
    if device != "cpu":
        torch.cuda.synchronize()
    reps = 10 if device != "cpu" else 2
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def run(preset="small", backend="auto", dtype="float32", tf32=False, steps=10, warmup=3,
        methods=METHODS, variants=("eager", "sdpa", "compile"), seed=0, batch_size=None):
    if tf32:
        os.environ["CUPY_TF32"] = "1"
    import torch

    import minisft as ms
    from minisft.core.backend import resolve_backend

    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    p = dict(PRESETS[preset])
    B = batch_size or p.pop("batch_size")
    p.pop("batch_size", None)
    cfg = ms.GPTConfig(**p)
    T = cfg.block_size
    backend = resolve_backend(backend)
    gpu = backend == "cupy"
    device = "cuda" if gpu else "cpu"
    flops = model_flops(cfg, B, T)
    ceiling = gemm_ceiling(device, dtype, 4096 if gpu else 1024)
    rows = []
    for method in methods:
        step, model = minisft_step_fn(method, cfg, B, T, backend, dtype, seed)
        sd = model.state_dict()
        rows_by_layer = {layer: ads[0].rows_host for layer, ads in model.adapters.items()} if method == "spruft" else \
            {layer: None for layer in ms.model.gpt.linear_layer_names(cfg)}
        variants_here = [v for v in variants if gpu or v != "compile" or preset != "gpt2"]
        if gpu:
            results = [_measure("minisft", method, step, steps, warmup, gpu, flops, B * T, ceiling)]
            del step, model
            _free(gpu)
            for variant in variants_here:
                tstep, _ = torch_step_fn(method, cfg, B, T, device, dtype, seed, variant, sd, rows_by_layer)
                results.append(_measure(f"torch-{variant}", method, tstep, steps, warmup, gpu, flops, B * T, ceiling, torch_mem=True))
                del tstep
                _free(gpu)
        else:
            impls = [("minisft", step)] + [
                (f"torch-{v}", torch_step_fn(method, cfg, B, T, device, dtype, seed, v, sd, rows_by_layer)[0])
                for v in variants_here]
            results = _measure_interleaved(method, impls, steps, warmup, flops, B * T, ceiling)
            del step, model, impls
            _free(gpu)
        rows += results
        _print_rows(results)
    return {"preset": preset, "B": B, "T": T, "dtype": dtype, "tf32": tf32, "device": _device_name(gpu),
            "timing": "sequential, device events" if gpu else "interleaved, wall clock",
            "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
            "gemm_ceiling_tflops": ceiling, "model_flops_per_step": flops, "rows": rows,
            "versions": _versions(), "date": time.strftime("%Y-%m-%d")}


def _measure(impl, method, step, steps, warmup, gpu, flops, tokens, ceiling, torch_mem=False):
    import torch

    sync = events = None
    peak_of = None
    if gpu:
        if torch_mem:
            sync = torch.cuda.synchronize
            events = lambda: (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            torch.cuda.reset_peak_memory_stats()
            peak_of = lambda: torch.cuda.max_memory_allocated()
        else:
            import cupy

            from minisft.model.memory import PeakMemoryHook

            sync = cupy.cuda.Device().synchronize
            events = lambda: (cupy.cuda.Event(), cupy.cuda.Event())
            hook = PeakMemoryHook()
            hook.__enter__()
            peak_of = lambda: (hook.__exit__(None, None, None), hook.peak)[1]
    _, all_times = time_steps(step, steps, warmup, sync, events)
    return _row(impl, method, all_times, flops, tokens, ceiling, peak=peak_of() if peak_of else None)


def _measure_interleaved(method, impls, steps, warmup, flops, tokens, ceiling):
    """CPU: [(impl, step)] timed one step of each in turn, `steps` rounds after `warmup` rounds.
    Per step: wall time, process CPU time, minor page faults."""
    for _ in range(warmup):
        for _, step in impls:
            step()
    wall, cpu, faults = defaultdict(list), defaultdict(list), defaultdict(list)
    for _ in range(steps):
        for impl, step in impls:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            wall[impl].append(1000 * (time.perf_counter() - t0))
            cpu[impl].append(1000 * (time.process_time() - c0))
            faults[impl].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return [_row(impl, method, wall[impl], flops, tokens, ceiling, cpu_ms_per_step=statistics.median(cpu[impl]),
                 cpu_times_ms=cpu[impl], minor_faults_per_step=statistics.median(faults[impl]))
            for impl, _ in impls]


def _row(impl, method, times, flops, tokens, ceiling, peak=None, **extra):
    ms_step = statistics.median(times)
    return {"impl": impl, "method": method, "ms_per_step": ms_step, "times_ms": times,
            "tokens_per_s": tokens / (ms_step / 1000), "tflops": flops / (ms_step / 1000) / 1e12,
            "pct_of_gemm_ceiling": 100 * flops / (ms_step / 1000) / 1e12 / ceiling, "peak_bytes": peak, **extra}


def _free(gpu):
    import gc

    gc.collect()
    if gpu:
        import cupy
        import torch

        cupy.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()


def _device_name(gpu):
    import torch

    return torch.cuda.get_device_name() if gpu else "cpu"


def _versions():
    import torch

    v = {"numpy": np.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}
    try:
        import cupy

        v["cupy"] = cupy.__version__
    except ImportError:
        pass
    return v


def _print_rows(rows):
    for r in rows:
        peak = f"{r['peak_bytes'] / 2**30:.2f} GiB" if r["peak_bytes"] else "-"
        cpu = f"  cpu {r['cpu_ms_per_step']:7.2f} ms, {r['minor_faults_per_step']:6.0f} faults" if "cpu_ms_per_step" in r else ""
        print(f"{r['method']:7s} {r['impl']:15s} {r['ms_per_step']:9.2f} ms/step  {r['tokens_per_s']:12,.0f} tok/s  "
              f"{r['tflops']:7.2f} TFLOP/s ({r['pct_of_gemm_ceiling']:5.1f}% of GEMM)  peak {peak}{cpu}", flush=True)


def ratios(result):
    """minisft's step time over each torch variant's, per method."""
    out = {}
    by = {(r["method"], r["impl"]): r for r in result["rows"]}
    for (method, impl), r in by.items():
        if impl != "minisft" and (method, "minisft") in by:
            out[f"{method}: minisft / {impl}"] = by[(method, "minisft")]["ms_per_step"] / r["ms_per_step"]
    for method in ("spruft", "lora", "gmt"):  # the issue-20 targets: each method's step over full FT's, same run
        if (method, "minisft") in by and ("full", "minisft") in by:
            out[f"{method}: minisft / minisft full"] = by[(method, "minisft")]["ms_per_step"] / by[("full", "minisft")]["ms_per_step"]
    if ("spruft", "minisft") in by and ("full", "torch-sdpa") in by:
        out["spruft minisft / full torch-sdpa (time)"] = by[("spruft", "minisft")]["ms_per_step"] / by[("full", "torch-sdpa")]["ms_per_step"]
        a, b = by[("spruft", "minisft")]["peak_bytes"], by[("full", "torch-sdpa")]["peak_bytes"]
        if a and b:
            out["spruft minisft / full torch-sdpa (peak memory)"] = a / b
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="minisft bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--backend", default="auto", choices=["numpy", "cupy", "auto"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--tf32", action="store_true", help="TF32 matmuls in both (CUPY_TF32=1, allow_tf32)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--variants", nargs="*", default=["eager", "sdpa", "compile"], choices=["eager", "sdpa", "compile"],
                    help="torch variants to time (none: minisft alone)")
    ap.add_argument("--out", default="bench.json")
    a = ap.parse_args(argv)
    result = run(a.preset, a.backend, a.dtype, a.tf32, a.steps, a.warmup, a.methods, a.variants, batch_size=a.batch_size)
    result["ratios"] = ratios(result)
    for k, v in result["ratios"].items():
        print(f"{k:55s} {v:6.3f}")
    from minisft.core.fileio import atomic_write_json

    atomic_write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
