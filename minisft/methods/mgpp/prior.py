"""MGPP's mixture Gaussian prior, elementwise (map: minisft/methods/mgpp/__init__.py; decisions:
proofs/decisions.md §MGPP).

    pi(theta) = lam * N(theta; 0, var1) + (1 - lam) * N(theta; 0, var0)      (var0 < var1, VARIANCES)

    neg_log_prior(theta)      = -log pi(theta), by log-sum-exp of the two log-weighted components
    neg_log_prior_grad(theta) = theta * (w1 / var1 + w0 / var0), with the responsibilities
                                w1 = sigmoid(d), w0 = sigmoid(-d), d = log(lam N1) - log((1-lam) N0)

var0 and var1 are variances, as in the authors' code (PTMGP pruners/MWA.py `MWA.apply_prior_grad`
and BayesianPruner/pruner.py `apply_prior_grad` name them sigma0, sigma1 but use them as variances:
c2 = 0.5/sigma0 - 0.5/sigma1). The (1/n) scaling of the objective belongs to the method; these
functions are elementwise. theta may hold any floats; NaN propagates (no check in this per-step
hot path). The results are finite whenever the true value is representable (theta^2 / var1 below
~1e308). Derivations: proofs/mgpp_prior.md.
"""

import math

from ...core.backend import array_module
from ...core.errors import real_in, require

DEFAULT_LAMBDA = 1e-3
DEFAULT_VAR0 = 1e-10
DEFAULT_VAR1 = 0.05
MIN_VAR = 1e-300  # so that w / var is a finite float64 (float32 needs var >= ~1e-38)

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def check_prior(lam, var0, var1):
    """Validated (λ, v0, v1): λ in (0, 1), MIN_VAR ≤ v0 < v1 finite; a clear error otherwise."""
    lam = real_in("lam", lam, 0.0, 1.0, low_open=True, high_open=True)
    var0 = real_in("var0", var0, MIN_VAR, math.inf, low_open=False, high_open=True)
    var1 = real_in("var1", var1, MIN_VAR, math.inf, low_open=False, high_open=True)
    require(var1 > var0, "var1", var1, f"a variance greater than var0={var0!r}")
    return lam, var0, var1


def _log_components(theta, lam, var0, var1):
    """log(lam N(theta; 0, var1)) and log((1 - lam) N(theta; 0, var0)), elementwise."""
    slab = math.log(lam) - 0.5 * math.log(var1) - _HALF_LOG_2PI - 0.5 * (theta * (theta / var1))
    spike = math.log1p(-lam) - 0.5 * math.log(var0) - _HALF_LOG_2PI - 0.5 * (theta * (theta / var0))
    return slab, spike


def neg_log_prior(theta, lam=DEFAULT_LAMBDA, var0=DEFAULT_VAR0, var1=DEFAULT_VAR1):
    """-log pi(theta), elementwise. theta: any shape -> the same shape (theta's float dtype)."""
    lam, var0, var1 = check_prior(lam, var0, var1)
    xp = array_module(theta)
    slab, spike = _log_components(xp.asarray(theta), lam, var0, var1)
    return -xp.logaddexp(slab, spike)


def neg_log_prior_grad(theta, lam=DEFAULT_LAMBDA, var0=DEFAULT_VAR0, var1=DEFAULT_VAR1):
    """d/dtheta of -log pi(theta), elementwise. theta: any shape -> the same shape.

    theta * (w1 / var1 + w0 / var0); w1 = sigmoid(d) = exp(-log(1 + e^-d)) and w0 = sigmoid(-d),
    each through logaddexp so neither overflows. Each term is formed as theta * (w / var): the
    factor is finite (var >= 1e-300) so w0 = 0 at large |theta| gives exactly 0, and a subnormal
    theta keeps full relative precision (one rounded product).
    """
    lam, var0, var1 = check_prior(lam, var0, var1)
    xp = array_module(theta)
    theta = xp.asarray(theta)
    slab, spike = _log_components(theta, lam, var0, var1)
    d = slab - spike
    w1 = xp.exp(-xp.logaddexp(0.0, -d))
    w0 = xp.exp(-xp.logaddexp(0.0, d))
    return theta * (w1 / var1) + theta * (w0 / var0)
