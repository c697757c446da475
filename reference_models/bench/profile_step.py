"""Where a minisft training step spends its GPU time: every nn function of the model, every adapter's
forward and backward (by adapter class), GMT's masking and the optimizer step wrapped with a device
synchronisation before and after (so the total exceeds the free-running step time; the shares are
what this is for), after the free-running step time of the same step (device events, median).

Usage: python -m reference_models.bench.profile_step --preset gpt2 --methods full spruft lora gmt [--tf32]"""

import argparse
import collections
import os
import time


def profile(method, preset, steps, totals, wrapped):
    import cupy

    import minisft as ms
    from reference_models.bench.step import PRESETS, minisft_step_fn, time_steps

    p = dict(PRESETS[preset])
    B = p.pop("batch_size")
    cfg = ms.GPTConfig(**p)
    step, _ = minisft_step_fn(method, cfg, B, cfg.block_size, "cupy", "float32", 0)
    free, _ = time_steps(step, steps, 1, cupy.cuda.Device().synchronize, lambda: (cupy.cuda.Event(), cupy.cuda.Event()))
    wrapped[0] = True
    totals.clear()
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    cupy.cuda.Device().synchronize()
    wrapped[0] = False
    wall = 1000 * (time.perf_counter() - t0) / steps
    rows = {name: t / steps for name, t in sorted(totals.items(), key=lambda kv: -kv[1])}
    rows["(rest: glue, grads sum)"] = wall - sum(rows.values())
    return {"method": method, "free_running_ms": free, "synchronised_ms": wall, "ms": rows}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--methods", nargs="+", default=["full"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tf32", action="store_true", help="CUPY_TF32=1 (as bench --tf32)")
    ap.add_argument("--out", help="write the profiles as JSON here")
    a = ap.parse_args(argv)
    if a.tf32:
        os.environ["CUPY_TF32"] = "1"
    import cupy

    import minisft.model.adapters as A
    import minisft.model.gpt as M
    import minisft.training.optim as O
    from minisft.methods import GMT

    totals = collections.defaultdict(float)
    wrapped = [False]

    def wrap(owner, name, label=None):
        fn = getattr(owner, name)

        def timed(*args, **kw):
            if not wrapped[0]:
                return fn(*args, **kw)
            key = label(args) if callable(label) else (label or name)
            cupy.cuda.Device().synchronize()
            t0 = time.perf_counter()
            out = fn(*args, **kw)
            cupy.cuda.Device().synchronize()
            totals[key] += 1000 * (time.perf_counter() - t0)
            return out
        setattr(owner, name, timed)

    for name in [n for n in dir(M) if n.endswith("_forward") or n.endswith("_backward")]:
        wrap(M, name)
    wrap(A.Adapter, "forward", lambda args: f"{type(args[0]).__name__}.forward")
    wrap(A.Adapter, "backward", lambda args: f"{type(args[0]).__name__}.backward")
    wrap(GMT, "transform_grads", "GMT.transform_grads")
    wrap(O.AdamW, "step", "AdamW.step")
    results = []
    for method in a.methods:
        r = profile(method, a.preset, a.steps, totals, wrapped)
        results.append(r)
        print(f"{method} {a.preset}{' TF32' if a.tf32 else ''}: {r['free_running_ms']:.1f} ms/step free-running, "
              f"{r['synchronised_ms']:.1f} with per-call synchronisation", flush=True)
        for name, t in r["ms"].items():
            print(f"  {name:28s} {t:8.2f} ms  {100 * t / r['synchronised_ms']:5.1f}%")
    if a.out:
        from minisft.core.fileio import atomic_write_json

        atomic_write_json(a.out, {"preset": a.preset, "tf32": a.tf32, "profiles": results})
    return 0


if __name__ == "__main__":
    main()
