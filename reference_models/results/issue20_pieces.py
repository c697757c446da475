"""Issue 20 part B: what the adapters' fused paths and GMT's masking cost piece by piece at the gpt2
preset's shapes (N = 8192 tokens, float32; TF32 when CUPY_TF32=1), each piece timed by
cupyx.profiler.benchmark (median host time and device time of 20 runs after 3): the base GEMM of
each linear layer for scale, RowDelta's and LoRA's forward and backward pieces, and GMT's
gradient_masks against the per-tensor loop of GMT.transform_grads on the 148 gpt2 gradients.
Usage: python reference_models/results/issue20_pieces.py --out pieces.json"""

import argparse
import json
import statistics

import numpy as np


def timed(fn, n=20):
    from cupyx.profiler import benchmark

    r = benchmark(fn, n_repeat=n, n_warmup=3)
    return {"host_ms": 1000 * statistics.median(r.cpu_times), "device_ms": 1000 * statistics.median(r.gpu_times[0])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="pieces.json")
    a = ap.parse_args()
    import cupy as cp

    from minisft.gpu import kernels
    from minisft.model.gpt import param_shapes
    from minisft.methods.select import zero_where_dropped
    from minisft.core.config import GPTConfig
    from minisft.methods.gmt.masks import gradient_masks

    rng = cp.random.default_rng(0)
    N, out = 8192, {"pieces": {}, "gmt": {}}
    for name, (d_in, d_out) in {"c_attn": (768, 2304), "attn.c_proj": (768, 768), "c_fc": (768, 3072),
                                "mlp.c_proj": (3072, 768)}.items():
        r = max(1, round(0.05 * d_out))
        x, W = rng.standard_normal((N, d_in), dtype=cp.float32), rng.standard_normal((d_out, d_in), dtype=cp.float32)
        y, dy, dx = (rng.standard_normal((N, n), dtype=cp.float32) for n in (d_out, d_out, d_in))
        Wr, b = rng.standard_normal((r, d_in), dtype=cp.float32), rng.standard_normal(r, dtype=cp.float32)
        rows = cp.asarray(np.sort(np.random.default_rng(1).choice(d_out, r, replace=False)))
        part, d_part = kernels.gemm(x, Wr, trans_b=True), kernels.gather_columns(dy, rows)
        A, B = rng.standard_normal((8, d_in), dtype=cp.float32), rng.standard_normal((d_out, 8), dtype=cp.float32)
        h, dh = kernels.gemm(x, A, trans_b=True), kernels.gemm(dy, B)
        pieces = {
            "base GEMM x Wᵀ": lambda: x @ W.T,
            "base GEMM dx = dy W": lambda: dy @ W,
            "base GEMM dW = dyᵀ x": lambda: dy.T @ x,
            "rows fwd: part = x ΔWᵀ": lambda: kernels.gemm(x, Wr, trans_b=True),
            "rows fwd: scatter-add": lambda: kernels.scatter_add_columns(y, part, rows, b),
            "rows bwd: gather dy[:, rows]": lambda: kernels.gather_columns(dy, rows),
            "rows bwd: dΔW = d partᵀ x": lambda: kernels.gemm(d_part, x, trans_a=True),
            "rows bwd: dΔb column sums": lambda: kernels.column_sums(d_part),
            "rows bwd: dx += d part ΔW": lambda: kernels.gemm(d_part, Wr, out=dx, beta=1.0),
            "lora fwd: h = x Aᵀ": lambda: kernels.gemm(x, A, trans_b=True),
            "lora fwd: y += s h Bᵀ": lambda: kernels.gemm(h, B, out=y, trans_b=True, beta=1.0),
            "lora bwd: dB = s dyᵀ h": lambda: kernels.gemm(dy, h, trans_a=True),
            "lora bwd: dh = s dy B": lambda: kernels.gemm(dy, B),
            "lora bwd: dA = dhᵀ x": lambda: kernels.gemm(dh, x, trans_a=True),
            "lora bwd: dx += dh A": lambda: kernels.gemm(dh, A, out=dx, beta=1.0),
        }
        out["pieces"][f"{name} ({d_in}->{d_out}, r={r})"] = {k: timed(f) for k, f in pieces.items()}
        print(name, {k: round(v["device_ms"] * 1000, 1) for k, v in out["pieces"][f"{name} ({d_in}->{d_out}, r={r})"].items()},
              "(device µs)", flush=True)
    cfg = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    grads = {k: rng.standard_normal(s, dtype=cp.float32) for k, s in param_shapes(cfg).items()}
    masks = gradient_masks(grads, 0.5)
    kept = {}

    def loop():  # GMT.transform_grads after its masks, as written there
        for k, keep in masks.items():
            zero_where_dropped(grads[k], keep)
            kept[k] = kept.get(k, 0) + cp.count_nonzero(keep)

    out["gmt"] = {"gradient_masks (148 tensors)": timed(lambda: gradient_masks(grads, 0.5), 10),
                  "per-tensor zero + count loop": timed(loop, 10)}
    print("gmt", {k: (round(v["host_ms"], 2), round(v["device_ms"], 2)) for k, v in out["gmt"].items()}, "(host ms, device ms)")
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
