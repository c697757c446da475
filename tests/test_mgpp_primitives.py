"""MGPP primitives (minisft.methods.mgpp: prior, schedule): mixture-Gaussian prior and its gradient
(v0, v1 VARIANCES), cubic sparsity schedule, pruning steps, λ annealing, magnitude-pruning masks
under both count rules. Oracles: mpmath at 60 digits (exact -pi'/pi), central finite differences,
torch autograd (reference_models.primitives), scipy's normal log-density, the authors' formulas
as the twin writes them (reference_models.mgpp), fractions.Fraction, and stable-argsort and
sorted-threshold brute forces. Derivations: proofs/mgpp_prior.md.
"""

import math
from decimal import Decimal
from fractions import Fraction

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from minisft.core.backend import to_numpy
from minisft.methods.mgpp.prior import DEFAULT_LAMBDA, DEFAULT_VAR0, DEFAULT_VAR1, neg_log_prior, neg_log_prior_grad
from minisft.methods.mgpp.schedule import annealed_lambda, cubic_sparsity, magnitude_masks, pruning_steps
from tests.helpers import stable_argsort_keep

fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
EPS = np.finfo(np.float64).eps
TINY = np.finfo(np.float64).smallest_subnormal  # grid spacing of a subnormal result
DEFAULTS = (DEFAULT_LAMBDA, DEFAULT_VAR0, DEFAULT_VAR1)


@st.composite
def priors(draw):
    """(lam, var0, var1) spanning tiny spikes, wide slabs and lam near 0 and 1."""
    lam = draw(st.one_of(st.floats(1e-12, 1 - 1e-12), st.sampled_from([1e-12, 1e-3, 0.5, 1 - 1e-12])))
    var0 = 10.0 ** draw(st.floats(-16, 0))
    var1 = var0 * 10.0 ** draw(st.floats(0.02, 8))
    return lam, var0, var1


@st.composite
def prior_and_theta(draw):
    """A prior and theta on the spike's scale, the slab's scale, or anywhere up to 1e6."""
    lam, var0, var1 = draw(priors())
    u = draw(st.floats(-50, 50))
    theta = draw(st.sampled_from([u * math.sqrt(var0), u * math.sqrt(var1), u * 2e4, 0.0]))
    return theta, lam, var0, var1


def mp_prior_and_slope(mp, theta, lam, var0, var1):
    """-log pi(theta) and its derivative -pi'(theta)/pi(theta), from the densities and
    dN(theta; 0, v)/dtheta = -theta/v N(theta; 0, v), at the working precision."""
    theta, lam, v0, v1 = (mp.mpf(v) for v in (theta, lam, var0, var1))

    def density(v):
        return mp.exp(-(theta**2) / (2 * v)) / mp.sqrt(2 * mp.pi * v)

    pi = lam * density(v1) + (1 - lam) * density(v0)
    dpi = -theta * (lam * density(v1) / v1 + (1 - lam) * density(v0) / v0)
    return -mp.log(pi), -dpi / pi


@given(case=prior_and_theta())
@example(case=(4e-4, *DEFAULTS))
@example(case=(1e4, *DEFAULTS))
@example(case=(1e-30, *DEFAULTS))
@example(case=(7.0289056336632305e-96, 0.5, 1.0, 100.0))
@example(case=(5e-324, 0.5, 1e-16, 1e-8))
@example(case=(2.225073858507e-311, 0.5, 1.0, 100.0))
@example(case=(7.036301354e-315, 0.5, 1e-7, 1e-5))
def test_prior_and_gradient_match_mpmath(case):
    """var0, var1 are VARIANCES: the oracle is built from N(θ; 0, v) = exp(−θ²/2v)/√(2πv)."""
    mpmath = pytest.importorskip("mpmath")
    theta, lam, var0, var1 = case
    with mpmath.workdps(60):
        value, slope = mp_prior_and_slope(mpmath.mp, theta, lam, var0, var1)
    f = float(neg_log_prior(np.float64(theta), lam, var0, var1))
    g = float(neg_log_prior_grad(np.float64(theta), lam, var0, var1))
    # rounding of the log components (each ~theta^2/var0 at most where it matters): see proof
    scale = 1.0 + 0.5 * min(theta**2 / var0, 1e4)
    assert abs(f - float(value)) <= 16 * EPS * (abs(float(value)) + scale), (f, float(value))
    assert abs(g - float(slope)) <= 16 * EPS * scale * abs(float(slope)) + 4 * TINY, (g, float(slope))


def test_the_variances_are_not_read_as_standard_deviations():
    """With a negligible spike the gradient at θ is θ/v1 (v1 a variance), not θ/v1²; at θ = 0 with a
    negligible slab, −log π = ½ log(2π v0), not log(v0) + ½ log 2π."""
    lam, var0, var1 = 1 - 1e-12, 1e-10, 0.04
    g = float(neg_log_prior_grad(np.float64(0.2), lam, var0, var1))
    assert abs(g - 0.2 / var1) <= 1e-9, g
    f = float(neg_log_prior(np.float64(0.0), 1e-12, 1e-10, 0.05))
    assert abs(f - 0.5 * math.log(2 * math.pi * 1e-10)) <= 1e-9, f


@pytest.mark.parametrize("scale", ["var0", "var1"])
def test_gradient_equals_central_finite_differences(xp, scale):
    lam, var0, var1 = DEFAULTS
    s = math.sqrt(var0 if scale == "var0" else var1)
    theta = np.array([-7.0, -3.0, -1.0, -0.3, 0.3, 1.0, 2.0, 3.0, 4.0, 4.5, 5.0, 7.0, 20.0]) * s
    h = 1e-6 * np.abs(theta)
    plus = to_numpy(neg_log_prior(xp.asarray(theta + h), lam, var0, var1))
    minus = to_numpy(neg_log_prior(xp.asarray(theta - h), lam, var0, var1))
    fd = (plus - minus) / (2 * h)
    grad = to_numpy(neg_log_prior_grad(xp.asarray(theta), lam, var0, var1))
    # truncation ~ h^2 |f'''| / 6 (relative ~1e-10 here) plus roundoff eps |f| / h
    tol = 1e-6 * np.abs(grad) + 8 * EPS * (np.abs(plus) + np.abs(minus)) / (2 * h)
    err = np.abs(fd - grad)
    worst = f"max |fd - grad| = {err.max():.3e}, worst err/tol {(err / tol).max():.3f}"
    assert np.all(err <= tol), worst


@fixture_ok
@given(theta=hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(-1.0, 1.0)), prior=priors())
def test_parity_with_torch_logsumexp_and_autograd(xp, theta, prior):
    torch = pytest.importorskip("torch")
    from reference_models import primitives as ref

    f = to_numpy(neg_log_prior(xp.asarray(theta), *prior))
    g = to_numpy(neg_log_prior_grad(xp.asarray(theta), *prior))
    f_ref = ref.neg_log_prior(torch.from_numpy(theta), *prior).numpy()
    g_ref = ref.neg_log_prior_grad(torch.from_numpy(theta), *prior).numpy()
    df = np.max(np.abs(f - f_ref) / (1 + np.abs(f_ref)))
    dg = np.max(np.abs(g - g_ref) / (1 + np.abs(g_ref)))
    assert df <= 1e-12, f"max relative |f - torch| = {df:.3e}"
    # autograd of logsumexp: softmax weights, the same math; the responsibilities' rounding is
    # ~ eps * |log-ratio| and the log-ratio is < ~1e3 wherever both components matter
    assert dg <= 1e-12, f"max relative |grad - autograd| = {dg:.3e}"


@given(theta=hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(-0.3, 0.3)),
       lam=st.floats(1e-6, 0.5), var0=st.sampled_from([1e-12, 1e-10, 1e-9]), var1=st.sampled_from([0.01, 0.05, 0.1]),
       n=st.integers(1, 10**7))
def test_gradient_equals_the_authors_update(theta, lam, var0, var1, n):
    """(1/n) neg_log_prior_grad equals what the authors add to a zero p.grad (PTMGP
    MWA.apply_prior_grad: p.grad −= θ (w0 (v0 − v1)/(n v0 v1) − 1/(n v1)) with the logistic w0, as
    reference_models.mgpp writes it), to a few ulps of the larger term."""
    torch = pytest.importorskip("torch")
    from reference_models import mgpp as ref

    p = torch.from_numpy(theta.copy())
    p.grad = torch.zeros_like(p)
    ref.apply_prior_grad({"w": p}, ["w"], lam, var0, var1, n)
    ours = neg_log_prior_grad(theta, lam, var0, var1) / n
    theirs = p.grad.numpy()
    scale = np.abs(theta) / (n * var0)  # the spike's term, the largest one can be
    d = np.max(np.abs(ours - theirs) / (np.abs(theirs) + 1e-16 * scale + 1e-300))
    assert d <= 1e-12, f"max relative |ours - authors'| = {d:.3e}"


@fixture_ok
@given(u=st.floats(-3, 3), prior=priors())
def test_lambda_to_zero_is_the_spike_gaussian(xp, u, prior):
    _, var0, var1 = prior
    lam, theta = 1e-12, u * math.sqrt(var0)
    f = float(to_numpy(neg_log_prior(xp.asarray(theta), lam, var0, var1)))
    g = float(to_numpy(neg_log_prior_grad(xp.asarray(theta), lam, var0, var1)))
    f0 = -norm.logpdf(theta, scale=math.sqrt(var0))
    # f = f0 - log(1 - lam) - log1p(r), r = lam N1 / ((1 - lam) N0); g - theta/var0 = theta w1 (...)
    r = math.exp(math.log(lam) + norm.logpdf(theta, scale=math.sqrt(var1)) - math.log1p(-lam) + f0)
    assert abs(f - f0) <= lam / (1 - lam) + r + 16 * EPS * (abs(f0) + 5)
    assert abs(g - theta / var0) <= abs(theta) / var0 * (r + 16 * EPS)


@fixture_ok
@given(u=st.floats(-30, 30), prior=priors())
def test_lambda_to_one_is_the_slab_gaussian(xp, u, prior):
    _, var0, var1 = prior
    lam, theta = 1 - 1e-12, u * math.sqrt(var1)
    f = float(to_numpy(neg_log_prior(xp.asarray(theta), lam, var0, var1)))
    g = float(to_numpy(neg_log_prior_grad(xp.asarray(theta), lam, var0, var1)))
    f1 = -norm.logpdf(theta, scale=math.sqrt(var1))
    # r = (1 - lam) N0 / (lam N1) <= (1 - lam)/lam * sqrt(var1/var0); g - theta/var1 = theta w0 (...)
    r = math.exp(math.log1p(-lam) + norm.logpdf(theta, scale=math.sqrt(var0)) - math.log(lam) + f1)
    assert abs(f - f1) <= (1 - lam) / lam + r + 16 * EPS * (abs(f1) + 5)
    assert abs(g - theta / var1) <= abs(theta) * (r / var0 + 16 * EPS / var1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_finite_at_zero_tiny_and_huge_theta(xp, dtype):
    theta = xp.asarray(np.array([0.0, 1e-30, -1e-30, 1e4, -1e4, 1e-4, 5e-4], dtype=dtype))
    for lam, var0, var1 in [DEFAULTS, (1e-12, 1e-16, 1.0), (1 - 1e-12, 1e-16, 1e-14)]:
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            f = neg_log_prior(theta, lam, var0, var1)
            g = neg_log_prior_grad(theta, lam, var0, var1)
        assert f.dtype == dtype and g.dtype == dtype
        assert bool(xp.isfinite(f).all()) and bool(xp.isfinite(g).all()), (to_numpy(f), to_numpy(g))
        g = to_numpy(g)
        assert g[0] == 0.0 and g[1] > 0 and g[1] == -g[2] and g[3] > 0 and g[3] == -g[4]  # odd, 0 at 0


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        (dict(lam=0.0), "lam"),
        (dict(lam=1.0), "lam"),
        (dict(lam=-0.5), "lam"),
        (dict(lam=float("nan")), "lam"),
        (dict(var0=0.0), "var0"),
        (dict(var0=-1e-4), "var0"),
        (dict(var0=float("nan")), "var0"),
        (dict(var0=1e-301), "var0"),
        (dict(var1=1e-10), "var1"),
        (dict(var1=1e-11), "var1"),
        (dict(var1=float("inf")), "var1"),
    ],
)
def test_bad_prior_arguments(xp, kwargs, arg):
    for fn in (neg_log_prior, neg_log_prior_grad):
        with pytest.raises(ValueError, match=arg):
            fn(xp.zeros(3), **kwargs)


def test_bad_prior_argument_types(xp):
    with pytest.raises(TypeError, match="lam"):
        neg_log_prior(xp.zeros(3), lam="0.1")
    with pytest.raises(TypeError, match="var1"):
        neg_log_prior_grad(xp.zeros(3), var1=None)


# ---------------------------------------------------------------- cubic schedule, steps, λ


@st.composite
def schedules(draw):
    final = draw(st.floats(0.0, 1.0, exclude_max=True))
    initial = draw(st.floats(0.0, final))
    t_start = draw(st.integers(0, 500))
    t_end = t_start + draw(st.integers(1, 1000))
    return final, t_start, t_end, initial


@given(sched=schedules())
@example(sched=(0.9, 10, 20, 0.1))
@example(sched=(0.95, 0, 1, 0.0))
@example(sched=(0.8, 15, 135, 0.3))
def test_schedule_pieces_monotone_and_equal_to_exact_formula(sched):
    """0 before t_i, ≈ s_i at t_i, the cubic between, s_f at and after t_f; monotone; within
    16 eps of the exact rational value."""
    final, t_start, t_end, initial = sched
    values = [cubic_sparsity(t, final, t_start, t_end, initial) for t in range(t_end + 3)]
    assert all(v == 0.0 for v in values[:t_start])
    assert abs(values[t_start] - initial) <= 2 * EPS
    assert all(v == final for v in values[t_end:])
    assert all(a <= b for a, b in zip(values, values[1:])), "not monotone non-decreasing"
    f, i = Fraction(final), Fraction(initial)
    for t in range(t_start, t_end + 1):
        exact = f + (i - f) * (1 - Fraction(t - t_start, t_end - t_start)) ** 3
        assert abs(values[t] - float(exact)) <= 16 * EPS, (t, values[t], float(exact))


@given(sched=schedules(), every=st.integers(1, 60))
def test_schedule_is_the_authors_float_expression_bit_for_bit(sched, every):
    """s_t equals BayesianPruner's CubicSparsityScheduler value (reference_models.mgpp), exactly:
    the authors' count int(n · s_t) depends on every bit of s_t."""
    pytest.importorskip("torch")
    from reference_models import mgpp as ref

    final, t_start, t_end, initial = sched
    for t in {0, t_start, t_start + 1, (t_start + t_end) // 2, t_end - 1, t_end, t_end + 7}:
        ours = cubic_sparsity(t, final, t_start, t_end, initial)
        theirs, _ = ref.sparsity_and_action(t, initial, final, t_start, t_end, every)
        assert ours == theirs, f"step {t}: {ours!r} != {theirs!r}"


@given(t_start=st.integers(0, 300), length=st.integers(1, 300), every=st.integers(1, 80))
@example(t_start=15, length=120, every=1)
@example(t_start=3, length=5, every=10)  # t_f - t_i < Δt: t_i and t_f only
def test_pruning_steps_are_t_i_the_grid_from_t_i_and_t_f(t_start, length, every):
    t_end = t_start + length
    want = [t for t in range(t_end + 1)
            if t in (t_start, t_end) or (t_start < t < t_end and (t - t_start) % every == 0)]
    assert pruning_steps(t_start, t_end, every) == want
    pytest.importorskip("torch")
    from reference_models import mgpp as ref

    acts = [t for t in range(t_end + 5) if ref.sparsity_and_action(t, 0.1, 0.5, t_start, t_end, every)[1] == "sparsity"]
    assert acts == want


@given(lam=st.floats(1e-6, 0.5), ratio=st.floats(1e-4, 1.0), t_start=st.integers(0, 200), length=st.integers(1, 400))
def test_annealed_lambda_is_ptmgps_linear_schedule(lam, ratio, t_start, length):
    """λ_t = λ up to t_i, λ_f + (λ − λ_f)(1 − (t − t_i)/(t_f − t_i)) between, λ_f from t_f: against
    the exact rational value and MWA.annealing_scheduler's alpha form (reference_models.mgpp)."""
    pytest.importorskip("torch")
    from reference_models import mgpp as ref

    lam_final, t_end = lam * ratio, t_start + length
    for t in {0, t_start, t_start + 1, (t_start + t_end) // 2, t_end - 1, t_end, t_end + 3}:
        ours = annealed_lambda(t, lam, lam_final, t_start, t_end)
        u = min(max(Fraction(t - t_start, t_end - t_start), Fraction(0)), Fraction(1))
        exact = Fraction(lam_final) + (Fraction(lam) - Fraction(lam_final)) * (1 - u)
        assert abs(ours - float(exact)) <= 4 * EPS * lam, (t, ours, float(exact))
        assert abs(ours - ref.lambda_at(t, lam, lam_final, t_start, t_end)) <= 8 * EPS * lam
        assert annealed_lambda(t, lam, None, t_start, t_end) == lam


@pytest.mark.parametrize(
    "args, arg, error",
    [
        ((-1, 0.5, 0, 10), "step", ValueError),
        ((1.5, 0.5, 0, 10), "step", TypeError),
        ((True, 0.5, 0, 10), "step", TypeError),
        ((3, 1.0, 0, 10), "final", ValueError),
        ((3, -0.1, 0, 10), "final", ValueError),
        ((3, float("nan"), 0, 10), "final", ValueError),
        ((3, 0.5, -1, 10), "t_start", ValueError),
        ((3, 0.5, 10, 10), "t_end", ValueError),
        ((3, 0.5, 10, 5), "t_end", ValueError),
        ((3, 0.5, 0, 10.0), "t_end", TypeError),
        ((3, 0.5, 0, 10, 0.6), "initial", ValueError),
        ((3, 0.5, 0, 10, -0.1), "initial", ValueError),
    ],
)
def test_bad_schedule_arguments(args, arg, error):
    with pytest.raises(error, match=arg):
        cubic_sparsity(*args)


def test_bad_pruning_steps_arguments():
    for args, arg in [((5, 5, 1), "t_end"), ((-1, 5, 1), "t_start"), ((0, 5, 0), "every")]:
        with pytest.raises(ValueError, match=arg):
            pruning_steps(*args)
    with pytest.raises(TypeError, match="every"):
        pruning_steps(0, 5, 1.0)


# ---------------------------------------------------------------- magnitude masks


def half_up_count(sparsity, n):
    return math.floor(Decimal(repr(float(sparsity))) * n + Decimal("0.5"))


PARAM_VALUES = st.one_of(st.floats(-1, 1), st.sampled_from([0.0, -0.0, 0.5, -0.5, 1e-3]))
PARAMS = st.dictionaries(
    st.sampled_from([f"h.{i}.mlp.c_fc.weight" for i in range(4)]),
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=7),
        elements=PARAM_VALUES,
    ),
    max_size=4,
)


@fixture_ok
@given(params=PARAMS, s=st.floats(0.0, 1.0, exclude_max=True))
def test_global_magnitude_masks_equal_bruteforce(xp, params, s):
    masks = magnitude_masks({k: xp.asarray(v) for k, v in params.items()}, s, scope="global")
    assert list(masks) == list(params)
    n = sum(v.size for v in params.values())
    expected = stable_argsort_keep(list(params.values()), half_up_count(s, n))
    for name, e in zip(params, expected):
        np.testing.assert_array_equal(to_numpy(masks[name]), e)
    pruned = np.concatenate([np.abs(v[~to_numpy(masks[k])]) for k, v in params.items()] + [np.zeros(0)])
    kept = np.concatenate([np.abs(v[to_numpy(masks[k])]) for k, v in params.items()] + [np.zeros(0)])
    assert pruned.size == half_up_count(s, n)
    if pruned.size and kept.size:
        assert pruned.max() <= kept.min()


@fixture_ok
@given(params=PARAMS, s=st.floats(0.0, 1.0, exclude_max=True))
def test_layer_magnitude_masks_equal_bruteforce_per_tensor(xp, params, s):
    masks = magnitude_masks({k: xp.asarray(v) for k, v in params.items()}, s, scope="layer")
    for name, v in params.items():
        m = to_numpy(masks[name])
        np.testing.assert_array_equal(m, stable_argsort_keep([v], half_up_count(s, v.size))[0])
        assert int((~m).sum()) == half_up_count(s, v.size)
        if m.any() and (~m).any():
            assert np.abs(v[~m]).max() <= np.abs(v[m]).min()


def test_global_and_layer_scope_differ_as_specified(xp):
    params = {"a": xp.asarray([1e-3, 2e-3, 3e-3, 4e-3]), "b": xp.asarray([1.0, 2.0, 3.0, 4.0])}
    glob = {k: to_numpy(m) for k, m in magnitude_masks(params, 0.5, scope="global").items()}
    layer = {k: to_numpy(m) for k, m in magnitude_masks(params, 0.5, scope="layer").items()}
    assert not glob["a"].any() and glob["b"].all()  # the 4 smallest overall are all in "a"
    np.testing.assert_array_equal(layer["a"], [False, False, True, True])
    np.testing.assert_array_equal(layer["b"], [False, False, True, True])


def test_pruned_count_rounds_half_up(xp):
    # round(0.5 * 5) = 3 and round(0.5 * 7) = 4 (Python's banker's round would give 2 and 4)
    for n, expected in [(5, 3), (7, 4), (3, 2)]:
        for scope in ("global", "layer"):
            (m,) = magnitude_masks([xp.arange(1.0, n + 1)], 0.5, scope=scope)
            assert int((~to_numpy(m)).sum()) == expected


@fixture_ok
@given(params=PARAMS, s=st.floats(0.0, 1.0, exclude_max=True))
def test_magnitude_masks_parity_with_torch_reference(xp, params, s):
    torch = pytest.importorskip("torch")
    from reference_models import primitives as ref

    ours = magnitude_masks({k: xp.asarray(v) for k, v in params.items()}, s)
    theirs = ref.global_masks([torch.from_numpy(v) for v in params.values()], s, half_up=True)
    diff = sum(int((to_numpy(ours[k]) != t.numpy()).sum()) for k, t in zip(params, theirs))
    assert diff == 0, f"{diff} mask entries differ from the torch reference"


def oracle_keep_among(arrays_np, olds, k):
    """Masks that keep everything `olds` pruned pruned and prune the first k survivors of a stable
    argsort of |theta| over the concatenation (pruned entries rank last)."""
    ranked = [np.where(o, np.abs(a), np.inf) for a, o in zip(arrays_np, olds)]
    return [m & o for m, o in zip(stable_argsort_keep(ranked, k), olds)]


@fixture_ok
@given(params=PARAMS, s=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=2, max_size=2).map(sorted),
       scope=st.sampled_from(["global", "layer"]), zero=st.integers(0, 2**32 - 1))
@example(params={"h.0.mlp.c_fc.weight": np.array([0.5, 0.0, 0.25, 0.75]), "h.1.mlp.c_fc.weight": np.array([1.0, 0.0])},
         s=[0.3, 0.5], scope="global", zero=0)  # survivors at 0 tie with the pruned zeros of the first step
def test_repruning_ranks_only_the_survivors(xp, params, s, scope, zero):
    """magnitude_masks(kept=earlier masks): pruned entries stay pruned and count toward the target;
    the rest is taken among the survivors, smallest |theta| first, even when some survivors were
    set to exactly 0 after the first step (so they tie with the pruned zeros)."""
    first = magnitude_masks({k: xp.asarray(v) for k, v in params.items()}, s[0], scope=scope)
    rng = np.random.default_rng(zero)
    later = {}
    for k, v in params.items():  # pruned weights are zeroed; a few survivors drift to exactly 0
        w = np.where(to_numpy(first[k]), v, 0.0)
        w[to_numpy(first[k]) & (rng.random(v.shape) < 0.3)] = 0.0
        later[k] = w
    masks = magnitude_masks({k: xp.asarray(v) for k, v in later.items()}, s[1], scope=scope, kept=first)
    olds = [to_numpy(first[k]) for k in params]
    if scope == "global":
        n = sum(v.size for v in params.values())
        expected = oracle_keep_among(list(later.values()), olds, half_up_count(s[1], n) - sum(int((~o).sum()) for o in olds))
    else:
        expected = [oracle_keep_among([v], [o], half_up_count(s[1], v.size) - int((~o).sum()))[0]
                    for v, o in zip(later.values(), olds)]
    for name, o, e in zip(params, olds, expected):
        m = to_numpy(masks[name])
        np.testing.assert_array_equal(m, e)
        assert not np.any(m & ~o), f"{name}: a pruned entry came back"
        if scope == "layer":
            assert int((~m).sum()) == half_up_count(s[1], m.size)
    if scope == "global":
        assert sum(int((~to_numpy(m)).sum()) for m in masks.values()) == half_up_count(s[1], sum(v.size for v in params.values()))


def test_repruning_refuses_earlier_masks_that_prune_more(xp):
    params = {"a": xp.asarray([1.0, 2.0, 3.0, 4.0]), "b": xp.asarray([5.0, 6.0])}
    kept = magnitude_masks(params, 0.5)
    with pytest.raises(ValueError, match="kept.*more than sparsity"):
        magnitude_masks(params, 0.2, kept=kept)
    with pytest.raises(ValueError, match="kept"):
        magnitude_masks(params, 0.5, kept={"a": kept["a"]})
    with pytest.raises(ValueError, match=r"kept\['b'\]"):
        magnitude_masks(params, 0.5, kept={"a": kept["a"], "b": xp.ones(3, dtype=bool)})
    with pytest.raises(ValueError, match=r"kept\[0\]"):
        magnitude_masks([params["a"]], 0.5, kept=[xp.ones(4)])


def test_bad_magnitude_mask_arguments(xp):
    params = {"w": xp.ones((2, 3))}
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="sparsity"):
            magnitude_masks(params, bad)
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(params, 0.5, scope="model")
    with pytest.raises(ValueError, match="params"):
        magnitude_masks({"w": xp.asarray([0.0, float("nan")])}, 0.5)
    with pytest.raises(TypeError, match="params"):
        magnitude_masks({"w": xp.arange(3)}, 0.5)
    with pytest.raises(ValueError, match="count_rule"):
        magnitude_masks(params, 0.5, count_rule="floor")


# ---------------------------------------------------------------- the authors' count rule


def oracle_authors_keep(arrays_np, s):
    """Masks keeping every |theta| >= the k-th smallest over the concatenation, k = int(n * s)
    (none pruned when k = 0): the threshold rule read off sorted magnitudes."""
    flat = np.concatenate([np.abs(a).ravel() for a in arrays_np] + [np.zeros(0)])
    k = int(flat.size * s)
    threshold = np.sort(flat)[k - 1] if k else -np.inf
    return [np.abs(a) >= threshold for a in arrays_np]


@fixture_ok
@given(params=PARAMS, s=st.floats(0.0, 1.0, exclude_max=True), scope=st.sampled_from(["global", "layer"]))
@example(params={"h.0.mlp.c_fc.weight": np.array([0.0, 0.0, 0.0, 1.0, 2.0])}, s=0.4, scope="global")
def test_authors_rule_prunes_strictly_below_the_kth_smallest(xp, params, s, scope):
    masks = magnitude_masks({k: xp.asarray(v) for k, v in params.items()}, s, scope=scope, count_rule="authors")
    groups = [list(params)] if scope == "global" else [[k] for k in params]
    for names in groups:
        expected = oracle_authors_keep([params[k] for k in names], s)
        for name, e in zip(names, expected):
            np.testing.assert_array_equal(to_numpy(masks[name]), e)


def test_the_two_count_rules_differ_as_documented(xp):
    """Distinct |θ|: exact prunes round(s n), the authors k − 1; ties at the k-th value are kept by
    the authors; k or more exact zeros: the authors prune nothing."""
    cases = [  # (values, sparsity, exact pruned, authors pruned)
        (np.arange(1.0, 11.0), 0.3, 3, 2),
        (np.array([1.0, 2.0, 2.0, 2.0, 3.0]), 0.6, 3, 1),
        (np.array([0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]), 0.2, 2, 0),
        (np.arange(1.0, 101.0), 0.29, 29, 27),  # the authors' int(100 * 0.29) is 28 in floats
    ]
    for values, s, exact, authors in cases:
        for rule, want in (("exact", exact), ("authors", authors)):
            (m,) = magnitude_masks([xp.asarray(values)], s, count_rule=rule)
            assert int((~to_numpy(m)).sum()) == want, (values, s, rule)


@fixture_ok
@given(params=PARAMS, s=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=2, max_size=2).map(sorted),
       scope=st.sampled_from(["global", "layer"]), rule=st.sampled_from(["exact", "authors"]))
def test_masks_parity_with_the_twins_pruning(xp, params, s, scope, rule):
    """Both count rules, fresh and monotone (kept=), against reference_models.mgpp.pruning_masks
    (torch.kthvalue threshold / stable torch.sort)."""
    torch = pytest.importorskip("torch")
    from reference_models import mgpp as ref

    assume(params)  # the twin concatenates the model's matrices: at least one
    weights = {k: torch.from_numpy(v) for k, v in params.items()}
    ours = magnitude_masks({k: xp.asarray(v) for k, v in params.items()}, s[0], scope=scope, count_rule=rule)
    theirs = ref.pruning_masks(weights, s[0], rule, scope)
    for k in params:
        np.testing.assert_array_equal(to_numpy(ours[k]), ~theirs[k].numpy())
    later = {k: np.where(to_numpy(ours[k]), v, 0.0) for k, v in params.items()}
    ours2 = magnitude_masks({k: xp.asarray(v) for k, v in later.items()}, s[1], scope=scope, count_rule=rule, kept=ours)
    theirs2 = ref.pruning_masks({k: torch.from_numpy(v) for k, v in later.items()}, s[1], rule, scope, theirs)
    for k in params:
        np.testing.assert_array_equal(to_numpy(ours2[k]), ~theirs2[k].numpy())
