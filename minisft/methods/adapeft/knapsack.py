"""0-1 knapsack selection: AdaPEFT's selection step (map: minisft/methods/adapeft/__init__.py).

AdaPEFT turns "train the most influential parameters within a budget" (ε-constraint form, then a
second-order Taylor expansion of the loss) into the classical 0-1 knapsack over parameter groups k
with influence I_k and size n_k,

    max_{z ∈ {0,1}^K}  Σ_k z_k I_k   s.t.   Σ_k z_k n_k ≤ ε,

and reads its answers off the Pareto front of (Σ n_k, Σ I_k) over all subsets. Here

- `solve(values, weights, capacity)`: an exact optimum, by dynamic programming over the weights
  divided by their gcd when that fits `DP_MAX_CAPACITY` and `DP_MAX_CELLS`, else by depth-first
  branch-and-bound with Dantzig's fractional bound (`method=` forces either);
- `pareto_front(values, weights)`: every non-dominated (total weight, total value) point, by
  Nemhauser–Ullmann list merging;
- `greedy_chain(values, weights)`: the nested subsets that add items by descending value density
  (the per-parameter influence I_k / n_k that the paper's figures trace).

Choices where "exact" needed a definition (derivations: proofs/knapsack.md):

- The value of a subset S is f(S): the float64 sum of `values[S]` accumulated one item at a time in
  ascending index order (`np.cumsum(values[S])[-1]`; 0.0 for the empty set). Values are compared
  as these exact floats, never with a tolerance. Rounding to nearest is monotone, so f is an
  objective that the DP and the list merging optimise exactly; when no partial sum rounds (say,
  integer values with a total below 2**53) f is the exact real sum.
- Ties: among all feasible subsets with the largest f, `solve` returns the one with the smallest
  Σ_{i∈S} 2^i, i.e. of two optimal masks it keeps the one that leaves out the highest index where
  they differ. Hence an item of value 0 is never chosen, and the answer does not depend on `method`.
- `pareto_front` gives one subset per non-dominated point: the one the merge builds, which prefers
  at each step the subset without the newly merged item. When no sum rounds this is the subset
  with the smallest Σ 2^i among those attaining the point.
- `greedy_chain` ranks items by their exact rational density values[i] / weights[i], ties by index;
  all n + 1 prefixes are listed, zero-value items last.
- Weights are positive integers (an integer dtype, or floats with integral values) with a total of
  at most 2**53, so every weight sum is exact in int64 and in float64. Values are finite,
  non-negative, converted to float64, with a finite total. Capacity is a non-negative integer.
- Selection runs on the host: CuPy inputs are copied to NumPy and the masks returned are NumPy.
- Cost: the DP takes O(n · capacity / gcd) time, one float64 row and n · capacity / gcd decision
  bits ("auto" uses it within `DP_MAX_CAPACITY` and `DP_MAX_CELLS`). Branch-and-bound is
  exponential in the worst case (knapsack is NP-hard): fast on uncorrelated values (200 items in
  about 0.1 s), slow when values track weights spread over many decades (small items then
  stay interchangeable within the bound's gap). The front can hold up to 2^n points: thousands for
  200 groups with uncorrelated values, millions for 30 groups with values proportional to sizes.
  Both are bounded, so a hard instance is an error naming its size, never a hang or a MemoryError:
  one branch-and-bound search visits at most MAX_NODES nodes, a front holds at most MAX_FRONT points.
"""

import itertools
import math
from bisect import bisect_right
from fractions import Fraction

import numpy as np

from ...core.backend import to_numpy
from ...core.errors import require

METHODS = ("auto", "dp", "branch_and_bound")
DP_MAX_CELLS = 2**29  # items × capacities of the largest DP: 64 MiB of decision bits, seconds
DP_MAX_CAPACITY = 2**22  # capacity units (weights / gcd) of one DP row: 32 MiB of float64
MAX_TOTAL_WEIGHT = 2**53  # weight sums stay exact in int64 and float64
MAX_NODES = 2_000_000  # nodes of one branch-and-bound search: about ten seconds
MAX_FRONT = 2**21  # points of a Pareto front: 2^21 masks of 200 items are 50 MiB
_UNIT_ROUNDOFF = 2.0**-53


def _checked(values, weights):
    """values as float64 (n,) and weights as int64 (n,), after checking both (module docstring)."""
    v = np.asarray(to_numpy(values))
    require(v.ndim == 1 and v.dtype.kind in "iuf", "values", values, "a 1-D array of real numbers")
    v = v.astype(np.float64)
    require(bool(np.isfinite(v).all() and (v >= 0).all()), "values", values,
            "finite non-negative numbers")
    with np.errstate(over="ignore"):
        total = np.cumsum(v)[-1] if v.size else 0.0
    require(bool(np.isfinite(total)), "values", values, "numbers whose float64 total is finite")
    w = np.asarray(to_numpy(weights))
    require(w.ndim == 1 and w.dtype.kind in "iuf", "weights", weights, "a 1-D array of integers")
    if w.dtype.kind == "f":
        require(bool(np.isfinite(w).all() and (w == np.floor(w)).all()), "weights", weights,
                "integers (floats only with integral values)")
    require(bool((w > 0).all()), "weights", weights, "positive integers")
    require(bool((w <= MAX_TOTAL_WEIGHT).all())
            and sum(w.astype(np.int64).tolist()) <= MAX_TOTAL_WEIGHT,  # exact Python ints
            "weights", weights, f"a total of at most 2**53 = {MAX_TOTAL_WEIGHT}")
    require(len(w) == len(v), "weights", weights,
            f"the length of values ({len(v)}), not {len(w)}")
    return v, w.astype(np.int64)


def _checked_capacity(capacity):
    """capacity as a Python int after checking it is a non-negative integer (or integral float)."""
    c = np.asarray(to_numpy(capacity))
    c = c.item() if c.ndim == 0 else None
    integral = not isinstance(c, bool) and (
        isinstance(c, int) or (isinstance(c, float) and math.isfinite(c) and c.is_integer()))
    require(integral and c >= 0, "capacity", capacity, "a non-negative integer")
    return int(c)


def _value(values, subset):
    """f(S): float64 sum of values[subset] accumulated in ascending index order.

    values (n,); subset: a bool mask (n,) or ascending indices.
    """
    picked = values[subset]
    return float(np.cumsum(picked)[-1]) if picked.size else 0.0


def _density_order(values, weights):
    """Indices by descending exact density values[i] / weights[i], ties by ascending index.

    values, weights (n,) -> list of n indices. Exact rationals: float quotients could tie
    distinct densities (and mis-order Dantzig's bound).
    """
    return sorted(range(len(values)), key=lambda i: (-Fraction(values[i]) / int(weights[i]), i))


def _needed(t, v):
    """The smallest float64 a ≥ 0 with fl(a + v) ≥ t.

    A subset S ∪ {k}, k above every index of S, has f ≥ t exactly when f(S) ≥ _needed(t, v_k)
    (rounding is monotone). Binary search over the bit patterns of non-negative floats, which are
    ordered like the floats.
    """
    if v >= t:
        return 0.0
    lo, hi = 0, int(np.float64(t).view(np.int64))  # fl(lo + v) = v < t ≤ fl(t + v)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if float(np.int64(mid).view(np.float64)) + v >= t:
            hi = mid
        else:
            lo = mid
    return float(np.int64(hi).view(np.float64))


def _smallest_colex(values, weights, capacity, witness, reach):
    """Mask (n,) of the optimal subset with the smallest Σ 2^i (proofs/knapsack.md §2).

    values, weights (n,); witness: ascending indices of an optimal subset (weight ≤ capacity).
    reach(k, c, t): ascending indices of a subset of items < k with weight ≤ c and f ≥ t, or None
    when there is none. Items are decided from the highest index down, keeping a witness of the
    current (c, t): an item outside the witness is left out for free; an item inside is left out
    when the items below it still reach t, and otherwise taken, which leaves capacity c - w_k and
    threshold `_needed(t, v_k)` for the items below, which the witness without k meets.
    """
    mask = np.zeros(len(values), dtype=bool)
    c, t, witness = capacity, _value(values, witness), set(witness)
    for k in reversed(range(len(values))):
        if k not in witness:
            continue
        found = reach(k, c, t)
        if found is not None:
            witness = set(found)
            continue
        mask[k] = True
        witness.discard(k)
        c -= int(weights[k])
        t = _needed(t, float(values[k]))
    return mask


def _dp_fits(n, capacity_units):
    """Whether the DP over n items and capacity_units + 1 capacities stays within the limits."""
    return capacity_units < DP_MAX_CAPACITY and n * (capacity_units + 1) <= DP_MAX_CELLS


def _solve_dp(values, weights, capacity):
    """Optimal mask (n,) by DP over weights in units of their gcd; weights ≤ capacity, values > 0.

    F_k(c), the largest f over subsets of items < k with weight ≤ c units, obeys
    F_{k+1}(c) = max(F_k(c), fl(F_k(c - w_k) + v_k)) (proofs/knapsack.md §1). One float row
    (capacity / gcd + 1,) is kept, plus the decision bits keep[k, c] = [fl(F_k(c - w_k) + v_k) >
    F_k(c)], packed (n, ⌈(capacity / gcd + 1) / 8⌉), from which an optimum below any (k, c) is read.
    """
    g = int(np.gcd.reduce(weights))
    units, cap = (weights // g).tolist(), capacity // g
    row = np.zeros(cap + 1)
    better = np.zeros(cap + 1, dtype=bool)
    keep = np.empty((len(units), (cap + 8) // 8), dtype=np.uint8)
    for k, (w, v) in enumerate(zip(units, values)):  # one vectorised row per item
        taken = row[: cap + 1 - w] + v
        better[:w] = False
        np.greater(taken, row[w:], out=better[w:])
        keep[k] = np.packbits(better, bitorder="little")
        np.maximum(row[w:], taken, out=row[w:])

    def optimum_below(k, c):  # the DP's optimal subset of items < k within c units, ascending
        chosen = []
        for j in reversed(range(k)):
            if keep[j, c >> 3] >> (c & 7) & 1:
                chosen.append(j)
                c -= units[j]
        return chosen[::-1]

    def reach(k, c, t):
        chosen = optimum_below(k, c)
        return chosen if _value(values, chosen) >= t else None

    return _smallest_colex(values, units, cap, optimum_below(len(units), cap), reach)


def _search(values, weights, order, k, capacity, slack, target=None):
    """Largest f over subsets of items < k with weight ≤ capacity, by branch-and-bound.

    values, weights (n,); order: `_density_order`. Depth-first in density order, taking an item
    before leaving it out, from the greedy fill as incumbent. A node is cut when Dantzig's bound on
    its completions, plus `slack` for rounding (proofs/knapsack.md §3), cannot beat the incumbent;
    with a `target`, also when it cannot reach the target, and the search stops once the
    incumbent reaches it. Returns (f, ascending indices): the optimum (no target), else a subset
    with f ≥ target when one exists, else one with f < target.
    """
    items = [i for i in order if i < k]
    w = [int(weights[i]) for i in items]
    v = [float(values[i]) for i in items]
    cum_w = list(itertools.accumulate(w, initial=0))
    cum_v = list(itertools.accumulate(v, initial=0.0))
    lightest_after = list(itertools.accumulate(reversed(w), min, initial=math.inf))[::-1]

    def dantzig(pos, r):
        # LP optimum within capacity r of the items[pos:] not skipped: whole items in density order,
        # then a fraction of the first that does not fit — skipped instead when it alone exceeds r
        skipped_w, skipped_v = 0, 0.0
        while True:
            q = bisect_right(cum_w, cum_w[pos] + r + skipped_w) - 1
            bound = cum_v[q] - cum_v[pos] - skipped_v
            if q == len(items) or w[q] <= r:
                break
            skipped_w, skipped_v = skipped_w + w[q], skipped_v + v[q]
        if q < len(items):
            bound += (r - (cum_w[q] - cum_w[pos] - skipped_w)) / w[q] * v[q]
        return bound

    r, greedy = capacity, []
    for i, wi in zip(items, w):
        if wi <= r:
            greedy.append(i)
            r -= wi
    best = sorted(greedy)
    best_f = _value(values, best)
    stack = [(0, capacity, 0.0, None)]  # (next position, capacity left, value taken, taken items)
    nodes = 0
    while stack and (target is None or best_f < target):
        nodes += 1
        require(nodes <= MAX_NODES, "values", f"{len(items)} items whose values track their weights",
                f"an instance branch-and-bound solves within MAX_NODES = {MAX_NODES:,} nodes (the DP takes "
                "capacities up to DP_MAX_CAPACITY / gcd of the weights: fewer or coarser groups, or a smaller budget)")
        pos, r, p, taken = stack.pop()
        bound = p + dantzig(pos, r) + slack
        if bound <= best_f or (target is not None and bound < target):
            continue
        if lightest_after[pos] > r:  # nothing more fits: `taken` is a leaf
            leaf = sorted(_unlink(taken))
            f = _value(values, leaf)
            if f > best_f:
                best, best_f = leaf, f
            continue
        stack.append((pos + 1, r, p, taken))
        if w[pos] <= r:
            stack.append((pos + 1, r - w[pos], p + v[pos], (items[pos], taken)))
    return best_f, best


def _unlink(taken):
    """Items of a linked list (item, rest) built along a search path."""
    while taken is not None:
        yield taken[0]
        taken = taken[1]


def _solve_branch_and_bound(values, weights, capacity):
    """Optimal mask (n,) by branch-and-bound; weights ≤ capacity, values > 0.

    One search gives an optimal witness; then one search with a target per item of the witness.
    """
    order = _density_order(values, weights)
    slack = 16 * (len(values) + 2) * _UNIT_ROUNDOFF * _value(values, slice(None)) + 2.0**-1070

    def reach(k, c, t):
        f, found = _search(values, weights, order, k, c, slack, target=t)
        return found if f >= t else None

    _, witness = _search(values, weights, order, len(values), capacity, slack)
    return _smallest_colex(values, weights, capacity, witness, reach)


def solve(values, weights, capacity, method="auto"):
    """Mask of an optimal 0-1 knapsack subset: max f(S) s.t. Σ weights[S] ≤ capacity.

    values (n,) finite ≥ 0; weights (n,) positive integers; capacity a non-negative integer.
    Returns a NumPy bool mask (n,): among the optimal subsets, the one with the smallest Σ_{i∈S} 2^i
    (module docstring), so the result is the same for every `method`. `method`: "dp" (dynamic
    programming over weights / gcd; refused when the table would exceed `DP_MAX_CELLS`),
    "branch_and_bound", or "auto" (the DP when its table fits, else branch-and-bound).
    """
    v, w = _checked(values, weights)
    c = _checked_capacity(capacity)
    require(method in METHODS, "method", method, f"one of {METHODS}")
    mask = np.zeros(len(v), dtype=bool)
    candidates = np.flatnonzero((v > 0) & (w <= c))  # zero-value or oversized items never enter
    if candidates.size == 0:
        return mask
    v, w = v[candidates], w[candidates]
    c = min(c, int(w.sum()))
    units = c // int(np.gcd.reduce(w))
    fits = _dp_fits(len(v), units)
    require(method != "dp" or fits, "method", method,
            f"'auto' or 'branch_and_bound' here: the DP over {len(v)} items and {units} capacity "
            f"units exceeds DP_MAX_CAPACITY = {DP_MAX_CAPACITY} or DP_MAX_CELLS = {DP_MAX_CELLS}")
    use_dp = method == "dp" or (method == "auto" and fits)
    mask[candidates] = (_solve_dp if use_dp else _solve_branch_and_bound)(v, w, c)
    return mask


def _merge_item(front, k, weight, value):
    """Front of items ≤ k from the front of items < k (Nemhauser–Ullmann; proofs/knapsack.md §4).

    front = (W (m,) int64, V (m,) float64, bits (m, ⌈n/8⌉) uint8 masks packed little-endian),
    sorted by W with V strictly increasing; returns the same for items ≤ k.
    """
    W, V, bits = front
    with_k = bits.copy()
    with_k[:, k // 8] |= np.uint8(1 << (k % 8))
    W2 = np.concatenate([W, W + weight])
    V2 = np.concatenate([V, V + value])  # k is the highest index so far: f gains v_k last
    bits2 = np.concatenate([bits, with_k])
    without_first = np.repeat([0, 1], len(W))
    order = np.lexsort((without_first, -V2, W2))  # by weight, then larger value, then without k
    Vs = V2[order]
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = Vs[1:] > np.maximum.accumulate(Vs)[:-1]  # strictly above every lighter point
    kept = order[keep]
    return W2[kept], V2[kept], bits2[kept]


def pareto_front(values, weights):
    """Every non-dominated (total_weight, total_value, mask), sorted by weight, the empty set first.

    values (n,) finite ≥ 0; weights (n,) positive integers. Returns a list of (int, float, NumPy
    bool mask (n,)): weights strictly increasing, values f strictly increasing; no subset S has
    (Σ weights[S], f(S)) ≥ a listed point in both coordinates and > in one. One subset per point
    (module docstring).
    """
    v, w = _checked(values, weights)
    n = len(v)
    front = (np.zeros(1, np.int64), np.zeros(1), np.zeros((1, (n + 7) // 8), np.uint8))
    for k in range(n):  # one vectorised merge per item
        front = _merge_item(front, k, int(w[k]), v[k])
        require(len(front[0]) <= MAX_FRONT, "values", f"{n} items (a front of {len(front[0]):,} points after "
                f"{k + 1})", f"an instance whose Pareto front has at most MAX_FRONT = {MAX_FRONT:,} points")
    W, V, bits = front
    masks = np.unpackbits(bits, axis=1, count=n, bitorder="little").astype(bool)
    return [(int(a), float(b), m) for a, b, m in zip(W.tolist(), V.tolist(), masks)]


def greedy_chain(values, weights):
    """Nested subsets adding items by descending value density, ties by index; n + 1 entries.

    values (n,) finite ≥ 0; weights (n,) positive integers. Returns a list of (total_weight, f,
    NumPy bool mask (n,)), starting with the empty set (0, 0.0); entry j holds the j densest items.
    """
    v, w = _checked(values, weights)
    n = len(v)
    order = np.asarray(_density_order(v, w), dtype=np.intp)
    rank = np.empty(n, dtype=np.intp)
    rank[order] = np.arange(n)
    masks = rank[None, :] < np.arange(n + 1)[:, None]  # (n + 1, n): prefix j holds ranks < j
    totals = np.concatenate([[0], np.cumsum(w[order])])
    # excluded items add 0.0, which leaves an index-ordered running sum unchanged: row sums are f
    f = np.cumsum(np.where(masks, v, 0.0), axis=1)[:, -1] if n else np.zeros(1)
    return [(int(a), float(b), m) for a, b, m in zip(totals.tolist(), f.tolist(), masks)]
