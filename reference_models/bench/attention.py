"""Causal attention alone, forward and backward, in one process on one GPU: minisft's tiles on CUDA
cores (fp32), minisft's tiles on tensor cores (TF32), and torch's scaled_dot_product_attention on
float32 with TF32 allowed (whichever kernel torch picks for that). Default shapes are the gpt2
preset's: B=8, H=12, T=1024, hd=64, q, k, v read from one fused (B, T, 3C) tensor in every variant.

First correctness, on the same random inputs: each variant's y and dqkv against the float64 plain
xp body (minisft.nn.attention's reference), as max |a − b| / max |b|. Then timing: device
events around each call, the median of `reps` calls after `warmup` (forward alone; backward alone,
from the same forward's outputs). TFLOP/s count the causal half of the nominal products (forward 2,
backward 5 of B·H·T²·hd/2 multiply-adds each) for every variant, so the ratios are speed ratios.

Usage: python -m reference_models.bench.attention [--out attention.json]
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np


def _median_ms(fn, warmup, reps):
    import cupy

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(times), times


def _rel(a, b):
    import cupy

    a, b = cupy.asarray(a, dtype=cupy.float64), cupy.asarray(b, dtype=cupy.float64)
    return float(cupy.max(cupy.abs(a - b)) / cupy.max(cupy.abs(b)))


def run(B=8, H=12, T=1024, hd=64, warmup=5, reps=30, seed=0):
    import cupy
    import torch

    from minisft.gpu import flash_attention as fa
    from minisft.nn import attention_backward, attention_forward

    C = H * hd
    rng = np.random.default_rng(seed)
    qkv = cupy.asarray(rng.standard_normal((B, T, 3 * C)), dtype=cupy.float32)
    dy = cupy.asarray(rng.standard_normal((B, T, C)), dtype=cupy.float32)

    # reference: the plain xp body in float64 (the fast path's reference, whatever is registered)
    y64, cache = attention_forward.reference(qkv.astype(cupy.float64), H)
    g64 = attention_backward.reference(dy.astype(cupy.float64), cache)["x"]
    del cache
    cupy.get_default_memory_pool().free_all_blocks()

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    tq = torch.as_tensor(qkv, device="cuda").clone().requires_grad_(True)
    tdy = torch.as_tensor(dy, device="cuda").clone()

    def torch_fwd():
        q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in tq.split(C, dim=2))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)

    variants = {}
    for name, tf32 in (("minisft fp32 tiles", False), ("minisft TF32 tiles", True)):
        y, lse = fa.flash_attention(qkv, H, tf32=tf32)
        g = fa.flash_attention_backward(dy, qkv, y, lse, H, tf32=tf32)
        fwd = lambda tf32=tf32: fa.flash_attention(qkv, H, tf32=tf32)
        bwd = lambda tf32=tf32, y=y, lse=lse: fa.flash_attention_backward(dy, qkv, y, lse, H, tf32=tf32)
        variants[name] = dict(err_y=_rel(y, y64), err_dqkv=_rel(g, g64), fwd=fwd, bwd=bwd)
    ty = torch_fwd()
    (tg,) = torch.autograd.grad(ty, (tq,), tdy, retain_graph=True)
    variants["torch SDPA (fp32, TF32 allowed)"] = dict(
        err_y=_rel(cupy.asarray(ty.detach()), y64), err_dqkv=_rel(cupy.asarray(tg), g64),
        fwd=torch_fwd, bwd=lambda: torch.autograd.grad(ty, (tq,), tdy, retain_graph=True))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        out = torch_fwd()
        torch.autograd.grad(out, (tq,), tdy)
        torch.cuda.synchronize()
    torch_kernels = sorted({e.key for e in prof.key_averages() if "attention" in e.key.lower() or "fmha" in e.key.lower()
                            or "flash" in e.key.lower()})

    # each variant's forward is timed twice: the spread between the two is the noise floor
    flop_fwd = 2 * B * H * T * T * hd  # 2 products × 2 FLOP × (B·H·T²/2 causal)·hd
    flop_bwd = 5 * B * H * T * T * hd
    rows = []
    for name, v in variants.items():
        fwd_ms, fwd_all = _median_ms(v["fwd"], warmup, reps)
        bwd_ms, bwd_all = _median_ms(v["bwd"], warmup, reps)
        again_ms, _ = _median_ms(v["fwd"], warmup, reps)
        rows.append(dict(variant=name, fwd_ms=fwd_ms, fwd_ms_again=again_ms, bwd_ms=bwd_ms,
                         fwd_tflops=flop_fwd / fwd_ms / 1e9, bwd_tflops=flop_bwd / bwd_ms / 1e9,
                         err_y=v["err_y"], err_dqkv=v["err_dqkv"], fwd_times_ms=fwd_all, bwd_times_ms=bwd_all))
    return {"shape": dict(B=B, H=H, T=T, hd=hd), "warmup": warmup, "reps": reps, "rows": rows,
            "torch_attention_kernels": torch_kernels, "device": torch.cuda.get_device_name(),
            "versions": {"cupy": cupy.__version__, "torch": torch.__version__, "python": sys.version.split()[0]},
            "date": time.strftime("%Y-%m-%d")}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="attention_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=12)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--hd", type=int, default=64)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default="attention.json")
    a = ap.parse_args(argv)
    result = run(a.B, a.H, a.T, a.hd, reps=a.reps)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print("torch attention kernels:", ", ".join(result["torch_attention_kernels"]) or "-")
    base = result["rows"][-1]
    print(f"{'variant':34s} {'fwd ms':>8s} {'(again)':>8s} {'bwd ms':>8s} {'fwd TF/s':>9s} {'bwd TF/s':>9s} "
          f"{'fwd/torch':>9s} {'bwd/torch':>9s} {'err y':>9s} {'err dqkv':>9s}")
    for r in result["rows"]:
        print(f"{r['variant']:34s} {r['fwd_ms']:8.3f} {r['fwd_ms_again']:8.3f} {r['bwd_ms']:8.3f} {r['fwd_tflops']:9.1f} "
              f"{r['bwd_tflops']:9.1f} {r['fwd_ms'] / base['fwd_ms']:9.2f} {r['bwd_ms'] / base['bwd_ms']:9.2f} "
              f"{r['err_y']:9.2e} {r['err_dqkv']:9.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
