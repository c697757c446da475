"""The close readings each golden-vector case discriminates (its manifest's "discriminates" entries):
every wrong reading is implemented here as a one-point change of an independent implementation of
the right one, and the case rejects it while accepting the right one on the same tensors. A reading
named in the manifest without an implementation here, or the reverse, fails."""

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import minisft.testing as mt

torch = pytest.importorskip("torch")
twins = pytest.importorskip("tests.vector_twins")
trajectories = pytest.importorskip("tests.test_vector_trajectories")


def stable_keep(values, k, key=None):
    """(n,) bool, True = kept: False at the k entries of smallest |value| (ties by `key`, default the index)."""
    order = sorted(range(len(values)), key=key or (lambda i: (abs(values[i]), i)))
    keep = np.ones(len(values), dtype=bool)
    keep[order[:k]] = False
    return keep


# ------------------------------------------------------------------------------------ GMT
def gmt_count(case, wrong):
    g = case["count/d"].ravel()
    k = math.floor(0.29 * g.size) if wrong else twins.decimal_floor(0.29, g.size)
    return {"count/r0.29/d": stable_keep(g, k).reshape(case["count/d"].shape)}


def gmt_global_ties(case, wrong):
    order = case.settings["tensor_order"]
    entries = [(abs(float(x)), t, i) for t, n in enumerate(order) for i, x in enumerate(case[f"grads/{n}"].ravel())]
    k = twins.decimal_floor(0.5, len(entries))
    ranked = sorted(range(len(entries)), key=lambda p: (entries[p][0], entries[p][2], entries[p][1]) if wrong
                    else (entries[p][0], entries[p][1], entries[p][2]))
    dropped = {(entries[p][1], entries[p][2]) for p in ranked[:k]}
    return {f"global/r0.5/{n}": np.array([(t, i) not in dropped for i in range(case[f"grads/{n}"].size)])
            .reshape(case[f"grads/{n}"].shape) for t, n in enumerate(order)}


# ------------------------------------------------------------------------------------ MGPP
def mgpp_schedule(case, wrong):
    s = case.settings["schedule"]
    out = []
    for t in range(len(case["schedule"])):
        if t < s["t_start"]:
            out.append(s["initial"] if wrong else 0.0)
        elif t > s["t_end"]:
            out.append(s["final"])
        else:
            out.append(s["final"] + (s["initial"] - s["final"]) * (1 - (t - s["t_start"]) / (s["t_end"] - s["t_start"])) ** 3)
    return {"schedule": np.array(out)}


def mgpp_layer_masks(case, sparsity, count):
    return {f"counts/layer/s{sparsity}/{n}": stable_keep(case[f"count_params/{n}"].ravel(),
                                                         count(sparsity, case[f"count_params/{n}"].size))
            .reshape(case[f"count_params/{n}"].shape) for n in case.settings["count_tensor_order"]}


def mgpp_half_up(case, wrong):
    def count(s, n):
        return round(Fraction(repr(s)) * n) if wrong else twins.decimal_floor(s, n, half=True)  # round(): half even

    return {**mgpp_layer_masks(case, 0.1875, count), **mgpp_layer_masks(case, 0.145, count)}


def mgpp_decimal(case, wrong):
    def count(s, n):
        return math.floor(s * n + 0.5) if wrong else twins.decimal_floor(s, n, half=True)

    return {k: v for k, v in mgpp_layer_masks(case, 0.145, count).items() if k.endswith("/a")}


# ------------------------------------------------------------------------------------ LoRA-drop
def float_prefix(values, threshold):
    """The wrong reading: the float64 cumulative sum of I = g / sum(g) compared with T."""
    g = np.asarray(values, dtype=np.float64)
    order = np.argsort(-g, kind="stable")
    cum = np.cumsum(g[order] / g.sum())
    n = next((i for i, c in enumerate(cum, 1) if c >= threshold), len(g))
    return np.sort(order[:n])


def loradrop_threshold(case, wrong):
    g, t = case["rule/float_cumsum/importance"], case.settings["rule"]["float_cumsum"]["threshold"]
    return {"rule/float_cumsum/kept": float_prefix(g, t) if wrong else np.array(twins.exact_prefix(g, t))}


def loradrop_ties(case, wrong):
    g, t = case["rule/ties/importance"], case.settings["rule"]["ties"]["threshold"]
    if not wrong:
        return {"rule/ties/kept": np.array(twins.exact_prefix(g, t))}
    order = sorted(range(len(g)), key=lambda i: (-g[i], -i))
    total, kept, running = Fraction(0), [], Fraction(0)
    total = sum(Fraction(float(v)) for v in g)
    for i in order:
        kept.append(i)
        running += Fraction(float(g[i]))
        if running >= Fraction(repr(t)) * total:
            break
    return {"rule/ties/kept": np.array(sorted(kept))}


def loradrop_per_type(case, wrong):
    layers, g = case.settings["layers"], case["rule_per_type/g"]
    threshold = case.settings["rule_per_type"]["threshold"]
    if not wrong:
        kept, shared = twins.per_type_selection(layers, dict(zip(layers, g)), threshold, "per_type")
        return {"rule_per_type/kept": kept, "rule_per_type/shared": shared}
    importance = g / g.sum()
    kept = set()
    for sfx in twins.SUFFIXES:
        pool = [i for i, n in enumerate(layers) if n.endswith(sfx)]
        order = sorted(pool, key=lambda i: (-importance[i], i))
        cum = np.cumsum(importance[order])
        n = next((j for j, c in enumerate(cum, 1) if c >= threshold), len(order))
        kept.update(order[:n])
    keep = np.array([i in kept for i in range(len(layers))])
    return {"rule_per_type/kept": keep, "rule_per_type/shared": ~keep}


# ------------------------------------------------------------------------------------ SPruFT
def spruft_global_ties(case, wrong):
    layers = case.settings["layer_order"]
    flat = [(v / np.mean(case[f"layer_scores/{n}"]), li, i) for li, n in enumerate(layers)
            for i, v in enumerate(case[f"layer_scores/{n}"])]
    ranked = sorted(range(len(flat)), key=lambda p: (-flat[p][0], -flat[p][1], flat[p][2]) if wrong
                    else (-flat[p][0], p))[: case.settings["global_total_rows"]]
    return {f"global_rows/{n}": np.array(sorted(flat[p][2] for p in ranked if flat[p][1] == li), dtype=np.int64)
            for li, n in enumerate(layers)}


def spruft_obd(case, wrong):
    """OBD scores Σ_j W² F, F the mean squared gradient of each sequence's l_s / (B T) (right: the PyTorch
    twin's reference_models.spruft.mean_squared_sample_gradients) or of l_s / T (wrong: B² times it)."""
    from reference_models.spruft import mean_squared_sample_gradients

    layers = case.settings["layers"]
    twin = twins.torch_model(case.inputs("params/"), twins.config_of(case))
    batches = list(zip(case["calib/x"], case["calib/y"]))
    (B,) = {x.shape[0] for x, _ in batches}
    F = mean_squared_sample_gradients(twin, layers, batches)
    scale = B * B if wrong else 1
    return {f"obd/scores/{n}": (twin.get_submodule(n).weight.detach() ** 2 * F[n] * scale).sum(1).numpy()
            for n in layers}


# ------------------------------------------------------------------------------------ AdaPEFT
def gen_r2(case, wrong):
    """GeN's R² of each group's four-point fit (losses by a TorchGPT twin), centred or not."""
    from reference_models import adapeft as ref

    s = case.settings
    params = case.inputs("params/")
    config = twins.config_of(case)
    groups = ref.partition(config, "modules", s["lora_r"])
    lora_init = {layer: (params[f"{layer}.lora.lora_A"], params[f"{layer}.lora.lora_B"])
                 for g in groups.values() for layer in g["lora"]}
    twin = ref.Twin({k: v for k, v in params.items() if k in twins.base_names(config)}, config, groups, lora_init,
                    s["lora_alpha"] / s["lora_r"])
    fresh = (case["gen_batch/x"][0], case["gen_batch/y"][0])
    base = twin.values()
    loss0 = float(twin.loss(fresh, base))
    xs = np.array([c * s["eta"] for c in (-2.0, -1.0, 1.0, 2.0)])
    out = []
    for group in s["group_order"]:
        d = {k: torch.tensor(case[f"direction/{k}"]) for k in twin.members[group]}
        y = np.array([float(twin.loss(fresh, {k: v - x * d[k] if k in d else v for k, v in base.items()}))
                      for x in xs]) - loss0
        X = np.stack([0.5 * xs * xs, -xs], axis=1)
        resid = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
        out.append(1.0 - float(resid @ resid) / float(((y if wrong else y - y.mean()) ** 2).sum()))
    return {"gen/r2": np.array(out)}


# ------------------------------------------------------------------------------------ knapsack
def knapsack(reading, instances, keys):
    def implement(case, wrong):
        out = {}
        for name in instances:
            solve, front, greedy = twins.brute_force_knapsack(case[f"{name}/values"], case[f"{name}/weights"],
                                                              case.settings[name]["capacity"], reading if wrong else None)
            got = {"solve": solve, "front_weights": np.array([p[0] for p in front], dtype=np.int64),
                   "front_masks": np.array([p[2] for p in front]), "greedy_masks": np.array([p[2] for p in greedy]),
                   "greedy_values": np.array([p[1] for p in greedy])}
            out.update({f"{name}/{k}": got[k] for k in keys})
        return out

    return implement


ALL = ("plain", "ties", "float_sums", "sum_order")


# ------------------------------------------------------------------------------------ trajectories
def trajectory(reading):
    def implement(case, wrong):
        method = case.settings["method"]
        given = trajectories.SELECTIONS[method](case) if method in trajectories.SELECTIONS else {}
        return trajectories.replay_training(case, **given, reading=reading if wrong else None)

    return implement


READINGS = {  # manifest id -> implement(case, wrong) -> {key: array} ({step: {key: array}} for train_*)
    "gmt_count_decimal": gmt_count,
    "gmt_global_tie_order": gmt_global_ties,
    "mgpp_schedule_zero_before_start": mgpp_schedule,
    "mgpp_count_half_up": mgpp_half_up,
    "mgpp_count_decimal": mgpp_decimal,
    "loradrop_threshold_exact": loradrop_threshold,
    "loradrop_ties": loradrop_ties,
    "loradrop_per_type_renormalised": loradrop_per_type,
    "spruft_global_ties": spruft_global_ties,
    "spruft_obd_fisher_share": spruft_obd,
    "gen_r2_centred": gen_r2,
    "knapsack_solve_ties": knapsack("fewest_items", ("ties",), ("solve",)),
    "knapsack_front_empty_set": knapsack("no_empty_set", ALL, ("front_weights",)),
    "knapsack_front_uncapped": knapsack("capped_front", ALL, ("front_weights",)),
    "knapsack_front_ties": knapsack("fewest_items", ("ties",), ("front_masks",)),
    "knapsack_greedy_ties": knapsack("greedy_ties_high_first", ("ties",), ("greedy_masks",)),
    "knapsack_greedy_sum_order": knapsack("greedy_sum_in_greedy_order", ("sum_order",), ("greedy_values",)),
    "pruning_regrowth": trajectory("monotone"),
    "pruning_mask_after_t_f": trajectory("free_after_t_f"),
    "mgpp_prior_after_clip": trajectory("prior_before_clip"),
    "gmt_freeze_masked": trajectory("zero_gradient_only"),
}


def named_readings(folder):
    """[(case name, reading entry)] of every discriminating reading in the suite's manifest."""
    return [(name, r) for name, case in mt.read_manifest(folder)["cases"].items() for r in case["discriminates"]]


def test_every_named_reading_is_implemented(fresh_vectors):
    named = {r["id"] for _, r in named_readings(fresh_vectors)}
    assert named == set(READINGS), (f"named without a wrong-reading test: {sorted(named - set(READINGS))}; "
                                    f"tests of readings no case names: {sorted(set(READINGS) - named)}")


def restricted(values, tensors, per_step):
    """The values of the discriminated tensors only."""
    if not per_step:
        assert set(values) >= set(tensors), sorted(set(tensors) - set(values))
        return {k: values[k] for k in tensors}
    return {t: {k: v for k, v in step.items() if f"step/{k}" in tensors} for t, step in values.items()}


def check(case, values, per_step):
    if per_step:
        mt.check_trajectory(case, values)
    else:
        case.check(values)


KEPT_READINGS = named_readings(Path(__file__).parent / "data" / "vectors")


@pytest.mark.parametrize("name, reading", KEPT_READINGS, ids=[f"{n}:{r['id']}" for n, r in KEPT_READINGS])
def test_the_wrong_reading_fails_the_case_and_the_right_one_passes(name, reading):
    """On the kept copy: the right implementation meets the case on the tensors the reading names,
    and the wrong one (the same code with the one point changed) does not."""
    case = mt.load_case(Path(__file__).parent / "data" / "vectors", name)
    per_step = name.startswith("train_")
    implement = READINGS[reading["id"]]
    check(case, restricted(implement(case, wrong=False), reading["tensors"], per_step), per_step)
    with pytest.raises(mt.VectorMismatch) as e:
        check(case, restricted(implement(case, wrong=True), reading["tensors"], per_step), per_step)
    assert name in str(e.value)
