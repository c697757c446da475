"""Directional finite-difference checks in float64 with Richardson extrapolation.

For a scalar f and direction v, D(h) = (f(θ + h v) − f(θ − h v)) / 2h has error c₂h² + c₄h⁴ + …;
R = (4 D(h/2) − D(h)) / 3 cancels the h² term, leaving O(h⁴) truncation and ~ε|f|/h rounding.
The direction is scaled to the tensor's RMS (1 for an all-zero tensor), so the step is ~1e-3
relative to the values it perturbs: GPT-2's 0.02-scale embeddings feed LayerNorms whose curvature
grows like 1/σ², and an absolute step of 1e-3 there leaves ~1e-6 of truncation error even after
extrapolation. The analytic value is ⟨∇f, v⟩. The error is measured relative to the Cauchy–Schwarz scale
‖∇f‖·‖v‖ (plus |f|·ε/h for rounding), so a derivative that happens to be near zero is not
compared relative to itself.
"""

import numpy as np


def richardson_directional(f, theta, v, h=1e-3):
    def central(step):
        return (f(theta + step * v) - f(theta - step * v)) / (2 * step)

    return (4 * central(h / 2) - central(h)) / 3


def assert_directional(f, theta, grad, rng, tol=1e-7, h=1e-3, label=""):
    """Check ⟨grad, v⟩ against Richardson FD of f along a random direction v."""
    rms = float(np.sqrt(np.mean(np.square(theta)))) if theta.size else 0.0
    v = rng.standard_normal(theta.shape) * (rms if rms > 0 else 1.0)
    fd = richardson_directional(f, theta, v, h)
    an = float(np.sum(grad * v))
    scale = float(np.linalg.norm(grad) * np.linalg.norm(v)) + abs(f(theta)) * 1e-16 / h + 1e-300
    rel = abs(fd - an) / scale
    assert rel <= tol, f"{label}: FD {fd!r} vs analytic {an!r}, relative error {rel:.3e} > {tol:.0e}"
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
