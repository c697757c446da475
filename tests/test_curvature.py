"""Curvature (minisft.methods.adapeft.curvature): finite-difference HVPs against PyTorch double backward, their
error order, GeN's quadratic fit (exact on quadratics, its R², its O(η²) error on the model), the
influence formula, validity rules, the Adam direction and bad input. Derivations: proofs/adapeft.md.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minisft.core.backend import to_numpy
from minisft.core.config import GPTConfig
from minisft.methods.adapeft.curvature import (GEN_MULTIPLIERS, gen_losses, group_influence, hvp, hvp_step,
    quadratic_fit, shifted, step_direction)
from minisft.methods.adapeft.groups import build_groups
from minisft.training.optim import AdamW
from tests.gradcheck import max_rel_diff
from tests.helpers import TINY, tiny_gpt

U = np.finfo(np.float64).eps / 2


# ------------------------------------------------------------------- an exactly quadratic loss
class Quadratic:
    """L(θ) = c + pᵀθ + ½ θᵀQθ over params {"u": (3,), "w": (2, 3)} (θ = [u, vec w]), on xp arrays.

    `curvature` scales Q = curvature·(MᵀM/n + I) (sign → definiteness); `cubic` adds cubic·Σθ³.
    """

    SHAPES = {"u": (3,), "w": (2, 3)}

    def __init__(self, xp, seed, curvature=1.0, cubic=0.0):
        rng = np.random.default_rng(seed)
        n = sum(math.prod(s) for s in self.SHAPES.values())
        M = rng.standard_normal((n, n))
        self.Q = curvature * (M.T @ M / n + np.eye(n))
        self.p, self.c, self.cubic = rng.standard_normal(n), float(rng.standard_normal()), cubic
        self.xp = xp
        self.params = {k: xp.asarray(rng.standard_normal(s)) for k, s in self.SHAPES.items()}

    def flat(self, params):
        return np.concatenate([to_numpy(params[k]).ravel() for k in self.SHAPES])

    def unflat(self, v):
        out, i = {}, 0
        for k, s in self.SHAPES.items():
            out[k] = self.xp.asarray(v[i:i + math.prod(s)].reshape(s))
            i += math.prod(s)
        return out

    def loss(self, params):
        t = self.flat(params)
        return self.c + self.p @ t + 0.5 * t @ self.Q @ t + self.cubic * np.sum(t**3)

    def grads(self, params):
        t = self.flat(params)
        return self.unflat(self.p + self.Q @ t + 3 * self.cubic * t**2)

    def abs_terms(self, params):
        """Σ of the absolute values of the loss's terms: the scale of its rounding error."""
        t = self.flat(params)
        return abs(self.c) + np.abs(self.p * t).sum() + 0.5 * np.abs(np.outer(t, t) * self.Q).sum()


def slice_of(d, name, shapes):
    """The direction d (flat, host) restricted to parameter `name`, flat."""
    mask = np.concatenate([np.full(math.prod(s), k == name) for k, s in shapes.items()])
    return np.where(mask, d, 0.0)


# ---------------------------------------------------------------------------- quadratic_fit
@given(a=st.floats(-10, 10), b=st.floats(-10, 10), eta=st.floats(1e-2, 1.0), loss0=st.floats(-10, 10))
def test_quadratic_fit_recovers_an_exact_quadratic(a, b, eta, loss0):
    """L(θ − x d) = L0 − b x + ½ a x² at x = c·η: the fit returns a and b. Bound (proofs/adapeft.md
    §2): the losses carry rounding δy ≤ 4u·50, and the diagonal normal equations give
    |δa| ≤ (10/17)·δy/η² ≤ 7e-11 and |δb| ≤ (6/10)·δy/η ≤ 2e-13 on these ranges."""
    xs = [c * eta for c in GEN_MULTIPLIERS]
    losses = [loss0 - b * x + 0.5 * a * x * x for x in xs]
    a_fit, b_fit, _ = quadratic_fit(xs, losses, loss0)
    assert abs(a_fit - a) <= 1e-10, (a_fit, a)
    assert abs(b_fit - b) <= 1e-10, (b_fit, b)


@given(y=st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=2), eta=st.floats(1e-4, 1.0),
       x2=st.sampled_from([-1.0, 2.0, 0.5]))
def test_r2_is_trivially_one_with_the_anchor_and_two_points(y, eta, x2):
    """Two perturbed points and the exact anchor determine a and b: the fit interpolates any data."""
    _, _, r2 = quadratic_fit([eta, x2 * eta], y, 0.0)
    assert math.isnan(r2) or r2 >= 1 - 1e-9, r2  # NaN: y equal, no variance to explain


@given(t=st.floats(0.1, 10.0) | st.floats(-10.0, -0.1), eta=st.floats(1e-2, 1.0))
def test_r2_of_a_pure_cubic_matches_its_closed_form(t, eta):
    """y = t x³ on c ∈ {±1, ±2}: â = 0, b̂ = −(17/5) t η², R² = 1 − 36/325 (proofs/adapeft.md §2);
    tolerances: the rounding of |y| ≤ 8|t|η³ propagated through the normal equations, ×10."""
    xs = [c * eta for c in GEN_MULTIPLIERS]
    a_fit, b_fit, r2 = quadratic_fit(xs, [t * x**3 for x in xs], 0.0)
    assert abs(a_fit) <= 1e-13 * abs(t) * eta, a_fit  # rounding: (10/17)·8u|t|η³/η²
    assert abs(b_fit + 17 / 5 * t * eta**2) <= 1e-13 * abs(t) * eta**2, b_fit
    assert abs(r2 - 289 / 325) <= 1e-12, r2


# ---------------------------------------------------------------------- group_influence, quadratic
def quadratic_case(xp, seed, curvature=1.0, cubic=0.0):
    q = Quadratic(xp, seed, curvature, cubic)
    rng = np.random.default_rng(seed + 1)
    d = rng.standard_normal(q.Q.shape[0])
    return q, d, q.unflat(d), {"u": ["u"], "w": ["w"]}, {"u": 3, "w": 6}


@given(seed=st.integers(0, 10**6), eta=st.floats(1e-2, 0.5))
@example(seed=23432, eta=0.23777060374252587)  # found with HYPOTHESIS_PROFILE=dev
@settings(max_examples=15, suppress_health_check=[*settings().suppress_health_check, HealthCheck.function_scoped_fixture])
def test_group_influence_on_an_exact_quadratic(xp, seed, eta):
    """b_k = g_kᵀd_k and a_k = d_kᵀQ_kk d_k in closed form: "gen" recovers them within the rounding
    bound of the fit (δy from the dot-product error bound (2n + 2)u·Σ|terms| of the loss and of the
    anchor, propagated as in the scalar test), "exact" (a central difference of a linear gradient
    has no truncation error) to 1e-10; I = b²/2a."""
    q, d, direction, groups, sizes = quadratic_case(xp, seed)
    params = q.params
    before = {k: to_numpy(v).copy() for k, v in params.items()}
    g = q.grads(params)
    gflat = q.flat(g)
    for estimator in ("gen", "exact"):
        out = group_influence(groups, sizes, g, direction, estimator, params=params, grad_fn=q.grads,
                              loss_fn=q.loss, eta=eta, eps=0.5)
        for e in out:
            dk = slice_of(d, e["group"], q.SHAPES)
            a, b = dk @ q.Q @ dk, gflat @ dk
            if estimator == "gen":
                points = [q.flat(params) - c * eta * dk for c in GEN_MULTIPLIERS] + [q.flat(params)]
                n = q.Q.shape[0]
                dy = 2 * (2 * n + 2) * U * max(q.abs_terms(q.unflat(t)) for t in points)  # dot-product bound, twice
                tol_a, tol_b = 10 / 17 * dy / eta**2, 6 / 10 * dy / eta
            else:  # Cauchy–Schwarz scales: a or b near 0 are not compared relative to themselves
                tol_a = 1e-10 * np.linalg.norm(q.Q, 2) * (dk @ dk)
                tol_b = 1e-12 * np.linalg.norm(slice_of(gflat, e["group"], q.SHAPES)) * np.linalg.norm(dk)
            assert abs(e["a"] - a) <= tol_a, (estimator, e["group"], e["a"], a, tol_a)
            assert abs(e["b"] - b) <= tol_b, (estimator, e["group"], e["b"], b, tol_b)
            if e["valid"]:
                # b² / 2a to a few rounding units (Python's b ** 2 goes through pow(), which may differ from
                # b · b in the last bit: seed 23432)
                assert math.isclose(e["influence"], e["b"] ** 2 / (2 * e["a"]), rel_tol=4 * U, abs_tol=0.0)
                assert e["ppi"] == e["influence"] / e["n"]
    assert all(np.array_equal(to_numpy(params[k]), v) for k, v in before.items())


def test_validity_rules_report_reasons_and_keep_the_numbers(xp):
    """Negative curvature, a non-positive slope, a poor fit and an overflowing perturbed loss each
    invalidate an estimate with a reason; the invalid estimate keeps its a and b (never zeroed;
    None only where they are not finite numbers) and has no influence."""
    q, _, _, groups, sizes = quadratic_case(xp, 3, curvature=-1.0)
    g = q.grads(q.params)
    out = group_influence(groups, sizes, g, g, "exact", params=q.params, grad_fn=q.grads, eps=0.5)
    for e in out:
        assert not e["valid"] and "curvature" in e["reason"] and e["a"] < 0 and e["b"] > 0
        assert e["influence"] is None and e["ppi"] is None
    q, _, _, groups, sizes = quadratic_case(xp, 4)
    g = q.grads(q.params)
    uphill = {k: -v for k, v in g.items()}
    out = group_influence(groups, sizes, g, uphill, "exact", params=q.params, grad_fn=q.grads, eps=0.5)
    assert all(not e["valid"] and "slope" in e["reason"] and e["b"] < 0 and e["a"] > 0 for e in out)
    q, _, _, groups, sizes = quadratic_case(xp, 5, curvature=1e-3, cubic=5.0)  # the cubic dominates
    g = q.grads(q.params)
    out = group_influence(groups, sizes, g, g, "gen", params=q.params, loss_fn=q.loss, eta=0.3)
    assert all(e["r2"] <= 0.99 and "R2" in e["reason"] and not e["valid"] for e in out), out
    q, _, _, groups, sizes = quadratic_case(xp, 6)
    g = q.grads(q.params)
    out = group_influence(groups, sizes, g, g, "gen", params=q.params, loss_fn=q.loss, eta=0.1)
    assert all(e["valid"] and e["reason"] is None and e["r2"] > 0.99 for e in out), out
    theta0 = q.flat(q.params)

    def overflowing(p):  # the loss overflows at the outer points (x = ±2η) of either group
        delta = q.flat(p) - theta0
        g_k = slice_of(q.flat(g), "u" if np.any(delta[:3]) else "w", q.SHAPES)
        return float("inf") if np.linalg.norm(delta) > 1.5 * 0.1 * np.linalg.norm(g_k) else q.loss(p)

    out = group_influence(groups, sizes, g, g, "gen", params=q.params, loss_fn=overflowing, eta=0.1)
    assert all(not e["valid"] and "non-finite loss" in e["reason"] and e["a"] is None for e in out), out


# ----------------------------------------------------------------------------------- model
torch = pytest.importorskip("torch")
from reference_models import curvature as ref_curv  # noqa: E402


def probe_model(seed, cfg=TINY, random_adapters=True):
    """A float64 tiny GPT with every "modules" group active (LoRA r=4), adapters random (B ≠ 0)."""
    model = tiny_gpt(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    groups = build_groups(cfg, "modules", lora_r=4)
    model.freeze()
    for g in groups:
        g.activate(model, 8, rng)
    if random_adapters:
        for a in model.adapter_params().values():
            a[...] = 0.3 * rng.standard_normal(a.shape)
    idx, tgt = rng.integers(0, cfg.vocab_size, (3, cfg.block_size)), rng.integers(0, cfg.vocab_size, (3, cfg.block_size))
    members = {g.name: g.param_names(model) for g in groups}
    return model, members, {g.name: g.size for g in groups}, idx, tgt, rng


def flat(d, names):
    return np.concatenate([np.asarray(d[k]).ravel() for k in names])


@given(seed=st.integers(0, 10**6), shape=st.sampled_from([(2, 16), (1, 8), (2, 32)]))
@example(seed=112, shape=(2, 32))  # the plain central difference's worst case found (2.8e-7)
@settings(max_examples=4)
def test_hvp_matches_double_backward(seed, shape):
    """For a direction restricted to each group (random, and the gradient), H d over every trainable
    tensor equals PyTorch's double backward within 1e-8 with Richardson extrapolation (hvp's and
    AdaPEFT's default). The plain central difference (richardson=False) is checked at 1e-6: at its
    default step its error is the truncation–rounding balance, measured from 1e-9 to 3e-7 over 90 of
    these models, so the 1e-8 claim is Richardson's. Parameters are bit-identical afterwards."""
    L, C = shape
    cfg = GPTConfig(vocab_size=40, block_size=8, n_layer=L, n_head=2, n_embd=C)
    model, members, _, idx, tgt, rng = probe_model(seed, cfg)
    params = model.trainable_params()
    before = {k: v.copy() for k, v in params.items()}
    twin, names = ref_curv.twin(model)
    grad_fn = lambda p: model.loss_and_grads(idx, tgt)[1]  # noqa: E731
    g = grad_fn(params)
    order = sorted(names)
    for group, keys in members.items():
        for kind, d in (("random", {k: rng.standard_normal(params[k].shape) for k in keys}), ("gradient", {k: g[k] for k in keys})):
            if not any(np.any(v) for v in d.values()):
                continue
            want = flat(ref_curv.hvp(twin, names, idx, tgt, d), order)
            for richardson, tol in ((True, 1e-8), (False, 1e-6)):
                got = flat(hvp(grad_fn, params, d, richardson=richardson), order)
                err = max_rel_diff(got, want)
                assert err <= tol, f"{group} {kind} richardson={richardson}: max rel diff {err:.2e}"
    assert all(np.array_equal(params[k], v) for k, v in before.items())


def test_central_difference_error_is_second_order():
    """Halving ε divides the truncation error by 4 (central difference) and by 16 (Richardson),
    checked where truncation dominates rounding (steps of 0.2–0.8% of the parameters' RMS)."""
    model, members, _, idx, tgt, rng = probe_model(0)
    params = model.trainable_params()
    twin, names = ref_curv.twin(model)
    grad_fn = lambda p: model.loss_and_grads(idx, tgt)[1]  # noqa: E731
    order = sorted(names)
    for group, keys in members.items():
        d = {k: rng.standard_normal(params[k].shape) for k in keys}
        want = flat(ref_curv.hvp(twin, names, idx, tgt, d), order)
        rms = math.sqrt(sum(float(np.sum(params[k] ** 2)) for k in keys) / sum(params[k].size for k in keys)) or 1.0
        unit = rms / max(float(np.abs(v).max()) for v in d.values())

        def err(s, richardson):
            got = flat(hvp(grad_fn, params, d, eps=s * unit, richardson=richardson), order)
            return np.linalg.norm(got - want) / np.linalg.norm(want)

        ratio = err(4e-3, False) / err(2e-3, False)
        assert 3.6 <= ratio <= 4.4, f"{group}: central-difference error ratio {ratio:.3f}, expected 4"
        coarse = err(8e-3, True)
        if coarse > 1e-8:  # else rounding, not truncation, is what is left
            ratio = coarse / err(4e-3, True)
            assert 13 <= ratio <= 19, f"{group}: Richardson error ratio {ratio:.3f}, expected 16"


@pytest.mark.parametrize("seed", [0, 1])
def test_gen_curvature_matches_exact_to_predicted_order(seed):
    """GeN's â on the model against the exact a = dᵀHd (PyTorch double backward), d = the gradient
    on each group. Along φ(x) = L(θ − x d) the fit's error is (65/204)·φ⁗·η² + O(η⁴) (the cubic term
    cancels by the symmetry of the points; proofs/adapeft.md §2). φ⁗ is estimated independently by
    the 5-point fourth difference at h = 4η; the measured error must equal the prediction within
    10% of it plus the rounding bound (10/17)·δy/η² (δy = 4u·|L|) of the fit and of the difference."""
    model, members, _, idx, tgt, _ = probe_model(seed)
    params = model.trainable_params()
    twin, names = ref_curv.twin(model)
    _, g = ref_curv.gradient(twin, names, idx, tgt)
    loss_fn = lambda p: model.loss(idx, tgt)  # noqa: E731
    L0 = loss_fn(params)
    for group, keys in members.items():
        d = {k: g[k] for k in keys}
        hd = ref_curv.hvp(twin, names, idx, tgt, d)
        a = sum(float(np.vdot(d[k], hd[k])) for k in keys)
        rms = math.sqrt(sum(float(np.sum(params[k] ** 2)) for k in keys) / sum(params[k].size for k in keys)) or 1.0
        eta = 1e-4 * rms / max(float(np.abs(v).max()) for v in d.values())
        a_fit, _, _ = quadratic_fit(*gen_losses(loss_fn, params, d, eta), L0)

        def phi(x):
            with shifted(params, d, -x):
                return loss_fn(params)

        h = 4 * eta
        fourth = (phi(2 * h) - 4 * phi(h) + 6 * L0 - 4 * phi(-h) + phi(-2 * h)) / h**4
        predicted = 65 / 204 * fourth * eta**2
        rounding = 10 / 17 * 4 * U * abs(L0) / eta**2 + 65 / 204 * eta**2 * 16 * 4 * U * abs(L0) / h**4
        miss = abs((a_fit - a) - predicted)
        assert miss <= 0.1 * abs(predicted) + rounding, \
            f"{group}: â − a = {a_fit - a:.3e}, predicted {predicted:.3e}, rounding {rounding:.1e}"


def test_sgd_influence_is_g4_over_2gHg():
    """With d = g, group_influence's I_k equals ‖g_k‖⁴ / (2 g_kᵀ H_kk g_k) from PyTorch, and the
    validity of each group follows the sign of the PyTorch curvature."""
    model, members, sizes, idx, tgt, _ = probe_model(2, random_adapters=False)
    params = model.trainable_params()
    twin, names = ref_curv.twin(model)
    grad_fn = lambda p: model.loss_and_grads(idx, tgt)[1]  # noqa: E731
    g = grad_fn(params)
    out = group_influence(members, sizes, g, step_direction("sgd", g), "exact", params=params, grad_fn=grad_fn)
    _, tg = ref_curv.gradient(twin, names, idx, tgt)
    for e in out:
        keys = members[e["group"]]
        gk = {k: tg[k] for k in keys}
        hg = ref_curv.hvp(twin, names, idx, tgt, gk)
        g2 = sum(float(np.vdot(gk[k], gk[k])) for k in keys)
        gHg = sum(float(np.vdot(gk[k], hg[k])) for k in keys)
        assert e["valid"] == (gHg > 0 and g2 > 0), (e, gHg)
        assert abs(e["a"] - gHg) <= 1e-6 * abs(gHg), (e["group"], e["a"], gHg)
        if e["valid"]:
            want = g2**2 / (2 * gHg)
            assert abs(e["influence"] - want) <= 1e-6 * want, (e["group"], e["influence"], want)
    assert sum(e["valid"] for e in out) >= 4  # the check above compared real influences


def test_adam_direction_is_the_step_and_leaves_the_state(xp):
    """step_direction("adam") is (θ_before − θ_after)/lr of the AdamW step that follows, at the first
    step (empty state), later steps and with weight decay; reading it changes no moment and no step
    count — the optimizer advances exactly once per step (the GeN pitfall)."""
    rng = np.random.default_rng(0)
    params = {"a": xp.asarray(rng.standard_normal((3, 4))), "b": xp.asarray(rng.standard_normal(5))}
    opt = AdamW(lr=1e-2, weight_decay=0.1)
    for step in range(4):
        grads = {k: xp.asarray(rng.standard_normal(v.shape)) for k, v in params.items()}
        if step == 2:
            grads.pop("b")  # a tensor without a gradient this step keeps its own step count
        state = {k: {s: (v.copy() if hasattr(v, "copy") else v) for s, v in st.items()} for k, st in opt.state.items()}
        d = step_direction("adam", grads, params, opt)
        for k, st in opt.state.items():
            assert all(np.array_equal(to_numpy(st[s]), to_numpy(v)) for s, v in state[k].items())
        before = {k: to_numpy(v).copy() for k, v in params.items()}
        opt.step(params, grads)
        for k in grads:
            moved = (before[k] - to_numpy(params[k])) / opt.lr
            assert max_rel_diff(to_numpy(d[k]), moved) <= 1e-12, k
    assert opt.state["a"]["step"] == 4 and opt.state["b"]["step"] == 3
    g = {"a": params["a"]}
    assert step_direction("sgd", g)["a"] is g["a"]


# -------------------------------------------------------------------------------- bad input
def test_bad_input():
    q = Quadratic(np, 0)
    p = q.params
    with pytest.raises(ValueError, match="direction"):
        hvp(q.grads, p, {"nope": np.ones(3)})
    with pytest.raises(ValueError, match="direction"):
        hvp(q.grads, p, {})
    with pytest.raises(ValueError, match=r"direction\['u'\].shape"):
        hvp(q.grads, p, {"u": np.ones(4)})
    for eps in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            hvp(q.grads, p, {"u": np.ones(3)}, eps=eps)
    assert hvp_step(p, {"u": np.zeros(3)}) is None
    assert all(not np.any(v) for v in hvp(q.grads, p, {"u": np.zeros(3)}).values())
    with pytest.raises(ValueError, match="xs"):
        quadratic_fit([0.0, 1.0], [1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="xs"):
        quadratic_fit([1.0, 1.0], [1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="xs"):
        quadratic_fit([1.0], [1.0], 0.0)
    with pytest.raises(ValueError, match="losses"):
        quadratic_fit([1.0, 2.0], [1.0], 0.0)
    with pytest.raises(ValueError, match="losses"):
        quadratic_fit([1.0, 2.0], [1.0, float("inf")], 0.0)
    with pytest.raises(ValueError, match="loss0"):
        quadratic_fit([1.0, 2.0], [1.0, 2.0], float("nan"))
    g = q.grads(p)
    groups, sizes = {"u": ["u"]}, {"u": 3}
    with pytest.raises(ValueError, match="estimator"):
        group_influence(groups, sizes, g, g, "hessian", params=p, grad_fn=q.grads)
    with pytest.raises(ValueError, match="grad_fn"):
        group_influence(groups, sizes, g, g, "exact", params=p)
    with pytest.raises(ValueError, match="loss_fn"):
        group_influence(groups, sizes, g, g, "gen", params=p, eta=0.1)
    for eta in (None, 0.0, -1.0):
        with pytest.raises(ValueError, match="eta"):
            group_influence(groups, sizes, g, g, "gen", params=p, loss_fn=q.loss, eta=eta)
    with pytest.raises(ValueError, match="groups"):
        group_influence({"x": ["missing"]}, {"x": 1}, g, g, "exact", params=p, grad_fn=q.grads)
    with pytest.raises(ValueError, match="direction"):
        step_direction("lion", g)
    with pytest.raises(TypeError, match="optimizer"):
        step_direction("adam", g, p, optimizer=None)
