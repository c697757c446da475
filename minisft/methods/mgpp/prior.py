"""MGPP — magnitude pruning with a mixture Gaussian prior (Zhang, Sun & Liang 2024, "Magnitude
Pruning of Large Pretrained Transformer Models with a Mixture Gaussian Prior", arXiv 2411.00969;
Journal of Data Science, doi:10.6339/24-JDS1156): the pure primitives.

Prior on each prunable weight (spike and slab, sigma0 << sigma1):

    pi(theta) = lam * N(theta; 0, sigma1^2) + (1 - lam) * N(theta; 0, sigma0^2)

    neg_log_prior(theta)      = -log pi(theta), by log-sum-exp of the two log-weighted components
    neg_log_prior_grad(theta) = theta * (w1 / sigma1^2 + w0 / sigma0^2), with the responsibilities
                                w1 = sigmoid(d), w0 = sigmoid(-d), d = log(lam N1) - log((1-lam) N0)

The training objective adds (1/n) * sum neg_log_prior to the mean loss (n = number of training
examples); that scaling belongs to the method, these functions are elementwise.

Sparsity schedule (cubic, Zhu & Gupta 2017), for t_i <= t <= t_f:

    s_t = s_f + (s_i - s_f) * (1 - (t - t_i) / (t_f - t_i))^3,   s_i before t_i, s_f from t_f on,

and at each pruning step `magnitude_masks` zeroes exactly round(s_t * n) smallest-|theta| entries
(global ranking over all prunable matrices by default, per tensor with scope="layer").

Defaults. The paper's own values of lam, sigma0, sigma1 and the schedule could not be confirmed
from the sources at hand (the arXiv abstract pages; the hyper-parameter tables were not
reachable), so the constants below are minisft's own (ALGORITHMS.md §5). A public PyTorch
implementation named PMGP (repository not identified, so not cited as the authors') uses
sigma0 = 1e-12..1e-15 and sigma1 = 0.1 as VARIANCES, lambda = 1e-7..1e-4, re-pruning every
deltaT = 1..10 steps, and the same cubic schedule on the remaining ratio (1 - s).

Choices where the paper is ambiguous:
- sigma0 and sigma1 here are standard deviations (N(0, sigma^2)), 1e-150 <= sigma0 < sigma1 < inf.
- The pruned count is round(s * n) rounded half up, floor(s * n + 1/2), exactly, with s read as its
  shortest decimal: monotone in s and independent of n's parity (Python's round would take
  0.5 * 5 to 2 and 0.5 * 7 to 4). Ties in |theta| are pruned by (tensor order, lower flat index).
- final sparsity s_f must be < 1 (s_f = 1 would prune every weight); 0 <= s_i <= s_f.
- Interior schedule values are clamped into [s_i, s_f]: this only removes float rounding
  (the exact formula lies in that interval) and makes the schedule monotone as computed.
- theta may hold any floats; NaN propagates (no check in this per-step hot path). The results are
  finite whenever the true value is representable, i.e. |theta| / sigma1 < ~1e154.
Derivations: proofs/mgpp_prior.md.
"""

import math
import numbers

from ...backend import array_module
from ...errors import bad_type, real_in, require
from ...select import ratio_count, smallest_k_keep_mask, smallest_k_keep_masks, tensor_list

DEFAULT_LAMBDA = 1e-3
DEFAULT_SIGMA0 = 1e-4
DEFAULT_SIGMA1 = 0.05
DEFAULT_PRUNE_START_FRACTION = 0.1  # t_i as a fraction of the training steps
DEFAULT_PRUNE_END_FRACTION = 0.7  # t_f as a fraction of the training steps
DEFAULT_PRUNE_EVERY = 10  # Delta t: re-prune every this many steps
SCOPES = ("global", "layer")
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


def _nonneg_int(arg, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise bad_type(arg, value, "a non-negative integer")
    require(value >= 0, arg, value, "a non-negative integer")
    return int(value)


def cubic_sparsity(step, final, t_start, t_end, initial=0.0):
    """Sparsity s_t at integer `step` (a Python float): `initial` for step <= t_start, `final` for
    step >= t_end, s_f + (s_i - s_f) * (1 - (step - t_start) / (t_end - t_start))^3 between
    (clamped into [initial, final] against rounding). 0 <= initial <= final < 1, 0 <= t_start < t_end.
    """
    step = _nonneg_int("step", step)
    t_start = _nonneg_int("t_start", t_start)
    t_end = _nonneg_int("t_end", t_end)
    require(t_end > t_start, "t_end", t_end, f"an integer greater than t_start={t_start}")
    final = real_in("final", final, 0.0, 1.0, low_open=False, high_open=True)
    initial = real_in("initial", initial, 0.0, final, low_open=False, high_open=False)
    if step <= t_start:
        return initial
    if step >= t_end:
        return final
    remaining = 1.0 - (step - t_start) / (t_end - t_start)
    s = final + (initial - final) * (remaining * remaining * remaining)
    return min(max(s, initial), final)


def magnitude_masks(params, sparsity, scope="global"):
    """Magnitude-pruning masks. params: dict name -> float array (or a list/tuple) -> the same
    structure of bool masks (True = kept). Exactly round(sparsity * n) entries of smallest |theta|
    are False (rounded half up), n = all entries together (scope="global") or each tensor's
    (scope="layer"); ties pruned by (tensor order, lower flat index). sparsity in [0, 1)."""
    sparsity = real_in("sparsity", sparsity, 0.0, 1.0, low_open=False, high_open=True)
    require(scope in SCOPES, "scope", scope, f"one of {SCOPES}")
    arrays, rebuild = tensor_list("params", params)
    if scope == "layer":
        masks = [smallest_k_keep_mask(a, ratio_count(sparsity, a.size, "half_up")) for a in arrays]
        return rebuild(masks)
    total = sum(a.size for a in arrays)
    return rebuild(smallest_k_keep_masks(arrays, ratio_count(sparsity, total, "half_up")))
