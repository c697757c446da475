"""Golden vectors of MGPP's primitives (minisft.methods.mgpp; the paper's map is its package
docstring): the mixture prior −log π(θ) and its gradient for three (λ, v0, v1) with v0, v1
VARIANCES (DESIGN.md's `neg_log_prior_grad(theta, lam, var0, var1)`), the cubic sparsity
schedule over every step, and the magnitude-pruning masks at each schedule value (global and per
tensor, with ties). The masks of a training run at its pruning steps are in the train_mgpp case.
"""

import numpy as np

from ...methods import mgpp
from .case import CaseWriter

PRIORS = {"default": (1e-3, 1e-10, 0.05), "gpt2": (1e-4, 1e-10, 0.01), "moderate": (0.3, 1e-4, 1.0)}
SCHEDULE = {"final": 0.8, "t_start": 2, "t_end": 10, "initial": 0.3}
STEPS = 13


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


def mgpp_cases():
    theta = _theta()
    params = _params()
    case = CaseWriter("mgpp_primitives", "MGPP's prior π(θ) = λ N(θ; 0, v1) + (1 − λ) N(θ; 0, v0) (v0, v1 "
                      "variances): −log π and d(−log π)/dθ elementwise; the cubic schedule s_t at every step; "
                      "magnitude-pruning masks (exactly round(s·n) smallest |θ| pruned, half up; ties: lower flat "
                      "index, then earlier tensor) at each schedule value",
                      "minisft/methods/mgpp/__init__.py (the paper's map); proofs/mgpp_prior.md",
                      {"priors": {k: {"lam": lam, "var0": v0, "var1": v1} for k, (lam, v0, v1) in PRIORS.items()},
                       "schedule": SCHEDULE, "tensor_order": list(params)})
    case.input("theta", theta, "weights θ (spike scale, slab scale, ±0, tiny, large)", "(n,)")
    for key, (lam, v0, v1) in PRIORS.items():
        case.expected(f"{key}/neg_log_prior", mgpp.neg_log_prior(theta, lam=lam, var0=v0, var1=v1),
                      f"−log π(θ), λ={lam}, v0={v0}, v1={v1}", "(n,)", "minisft.methods.mgpp.neg_log_prior", "float64")
        case.expected(f"{key}/neg_log_prior_grad", mgpp.neg_log_prior_grad(theta, lam=lam, var0=v0, var1=v1),
                      "d(−log π)/dθ = θ (w1/v1 + w0/v0), w the responsibilities", "(n,)",
                      "minisft.methods.mgpp.neg_log_prior_grad", "float64")
    s = [mgpp.cubic_sparsity(t, SCHEDULE["final"], SCHEDULE["t_start"], SCHEDULE["t_end"], initial=SCHEDULE["initial"])
         for t in range(STEPS)]
    case.expected("schedule", np.array(s), f"s_t for t = 0..{STEPS - 1}", "(steps,)", "minisft.methods.mgpp.cubic_sparsity",
                  "float64")
    for name, w in params.items():
        case.input(f"params/{name}", w, f"prunable weight {name}", str(w.shape))
    for t in range(SCHEDULE["t_start"], SCHEDULE["t_end"] + 1):
        for scope in ("global", "layer"):
            masks = mgpp.magnitude_masks(params, s[t], scope=scope)
            for name, m in masks.items():
                case.expected(f"masks/{scope}/t{t}/{name}", m, f"keep mask of {name} at s_{t} (scope {scope})",
                              str(m.shape), "minisft.methods.mgpp.magnitude_masks", "exact")
    return [case]
