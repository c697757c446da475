"""SPruFT importance scores (minisft.methods.spruft.importance) and row budgets (minisft.methods.spruft.budget).

Oracles: explicit loops with math.fsum (closed forms of every score), einsum / explicit per-sample
loops for gradients, PyTorch autograd and torch.quantile (reference_models.importance),
numpy.quantile, a pure-Python (−score, index) sort for the selections, and the SPSA estimator's
known mean and variance for the zeroth-order gradient. Derivations: proofs/importance.md.
"""

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import minisft.testing as mt
from minisft.core.backend import to_numpy
from minisft.core.errors import NonFiniteLossError
from minisft.methods.spruft.budget import rows_for_ratio
from minisft.methods.spruft.importance import (TaylorAccumulator, col_magnitude, col_obd, col_taylor, col_wanda,
    global_threshold_rows, normalize_by_layer_mean, per_sample_sq_grad_sum, quantile_mean, random_scores,
    row_magnitude, row_obd, row_taylor, row_taylor_streaming, row_wanda, top_rows, zeroth_order_gradient)

fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

F64 = st.floats(-8.0, 8.0, allow_nan=False, width=64)
SIDE = mt.sides(6)
seeds = mt.seeds()
RTOL = 1e-12  # float64 sums of at most a few hundred terms: error << 1e-12 of the absolute sum


same_shape = mt.same_shape  # n float64 matrices of one shape (d_out, d_in), elements in [-8, 8]


def assert_close(actual, expected, scale, label):
    """|actual − expected| <= RTOL · scale elementwise (scale: the sum of |terms| behind each entry)."""
    actual = to_numpy(actual)
    assert actual.shape == np.shape(expected), f"{label}: shape {actual.shape} != {np.shape(expected)}"
    diff = np.abs(actual - expected)
    bound = RTOL * np.asarray(scale) + 1e-300
    assert np.all(diff <= bound), f"{label}: max diff {diff.max():.3e} (bound {np.min(bound):.3e})"


def loop_rows(term, *mats):
    """[fsum_j term(m1[i, j], m2[i, j], ...) for each row i]: the closed forms, by explicit loops."""
    d_out, d_in = mats[0].shape
    return np.array([math.fsum(term(*(m[i, j] for m in mats)) for j in range(d_in)) for i in range(d_out)])


# ------------------------------------------------------------------------------------------------
# scores against closed forms
# ------------------------------------------------------------------------------------------------


@fixture_ok
@given(mats=same_shape(1), p=st.sampled_from([1, 2]))
def test_row_magnitude_matches_loops(xp, mats, p):
    (W,) = mats
    expected = loop_rows(lambda w: abs(w) ** p, W)
    assert_close(row_magnitude(xp.asarray(W), p=p), expected, expected, f"magnitude p={p}")


@fixture_ok
@given(mats=same_shape(2), multivariable=st.booleans())
def test_row_taylor_matches_loops(xp, mats, multivariable):
    W, G = mats
    scale = loop_rows(lambda w, g: abs(w * g), W, G)
    expected = np.abs(loop_rows(lambda w, g: w * g, W, G)) if multivariable else scale
    assert_close(row_taylor(xp.asarray(W), xp.asarray(G), multivariable), expected, scale, "taylor")


@fixture_ok
@given(mats=same_shape(2))
def test_row_obd_matches_loops(xp, mats):
    W, G = mats
    F = G * G  # a mean of squared gradients is non-negative
    expected = loop_rows(lambda w, f: w * w * f, W, F)
    assert_close(row_obd(xp.asarray(W), xp.asarray(F)), expected, expected, "obd")


@st.composite
def weights_and_inputs(draw):
    """W (d_out, d_in) and calibration inputs X (N, d_in) of one layer."""
    (W,) = draw(same_shape(1))
    X = draw(hnp.arrays(np.float64, (draw(st.integers(1, 7)), W.shape[1]), elements=F64))
    return W, X


def hypot_norms(X):
    """‖X_j‖₂ of every column by math.hypot (scaled: exact to an ulp, no under- or overflow)."""
    return np.array([math.hypot(*X[:, j]) for j in range(X.shape[1])])


def probe_norms(X, xp=np, batches=1):
    """‖X_j‖₂ as SPruFT's ActivationNormProbe accumulates it: X fed in `batches` forward calls."""
    from types import SimpleNamespace

    from minisft.methods.spruft.calibration import ActivationNormProbe

    model = SimpleNamespace(params={"layer.weight": xp.zeros((1, X.shape[1]), dtype=X.dtype)}, xp=xp, dtype=X.dtype)
    probe = ActivationNormProbe(model, "layer")
    for part in np.array_split(X, batches):
        probe.forward(xp.asarray(part), None)
    return to_numpy(probe.norms())


@fixture_ok
@given(case=weights_and_inputs())
@example(case=(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.4, 0.4, 0.4]]), np.array([[3.0, 1.0, 1.0]])))
@example(case=(np.array([[1.0]]), np.array([[3.3e-217]])))  # x² underflowed to 0: the score was 0
def test_wanda_scores_match_loops_and_torch(xp, case):
    """row_wanda = Σ_j |W_ij| ‖X_j‖₂ (reduced over the input axis j, the norm over all tokens, its
    square root taken), col_wanda = ‖X_j‖₂ Σ_i |W_ij|, with the norms SPruFT's probe accumulates:
    against fsum loops over math.hypot norms, and against reference_models.importance.row_wanda
    (torch's vector norm of the raw inputs) where torch's unscaled Σ x² neither underflows nor
    overflows (every |x| zero or within [1e-150, 1e150])."""
    W, X = case
    norms = hypot_norms(X)
    act = np.tile(norms, (W.shape[0], 1))
    expected = loop_rows(lambda w, a: abs(w) * a, W, act)
    ours = xp.asarray(probe_norms(X, xp))
    got = row_wanda(xp.asarray(W), ours)
    assert_close(got, expected, expected, "wanda rows")
    cols = loop_rows(lambda w, a: abs(w) * a, W.T.copy(), act.T.copy())
    assert_close(col_wanda(xp.asarray(W), ours), cols, cols, "wanda cols")
    torch = pytest.importorskip("torch")  # noqa: F841
    from reference_models import importance as ref

    a = np.abs(X)
    if np.all((a == 0) | ((a >= 1e-150) & (a <= 1e150))):
        theirs = ref.row_wanda(W, X)
        d = float(np.max(np.abs(to_numpy(got) - theirs) / (np.abs(theirs) + 1e-300)))
        assert d <= 1e-12, f"max relative |row_wanda - torch| = {d:.3e}"


@st.composite
def activations(draw):
    """Calibration inputs X (N, d), float64 or float32, entries of either sign from 0 and subnormals
    to 1e300 (float32: 1e37), with some of ordinary size."""
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    top = 1e300 if dtype == np.float64 else 1e37
    N, d = draw(st.integers(1, 12)), draw(st.integers(1, 4))
    mags = st.one_of(st.just(0.0), st.floats(0.0, top), st.floats(1e-3, 1e3))
    X = np.array(draw(st.lists(st.lists(mags, min_size=d, max_size=d), min_size=N, max_size=N)))
    return (X * np.array(draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=N * d, max_size=N * d))).reshape(N, d)).astype(dtype)


@fixture_ok
@given(X=activations(), batches=st.integers(1, 3))
@example(X=np.array([[3e-170], [4e-170]]), batches=1)  # x² underflows to 0; the norm is 5e-170
@example(X=np.array([[3e170], [4e170]]), batches=2)  # x² overflows to inf; the norm is 5e170
def test_activation_norms_neither_underflow_nor_overflow(xp, X, batches):
    """SPruFT's ActivationNormProbe (Wanda's ‖X_j‖₂ over every calibration token, fed in batches)
    against math.hypot: within (N/2 + 2) rounding units for activations from subnormal to 1e300
    (float32: to 1e37), where a plain sqrt(Σ x²) gives 0 or inf."""
    expected = hypot_norms(X.astype(np.float64))
    got = probe_norms(X, xp, batches).astype(np.float64)
    u = np.finfo(X.dtype).eps / 2
    err = np.abs(got - expected) / np.maximum(expected, np.finfo(X.dtype).smallest_subnormal)
    assert np.all(err <= (X.shape[0] / 2 + 2) * u), f"relative errors {err} (norms {got}, hypot {expected})"


def test_wanda_regression_the_activations_decide_over_the_input_axis():
    """Regression (the released code's WandAImportance, finetuner_importance.py L283-297: it reduces
    the activation buffer to one number C = Σ_j ‖X_j‖² and returns |W_ij| · C unreduced, which its
    layer-mean normalisation turns into |W_ij| / mean|W|: the activations then play no part, and a
    per-layer argsort of the (d_out, d_in, 1) tensor selects nothing sensible). Here the score has
    shape (d_out,), and two rows of equal Σ_j |W_ij| are ordered by the norms of the inputs they
    read: moving the large norm from input 0 to input 1 moves the top row from 0 to 1, and neither
    ranking is the magnitude one (row 2 has the largest Σ_j |W_ij|)."""
    W = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.4, 0.4, 0.4]])
    a, b = row_wanda(W, np.array([3.0, 1.0, 1.0])), row_wanda(W, np.array([1.0, 3.0, 1.0]))
    assert a.shape == b.shape == (3,)
    np.testing.assert_allclose(a, [3.0, 1.0, 2.0], rtol=1e-15)
    np.testing.assert_allclose(b, [1.0, 3.0, 2.0], rtol=1e-15)
    assert top_rows(a, 1).tolist() == [0] and top_rows(b, 1).tolist() == [1]
    assert top_rows(row_magnitude(W, p=1), 1).tolist() == [2]
    with pytest.raises(ValueError, match="act_norm"):
        row_wanda(W, np.ones(4))


def test_random_scores_draw_uniform_subsets():
    """random_scores(n, rng) = rng.random(n); the top r of them is a uniformly random r-subset:
    over 400 seeds each of 16 rows is chosen about 400 · 4/16 = 100 times (within 4.5 sd)."""
    assert np.array_equal(random_scores(5, np.random.default_rng(3)), np.random.default_rng(3).random(5))
    counts = np.zeros(16)
    for seed in range(400):
        counts[top_rows(random_scores(16, np.random.default_rng(seed)), 4)] += 1
    sd = math.sqrt(400 * 0.25 * 0.75)
    assert np.all(np.abs(counts - 100) <= 4.5 * sd), counts
    with pytest.raises(ValueError, match="n"):
        random_scores(0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        random_scores(3, 0)


@fixture_ok
@given(mats=same_shape(2), p=st.sampled_from([1, 2]), multivariable=st.booleans())
def test_column_scores_match_column_loops(xp, mats, p, multivariable):
    W, G = mats
    F = G * G
    cols = lambda term, *m: loop_rows(term, *(a.T.copy() for a in m))  # noqa: E731 (loops over columns)
    Wx, Gx, Fx = xp.asarray(W), xp.asarray(G), xp.asarray(F)
    mag = cols(lambda w: abs(w) ** p, W)
    assert_close(col_magnitude(Wx, p), mag, mag, "col magnitude")
    scale = cols(lambda w, g: abs(w * g), W, G)
    expected = np.abs(cols(lambda w, g: w * g, W, G)) if multivariable else scale
    assert_close(col_taylor(Wx, Gx, multivariable), expected, scale, "col taylor")
    obd = cols(lambda w, f: w * w * f, W, F)
    assert_close(col_obd(Wx, Fx), obd, obd, "col obd")


@given(mats=same_shape(2), data=st.data())
def test_scores_permutation_equivariant(mats, data):
    """Permuting the rows of W and G permutes the scores; permuting columns leaves them unchanged."""
    W, G = mats
    F = G * G
    rows = np.array(data.draw(st.permutations(range(W.shape[0]))), dtype=np.int64)
    cols = np.array(data.draw(st.permutations(range(W.shape[1]))), dtype=np.int64)
    for name, score in [
        ("magnitude1", lambda w, g, f: row_magnitude(w, 1)),
        ("magnitude2", lambda w, g, f: row_magnitude(w, 2)),
        ("taylor", lambda w, g, f: row_taylor(w, g)),
        ("multivariable", lambda w, g, f: row_taylor(w, g, True)),
        ("obd", lambda w, g, f: row_obd(w, f)),
    ]:
        base = score(W, G, F)
        scale = row_taylor((1 + np.abs(W)) ** 2, 1 + np.abs(G) + np.abs(F))  # bounds every score's |terms|
        assert_close(score(W[rows], G[rows], F[rows]), base[rows], scale[rows], f"{name} rows")
        assert_close(score(W[:, cols], G[:, cols], F[:, cols]), base, scale, f"{name} cols")


# ------------------------------------------------------------------------------------------------
# multivariable Taylor: the streaming identity
# ------------------------------------------------------------------------------------------------


@fixture_ok
@given(
    seed=seeds,
    n_batches=st.integers(1, 4),
    N=st.integers(1, 6),
    d_in=SIDE,
    d_out=SIDE,
    lead=st.sampled_from([(), (2,)]),
)
def test_streaming_identity_over_calibration_batches(xp, seed, n_batches, N, d_in, d_out, lead):
    """|Σ_j W_ij (Σ_b dY_bᵀ X_b)_ij| == |Σ_b Σ_n dY_ni (X Wᵀ)_ni|, and the column analogue
    |Σ_i W_ij G_ij| == |Σ_b Σ_n X_nj (dY W)_nj|."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d_out, d_in))
    Xs = [rng.standard_normal((*lead, N, d_in)) for _ in range(n_batches)]
    dYs = [rng.standard_normal((*lead, N, d_out)) for _ in range(n_batches)]
    def gram(dY, X):  # dYᵀ X over all leading positions, by explicit einsum
        return np.einsum("no,ni->oi", dY.reshape(-1, d_out), X.reshape(-1, d_in))

    G = sum(gram(dY, X) for dY, X in zip(dYs, Xs))  # Σ_b dY_bᵀ X_b
    rows, cols = TaylorAccumulator(), TaylorAccumulator()
    for dY, X in zip(dYs, Xs):
        rows.update(xp.asarray(dY), xp.asarray(X @ W.T))
        cols.update(xp.asarray(dY @ W), xp.asarray(X))
    abs_terms = sum(gram(np.abs(dY), np.abs(X)) for dY, X in zip(dYs, Xs)) * np.abs(W)
    assert_close(rows.scores(), np.abs(loop_rows(lambda w, g: w * g, W, G)), abs_terms.sum(1), "rows")
    assert_close(cols.scores(), np.abs(loop_rows(lambda w, g: w * g, W.T, G.T)), abs_terms.sum(0), "cols")
    assert_close(rows.scores(), to_numpy(row_taylor(W, G, multivariable=True)), abs_terms.sum(1), "vs row_taylor")
    assert_close(cols.scores(), to_numpy(col_taylor(W, G, multivariable=True)), abs_terms.sum(0), "vs col_taylor")


def test_streaming_takes_abs_after_accumulating(xp):
    """Two batches whose signed sums cancel: the score is |1 + (−1)| = 0, not |1| + |−1| = 2."""
    W = np.array([[1.0, 2.0]])
    X = np.array([[1.0, 0.0]])
    acc = TaylorAccumulator()
    acc.update(xp.asarray(np.array([[1.0]])), xp.asarray(X @ W.T))
    acc.update(xp.asarray(np.array([[-1.0]])), xp.asarray(X @ W.T))
    G = np.array([[1.0]]).T @ X + np.array([[-1.0]]).T @ X  # = 0
    np.testing.assert_array_equal(to_numpy(acc.scores()), to_numpy(row_taylor(W, G, multivariable=True)))
    np.testing.assert_array_equal(to_numpy(acc.scores()), [0.0])
    signed = to_numpy(row_taylor_streaming(xp.asarray(np.array([[-1.0]])), xp.asarray(X @ W.T)))
    np.testing.assert_array_equal(signed, [-1.0])  # signed, not abs


def test_streaming_accumulator_checks_width_and_emptiness():
    acc = TaylorAccumulator()
    with pytest.raises(ValueError, match="TaylorAccumulator"):
        acc.scores()
    acc.update(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"dY\.shape"):
        acc.update(np.ones((2, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"Y_nobias\.shape"):
        row_taylor_streaming(np.ones((2, 3)), np.ones((3, 3)))


# ------------------------------------------------------------------------------------------------
# PyTorch autograd parity
# ------------------------------------------------------------------------------------------------


def _quadratic_sample_loss(torch, C):
    """loss_b(Y_b) = Σ_t,o C_bto Y_bto + ½ (Σ_t,o Y_bto)²: couples the positions of one sample."""

    def loss_b(Y, b):
        return (Y * torch.as_tensor(C[b])).sum() + 0.5 * Y.sum() ** 2

    def loss_all(Y):
        return sum(loss_b(Y[b], b) for b in range(Y.shape[0]))

    return loss_b, loss_all


@given(seed=seeds, B=st.integers(1, 4), T=st.integers(1, 4), d_in=SIDE, d_out=SIDE)
def test_scores_match_torch_autograd(seed, B, T, d_in, d_out):
    """G, dY, X Wᵀ from autograd on a torch.nn.Linear with bias; every score against the torch twin."""
    torch = pytest.importorskip("torch")
    from reference_models import importance as ref

    rng = np.random.default_rng(seed)
    W, b = rng.standard_normal((d_out, d_in)), rng.standard_normal(d_out)
    X, C = rng.standard_normal((B, T, d_in)), rng.standard_normal((B, T, d_out))
    loss_b, loss_all = _quadratic_sample_loss(torch, C)
    g = ref.linear_grads(W, b, X, loss_all)
    # Σ_j |W_ij| Σ_n |dY_ni| |X_nj| bounds the |terms| of every Taylor variant, streaming included
    abs_G = np.abs(g["dY"]).reshape(-1, d_out).T @ np.abs(X).reshape(-1, d_in)
    scale = row_taylor(np.abs(W), abs_G)
    checks = [
        ("magnitude1", row_magnitude(W, 1), ref.row_magnitude(W, 1)),
        ("magnitude2", row_magnitude(W, 2), ref.row_magnitude(W, 2)),
        ("taylor", row_taylor(W, g["G"]), ref.row_taylor(W, g["G"])),
        ("multivariable", row_taylor(W, g["G"], True), ref.row_taylor(W, g["G"], True)),
        ("streaming", np.abs(row_taylor_streaming(g["dY"], g["Y_nobias"])), ref.row_taylor(W, g["G"], True)),
    ]
    for label, ours, theirs in checks:
        assert_close(ours, theirs, scale + np.abs(theirs), label)
    F = per_sample_sq_grad_sum(g["dY"], X) / B
    F_ref = ref.per_sample_sq_grad_sum(W, b, X, loss_b) / B
    assert_close(F, F_ref, F_ref, "per-sample squared gradients")
    assert_close(row_obd(W, F), ref.row_obd(W, F_ref), ref.row_obd(W, F_ref), "obd")


@fixture_ok
@given(seed=seeds, B=st.integers(1, 5), T=st.integers(1, 4), d_in=SIDE, d_out=SIDE, chunk=st.integers(1, 6))
def test_per_sample_sq_grad_sum_matches_loop(xp, seed, B, T, d_in, d_out, chunk):
    """Σ_b (Σ_t dY_bt X_btᵀ)² by an explicit per-sample, per-position loop; every chunk size agrees."""
    rng = np.random.default_rng(seed)
    X, dY = rng.standard_normal((B, T, d_in)), rng.standard_normal((B, T, d_out))
    per_sample = [sum(np.outer(dY[b, t], X[b, t]) for t in range(T)) for b in range(B)]
    expected = sum(Gb * Gb for Gb in per_sample)
    scale = sum(sum(np.abs(np.outer(dY[b, t], X[b, t])) for t in range(T)) ** 2 for b in range(B))
    for c in (None, chunk):
        assert_close(per_sample_sq_grad_sum(xp.asarray(dY), xp.asarray(X), chunk=c), expected, scale, f"chunk={c}")


def test_per_sample_sq_grad_sum_accumulates_over_batches():
    """Regression (released code keyed its OBD accumulator inconsistently, so squares overwrote):
    the sums of two calibration batches add up to the sum over their concatenation."""
    rng = np.random.default_rng(7)
    X, dY = rng.standard_normal((6, 3, 4)), rng.standard_normal((6, 3, 5))
    whole = per_sample_sq_grad_sum(dY, X)
    parts = per_sample_sq_grad_sum(dY[:2], X[:2]) + per_sample_sq_grad_sum(dY[2:], X[2:])
    assert_close(parts, whole, whole, "two batches vs one")
    assert not np.allclose(per_sample_sq_grad_sum(dY[2:], X[2:]), whole)  # both batches contribute


# ------------------------------------------------------------------------------------------------
# zeroth-order gradient
# ------------------------------------------------------------------------------------------------

SHAPES = {"a": (2, 3), "b": (4,)}  # d = 10 parameters in two arrays


def _quadratic(seed):
    """L(θ) = ½ θᵀAθ + cᵀθ over the flattened dict (A SPD), its gradient Aθ + c, and θ."""
    rng = np.random.default_rng(seed)
    d = sum(math.prod(s) for s in SHAPES.values())
    M = rng.standard_normal((d, d))
    A, c = M @ M.T / d + np.eye(d), rng.standard_normal(d)
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}

    def flat(p):
        return np.concatenate([np.asarray(to_numpy(p[k])).ravel() for k in SHAPES])

    def loss(p):
        t = flat(p)
        return float(0.5 * t @ A @ t + c @ t)

    return loss, params, A @ flat(params) + c, flat


@fixture_ok
@given(seed=seeds, n=st.integers(1, 5))
def test_zo_follows_documented_draws(xp, seed, n):
    """For a quadratic each term is exactly (gᵀz_k) z_k (the ½ zᵀAz parts cancel); z_k re-drawn here
    from the documented order: per sample, per name in dict order, standard_normal(shape)."""
    loss, params, g, flat = _quadratic(seed)
    est = zeroth_order_gradient(loss, {k: xp.asarray(v) for k, v in params.items()}, n, rng=seed)
    draws = np.random.default_rng(seed)
    zs = [np.concatenate([draws.standard_normal(s).ravel() for s in SHAPES.values()]) for _ in range(n)]
    expected = sum((g @ z) * z for z in zs) / n
    # rounding of L(θ ± εz) (|L| <~ 100, unit roundoff 1.1e-16) divided by 2ε = 2e-3: < 1e-11 per |z|
    scale = sum(np.abs(z) for z in zs) / n
    diff = np.abs(flat(est) - expected)
    assert np.all(diff <= 1e-9 * (1 + scale)), f"max diff {diff.max():.3e}"


def test_zo_converges_like_inverse_sqrt_n():
    """E‖Ĝ − g‖² = (d + 1)‖g‖²/N for a quadratic (proofs/importance.md). N‖Ĝ − g‖²/‖g‖² tends to
    2χ²₁ + χ²₉ (mean 11), which lies between χ²₁₀ and 2χ²₁₀: P(> 9·11) <= P(χ²₁₀ > 49.5) = 3e-7 and
    P(< 11/25) <= P(χ²₁₀ < 0.44) = 4e-6. So requiring the relative error to lie within
    [1/5, 3] × √((d+1)/N) at N = 100, 1600, 6400 (independent draws) is a sound check of unbiasedness
    and of the 1/√N rate; the error must also shrink and the cosine rise with N."""
    loss, params, g, flat = _quadratic(0)
    d = g.size
    errs, cosines = [], []
    for k, N in enumerate((100, 1600, 6400)):
        est = flat(zeroth_order_gradient(loss, params, N, rng=np.random.default_rng(100 + k)))
        rel = np.linalg.norm(est - g) / np.linalg.norm(g)
        predicted = math.sqrt((d + 1) / N)
        assert predicted / 5 <= rel <= 3 * predicted, f"N={N}: relative error {rel:.4f}, predicted {predicted:.4f}"
        errs.append(rel)
        cosines.append(est @ g / (np.linalg.norm(est) * np.linalg.norm(g)))
    assert errs[0] > errs[1] > errs[2], f"errors {errs}"
    assert cosines[0] < cosines[1] < cosines[2] and cosines[2] > 0.99, f"cosines {cosines}"


def test_zo_bias_is_order_eps_squared_for_cubic():
    """L(θ) = Σ c_i θ_i³: each term is [Σ_i c_i (3θ_i² z_i + ε² z_i³)] z_j, whose mean is
    g_j + 3ε² c_j. With the same draws for two ε the gradient part cancels exactly, and
    (Ĝ(ε₁) − Ĝ(ε₂)) / (ε₁² − ε₂²) = (1/N) Σ_k (Σ_i c_i z_ki³) z_kj for the documented draws z_k,
    which this test re-draws: equal to rounding. Its mean is 3c_j, its standard deviation
    σ_j = √((105 − 9)c_j² + 15 Σ_{i≠j} c_i²)/√N: the estimate is within 5σ_j of 3c_j per coordinate
    (5σ_j < 0.8 |3c_j| in each, so no bias of the wrong size or a zero bias passes)."""
    c = np.array([1.0, -0.5, 0.25])
    params = {"t": np.array([0.3, -0.7, 1.1])}
    N = 4000

    def loss(p):
        return float(np.sum(c * p["t"] ** 3))

    g1 = zeroth_order_gradient(loss, params, N, eps=1.0, rng=3)["t"]
    g2 = zeroth_order_gradient(loss, params, N, eps=0.5, rng=3)["t"]
    slope = (g1 - g2) / (1.0**2 - 0.5**2)
    z = np.random.default_rng(3).standard_normal((N, 3))  # the documented draws: one (3,) per sample
    exact = ((z**3 @ c)[:, None] * z).mean(axis=0)
    np.testing.assert_allclose(slope, exact, rtol=1e-9, atol=1e-12)
    sigma = np.sqrt(96 * c**2 + 15 * (np.sum(c**2) - c**2)) / np.sqrt(N)
    assert np.all(5 * sigma < 0.8 * np.abs(3 * c)) and np.all(np.abs(slope - 3 * c) <= 5 * sigma), \
        f"bias / ε² = {slope}, expected {3 * c} ± {5 * sigma}"
    small = zeroth_order_gradient(loss, params, N, eps=1e-3, rng=3)["t"]
    # with ε = 1e-3 the bias 3ε²c is 3e-6·c; the two differ by exactly that plus rounding
    np.testing.assert_allclose(g1 - small, slope * (1.0 - 1e-6), rtol=1e-6, atol=1e-6)


def test_zo_does_not_mutate_params(xp):
    loss, params, _, _ = _quadratic(1)
    inputs = {k: xp.asarray(v) for k, v in params.items()}
    before = {k: to_numpy(v).copy() for k, v in inputs.items()}
    seen = []

    def spy(p):
        seen.append(all(p[k] is not inputs[k] for k in inputs))
        return loss(p)

    zeroth_order_gradient(spy, inputs, 3, rng=0)
    assert all(seen) and len(seen) == 6
    for k in inputs:
        np.testing.assert_array_equal(to_numpy(inputs[k]), before[k])


def test_zo_bad_input():
    params = {"a": np.zeros(3)}
    ok = lambda p: 0.0  # noqa: E731
    with pytest.raises(ValueError, match="n_samples"):
        zeroth_order_gradient(ok, params, 0, rng=0)
    with pytest.raises(ValueError, match="eps"):
        zeroth_order_gradient(ok, params, 1, eps=0.0, rng=0)
    with pytest.raises(TypeError, match="params"):
        zeroth_order_gradient(ok, {}, 1, rng=0)
    with pytest.raises(TypeError, match=r"params\['a'\]"):
        zeroth_order_gradient(ok, {"a": [1.0]}, 1, rng=0)
    with pytest.raises(NonFiniteLossError, match="loss_fn"):
        zeroth_order_gradient(lambda p: float("nan"), params, 1, rng=0)
    with pytest.raises(TypeError, match="loss_fn"):
        zeroth_order_gradient(lambda p: "x", params, 1, rng=0)
    with pytest.raises(ValueError, match="seed"):
        zeroth_order_gradient(ok, params, 1, rng=-1)


# ------------------------------------------------------------------------------------------------
# quantile mean
# ------------------------------------------------------------------------------------------------

TIED = st.sampled_from([0.0, 1.0, 1.0, 2.5, -3.0])
score_tables = hnp.arrays(np.float64, st.tuples(st.integers(1, 9), SIDE), elements=st.one_of(F64, TIED))


@fixture_ok
@given(S=score_tables, n_q=st.integers(2, 13))
@example(S=np.array([[1.0], [2.0], [4.0]]), n_q=11)
def test_quantile_mean_matches_numpy_quantile(xp, S, n_q):
    expected = np.quantile(S, np.linspace(0.0, 1.0, n_q), axis=0, method="linear").mean(axis=0)
    assert_close(quantile_mean(xp.asarray(S), n_q), expected, np.abs(S).max(axis=0) * 8, "numpy.quantile")


@given(S=score_tables, n_q=st.integers(2, 13))
def test_quantile_mean_matches_torch_quantile(S, n_q):
    pytest.importorskip("torch")
    from reference_models import importance as ref

    assert_close(quantile_mean(S, n_q), ref.quantile_mean(S, n_q), np.abs(S).max(axis=0) * 8, "torch.quantile")


def test_quantile_mean_hand_example():
    """Classes {1, 2, 4}, 11 quantiles: q ≤ 0.5 interpolates 1→2, q ≥ 0.5 interpolates 2→4, so the
    mean is (1/11) Σ_k [1 + k/5 for k ≤ 5; 2 + 2(k−5)/5 for k > 5] = (1/11)(9 + 16) = 25/11."""
    assert quantile_mean(np.array([[1.0], [2.0], [4.0]]))[0] == pytest.approx(25 / 11, rel=1e-15)
    one_class = quantile_mean(np.array([[5.0, -1.0]]))  # one class: every quantile is that class
    np.testing.assert_array_equal(one_class, [5.0, -1.0])


@given(seed=seeds, classes=st.integers(2, 4), N=st.integers(1, 4), d_in=SIDE, d_out=SIDE)
def test_per_class_quantile_pipeline_matches_torch(seed, classes, N, d_in, d_out):
    """Per-class Taylor scores from gradients computed class by class (fresh for each class), then
    the quantile mean, equal the torch twin that zeroes its gradient between classes (the released
    code's pitfall was to let it accumulate)."""
    torch = pytest.importorskip("torch")
    from reference_models import importance as ref

    rng = np.random.default_rng(seed)
    W, b = rng.standard_normal((d_out, d_in)), rng.standard_normal(d_out)
    Xs = [rng.standard_normal((N, d_in)) for _ in range(classes)]
    C = torch.as_tensor(rng.standard_normal((N, d_out)))

    def loss(Y):
        return (Y * C).sum() + 0.5 * (Y**2).sum()

    S = np.stack([row_taylor(W, ref.linear_grads(W, b, X, loss)["G"]) for X in Xs])
    S_ref = ref.per_class_taylor(W, b, Xs, loss)
    assert_close(S, S_ref, S_ref, "per-class Taylor")
    assert_close(quantile_mean(S), ref.quantile_mean(S_ref), S_ref.max(axis=0) * 8, "quantile mean")


def test_quantile_mean_bad_input():
    with pytest.raises(ValueError, match="n_quantiles"):
        quantile_mean(np.ones((3, 2)), n_quantiles=1)
    with pytest.raises(ValueError, match=r"S\.shape"):
        quantile_mean(np.ones(3))
    with pytest.raises(ValueError, match=r"S\.shape"):
        quantile_mean(np.ones((0, 3)))


# ------------------------------------------------------------------------------------------------
# normalisation, budgets, selection
# ------------------------------------------------------------------------------------------------


def test_normalize_by_layer_mean(xp):
    s = xp.asarray(np.array([1.0, 3.0, 0.0, 4.0]))
    np.testing.assert_array_equal(to_numpy(normalize_by_layer_mean(s)), [0.5, 1.5, 0.0, 2.0])
    for bad in ([0.0, 0.0], [-1.0, 0.5], [np.inf, 1.0]):
        with pytest.raises(ValueError, match="scores"):
            normalize_by_layer_mean(xp.asarray(np.array(bad)))


@pytest.mark.parametrize(
    "d_out, ratio, expected",
    [
        (768, 0.05, 36),  # 38.4 -> 38 -> 36
        (100, 0.7, 68),  # exactly 70 (not 69.999...) -> 68
        (10, 0.7, 4),  # 7 -> 4
        (8, 1.0, 8),
        (7, 0.5, 1),  # 3 -> 0 -> at least 1
        (3, 1.0, 1),
        (1, 0.01, 1),
        (3072, 0.25, 768),
    ],
)
def test_rows_for_ratio_examples(d_out, ratio, expected):
    assert rows_for_ratio(d_out, ratio) == expected


@given(d_out=st.integers(1, 5000), ratio=st.floats(0.0, 1.0, exclude_min=True))
def test_rows_for_ratio_rules(d_out, ratio):
    """A multiple of 4 (or the minimum 1), at most ratio · d_out (unless that is below 4), and the
    largest such multiple: adding 4 would exceed ratio · d_out (read as its shortest decimal)."""
    from fractions import Fraction

    k = rows_for_ratio(d_out, ratio)
    exact = Fraction(repr(ratio)) * d_out
    assert k >= 1 and k <= d_out
    if exact >= 4:
        assert k % 4 == 0 and k <= exact < k + 4
    else:
        assert k == 1


def test_rows_for_ratio_bad_input():
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="ratio"):
            rows_for_ratio(10, bad)
    with pytest.raises(ValueError, match="d_out"):
        rows_for_ratio(0, 0.5)


def test_bad_scores_input():
    W = np.ones((3, 4))
    for p in (0, 3, 1.5, True):
        with pytest.raises(ValueError, match="p="):
            row_magnitude(W, p)
    with pytest.raises(ValueError, match=r"G\.shape"):
        row_taylor(W, np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"F\.shape"):
        row_obd(W, np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"W\.shape"):
        row_magnitude(np.ones(3))
    with pytest.raises(TypeError, match="W"):
        row_magnitude([[1.0]])
    with pytest.raises(ValueError, match=r"X\.shape"):
        per_sample_sq_grad_sum(np.ones((2, 3, 4)), np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="chunk"):
        per_sample_sq_grad_sum(np.ones((2, 3, 4)), np.ones((2, 3, 4)), chunk=0)


def python_top(s, r):
    """Pure-Python oracle: sort by (−score, index), keep r, return sorted indices."""
    return sorted(sorted(range(len(s)), key=lambda i: (-s[i], i))[:r])


SCORES = hnp.arrays(
    np.float64,
    st.integers(1, 12),
    elements=st.one_of(st.sampled_from([0.0, -0.0, 1.0, 2.0, 2.0]), F64),
)


@fixture_ok
@given(s=SCORES, data=st.data())
@example(s=np.array([0.0, -0.0, 1.0, 1.0, -0.0]), data=None)
def test_top_rows_equals_oracles(xp, s, data):
    r = data.draw(st.integers(1, s.size)) if data is not None else 3
    got = to_numpy(top_rows(xp.asarray(s), r))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, python_top(s.tolist(), r))
    np.testing.assert_array_equal(got, np.sort(np.argsort(-s, kind="stable")[:r]))


def test_top_rows_ties_go_to_lower_index(xp):
    s = xp.asarray(np.array([1.0, 2.0, 2.0, 2.0, 0.0]))
    np.testing.assert_array_equal(to_numpy(top_rows(s, 2)), [1, 2])
    np.testing.assert_array_equal(to_numpy(top_rows(s, 4)), [0, 1, 2, 3])


@given(s=hnp.arrays(np.float64, st.integers(1, 12), elements=st.integers(0, 50).map(float)), data=st.data())
def test_per_layer_selection_invariant_to_positive_scaling(s, data):
    """Per-layer budget: top-r of s, of s / mean(s) and of 2^k s coincide (integer scores, whose order
    survives the division's rounding; powers of two scale exactly)."""
    r = data.draw(st.integers(1, s.size))
    base = top_rows(s, r)
    np.testing.assert_array_equal(top_rows(s * 2.0 ** data.draw(st.integers(-40, 40)), r), base)
    if s.sum() > 0:
        np.testing.assert_array_equal(top_rows(normalize_by_layer_mean(s), r), base)


def test_top_rows_bad_input():
    with pytest.raises(ValueError, match="scores"):
        top_rows(np.array([1.0, np.nan]), 1)
    for r in (0, 3):
        with pytest.raises(ValueError, match="r="):
            top_rows(np.array([1.0, 2.0]), r)
    with pytest.raises(ValueError, match=r"scores\.shape"):
        top_rows(np.ones((2, 2)), 1)


layer_scores = st.dictionaries(
    st.sampled_from(["h.0.attn.c_attn", "h.0.mlp.c_fc", "h.1.attn.c_proj", "h.1.mlp.c_proj"]),
    hnp.arrays(np.float64, st.integers(1, 8), elements=st.integers(0, 9).map(float)).filter(lambda a: a.sum() > 0),
    min_size=1,
)


@fixture_ok
@given(layers=layer_scores, data=st.data())
def test_global_threshold_rows_equals_oracle(xp, layers, data):
    """Oracle: every (−s_i / mean_l, layer position, i) sorted in Python, the first total_rows kept.
    Integer scores make mean_l = fsum/n exact-then-rounded, the same IEEE operations as the code."""
    total = data.draw(st.integers(1, sum(a.size for a in layers.values())))
    keys = []
    for pos, (name, s) in enumerate(layers.items()):
        mean = math.fsum(s.tolist()) / s.size
        keys += [(-(v / mean), pos, i) for i, v in enumerate(s.tolist())]
    kept = sorted(keys)[:total]
    got = global_threshold_rows({k: xp.asarray(v) for k, v in layers.items()}, total)
    assert list(got) == list(layers)
    for pos, name in enumerate(layers):
        expected = sorted(i for (_, p, i) in kept if p == pos)
        np.testing.assert_array_equal(to_numpy(got[name]), np.array(expected, dtype=np.int64))
    assert sum(to_numpy(v).size for v in got.values()) == total


@given(layers=layer_scores, data=st.data())
def test_global_threshold_rows_invariant_to_layer_scale(layers, data):
    """Mean-normalisation removes each layer's scale: multiplying one layer by 2^k changes nothing."""
    total = data.draw(st.integers(1, sum(a.size for a in layers.values())))
    name = data.draw(st.sampled_from(list(layers)))
    scaled = dict(layers, **{name: layers[name] * 2.0 ** data.draw(st.integers(-30, 30))})
    a, b = global_threshold_rows(layers, total), global_threshold_rows(scaled, total)
    for k in layers:
        np.testing.assert_array_equal(a[k], b[k])


def test_global_threshold_rows_zero_rows_layer_and_errors():
    got = global_threshold_rows({"A": np.array([1.0, 1.0, 1.0, 1.0]), "B": np.array([0.0, 0.0, 0.0, 4.0])}, 1)
    np.testing.assert_array_equal(got["B"], [3])
    assert got["A"].size == 0 and got["A"].dtype == np.int64  # layer A gets no adapter
    with pytest.raises(ValueError, match=r"scores_by_layer\['Z'\]"):
        global_threshold_rows({"A": np.ones(2), "Z": np.zeros(3)}, 1)
    with pytest.raises(ValueError, match=r"scores_by_layer\['A'\]"):
        global_threshold_rows({"A": np.array([np.nan, 1.0])}, 1)
    for total in (0, 4):
        with pytest.raises(ValueError, match="total_rows"):
            global_threshold_rows({"A": np.ones(2), "B": np.ones(1)}, total)
    with pytest.raises(TypeError, match="scores_by_layer"):
        global_threshold_rows({}, 1)
