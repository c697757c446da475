"""MGPP's mixture Gaussian prior, elementwise (map and choices: minisft/methods/mgpp/__init__.py).

    pi(theta) = lam * N(theta; 0, sigma1^2) + (1 - lam) * N(theta; 0, sigma0^2)      (sigma0 < sigma1)

    neg_log_prior(theta)      = -log pi(theta), by log-sum-exp of the two log-weighted components
    neg_log_prior_grad(theta) = theta * (w1 / sigma1^2 + w0 / sigma0^2), with the responsibilities
                                w1 = sigmoid(d), w0 = sigmoid(-d), d = log(lam N1) - log((1-lam) N0)

The (1/n) scaling of the objective belongs to the method; these functions are elementwise.
theta may hold any floats; NaN propagates (no check in this per-step hot path). The results are
finite whenever the true value is representable, i.e. |theta| / sigma1 < ~1e154.
Derivations: proofs/mgpp_prior.md.
"""

import math

from ...backend import array_module
from ...errors import real_in, require

DEFAULT_LAMBDA = 1e-3
DEFAULT_SIGMA0 = 1e-4
DEFAULT_SIGMA1 = 0.05
MIN_SIGMA = 1e-150  # so that 1/sigma^2 is a finite float64 (float32 needs sigma >= ~1e-19)

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def check_prior(lam, sigma0, sigma1):
    """Validated (λ, σ0, σ1): λ in (0, 1), MIN_SIGMA ≤ σ0 < σ1 finite; a clear error otherwise."""
    lam = real_in("lam", lam, 0.0, 1.0, low_open=True, high_open=True)
    sigma0 = real_in("sigma0", sigma0, MIN_SIGMA, math.inf, low_open=False, high_open=True)
    sigma1 = real_in("sigma1", sigma1, MIN_SIGMA, math.inf, low_open=False, high_open=True)
    require(sigma1 > sigma0, "sigma1", sigma1, f"a number greater than sigma0={sigma0!r}")
    return lam, sigma0, sigma1


def _log_components(theta, lam, sigma0, sigma1):
    """log(lam N(theta; 0, sigma1^2)) and log((1 - lam) N(theta; 0, sigma0^2)), elementwise."""
    xp = array_module(theta)
    slab = math.log(lam) - math.log(sigma1) - _HALF_LOG_2PI - 0.5 * xp.square(theta / sigma1)
    spike = math.log1p(-lam) - math.log(sigma0) - _HALF_LOG_2PI - 0.5 * xp.square(theta / sigma0)
    return slab, spike


def neg_log_prior(theta, lam=DEFAULT_LAMBDA, sigma0=DEFAULT_SIGMA0, sigma1=DEFAULT_SIGMA1):
    """-log pi(theta), elementwise. theta: any shape -> the same shape (theta's float dtype)."""
    lam, sigma0, sigma1 = check_prior(lam, sigma0, sigma1)
    xp = array_module(theta)
    slab, spike = _log_components(xp.asarray(theta), lam, sigma0, sigma1)
    return -xp.logaddexp(slab, spike)


def neg_log_prior_grad(theta, lam=DEFAULT_LAMBDA, sigma0=DEFAULT_SIGMA0, sigma1=DEFAULT_SIGMA1):
    """d/dtheta of -log pi(theta), elementwise. theta: any shape -> the same shape.

    theta * (w1 / sigma1^2 + w0 / sigma0^2); w1 = sigmoid(d) = exp(-log(1 + e^-d)) and
    w0 = sigmoid(-d), each through logaddexp so neither overflows. Each term is formed as
    theta * (w / sigma / sigma): the factor is finite (sigma >= 1e-150) so w0 = 0 at large |theta|
    gives exactly 0, and a subnormal theta keeps full relative precision (one rounded product).
    """
    lam, sigma0, sigma1 = check_prior(lam, sigma0, sigma1)
    xp = array_module(theta)
    theta = xp.asarray(theta)
    slab, spike = _log_components(theta, lam, sigma0, sigma1)
    d = slab - spike
    w1 = xp.exp(-xp.logaddexp(0.0, -d))
    w0 = xp.exp(-xp.logaddexp(0.0, d))
    return theta * (w1 / sigma1 / sigma1) + theta * (w0 / sigma0 / sigma0)
