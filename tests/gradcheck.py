"""Directional finite-difference checks in float64 with Richardson extrapolation.

For a scalar f and direction v, D(h) = (f(θ + h v) − f(θ − h v)) / 2h has error c₂h² + c₄h⁴ + …;
R = (4 D(h/2) − D(h)) / 3 cancels the h² term, leaving O(h⁴) truncation and ~ε|f|/h rounding.
The direction is scaled to the tensor's RMS (1 for an all-zero tensor), so the step is ~1e-3
relative to the values it perturbs: GPT-2's 0.02-scale embeddings feed LayerNorms whose curvature
grows like 1/σ², and an absolute step of 1e-3 there leaves ~1e-6 of truncation error even after
extrapolation. The analytic value is ⟨∇f, v⟩. The error is measured relative to the Cauchy–Schwarz scale
‖∇f‖·‖v‖, so a derivative that happens to be near zero is not compared relative to itself, and
the rounding of f is allowed for separately: if each value of f is within δ of the exact one,
D(h) is within δ/h and R within (4·2δ/h + δ/h)/3 = 3δ/h; δ is taken as ROUNDING_ULPS units of
roundoff of |f| (or of `f_scale`, the sum of |terms| when f is a sum that cancels).
"""

ROUNDING_ULPS = 16  # a float64 loss or projection within 16 ulps of its exact value (observed: 1-2)

import numpy as np


def richardson_directional(f, theta, v, h=1e-3):
    def central(step):
        return (f(theta + step * v) - f(theta - step * v)) / (2 * step)

    return (4 * central(h / 2) - central(h)) / 3


def rms_or_one(a):
    """RMS of the entries of a, or 1 when they are all zero (or there are none)."""
    rms = float(np.sqrt(np.mean(np.square(a)))) if a.size else 0.0
    return rms if rms > 0 else 1.0


def assert_directional(f, theta, grad, rng, tol=1e-7, h=1e-3, label="", scale=None, f_scale=None):
    """Check ⟨grad, v⟩ against Richardson FD of f along a random direction v (standard normal
    entries times `scale`, an array broadcasting to theta; default: the RMS of theta):
    |FD − ⟨grad, v⟩| ≤ tol·‖grad‖‖v‖ + 3·ROUNDING_ULPS·u·max(|f(θ)|, f_scale)/h. Returns the
    error relative to ‖grad‖‖v‖."""
    v = rng.standard_normal(theta.shape) * (rms_or_one(theta) if scale is None else scale)
    fd = richardson_directional(f, theta, v, h)
    an = float(np.sum(grad * v))
    cauchy_schwarz = float(np.linalg.norm(grad) * np.linalg.norm(v)) + 1e-300
    rounding = 3 * ROUNDING_ULPS * np.finfo(np.float64).eps / 2 * max(abs(f(theta)), f_scale or 0.0) / h
    err = abs(fd - an)
    rel = err / cauchy_schwarz
    assert err <= tol * cauchy_schwarz + rounding, \
        f"{label}: FD {fd!r} vs analytic {an!r}, |Δ| {err:.3e} = {rel:.3e} of ‖g‖‖v‖ > {tol:.0e} (+ rounding {rounding:.1e})"
    return rel


def max_rel_diff(a, b):
    """max |a − b| / max(max |b|, tiny): the figure parity tests print."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)) if a.size else 0.0


def assert_trained_like(params, want, start, steps, tol=1e-10):
    """Multi-step parity: every tensor in `want` (the reference's, {name: array}) within `tol` of
    `params`, and training moved the parameters (so the comparison is not vacuous)."""
    for name, w in want.items():
        diff = float(np.max(np.abs(np.asarray(params[name]) - w)))
        assert diff <= tol, f"{name}: max |Δ| vs torch after {steps} steps {diff:.3e}"
    moved = max(float(np.max(np.abs(np.asarray(params[n]) - start[n]))) for n in start)
    assert moved > 1e-2, "training did not move the parameters: the comparison would be vacuous"
