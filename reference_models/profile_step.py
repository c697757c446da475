"""Where a minisft training step spends its GPU time: every nn function and the optimizer step
wrapped with device events (synchronising after each, so the total exceeds the free-running step
time; the shares are what this is for). Usage: python -m reference_models.profile_step --preset gpt2"""

import argparse
import collections
import time



def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--method", default="full")
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args(argv)
    import cupy

    import minisft.model as M
    import minisft.optim as O
    from reference_models.bench import PRESETS, minisft_step_fn

    import minisft as ms

    totals = collections.defaultdict(float)

    def wrap(mod, name):
        fn = getattr(mod, name)

        def timed(*args, **kw):
            cupy.cuda.Device().synchronize()
            t0 = time.perf_counter()
            out = fn(*args, **kw)
            cupy.cuda.Device().synchronize()
            totals[name] += 1000 * (time.perf_counter() - t0)
            return out
        setattr(mod, name, timed)

    for name in [n for n in dir(M) if n.endswith("_forward") or n.endswith("_backward")]:
        wrap(M, name)
    wrap(O.AdamW, "step")
    p = dict(PRESETS[a.preset])
    B = p.pop("batch_size")
    cfg = ms.GPTConfig(**p)
    step, _ = minisft_step_fn(a.method, cfg, B, cfg.block_size, "cupy", "float32", 0)
    step()
    totals.clear()
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    cupy.cuda.Device().synchronize()
    wall = 1000 * (time.perf_counter() - t0) / a.steps
    print(f"{a.method} {a.preset}: {wall:.1f} ms/step with per-call synchronisation")
    for name, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {t / a.steps:8.2f} ms  {100 * t / a.steps / wall:5.1f}%")
    print(f"  {'(rest: glue, grads sum)':28s} {wall - sum(totals.values()) / a.steps:8.2f} ms")
    return 0


if __name__ == "__main__":
    main()
