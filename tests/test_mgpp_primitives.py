"""MGPP primitives (minisft.methods.mgpp: prior, schedule): mixture-Gaussian prior and its gradient, cubic sparsity
schedule, magnitude-pruning masks. Oracles: mpmath at 60 digits (exact -pi'/pi), central finite
differences, torch autograd (reference_models.primitives), scipy's normal log-density,
fractions.Fraction, and a stable-argsort brute force. Derivations: proofs/mgpp_prior.md.
"""

import math
from decimal import Decimal
from fractions import Fraction

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from minisft.backend import to_numpy
from minisft.methods.mgpp.prior import DEFAULT_LAMBDA, DEFAULT_SIGMA0, DEFAULT_SIGMA1, neg_log_prior, neg_log_prior_grad
from minisft.methods.mgpp.schedule import cubic_sparsity, magnitude_masks

fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
EPS = np.finfo(np.float64).eps
TINY = np.finfo(np.float64).smallest_subnormal  # grid spacing of a subnormal result
DEFAULTS = (DEFAULT_LAMBDA, DEFAULT_SIGMA0, DEFAULT_SIGMA1)


@st.composite
def priors(draw):
    """(lam, sigma0, sigma1) spanning tiny spikes, wide slabs and lam near 0 and 1."""
    lam = draw(st.one_of(st.floats(1e-12, 1 - 1e-12), st.sampled_from([1e-12, 1e-3, 0.5, 1 - 1e-12])))
    sigma0 = 10.0 ** draw(st.floats(-8, 0))
    sigma1 = sigma0 * 10.0 ** draw(st.floats(0.01, 4))
    return lam, sigma0, sigma1


@st.composite
def prior_and_theta(draw):
    """A prior and theta on the spike's scale, the slab's scale, or anywhere up to 1e6."""
    lam, sigma0, sigma1 = draw(priors())
    u = draw(st.floats(-50, 50))
    theta = draw(st.sampled_from([u * sigma0, u * sigma1, u * 2e4, 0.0]))
    return theta, lam, sigma0, sigma1


def mp_prior_and_slope(mp, theta, lam, sigma0, sigma1):
    """-log pi(theta) and its derivative -pi'(theta)/pi(theta), from the densities and
    dN(theta; 0, s^2)/dtheta = -theta/s^2 N(theta; 0, s^2), at the working precision."""
    theta, lam, s0, s1 = (mp.mpf(v) for v in (theta, lam, sigma0, sigma1))

    def density(s):
        return mp.exp(-(theta**2) / (2 * s**2)) / (s * mp.sqrt(2 * mp.pi))

    pi = lam * density(s1) + (1 - lam) * density(s0)
    dpi = -theta * (lam * density(s1) / s1**2 + (1 - lam) * density(s0) / s0**2)
    return -mp.log(pi), -dpi / pi


@given(case=prior_and_theta())
@example(case=(4e-4, *DEFAULTS))
@example(case=(1e4, *DEFAULTS))
@example(case=(1e-30, *DEFAULTS))
@example(case=(7.0289056336632305e-96, 0.5, 1.0, 10.0))
@example(case=(5e-324, 0.5, 1e-8, 1e-4))
@example(case=(2.225073858507e-311, 0.5, 1.0, 10.0))
@example(case=(7.036301354e-315, 0.5, 0.00031622776601683794, 0.0031622776601683794))
def test_prior_and_gradient_match_mpmath(case):
    mpmath = pytest.importorskip("mpmath")
    theta, lam, sigma0, sigma1 = case
    with mpmath.workdps(60):
        value, slope = mp_prior_and_slope(mpmath.mp, theta, lam, sigma0, sigma1)
    f = float(neg_log_prior(np.float64(theta), lam, sigma0, sigma1))
    g = float(neg_log_prior_grad(np.float64(theta), lam, sigma0, sigma1))
    # rounding of the log components (each ~|theta/sigma0|^2 at most where it matters): see proof
    scale = 1.0 + 0.5 * min((theta / sigma0) ** 2, 1e4)
    assert abs(f - float(value)) <= 16 * EPS * (abs(float(value)) + scale), (f, float(value))
    assert abs(g - float(slope)) <= 16 * EPS * scale * abs(float(slope)) + 4 * TINY, (g, float(slope))


@pytest.mark.parametrize("scale", ["sigma0", "sigma1"])
def test_gradient_equals_central_finite_differences(xp, scale):
    lam, sigma0, sigma1 = DEFAULTS
    s = sigma0 if scale == "sigma0" else sigma1
    theta = np.array([-7.0, -3.0, -1.0, -0.3, 0.3, 1.0, 2.0, 3.0, 4.0, 4.5, 5.0, 7.0, 20.0]) * s
    h = 1e-6 * np.abs(theta)
    plus = to_numpy(neg_log_prior(xp.asarray(theta + h), lam, sigma0, sigma1))
    minus = to_numpy(neg_log_prior(xp.asarray(theta - h), lam, sigma0, sigma1))
    fd = (plus - minus) / (2 * h)
    grad = to_numpy(neg_log_prior_grad(xp.asarray(theta), lam, sigma0, sigma1))
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


@fixture_ok
@given(u=st.floats(-3, 3), prior=priors())
def test_lambda_to_zero_is_the_spike_gaussian(xp, u, prior):
    _, sigma0, sigma1 = prior
    lam, theta = 1e-12, u * sigma0
    f = float(to_numpy(neg_log_prior(xp.asarray(theta), lam, sigma0, sigma1)))
    g = float(to_numpy(neg_log_prior_grad(xp.asarray(theta), lam, sigma0, sigma1)))
    f0 = -norm.logpdf(theta, scale=sigma0)
    # f = f0 - log(1 - lam) - log1p(r), r = lam N1 / ((1 - lam) N0); g - theta/sigma0^2 = theta w1 (...)
    r = math.exp(math.log(lam) + norm.logpdf(theta, scale=sigma1) - math.log1p(-lam) + f0)
    assert abs(f - f0) <= lam / (1 - lam) + r + 16 * EPS * (abs(f0) + 5)
    assert abs(g - theta / sigma0**2) <= abs(theta) / sigma0**2 * (r + 16 * EPS)


@fixture_ok
@given(u=st.floats(-30, 30), prior=priors())
def test_lambda_to_one_is_the_slab_gaussian(xp, u, prior):
    _, sigma0, sigma1 = prior
    lam, theta = 1 - 1e-12, u * sigma1
    f = float(to_numpy(neg_log_prior(xp.asarray(theta), lam, sigma0, sigma1)))
    g = float(to_numpy(neg_log_prior_grad(xp.asarray(theta), lam, sigma0, sigma1)))
    f1 = -norm.logpdf(theta, scale=sigma1)
    # r = (1 - lam) N0 / (lam N1) <= (1 - lam)/lam * sigma1/sigma0; g - theta/sigma1^2 = theta w0 (...)
    r = math.exp(math.log1p(-lam) + norm.logpdf(theta, scale=sigma0) - math.log(lam) + f1)
    assert abs(f - f1) <= (1 - lam) / lam + r + 16 * EPS * (abs(f1) + 5)
    assert abs(g - theta / sigma1**2) <= abs(theta) * (r / sigma0**2 + 16 * EPS / sigma1**2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_finite_at_zero_tiny_and_huge_theta(xp, dtype):
    theta = xp.asarray(np.array([0.0, 1e-30, -1e-30, 1e4, -1e4, 1e-4, 5e-4], dtype=dtype))
    for lam, sigma0, sigma1 in [DEFAULTS, (1e-12, 1e-8, 1.0), (1 - 1e-12, 1e-8, 1e-7)]:
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            f = neg_log_prior(theta, lam, sigma0, sigma1)
            g = neg_log_prior_grad(theta, lam, sigma0, sigma1)
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
        (dict(sigma0=0.0), "sigma0"),
        (dict(sigma0=-1e-4), "sigma0"),
        (dict(sigma0=float("nan")), "sigma0"),
        (dict(sigma0=1e-151), "sigma0"),
        (dict(sigma1=1e-4), "sigma1"),
        (dict(sigma1=1e-5), "sigma1"),
        (dict(sigma1=float("inf")), "sigma1"),
    ],
)
def test_bad_prior_arguments(xp, kwargs, arg):
    for fn in (neg_log_prior, neg_log_prior_grad):
        with pytest.raises(ValueError, match=arg):
            fn(xp.zeros(3), **kwargs)


def test_bad_prior_argument_types(xp):
    with pytest.raises(TypeError, match="lam"):
        neg_log_prior(xp.zeros(3), lam="0.1")
    with pytest.raises(TypeError, match="sigma1"):
        neg_log_prior_grad(xp.zeros(3), sigma1=None)


# ---------------------------------------------------------------- cubic schedule


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
def test_schedule_pieces_monotone_and_equal_to_exact_formula(sched):
    final, t_start, t_end, initial = sched
    values = [cubic_sparsity(t, final, t_start, t_end, initial) for t in range(t_end + 3)]
    assert all(v == initial for v in values[: t_start + 1])
    assert all(v == final for v in values[t_end:])
    assert all(a <= b for a, b in zip(values, values[1:])), "not monotone non-decreasing"
    f, i = Fraction(final), Fraction(initial)
    for t in range(t_start + 1, t_end):
        exact = f + (i - f) * (1 - Fraction(t - t_start, t_end - t_start)) ** 3
        assert abs(values[t] - float(exact)) <= 16 * EPS, (t, values[t], float(exact))


@given(sched=schedules())
def test_schedule_parity_with_torch_reference_formula(sched):
    pytest.importorskip("torch")
    from reference_models import primitives as ref

    final, t_start, t_end, initial = sched
    for t in {0, t_start, (t_start + t_end) // 2, t_end - 1, t_end, t_end + 7}:
        ours = cubic_sparsity(t, final, t_start, t_end, initial)
        theirs = ref.cubic_sparsity(t, final, t_start, t_end, initial)
        assert abs(ours - theirs) <= 16 * EPS, f"step {t}: |diff| = {abs(ours - theirs):.3e}"


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


# ---------------------------------------------------------------- magnitude masks


def half_up_count(sparsity, n):
    return math.floor(Decimal(repr(float(sparsity))) * n + Decimal("0.5"))


def oracle_keep(arrays_np, k):
    """Masks pruning the first k entries of a stable argsort of |theta| over the concatenation."""
    flat = np.concatenate([np.abs(a).astype(np.float64).ravel() for a in arrays_np] + [np.zeros(0)])
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[:k]] = False
    pieces = np.split(keep, np.cumsum([a.size for a in arrays_np]))
    return [m.reshape(a.shape) for m, a in zip(pieces, arrays_np)]


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
    expected = oracle_keep(list(params.values()), half_up_count(s, n))
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
        np.testing.assert_array_equal(m, oracle_keep([v], half_up_count(s, v.size))[0])
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
    flat = np.concatenate([np.where(o, np.abs(a), np.inf).ravel() for a, o in zip(arrays_np, olds)] + [np.zeros(0)])
    keep = np.concatenate([o.ravel() for o in olds] + [np.zeros(0, dtype=bool)])
    keep[np.argsort(flat, kind="stable")[:k]] = False
    pieces = np.split(keep, np.cumsum([a.size for a in arrays_np]))
    return [m.reshape(a.shape) for m, a in zip(pieces, arrays_np)]


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
