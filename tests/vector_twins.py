"""PyTorch twins of the golden-vector cases, built from a case's tensors: the oracle side of
tests/test_vectors.py and tests/test_vector_trajectories.py. The arithmetic is reference_models'
(TorchGPT, the adapters, the methods' twins) and torch's (autograd, torch.optim.AdamW,
clip_grad_norm_); minisft only supplies names (GPTConfig, the parameter list).
"""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

import minisft as ms

torch = pytest.importorskip("torch")

from reference_models.adapters import LoRAFactors, LoRALinear, RowDeltaLinear, freeze_base, wrap_linear  # noqa: E402
from reference_models.torch_gpt import TorchGPT  # noqa: E402

SUFFIXES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def config_of(case):
    return ms.GPTConfig(**case.settings["config"])


def base_names(config):
    return set(ms.model.gpt.param_shapes(config))


def tensor(a):
    return torch.as_tensor(np.asarray(a))


def torch_model(tensors, config):
    """A float64 TorchGPT of the base tensors among `tensors` ({minisft name: array}), every parameter frozen."""
    twin = TorchGPT.from_minisft({k: v for k, v in tensors.items() if k in base_names(config)}, config,
                                 dtype=torch.float64)
    freeze_base(twin)
    return twin


def lora_scaling(options):
    r = options.get("r", options.get("lora_r"))
    return options.get("alpha", options.get("lora_alpha")) / r


def attach_loras(twin, tensors, scaling, shared=None):
    """Wrap every layer with '<layer>.lora.lora_A/B' in `tensors` by a LoRALinear of those factors, and
    the layers of `shared` ({suffix: layers}) by one shared LoRA 'shared.<suffix>.lora_A/B';
    returns {name: factor Parameter}."""
    params = {}
    users = {f"{layer}.lora": [layer] for layer in {k.rsplit(".lora.", 1)[0] for k in tensors if ".lora.lora_" in k}}
    users.update({f"shared.{sfx}": layers for sfx, layers in (shared or {}).items()})
    for prefix, layers in users.items():
        f = LoRAFactors(tensors[f"{prefix}.lora_A"], tensors[f"{prefix}.lora_B"], scaling).to(torch.float64)
        params[f"{prefix}.lora_A"], params[f"{prefix}.lora_B"] = f.A, f.B
        for layer in layers:
            wrap_linear(twin, layer, lambda b, f=f: LoRALinear(b, f))
    return params


def attach_row_deltas(twin, tensors, rows):
    """Wrap each layer of `rows` ({layer: rows}) by a RowDeltaLinear of '<layer>.row_delta.weight/bias'."""
    params = {}
    for layer, r in rows.items():
        ad = wrap_linear(twin, layer, lambda b, layer=layer, r=r: RowDeltaLinear(
            b, r, tensors[f"{layer}.row_delta.weight"], tensors[f"{layer}.row_delta.bias"]))
        params[f"{layer}.row_delta.weight"], params[f"{layer}.row_delta.bias"] = ad.weight, ad.bias
    return params


def trainable_twin(case, tensors, rows=None, shared=None):
    """(TorchGPT, {name: Parameter}) in the state `tensors` with the case's trainable tensors
    (settings.trainable) requiring gradients: base tensors, LoRAs (shared ones per `shared`),
    row deltas on `rows`."""
    s = case.settings
    twin = torch_model(tensors, config_of(case))
    named = dict(twin.named_parameters())
    params = {k: named[k].requires_grad_(True) for k in s["trainable"] if k in named}
    if any(".lora" in k for k in s["trainable"]):
        params.update(attach_loras(twin, tensors, lora_scaling(s["options"]), shared))
    params.update(attach_row_deltas(twin, tensors, rows or {}))
    assert sorted(params) == sorted(s["trainable"]), (sorted(params), s["trainable"])
    return twin, params


def batch_loss(twin, x, y):
    return twin(tensor(x), tensor(y))[1]


def decimal_floor(ratio, n, half=False):
    """floor(dec(ratio) n (+ 1/2)) in exact arithmetic (the manifest's conventions.decimal)."""
    return math.floor(Fraction(repr(float(ratio))) * n + (Fraction(1, 2) if half else 0))


def exact_prefix(values, threshold):
    """Indices (sorted) of the shortest prefix of `values` by descending value (ties: lower index)
    whose sum reaches dec(threshold) of the total, compared in rational arithmetic."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    exact = [Fraction(float(values[i])) for i in order]
    target = Fraction(repr(float(threshold))) * sum(exact)
    running = Fraction(0)
    for n, v in enumerate(exact, 1):
        running += v
        if running >= target:
            return sorted(order[:n])
    return sorted(order)


def per_type_selection(layers, g, threshold, selection):
    """(kept (layers,) bool, shared (layers,) bool) of LoRA-drop's selection on g (by layer)."""
    pools = [list(layers)] if selection == "joint" else [[n for n in layers if n.split(".", 2)[2] == s]
                                                           for s in SUFFIXES]
    kept = set()
    for pool in (p for p in pools if p):
        kept.update(pool[i] for i in exact_prefix([g[n] for n in pool], threshold))
    keep = np.array([n in kept for n in layers])
    return keep, ~keep


def brute_force_knapsack(v, w, capacity, reading=None):
    """(solve mask, front [(W, f, mask)], greedy [(W, f, mask)]) by enumerating every subset, with f
    the float64 sum in index order and the case's stated tie rules; the front's subsets by the merge
    rule the case states (rebuilt here from its statement). `reading` swaps in one wrong reading of
    the rule (tests/test_vector_readings.py): "fewest_items" (solve's and the front's ties),
    "no_empty_set", "capped_front", "greedy_ties_high_first", "greedy_sum_in_greedy_order"."""
    n = len(v)

    def f(mask, order=None):
        total = 0.0
        for i in (range(n) if order is None else order):
            if mask[i]:
                total += float(v[i])
        return total

    def colex(m):
        return sum(2**int(i) for i in np.flatnonzero(m))

    subsets = [np.array(bits, dtype=bool) for bits in itertools.product([False, True], repeat=n)]
    weight = {tuple(m): int(np.dot(m, w)) for m in subsets}
    feasible = [m for m in subsets if weight[tuple(m)] <= capacity]
    best = max(f(m) for m in feasible)
    tie = (lambda m: (int(m.sum()), colex(m))) if reading == "fewest_items" else colex
    solve = min((m for m in feasible if f(m) == best), key=tie)
    points = [(0, 0.0, np.zeros(n, dtype=bool))]
    for k in range(n):
        with_k = [(W + int(w[k]), fv + float(v[k]), np.where(np.arange(n) == k, True, m)) for W, fv, m in points]
        merged = sorted([(W, fv, m, 0) for W, fv, m in points] + [(W, fv, m, 1) for W, fv, m in with_k],
                        key=lambda p: (p[0], -p[1], p[3]))
        points, top = [], -np.inf
        for W, fv, m, _ in merged:
            if fv > top:
                points.append((W, fv, m))
                top = fv
    dominated = {(weight[tuple(m)], f(m)) for m in subsets
                 if any(weight[tuple(o)] <= weight[tuple(m)] and f(o) >= f(m)
                        and (weight[tuple(o)], f(o)) != (weight[tuple(m)], f(m)) for o in subsets)}
    assert {(W, fv) for W, fv, _ in points} == {(weight[tuple(m)], f(m)) for m in subsets} - dominated
    if reading == "fewest_items":
        points = [(W, fv, min((m for m in subsets if weight[tuple(m)] == W and f(m) == fv), key=tie))
                  for W, fv, _ in points]
    if reading == "no_empty_set":
        points = points[1:]
    if reading == "capped_front":
        points = [p for p in points if p[0] <= capacity]
    order = sorted(range(n), key=lambda i: (-Fraction(float(v[i])) / int(w[i]),
                                             -i if reading == "greedy_ties_high_first" else i))
    greedy = []
    for j in range(n + 1):
        m = np.isin(np.arange(n), order[:j])
        greedy.append((weight[tuple(m)], f(m, order if reading == "greedy_sum_in_greedy_order" else None), m))
    return solve, points, greedy
