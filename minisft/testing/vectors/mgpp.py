"""Golden vectors of MGPP's primitives: the mixture prior −log π(θ) and its gradient for three
(λ, v0, v1) with v0, v1 variances, the cubic sparsity schedule over every step, the magnitude-pruning
masks at each schedule value (global and per tensor, with ties), and the masks at sparsities whose
exact count s·n ends in one half. The masks of a training run at its pruning steps are in the
train_mgpp and train_magprune cases.
"""

import numpy as np

from ...methods import mgpp
from .case import CaseWriter

PRIORS = {"default": (1e-3, 1e-10, 0.05), "gpt2": (1e-4, 1e-10, 0.01), "moderate": (0.3, 1e-4, 1.0)}
SCHEDULE = {"final": 0.8, "t_start": 2, "t_end": 10, "initial": 0.3}
STEPS = 13
# s·n = 14.5 (a, layer scope at 0.145; the float product 0.145 * 100 is 14.499999999999998) and 4.5 (b at 0.1875)
COUNT_SPARSITIES = (0.145, 0.1875)
RULE = (
    "MGPP's primitives. Prior pi(theta) = lam N(theta; 0, v1) + (1 - lam) N(theta; 0, v0), v0 < v1 VARIANCES, "
    "N(theta; 0, v) = exp(-theta^2 / (2 v)) / sqrt(2 pi v). neg_log_prior = -log pi(theta) elementwise; "
    "neg_log_prior_grad = d(-log pi)/dtheta = theta (w1 / v1 + w0 / v0) with the responsibilities "
    "w1 = lam N(theta; 0, v1) / pi(theta), w0 = (1 - lam) N(theta; 0, v0) / pi(theta). schedule: s_t for "
    "t = 0..12 with (s_i, s_f, t_i, t_f) = settings.schedule (initial, final, t_start, t_end): s_t = 0 for t < t_i; "
    "s_t = s_f + (s_i - s_f) (1 - (t - t_i) / (t_f - t_i))^3 for t_i <= t <= t_f (float64 in this order of "
    "operations); s_t = s_f for t > t_f. Masks (True = kept) at sparsity s: exactly k = floor(dec(s) n + 1/2) entries "
    "pruned (rounded half up, exactly: conventions.decimal, dec(s) the shortest decimal of the float64 s), those of "
    "smallest |theta|; scope 'global': n = all entries, one ranking over the tensors laid end to end in "
    "settings.tensor_order (ties: the earlier tensor, then the lower flat index, pruned first); scope 'layer': each "
    "tensor alone (ties: the lower flat index first). masks/<scope>/t<t>/<name>: at s = s_t for t_i <= t <= t_f on "
    "params/; counts/<scope>/s<s>/<name>: at the sparsities settings.count_sparsities on count_params/.")


def _theta():
    """θ on the spike's scale (√1e-10 = 1e-5), the slab's, zero, tiny and large values."""
    spike = np.array([1e-6, -3e-6, 1e-5, -2e-5, 5e-5])
    slab = np.array([1e-3, -0.01, 0.05, -0.2, 0.7])
    return np.concatenate([[0.0, -0.0, 1e-300], spike, slab, [3.0, -40.0]])


def _params():
    rng = np.random.default_rng(81)
    w = {"h.0.attn.c_attn.weight": rng.standard_normal((6, 4)), "h.0.mlp.c_fc.weight": rng.standard_normal((8, 4))}
    w["h.0.attn.c_attn.weight"][0, :3] = 0.25  # ties within a tensor
    w["h.0.mlp.c_fc.weight"][1, 1] = -0.25  # and across tensors
    return w


def _count_params():
    rng = np.random.default_rng(83)
    return {"a": rng.standard_normal((10, 10)), "b": rng.standard_normal((4, 6))}


def _add_masks(case, key, params, sparsity):
    for scope in ("global", "layer"):
        for name, m in mgpp.magnitude_masks(params, sparsity, scope=scope).items():
            case.expected(f"{key.format(scope=scope)}/{name}", m, f"keep mask of {name} at s = {sparsity!r} "
                          f"(scope {scope})", str(m.shape), "prune the floor(dec(s) n + 1/2) smallest |theta|", "exact")


def mgpp_cases():
    theta = _theta()
    params, counted = _params(), _count_params()
    case = CaseWriter("mgpp_primitives", "MGPP's mixture prior and its gradient, the cubic sparsity schedule and the "
                      "magnitude-pruning masks", RULE, "MGPP: Zhang, Sun & Liang 2024, arXiv 2411.00969; cubic "
                      "schedule: Zhu & Gupta 2017, arXiv 1710.01878",
                      {"priors": {k: {"lam": lam, "var0": v0, "var1": v1} for k, (lam, v0, v1) in PRIORS.items()},
                       "schedule": SCHEDULE, "tensor_order": list(params), "count_sparsities": list(COUNT_SPARSITIES),
                       "count_tensor_order": list(counted)})
    case.input("theta", theta, "weights θ (spike scale, slab scale, ±0, tiny, large)", "(n,)")
    for key, (lam, v0, v1) in PRIORS.items():
        case.expected(f"{key}/neg_log_prior", mgpp.neg_log_prior(theta, lam=lam, var0=v0, var1=v1),
                      f"−log π(θ), λ={lam}, v0={v0}, v1={v1}", "(n,)", "-log pi(theta)", "float64")
        case.expected(f"{key}/neg_log_prior_grad", mgpp.neg_log_prior_grad(theta, lam=lam, var0=v0, var1=v1),
                      "d(−log π)/dθ = θ (w1/v1 + w0/v0), w the responsibilities", "(n,)",
                      "theta (w1 / v1 + w0 / v0)", "float64")
    s = [mgpp.cubic_sparsity(t, SCHEDULE["final"], SCHEDULE["t_start"], SCHEDULE["t_end"], initial=SCHEDULE["initial"])
         for t in range(STEPS)]
    case.expected("schedule", np.array(s), f"s_t for t = 0..{STEPS - 1}", "(steps,)",
                  "0 before t_i; s_f + (s_i - s_f)(1 - (t - t_i)/(t_f - t_i))^3; s_f after t_f", "float64")
    for name, w in params.items():
        case.input(f"params/{name}", w, f"prunable weight {name}", str(w.shape))
    for t in range(SCHEDULE["t_start"], SCHEDULE["t_end"] + 1):
        _add_masks(case, f"masks/{{scope}}/t{t}", params, s[t])
    for name, w in counted.items():
        case.input(f"count_params/{name}", w, f"prunable weight {name} of the count cases", str(w.shape))
    for sparsity in COUNT_SPARSITIES:
        _add_masks(case, f"counts/{{scope}}/s{sparsity}", counted, sparsity)
    case.discriminates("mgpp_schedule_zero_before_start", ["schedule"], "s_t = 0 for t < t_i",
                       "s_t = s_i for t < t_i (the cubic formula clamped at t_i)")
    case.discriminates("mgpp_count_half_up", ["counts/layer/s0.1875/b", "counts/layer/s0.145/a"],
                       "k = floor(dec(s) n + 1/2): 4.5 -> 5, 14.5 -> 15 (half up)",
                       "k = round(dec(s) n) half to even: 4.5 -> 4, 14.5 -> 14")
    case.discriminates("mgpp_count_decimal", ["counts/layer/s0.145/a"], "k = floor(dec(0.145) * 100 + 1/2) = 15",
                       "k = floor(0.145 * 100 + 1/2) on the float product 14.499999999999998 = 14")
    return [case]
