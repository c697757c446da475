"""Tests of minisft.methods.adapeft.knapsack (AdaPEFT's selection step) against independent oracles.

Oracles: enumeration of all 2^n subsets, with the subset value f(S) written out by its definition
(float64 sum of the chosen values, accumulated item by item in ascending index order) and ties
broken by the documented rule (smallest Σ_{i∈S} 2^i, i.e. the first maximiser when subsets are
enumerated as the binary numbers 0 .. 2^n - 1); `scipy.optimize.milp` (HiGHS) for large instances;
exact rationals for density order. Derivations: proofs/knapsack.md.
"""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import minisft.testing as mt
from minisft.core.backend import to_numpy
from minisft.methods.adapeft import knapsack


METHODS = ["dp", "branch_and_bound", "auto"]

SMALL_INTEGER = mt.knapsack_values(small_integers=True)
instances = mt.knapsack_instances  # (values, weights, capacity); values float-tricky (mt.KNAPSACK_TRICKY)


def all_subsets(n):
    """(2^n, n) bool: row s is the subset whose bit i (item i) is set in s."""
    return (np.arange(2**n)[:, None] >> np.arange(n)) & 1 == 1


def index_order_sums(values, subsets):
    """f of every row of `subsets` (m, n): running sum over items 0, 1, ..., n - 1 (adding 0.0 for
    an item left out does not change a float sum)."""
    acc = np.zeros(len(subsets))
    for i in range(len(values)):
        acc = acc + np.where(subsets[:, i], values[i], 0.0)
    return acc


def f_of(values, mask):
    return float(index_order_sums(values, np.asarray(mask)[None, :])[0])


def brute_force_solve(values, weights, capacity):
    """The documented answer: the first (smallest Σ 2^i) feasible subset of largest f."""
    subsets = all_subsets(len(values))
    f = index_order_sums(values, subsets)
    f[subsets @ weights > capacity] = -np.inf
    return subsets[np.argmax(f)]


def brute_force_front(values, weights):
    """Non-dominated (weight, f) points, each with the smallest-Σ 2^i subset attaining it."""
    subsets = all_subsets(len(values))
    W, f = subsets @ weights, index_order_sums(values, subsets)
    points, best = [], -np.inf
    for s in np.lexsort((np.arange(len(W)), -f, W)):  # weight, then larger f, then smaller s
        if f[s] > best:
            points.append((int(W[s]), float(f[s]), subsets[s]))
            best = f[s]
    return points


def exactly_summable(values):
    """Whether every subset sum of `values` is exact in float64 (integers with a small total)."""
    return bool(np.all(values == np.round(values))) and values.sum() < 2**53


# ------------------------------------------------------------------------------------- solve

@pytest.mark.parametrize("method", METHODS)
@given(instance=instances())
@example(instance=(np.array([2.0, 4, 3, 3, 1, 3, 0]), np.array([6, 4, 9, 2, 9, 1, 6]), 17))
@example(instance=(np.array([1.0, 3, 4, 3, 3, 1]), np.array([6, 8, 7, 3, 4, 4]), 20))
@example(instance=(np.array([2.0**-53, 1.0]), np.array([1, 1]), 2))  # 2**-53 + 1.0 == 1.0: a tie
@example(instance=(np.array([0, 9.3e-10, 1.4e-09, 4.47e-08, 0.125]), np.array([7, 7, 2, 4, 5]), 7))
# Dantzig's bound must keep a critical item whose weight equals the capacity left
@example(instance=(np.array([3.0, 3, 0, 0, 4, 1]), np.array([1, 3, 2, 3, 3, 1]), 3))
def test_solve_matches_brute_force(method, instance):
    values, weights, capacity = instance
    mask = knapsack.solve(values, weights, capacity, method=method)
    expected = brute_force_solve(values, weights, capacity)
    assert isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == values.shape
    assert weights[mask].sum() <= capacity
    assert f_of(values, mask) == f_of(values, expected), (mask, expected)
    assert np.array_equal(mask, expected), (mask, expected)


@pytest.mark.parametrize("method", METHODS)
def test_solve_edge_cases(method):
    empty = knapsack.solve([], [], 5, method=method)
    assert empty.shape == (0,) and empty.dtype == bool
    values, weights = np.array([3.0, 1.0, 2.0]), np.array([4, 5, 6])
    assert not knapsack.solve(values, weights, 0, method=method).any()  # capacity 0
    assert not knapsack.solve(values, weights, 3, method=method).any()  # every weight > capacity
    assert not knapsack.solve(np.zeros(3), weights, 100, method=method).any()  # zero values
    # identical items: the rule keeps the lowest indices
    identical = knapsack.solve([1.0] * 4, [2] * 4, 5, method=method)
    assert identical.tolist() == [True, True, False, False]
    # a zero-value item that fits is still left out
    assert knapsack.solve([0.0, 1.0], [1, 1], 2, method=method).tolist() == [False, True]


@given(instance=instances())
def test_solve_is_deterministic_and_monotone_in_capacity(instance):
    values, weights, capacity = instance
    mask = knapsack.solve(values, weights, capacity)
    assert np.array_equal(mask, knapsack.solve(values.copy(), weights.copy(), capacity))
    bigger = knapsack.solve(values, weights, capacity + 1)
    assert f_of(values, mask) <= f_of(values, bigger)


@given(instance=instances(max_n=30, max_weight=50))
def test_dp_and_branch_and_bound_agree(instance):
    values, weights, capacity = instance
    dp = knapsack.solve(values, weights, capacity, method="dp")
    bb = knapsack.solve(values, weights, capacity, method="branch_and_bound")
    assert np.array_equal(dp, bb), (f_of(values, dp), f_of(values, bb))


def milp_check(values, weights, capacity, mask):
    """Compare f(mask) with HiGHS's optimum: not above it, not below its (rounded) answer."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    res = milp(-values, integrality=np.ones(len(values)), bounds=Bounds(0, 1),
               constraints=LinearConstraint(weights[None, :].astype(float), -np.inf, capacity),
               options={"mip_rel_gap": 0.0})
    assert res.success, res.message
    ours, theirs = f_of(values, mask), -res.fun
    tol = 1e-9 * max(theirs, 1.0)
    assert weights[mask].sum() <= capacity
    assert ours <= theirs + tol, f"ours {ours} above milp's optimum {theirs}: diff {ours - theirs}"
    chosen = res.x > 0.5
    if weights[chosen].sum() <= capacity:
        assert ours >= f_of(values, chosen) - tol, f"milp better by {f_of(values, chosen) - ours}"


@settings(max_examples=6)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 200), fraction=st.floats(0.01, 0.9))
@example(seed=0, n=200, fraction=0.3)
def test_branch_and_bound_matches_milp(seed, n, fraction):
    """Parameter-count-like weights (log-uniform up to 1e7): too many capacity units for the DP."""
    rng = np.random.default_rng(seed)
    weights = np.round(10 ** rng.uniform(0, 7, n)).astype(np.int64)
    values = rng.random(n)
    capacity = int(fraction * weights.sum())
    mask = knapsack.solve(values, weights, capacity, method="branch_and_bound")
    milp_check(values, weights, capacity, mask)


@settings(max_examples=6)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 200), fraction=st.floats(0.01, 0.9))
@example(seed=0, n=200, fraction=0.3)
def test_dp_matches_milp_and_branch_and_bound(seed, n, fraction):
    rng = np.random.default_rng(seed)
    weights = rng.integers(1, 500, n)
    values = rng.random(n)
    capacity = int(fraction * weights.sum())
    mask = knapsack.solve(values, weights, capacity, method="dp")
    milp_check(values, weights, capacity, mask)
    other = knapsack.solve(values, weights, capacity, method="branch_and_bound")
    assert np.array_equal(mask, other)


def test_auto_uses_branch_and_bound_beyond_the_dp_limits():
    rng = np.random.default_rng(0)
    weights = 10_000_019 + 2 * rng.integers(0, 10**6, 60)  # odd around 1e7: gcd 1
    weights[0] = 10_000_019  # a prime, so the gcd is 1
    values = rng.random(60)
    capacity = int(weights.sum() // 2)  # ~3e8 capacity units > DP_MAX_CAPACITY
    with pytest.raises(ValueError, match="method"):
        knapsack.solve(values, weights, capacity, method="dp")
    auto = knapsack.solve(values, weights, capacity)
    other = knapsack.solve(values, weights, capacity, method="branch_and_bound")
    assert np.array_equal(auto, other)
    milp_check(values, weights, capacity, auto)


def test_dp_uses_the_gcd_of_the_weights():
    """Weights sharing a factor 10**6: 2e8 raw capacity units but only 200 after the gcd."""
    rng = np.random.default_rng(1)
    weights = 10**6 * rng.integers(1, 20, 40)
    values = rng.random(40)
    capacity = 2 * 10**8 + 999_999
    mask = knapsack.solve(values, weights, capacity, method="dp")
    milp_check(values, weights, capacity, mask)


@given(t=st.floats(0, 1e300, allow_nan=False), v=st.floats(0, 1e300, allow_nan=False))
@example(t=1.0, v=1.0 - 2.0**-52)
@example(t=1.0, v=2.0**-60)
def test_needed_threshold_is_the_smallest_sufficient_float(t, v):
    """The lemma behind the tie rule (proofs/knapsack.md §2): a = _needed(t, v) is the smallest
    float ≥ 0 with fl(a + v) ≥ t."""
    a = knapsack._needed(t, v)
    assert a >= 0 and a + v >= t
    assert a == 0 or np.nextafter(a, -np.inf) + v < t


# ------------------------------------------------------------------------------ pareto_front

@given(instance=st.one_of(instances(max_n=10), instances(max_n=10, value=SMALL_INTEGER)))
@example(instance=(np.array([2.0**-53, 1.0, 2.0**-53]), np.array([1, 2, 1]), 0))
@example(instance=(np.array([1.0, 1.0, 2.0]), np.array([1, 1, 2]), 0))  # one point, several subsets
def test_pareto_front_matches_brute_force(instance):
    """Points exactly; masks attain their points, and are the smallest-Σ 2^i subset when no sum
    rounds (integer values)."""
    values, weights, _ = instance
    front = knapsack.pareto_front(values, weights)
    expected = brute_force_front(values, weights)
    assert [(w, f) for w, f, _ in front] == [(w, f) for w, f, _ in expected]
    assert front[0][:2] == (0, 0.0)
    for (w, f, mask), (_, _, oracle_mask) in zip(front, expected):
        assert isinstance(w, int) and isinstance(f, float) and mask.dtype == bool
        assert int(weights[mask].sum()) == w and f_of(values, mask) == f
        if exactly_summable(values):
            assert np.array_equal(mask, oracle_mask)
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(front, front[1:]))


@pytest.mark.parametrize("method", ["dp", "branch_and_bound"])
@given(instance=instances(max_n=25, max_weight=40))
def test_best_front_point_within_capacity_is_the_optimum(method, instance):
    values, weights, capacity = instance
    front = knapsack.pareto_front(values, weights)
    best = max(f for w, f, _ in front if w <= capacity)
    assert best == f_of(values, knapsack.solve(values, weights, capacity, method=method))


# ------------------------------------------------------------------------------ greedy_chain

def exact_density(values, weights, i):
    return Fraction(float(values[i])) / int(weights[i])


@given(instance=instances(max_n=25, max_weight=40))
@example(instance=(np.array([1.0, 2.0, 0.0, 3.0]), np.array([1, 2, 5, 3]), 0))  # all densities 1
def test_greedy_chain_is_nested_by_density_and_below_the_front(instance):
    values, weights, _ = instance
    chain = knapsack.greedy_chain(values, weights)
    front = knapsack.pareto_front(values, weights)
    assert len(chain) == len(values) + 1
    assert chain[0][:2] == (0, 0.0) and not chain[0][2].any()
    added = []
    for (_, _, before), (_, _, after) in zip(chain, chain[1:]):
        assert np.all(after >= before) and after.sum() == before.sum() + 1
        added.append(int(np.flatnonzero(after & ~before)[0]))
    for a, b in zip(added, added[1:]):
        da, db = exact_density(values, weights, a), exact_density(values, weights, b)
        assert da > db or (da == db and a < b)
    for w, f, mask in chain:
        assert int(weights[mask].sum()) == w and f_of(values, mask) == f
        assert f <= max(fv for fw, fv, _ in front if fw <= w)
        assert f <= f_of(values, knapsack.solve(values, weights, w))


# --------------------------------------------------------------------------- backends, inputs

def test_accepts_backend_arrays_and_returns_numpy(xp):
    values, weights = xp.asarray([3.0, 1.0, 2.0, 2.5]), xp.asarray([4, 1, 3, 3])
    host_v, host_w = to_numpy(values), to_numpy(weights)
    mask = knapsack.solve(values, weights, 6)
    assert isinstance(mask, np.ndarray)
    assert np.array_equal(mask, brute_force_solve(host_v, host_w, 6))
    front = knapsack.pareto_front(values, weights)
    expected = brute_force_front(host_v, host_w)
    assert [(w, f) for w, f, _ in front] == [(w, f) for w, f, _ in expected]
    chain = knapsack.greedy_chain(values, weights)
    assert all(isinstance(m, np.ndarray) for _, _, m in front + chain)


def test_accepts_integral_float_weights_and_capacity():
    expected = knapsack.solve([3.0, 1.0, 2.0], [4, 1, 3], 5)
    assert np.array_equal(knapsack.solve([3, 1, 2], np.array([4.0, 1.0, 3.0]), 5.0), expected)
    assert np.array_equal(knapsack.solve([3.0, 1.0, 2.0], [4, 1, 3], np.int32(5)), expected)


BAD_VALUES = [
    ([1.0, -0.5], "negative"),
    ([1.0, np.nan], "NaN"),
    ([1.0, np.inf], "inf"),
    ([[1.0, 2.0]], "2-D"),
    (["a", "b"], "strings"),
    ([1e308, 1e308], "total overflows"),
]
BAD_WEIGHTS = [
    ([1, 0], "zero"),
    ([1, -3], "negative"),
    ([1.5, 2.0], "non-integer float"),
    ([[1, 2]], "2-D"),
    ([1, 2, 3], "length mismatch"),
    ([True, True], "bool"),
    ([2**53, 1], "total above 2**53"),
]


@pytest.mark.parametrize("values, why", BAD_VALUES, ids=[w for _, w in BAD_VALUES])
@pytest.mark.parametrize("function", ["solve", "pareto_front", "greedy_chain"])
def test_bad_values(function, values, why):
    args = (values, [1, 2]) + ((3,) if function == "solve" else ())
    with pytest.raises(ValueError, match="values"):
        getattr(knapsack, function)(*args)


@pytest.mark.parametrize("weights, why", BAD_WEIGHTS, ids=[w for _, w in BAD_WEIGHTS])
@pytest.mark.parametrize("function", ["solve", "pareto_front", "greedy_chain"])
def test_bad_weights(function, weights, why):
    args = ([1.0, 2.0], weights) + ((3,) if function == "solve" else ())
    with pytest.raises(ValueError, match="weights"):
        getattr(knapsack, function)(*args)


@pytest.mark.parametrize("capacity", [-1, 2.5, "3", True, None, np.array([3]), float("inf")])
def test_bad_capacity(capacity):
    with pytest.raises(ValueError, match="capacity"):
        knapsack.solve([1.0, 2.0], [1, 2], capacity)


def test_bad_method():
    with pytest.raises(ValueError, match="method"):
        knapsack.solve([1.0, 2.0], [1, 2], 3, method="greedy")
