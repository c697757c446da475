"""Curvature along a step direction, and AdaPEFT's per-group influence (map and choices:
minisft/methods/adapeft/__init__.py; derivations: proofs/adapeft.md).

    L(θ − x d_k) ≈ L(θ) − b_k x + ½ a_k x²,   b_k = g_kᵀ d_k,   a_k = d_kᵀ H_kk d_k
    I_k = max_x [b_k x − ½ a_k x²] = b_k² / (2 a_k)      influence (at x* = b_k / a_k; a_k > 0)
    PPI_k = I_k / n_k                                      group_influence's "ppi"

Two estimators of (a_k, b_k):
- "exact": b_k = g_kᵀ d_k from the gradient, and H d_k by a central difference of explicit
  gradients, (∇L(θ + ε d_k) − ∇L(θ − ε d_k)) / 2ε (`hvp`, Richardson-extrapolated by default).
- "gen", forward-only (GeN): the losses L(θ − c η d_k) for c ∈ {−2, −1, +1, +2}, least-squares fit
  of L(θ − x d_k) − L(θ) = ½ a_k x² − b_k x (`quadratic_fit`), with its R² over the 4 points.
An estimate is valid only when a_k > 0, b_k > 0 and (for "gen") R² > 0.99 (`validity`); an invalid
one keeps its numbers and says why — it is never silently zeroed.
"""

import math
from contextlib import contextmanager

import numpy as np

from ...core.backend import array_module
from ...core.errors import bad_type, require
from ...training.optim import AdamW

ESTIMATORS = ("exact", "gen")
DIRECTIONS = ("adam", "sgd")
GEN_MULTIPLIERS = (-2.0, -1.0, 1.0, 2.0)  # c: the losses are taken at θ − c·η·d_k
R2_MIN = 0.99
HVP_LENGTH = {2: 0.1, 4: 0.02}  # order of the difference scheme -> ℓ / RMS(θ_S) of its step (package docstring)


# ------------------------------------------------------------------------------- directions
def step_direction(kind, grads, params=None, optimizer=None):
    """The step direction d ({name: array}, shapes of grads) with θ ← θ − lr·d.

    "sgd": d = g (plain SGD). "adam": the step of `optimizer` (a minisft.training.optim.AdamW) for `grads` at
    `params` ({name: array}, for the weight decay term), divided by its lr — read from its state
    without changing it (step counts and moments untouched).
    """
    require(kind in DIRECTIONS, "direction", kind, f"one of {DIRECTIONS}")
    if kind == "sgd":
        return dict(grads)
    if not isinstance(optimizer, AdamW):
        raise bad_type("optimizer", optimizer, "a minisft.training.optim.AdamW for direction 'adam'")
    b1, b2 = optimizer.b1, optimizer.b2
    out = {}
    for name, g in grads.items():
        st = optimizer.state.get(name, {})
        t = st.get("step", 0) + 1  # the tensor's step about to be taken (t counts per tensor)
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        m = b1 * st.get("exp_avg", 0.0) + (1 - b1) * g  # the same operations as AdamW._update
        v = b2 * st.get("exp_avg_sq", 0.0) + (1 - b2) * (g * g)
        xp = array_module(g)
        out[name] = (m / bc1) / (xp.sqrt(v) / math.sqrt(bc2) + optimizer.eps) + optimizer.weight_decay * params[name]
    return out


# ------------------------------------------------------------------------------ HVP (exact)
def _check_direction(params, direction):
    require(bool(direction), "direction", direction, "a non-empty {name: array} dict")
    unknown = [k for k in direction if k not in params]
    require(not unknown, "direction", unknown[:5], "names of trainable parameters (keys of params)")
    for k, d in direction.items():
        require(tuple(d.shape) == tuple(params[k].shape), f"direction[{k!r}].shape", tuple(d.shape),
                f"{tuple(params[k].shape)}, the parameter's shape")


def _sq_norm(arrays):
    """Σ ‖a‖² over arrays, as a Python float (one host sync per array)."""
    return sum(float(array_module(a).vdot(a.ravel(), a.ravel())) for a in arrays)


def _dot(a, b, names):
    """Σ_{k∈names} ⟨a_k, b_k⟩ as a Python float."""
    return sum(float(array_module(a[k]).vdot(a[k].ravel(), b[k].ravel())) for k in names)


@contextmanager
def shifted(params, direction, scale):
    """params[k] += scale·direction[k] in place for k in direction; restored bit-exactly at exit."""
    saved = {k: params[k].copy() for k in direction}
    try:
        for k, d in direction.items():
            params[k] += scale * d
        yield params
    finally:
        for k, v in saved.items():
            params[k][...] = v


def hvp_step(params, direction, order=2):
    """The default step ε = u^{1/(order+1)} · HVP_LENGTH[order] · RMS(θ_S) / max|d| (package
    docstring); order 2 for the central difference, 4 with Richardson. None when d = 0."""
    dmax = max(float(array_module(d).abs(d).max()) if d.size else 0.0 for d in direction.values())
    if dmax == 0:
        return None
    size = sum(int(d.size) for d in direction.values())
    rms = math.sqrt(_sq_norm(params[k] for k in direction) / size)
    u = float(np.finfo(next(iter(direction.values())).dtype).eps) / 2
    return u ** (1 / (order + 1)) * HVP_LENGTH[order] * (rms if rms > 0 else 1.0) / dmax


def _central(grad_fn, params, direction, eps):
    """(∇L(θ + εd) − ∇L(θ − εd)) / 2ε for every name grad_fn returns."""
    with shifted(params, direction, eps):
        plus = grad_fn(params)
    with shifted(params, direction, -eps):
        minus = grad_fn(params)
    return {k: (plus[k] - minus[k]) / (2 * eps) for k in plus}


def hvp(grad_fn, params, direction, eps=None, richardson=True):
    """H d by the central difference D(ε) = (∇L(θ + εd) − ∇L(θ − εd)) / 2ε, error O(ε²) (2 gradient
    evaluations); with `richardson`, (4 D(ε/2) − D(ε)) / 3, error O(ε⁴) (4 evaluations).

    grad_fn(params) -> {name: gradient} reads the arrays of `params` (shifted in place here);
    params {name: array}; direction {name: array} over a subset of params (d = 0 elsewhere);
    eps > 0, or None for `hvp_step`. Returns {name: (H d)[name]} for every name grad_fn returns
    (zeros for every name of params when d = 0). `params` is bit-identical at exit.
    """
    _check_direction(params, direction)
    if eps is None:
        eps = hvp_step(params, direction, order=4 if richardson else 2)
        if eps is None:
            return {k: array_module(v).zeros_like(v) for k, v in params.items()}
    else:
        require(isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps > 0, "eps", eps,
                "a positive finite step (or None for the default)")
    coarse = _central(grad_fn, params, direction, eps)
    if not richardson:
        return coarse
    fine = _central(grad_fn, params, direction, eps / 2)
    return {k: (4 * fine[k] - coarse[k]) / 3 for k in coarse}


# ------------------------------------------------------------------------- GeN (forward-only)
def quadratic_fit(xs, losses, loss0):
    """Least squares of y = L(θ − x d) − L(θ) = ½ a x² − b x; returns (a, b, R²) as floats.

    xs (m,) distinct non-zero steps (at least 2 distinct values); losses (m,) L(θ − x d); loss0
    L(θ), the exact anchor. Columns are scaled by s = max|x| before solving (a = A/s², b = B/s).
    R² = 1 − Σ(y − ŷ)² / Σ(y − ȳ)² over the m points (NaN when every y is equal): with m = 2 it is
    1 for any data (proofs/adapeft.md §2).
    """
    require(math.isfinite(float(loss0)), "loss0", loss0, "a finite anchor loss L(θ)")
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64) - float(loss0)
    require(x.ndim == 1 and x.size >= 2 and bool(np.isfinite(x).all()) and bool((x != 0).all()),
            "xs", xs, "a 1-D array of at least 2 finite non-zero steps")
    require(np.unique(x).size >= 2, "xs", xs, "at least 2 distinct steps (else a and b are not identified)")
    require(y.shape == x.shape and bool(np.isfinite(y).all()), "losses", losses,
            f"{x.size} finite losses, one per step")
    s = float(np.max(np.abs(x)))
    u = x / s
    X = np.stack([0.5 * u * u, -u], axis=1)  # (m, 2)
    (A, B), *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ np.array([A, B])
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else float("nan")
    return float(A) / s**2, float(B) / s, r2


def gen_losses(loss_fn, params, direction, eta):
    """(xs, losses): L(θ − x d) at x = c·η for c in GEN_MULTIPLIERS; `params` restored exactly."""
    xs = [c * eta for c in GEN_MULTIPLIERS]
    losses = []
    for x in xs:
        with shifted(params, direction, -x):
            losses.append(float(loss_fn(params)))
    return xs, losses


# ------------------------------------------------------------------------------- influence
def validity(a, b, r2=None, r2_min=R2_MIN):
    """None when the estimate is usable, else the reasons it is not ('; '-joined)."""
    reasons = []
    if not a > 0:
        reasons.append(f"curvature a={a:.4g} <= 0")
    if not b > 0:
        reasons.append(f"slope b={b:.4g} <= 0")
    if r2 is not None and not r2 > r2_min:
        reasons.append(f"fit R2={r2:.6g} <= {r2_min}")
    return "; ".join(reasons) or None


def influence(a, b):
    """I = b² / (2a): the loss decrease of the best step x* = b/a along d (requires a > 0)."""
    return b * b / (2 * a)


def group_influence(groups, sizes, grads, direction, estimator="exact", *, params, grad_fn=None,
                    loss_fn=None, eta=None, eps=None, r2_min=R2_MIN):
    """Per-group slope, curvature and influence of a step along `direction`.

    groups {group: [parameter names]} (disjoint); sizes {group: n_k > 0}; grads, direction
    {name: array} covering every listed name; params {name: array}, the live parameters.
    estimator "exact": needs grad_fn(params) -> {name: grad} on the batch of `grads` (2K gradient
    evaluations); "gen": needs loss_fn(params) -> float (4K + 1 forward passes, all on whatever
    loss_fn evaluates) and eta > 0. Returns a list, in `groups` order, of JSON-ready dicts
    {group, n, a, b, r2 (None for exact or when not finite — the reason then shows the value),
    influence, ppi (None when invalid), valid, reason}.
    """
    require(estimator in ESTIMATORS, "estimator", estimator, f"one of {ESTIMATORS}")
    if estimator == "exact":
        require(callable(grad_fn), "grad_fn", grad_fn, "a callable grad_fn(params) -> {name: grad} for 'exact'")
    else:
        require(callable(loss_fn), "loss_fn", loss_fn, "a callable loss_fn(params) -> float for 'gen'")
        require(isinstance(eta, (int, float)) and math.isfinite(eta) and eta > 0, "eta", eta,
                "a positive finite step unit for 'gen'")
    missing = [k for names in groups.values() for k in names if k not in direction or k not in grads]
    require(not missing, "groups", missing[:5], "parameter names present in grads and direction")
    loss0 = float(loss_fn(params)) if estimator == "gen" else None
    out = []
    for group, names in groups.items():
        d_k = {k: direction[k] for k in names}
        r2, overflow = None, []
        if estimator == "exact":
            b = _dot(grads, direction, names)
            a = _dot(direction, hvp(grad_fn, params, d_k, eps), names)  # Richardson: within 1e-8 of autograd
        else:
            xs, losses = gen_losses(loss_fn, params, d_k, eta)
            overflow = [x for x, loss in zip(xs, losses) if not math.isfinite(loss)]
            a, b, r2 = (math.nan,) * 3 if overflow else quadratic_fit(xs, losses, loss0)
        reason = f"non-finite loss at x={overflow}" if overflow else validity(a, b, r2, r2_min)
        infl = influence(a, b) if reason is None else None
        n = int(sizes[group])
        out.append({"group": group, "n": n, "a": _json_number(a), "b": _json_number(b), "r2": _json_number(r2),
                    "influence": infl, "ppi": None if infl is None else infl / n, "valid": reason is None,
                    "reason": reason})
    return out


def _json_number(x):
    """x, or None when it is None or not finite (strict JSON; the reason string keeps the value)."""
    return x if x is not None and math.isfinite(x) else None


__all__ = ["DIRECTIONS", "ESTIMATORS", "GEN_MULTIPLIERS", "HVP_LENGTH", "R2_MIN", "gen_losses", "group_influence", "hvp",
           "hvp_step", "influence", "quadratic_fit", "shifted", "step_direction", "validity"]
