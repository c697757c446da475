"""Golden vectors of AdaPEFT's selection step: per-group slope, curvature and influence on the tiny
GPT-2 ("exact" and GeN estimators), and knapsack instances with their optimal set, exact Pareto
front and greedy chain.

Tolerance of the curvature a_k (and so I_k): minisft's "exact" a_k is a Richardson-extrapolated
central difference of explicit gradients, within ~1e-8 (relative) of the exact Hessian product; an
autograd Hessian-vector product is expected within 1e-6.
"""

import numpy as np

from ...model.adapters import LoRA
from ...methods.adapeft import curvature, groups, knapsack
from ...training.optim import AdamW
from .case import CaseWriter
from .fixtures import CONFIG, add_batches, add_model_tensors, fixed_batches, snapshot, tiny_model

PAPER = "AdaPEFT: Xu & Bu 2025, arXiv 2505.12579; GeN: Bu & Xu 2024, arXiv 2407.02772"
INFLUENCE_RULE = (
    "AdaPEFT's per-group influence on the model of conventions.model with the given parameters (params/: the base "
    "tensors and a LoRA (conventions.adapters) on every linear layer). The trainable tensors are the groups' "
    "(settings.groups: group -> parameter names, order settings.group_order). g = dL/dtheta on batch/ (L the batch's "
    "mean loss); d = the given step direction (direction/). For each group k, with d_k = d on group k's tensors and 0 "
    "elsewhere: b_k = sum over k's tensors of <g, d>; a_k = d_k^T H d_k, H the Hessian of L with respect to all "
    "trainable tensors (the second derivative of x -> L(theta + x d_k) at 0); I_k = b_k^2 / (2 a_k), valid iff "
    "a_k > 0 and b_k > 0 (NaN where invalid). GeN (gen/), on gen_batch/ and with eta = settings.eta: L0 = "
    "L(theta); for c in (-2, -1, 1, 2), x_c = c eta and y_c = L(theta - x_c d_k) - L0; (a_k, b_k) = the "
    "least-squares solution of y = 0.5 a x^2 - b x over the four points (two unknowns, no intercept); R^2 = 1 - "
    "sum_c (y_c - yhat_c)^2 / sum_c (y_c - ybar)^2 with ybar the mean of the four y_c (the centred R^2); valid iff "
    "a_k > 0, b_k > 0 and R^2 > 0.99; I_k = b_k^2 / (2 a_k) where valid. Tolerances: exact a and I rtol 1e-6 "
    "(minisft's a is a Richardson-extrapolated central difference of gradients); GeN rtol 1e-8.")
KNAPSACK_RULE = (
    "0-1 knapsack over items i = 0..n-1 with values v_i >= 0 (float64) and positive integer weights w_i. f(S) is "
    "the float64 sum of v_i over i in S taken in ascending index order starting from 0.0 (0.0 for the empty set); "
    "W(S) = sum of w_i over S. solve: a subset S with W(S) <= capacity maximising f(S); among the maximisers, the one "
    "with the smallest sum over S of 2^i. front: the Pareto front over ALL subsets (no capacity limit), the empty "
    "set included. With F_0 = [(0, 0.0, {})], for k = 0..n-1: take F_k together with {(W + w_k, f + v_k, S + {k}) "
    "for (W, f, S) in F_k} (float64 addition), sort by weight ascending, then value descending, then the point "
    "without k before the one with k, and keep each point whose value is strictly greater than the value of every "
    "point before it; the front is F_n by weight ascending: each point's weight, f and subset (as a mask). When no "
    "sum rounds, each point's subset is the one with the smallest sum of 2^i attaining it. greedy: the items ordered "
    "by exact rational density v_i / w_i descending (equal densities: the lower index first); entry j = 0..n is the "
    "set of the first j items of that order, with its W and its f (summed in ascending INDEX order, not in greedy "
    "order).")
HVP_RTOL = 1e-6
GEN_RTOL = 1e-8
LORA_R, LORA_ALPHA, ETA = 2, 4.0, 0.05


def _probe_model():
    """The tiny GPT-2 with every "modules" group active: LoRA (r=2) on every linear layer with
    seeded non-zero factors (a trained-looking B), biases, LayerNorms and embeddings trainable."""
    model = tiny_model()
    model.freeze()
    rng = np.random.default_rng(51)
    built = groups.build_groups(CONFIG, "modules", LORA_R)
    for g in built:
        model.unfreeze(g.tensors)
        for layer in g.lora_layers:
            ad = model.add_adapter(layer, LoRA(model, layer, r=LORA_R, alpha=LORA_ALPHA, generator=rng))
            ad.B[...] = 0.1 * rng.standard_normal(ad.B.shape)
    return model, built


def _influence_case():
    model, built = _probe_model()
    (x, y), (fx, fy) = fixed_batches(2, seed=53)
    members = {g.name: g.param_names(model) for g in built}
    sizes = {g.name: g.size for g in built}
    params = model.trainable_params()
    _, grads = model.loss_and_grads(x, y)
    direction = curvature.step_direction("adam", grads, params, AdamW(lr=1e-3, weight_decay=0.0))
    exact = curvature.group_influence(members, sizes, grads, direction, "exact", params=params,
                                      grad_fn=lambda p: model.loss_and_grads(x, y)[1])
    gen = curvature.group_influence(members, sizes, grads, direction, "gen", params=params,
                                    loss_fn=lambda p: model.loss(fx, fy), eta=ETA)
    case = CaseWriter(
        "adapeft_influence",
        "AdaPEFT's per-group influence on the tiny GPT-2 with every 'modules' group active: gradients on one "
        "batch, the given step direction d (AdamW's first step, divided by lr), b_k = g_kᵀd_k, a_k = d_kᵀH_kk d_k, "
        "I_k = b_k²/(2a_k), PPI_k = I_k/n_k, valid iff a_k > 0 and b_k > 0; GeN: the least-squares fit of "
        f"L(θ − x d_k) − L(θ) = ½ a x² − b x at x = c·η, c in {list(curvature.GEN_MULTIPLIERS)}, η = {ETA}, on a "
        "second batch, valid iff also R² > 0.99",
        INFLUENCE_RULE, PAPER,
        {"config": CONFIG.to_dict(), "groups": {g.name: members[g.name] for g in built}, "sizes": sizes,
         "group_order": [g.name for g in built], "eta": ETA, "lora_r": LORA_R, "lora_alpha": LORA_ALPHA,
         "direction": "d = m̂ / (√v̂ + 1e-8) of AdamW's first step (β = 0.9, 0.999; weight decay 0): "
                      "θ ← θ − lr·d"})
    add_model_tensors(case, "params", snapshot(model), "the probe model")
    add_batches(case, "batch", [(x, y)], "the batch of the gradients and the exact estimator")
    add_batches(case, "gen_batch", [(fx, fy)], "the batch of GeN's losses")
    for name in params:
        case.input(f"direction/{name}", direction[name], f"step direction d of {name}", str(direction[name].shape))
        case.expected(f"grads/{name}", grads[name], f"dL/d{name} on batch", str(grads[name].shape),
                      "g = dL/dtheta of the batch's mean loss", "float64")
    for tag, estimates, rtol in (("exact", exact, HVP_RTOL), ("gen", gen, GEN_RTOL)):
        def column(field):
            return np.array([np.nan if e[field] is None else e[field] for e in estimates], dtype=np.float64)

        where = ("b_k = <g_k, d_k>, a_k = d_k^T H d_k" if tag == "exact"
                 else "least squares of L(theta - c eta d_k) - L(theta) = 0.5 a x^2 - b x, c in (-2, -1, 1, 2)")
        case.expected(f"{tag}/b", column("b"), "slope b_k per group (group_order)", "(groups,)", where,
                      "float64" if tag == "exact" else rtol)
        case.expected(f"{tag}/a", column("a"), "curvature a_k per group", "(groups,)", where, rtol)
        case.expected(f"{tag}/influence", column("influence"), "I_k = b_k²/(2a_k); NaN where invalid", "(groups,)",
                      where, rtol)
        case.expected(f"{tag}/valid", np.array([e["valid"] for e in estimates]), "estimate usable", "(groups,)",
                      where, "exact")
        if tag == "gen":
            case.expected("gen/r2", column("r2"), "R² of the 4-point fit", "(groups,)",
                          "1 - sum (y - yhat)^2 / sum (y - mean(y))^2", rtol)
    case.discriminates("gen_r2_centred", ["gen/r2"], "R^2 = 1 - SS_res / sum (y - mean(y))^2 (centred)",
                       "R^2 = 1 - SS_res / sum y^2 (uncentred)")
    return case


INSTANCES = {  # name -> (values, weights, capacity, what it exercises)
    "plain": ([3.0, 1.0, 2.0, 5.0, 4.0], [2, 1, 3, 4, 3], 7, "a generic instance"),
    "ties": ([1.0, 1.0, 1.0, 2.0, 0.0], [1, 1, 1, 2, 1], 2, "several optimal subsets (the smallest Σ 2^i wins: "
             "{0, 1}, not {3}); a zero value is never chosen"),
    "float_sums": ([0.1, 0.2, 0.3, 0.0], [1, 1, 2, 1], 2, "f(S) is the float64 sum in index order: "
                   "0.1 + 0.2 = 0.30000000000000004 > 0.3"),
    "sum_order": ([0.1, 0.2, 0.3], [1, 1, 1], 3, "the greedy order is 2, 1, 0; f of its last prefix is summed in "
                  "index order, (0.1 + 0.2) + 0.3 = 0.6000000000000001, not (0.3 + 0.2) + 0.1 = 0.6"),
}


def _knapsack_case():
    case = CaseWriter("adapeft_knapsack", "AdaPEFT's 0-1 knapsack over groups: an optimal subset, the exact "
                      "Pareto front of (total weight, total value) and the greedy chain by descending density",
                      KNAPSACK_RULE, PAPER,
                      {name: {"capacity": c, "what": what} for name, (_, _, c, what) in INSTANCES.items()})
    for name, (values, weights, capacity, _) in INSTANCES.items():
        v, w = np.array(values), np.array(weights, dtype=np.int64)
        case.input(f"{name}/values", v, "item values I_k (float64, ≥ 0)", "(n,)")
        case.input(f"{name}/weights", w, "item weights n_k (positive integers)", "(n,)")
        case.expected(f"{name}/solve", knapsack.solve(v, w, capacity), f"optimal subset at capacity {capacity} "
                      "(ties: the smallest Σ_{i∈S} 2^i)", "(n,)", "argmax f(S) s.t. W(S) <= capacity", "exact")
        for key, points in (("front", knapsack.pareto_front(v, w)), ("greedy", knapsack.greedy_chain(v, w))):
            what = "non-dominated point" if key == "front" else "greedy prefix"
            case.expected(f"{name}/{key}_weights", np.array([p[0] for p in points], dtype=np.int64),
                          f"total weight of each {what}", "(points,)", f"W(S) of each {what}", "exact")
            case.expected(f"{name}/{key}_values", np.array([p[1] for p in points]), f"f(S) of each {what}",
                          "(points,)", f"f(S) of each {what}", 0.0)
            case.expected(f"{name}/{key}_masks", np.array([p[2] for p in points]), f"the subset of each {what}",
                          "(points, n)", f"the subset of each {what}", "exact")
    every = list(INSTANCES)
    case.discriminates("knapsack_solve_ties", ["ties/solve"], "among optimal subsets, the smallest sum of 2^i",
                       "among optimal subsets, the one with the fewest items")
    case.discriminates("knapsack_front_empty_set", [f"{n}/front_weights" for n in every],
                       "the front includes the empty set (0, 0.0)", "the front starts at the first non-empty subset")
    case.discriminates("knapsack_front_uncapped", [f"{n}/front_weights" for n in every],
                       "the front spans all subsets (no capacity limit)",
                       "the front holds only subsets within the instance's capacity")
    case.discriminates("knapsack_front_ties", ["ties/front_masks"],
                       "each point's subset by the merge rule (the smallest sum of 2^i when no sum rounds)",
                       "each point's subset: the one with the fewest items")
    case.discriminates("knapsack_greedy_ties", ["ties/greedy_masks"], "equal densities: the lower index first",
                       "equal densities: the higher index first")
    case.discriminates("knapsack_greedy_sum_order", ["sum_order/greedy_values"],
                       "f of a greedy prefix summed in ascending index order",
                       "f of a greedy prefix summed in the greedy (density) order")
    return case


def adapeft_cases():
    return [_influence_case(), _knapsack_case()]
