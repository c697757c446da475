"""Benchmark `minisft.methods.adapeft.knapsack.pareto_front` (AdaPEFT's Pareto front).

    python -m reference_models.bench.knapsack_front [--groups 200] [--repeats 5] [--seed 0]

Draws `groups` random groups from one seeded generator — sizes log-uniform over 1 .. 1e7 like
parameter counts, values uniform on [0, 1) — times `pareto_front` `repeats` times and prints the
median wall time, the front size, and one JSON line with the same numbers.
"""

import argparse
import json
import statistics
import time

import numpy as np

from minisft.core.backend import rng
from minisft.methods.adapeft.knapsack import pareto_front


def random_groups(groups, seed):
    """(values (groups,), weights (groups,)): uniform values, log-uniform integer sizes 1..1e7."""
    gen = rng(seed)
    weights = np.round(10.0 ** gen.uniform(0.0, 7.0, groups)).astype(np.int64)
    values = gen.random(groups)
    return values, weights


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    values, weights = random_groups(args.groups, args.seed)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        front = pareto_front(values, weights)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"pareto_front: {args.groups} groups (seed {args.seed}), median of {args.repeats} runs "
          f"{median * 1e3:.1f} ms, front size {len(front)}")
    print(json.dumps({"groups": args.groups, "seed": args.seed, "repeats": args.repeats,
                      "median_s": median, "times_s": times, "front_size": len(front)}))


if __name__ == "__main__":
    main()
