"""AdaPEFT (minisft.methods.adapeft: method, groups; minisft.app.adapeft_front): group partitions and
their exact sizes, the selection against a brute-force knapsack, the reset to the base and what
trains afterwards, the probe's optimizer (moments advanced once per step), the report's front and
greedy chain, transfer by group name across model sizes, the front command and bad input.
Derivations: proofs/adapeft.md.
"""

import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import spearmanr

import minisft.app.experiment as ex
from minisft.app.adapeft_front import adapeft_front, front_name
from minisft.model.budgets import count_params, lora_trainable
from minisft.core.config import GPTConfig
from minisft.core.errors import NonFiniteLossError
from minisft.methods.adapeft import knapsack
from minisft.methods.adapeft.groups import apply_groups_by_name, build_groups, dense_only
from minisft.methods.adapeft.method import AdaPEFT, GroupSubset, probe
from minisft.methods.base import FullFineTune
from minisft.model.gpt import GPT, param_shapes
from minisft.training.optim import AdamW, SGD
from minisft.training.train import TrainConfig, train
from tests.helpers import MICRO, TINY, counter_task, tiny_gpt

def prepared(budget=0.1, seed=0, estimator="exact", **kw):
    """A tiny model after AdaPEFT.prepare, the method and the base state before it."""
    model = tiny_gpt(seed=seed)
    before = model.state_dict()
    method = AdaPEFT(budget=budget, lora_r=2, lora_alpha=4, probe_lr=1e-2, estimator=estimator, **kw)
    method.prepare(model, counter_task(), np.random.default_rng(seed))
    return model, method, before


# ----------------------------------------------------------------------------------- groups
@pytest.mark.parametrize("cfg", [TINY, GPTConfig(vocab_size=30, block_size=5, n_layer=3, n_head=4, n_embd=8)])
@pytest.mark.parametrize("r", [1, 3])
def test_modules_partition_sizes_are_the_trainable_counts(cfg, r):
    """Closed forms per group (L blocks, width C): LoRA r·(d_in + d_out)·L, linear biases 9C·L,
    LayerNorms 2C·(2L + 1), embeddings (V + T)·C; and each equals count_params after activating
    that group alone on a model."""
    L, C, V, T = cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.block_size
    expected = {"lora:attn.c_attn": r * 4 * C * L, "lora:attn.c_proj": r * 2 * C * L, "lora:mlp.c_fc": r * 5 * C * L,
                "lora:mlp.c_proj": r * 5 * C * L, "bias": 9 * C * L, "layernorm": 2 * C * (2 * L + 1),
                "embeddings": (V + T) * C}
    groups = build_groups(cfg, "modules", r)
    assert {g.name: g.size for g in groups} == expected
    for g in groups:
        model = tiny_gpt(cfg)
        apply_groups_by_name(model, [g.name], "modules", r)
        assert count_params(model)["trainable"] == g.size, g.name
        assert len(g.param_names(model)) == len(model.trainable_params())


def test_tensors_partition_is_every_base_tensor_once():
    groups = build_groups(TINY, "tensors")
    shapes = param_shapes(TINY)
    assert [g.name for g in groups] == list(shapes)
    assert all(g.tensors == (g.name,) and not g.lora_layers for g in groups)
    assert sum(g.size for g in groups) == count_params(tiny_gpt())["base"]
    assert dense_only("tensors") and not dense_only("modules")
    assert AdaPEFT(groups="tensors").trains_base and not AdaPEFT().trains_base


def test_the_default_estimator_is_the_papers_gen():
    """AdaPEFT's default influence estimator is GeN's forward-only fit, the paper's (proofs/decisions.md
    §2); the Hessian-vector product ("exact") stays an option."""
    assert AdaPEFT().config.estimator == "gen" and AdaPEFT(estimator="exact").config.estimator == "exact"


def test_user_groups_by_pattern():
    groups = build_groups(TINY, {"attn": ["lora:h.*.attn.*", "h.*.attn.c_attn.bias"], "ln1": "h.*.ln_1.*"}, lora_r=2)
    attn, ln1 = groups
    assert attn.lora_layers == ("h.0.attn.c_attn", "h.0.attn.c_proj", "h.1.attn.c_attn", "h.1.attn.c_proj")
    assert attn.tensors == ("h.0.attn.c_attn.bias", "h.1.attn.c_attn.bias")
    assert attn.size == 2 * 2 * (4 * 16 + 2 * 16) + 2 * 48 and ln1.size == 2 * 2 * 16
    assert not dense_only({"ln": "h.*.ln_*", "a": "lora:h.0.mlp.c_fc"}) and dense_only({"ln": "h.*.ln_*"})
    with pytest.raises(ValueError, match="disjoint"):
        build_groups(TINY, {"a": "h.0.*", "b": "h.0.ln_1.weight"})
    with pytest.raises(ValueError, match="disjoint"):
        build_groups(TINY, {"a": "lora:h.0.*", "b": "lora:h.*.mlp.c_fc"})
    with pytest.raises(ValueError, match=r"groups\['a'\]"):
        build_groups(TINY, {"a": "h.9.*"})
    with pytest.raises(ValueError, match=r"groups\['a'\]"):
        build_groups(TINY, {"a": "lora:h.0.ln_1"})
    with pytest.raises(ValueError, match=r"groups\['a'\]"):
        build_groups(TINY, {"a": []})
    with pytest.raises(TypeError, match="groups"):
        build_groups(TINY, {})
    with pytest.raises(ValueError, match="groups"):
        build_groups(TINY, "layers")
    with pytest.raises(ValueError, match="lora_r"):
        build_groups(TINY, "modules", lora_r=17)


# -------------------------------------------------------------------------------- selection
def brute_force(values, sizes, capacity):
    """max over every subset within capacity of the index-ordered float sum, and the subsets' points."""
    points = []
    for z in itertools.product([False, True], repeat=len(values)):
        z = np.array(z)
        w = int(sizes[z].sum())
        v = float(np.cumsum(values[z])[-1]) if z.any() else 0.0
        points.append((w, v))
    best = max(v for w, v in points if w <= capacity)
    return best, points


@pytest.mark.parametrize("kw", [{}, {"direction": "sgd"}, {"estimator": "gen"}, {"budget": 700}],
                         ids=["exact-adam", "exact-sgd", "gen-adam", "int-budget"])
def test_selection_is_the_knapsack_optimum_within_budget(kw):
    """The chosen groups are knapsack.solve on the report's mean influences and sizes, their total
    influence is the brute-force optimum over all 2^7 subsets, and they fit the budget."""
    model, method, _ = prepared(**kw)
    rep = method.report()
    values = np.array([g["influence"] or 0.0 for g in rep["groups"]])
    sizes = np.array([g["n"] for g in rep["groups"]])
    cap = rep["budget"]["capacity"]
    assert cap == (kw["budget"] if "budget" in kw else math.floor(0.1 * count_params(model)["base"]))
    mask = knapsack.solve(values, sizes, cap)
    assert rep["chosen"]["groups"] == [g["name"] for g, z in zip(rep["groups"], mask) if z]
    best, _ = brute_force(values, sizes, cap)
    assert rep["chosen"]["influence"] == best
    assert rep["chosen"]["params"] == int(sizes[mask].sum()) <= cap
    for g in rep["groups"]:  # the mean is over valid estimates only; invalid ones keep a reason
        valid = [e["influence"] for p in rep["probes"] for e in p["estimates"] if e["group"] == g["name"] and e["valid"]]
        assert g["n_valid"] == len(valid) and g["n_valid"] + len(g["invalid"]) == g["n_probes"] == 2
        assert g["influence"] == (float(np.mean(valid)) if valid else None)
        assert all(i["reason"] for i in g["invalid"])
    if kw.get("estimator") == "gen":
        assert all(e["r2"] is not None for p in rep["probes"] for e in p["estimates"])
    json.dumps(rep)


def test_report_front_and_greedy_chain_against_brute_force():
    """Every front point is non-dominated among all subsets and every non-dominated point is on the
    front; each greedy point's on_front flag agrees; the chosen value is the best front value within
    the budget; the greedy prefix at the budget is the largest fitting one."""
    _, method, _ = prepared()
    rep = method.report()
    values = np.array([g["influence"] or 0.0 for g in rep["groups"]])
    sizes = np.array([g["n"] for g in rep["groups"]])
    _, points = brute_force(values, sizes, 0)

    def dominated(w, v):
        return any((w2 <= w and v2 > v) or (w2 < w and v2 >= v) for w2, v2 in points)

    front = {(p["params"], p["influence"]) for p in rep["front"]}
    assert front == {p for p in points if not dominated(*p)}
    names = [g["name"] for g in rep["groups"]]
    for p in rep["front"]:
        z = np.isin(names, p["groups"])
        assert p["params"] == int(sizes[z].sum()) and p["influence"] == (float(np.cumsum(values[z])[-1]) if z.any() else 0.0)
    for p in rep["greedy"]:
        assert p["on_front"] == (not dominated(p["params"], p["influence"]))
    first_off = [i for i, p in enumerate(rep["greedy"]) if not p["on_front"]]
    assert rep["greedy_leaves_front_at"] == (first_off[0] if first_off else None)
    cap = rep["budget"]["capacity"]
    assert rep["chosen"]["influence"] == max(p["influence"] for p in rep["front"] if p["params"] <= cap)
    assert rep["greedy_at_budget"] == [p for p in rep["greedy"] if p["params"] <= cap][-1]


def test_only_chosen_groups_train_after_prepare():
    """prepare restores every base tensor bit-exactly (the probe's updates are discarded), keeps
    adapters only on the chosen LoRA groups (fresh: B = 0) and unfreezes only the chosen tensors;
    training then changes exactly those."""
    model, method, before = prepared(budget=1100)
    chosen = method.report()["chosen"]["groups"]
    groups = {g.name: g for g in build_groups(TINY, "modules", 2)}
    assert all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())
    want_layers = {layer for n in chosen for layer in groups[n].lora_layers}
    assert set(model.adapters) == want_layers
    assert all(not np.any(ad.B) for ads in model.adapters.values() for ad in ads)
    assert model.trainable == {t for n in chosen for t in groups[n].tensors}
    assert count_params(model)["trainable"] == method.report()["chosen"]["params"]
    params_before = {k: v.copy() for k, v in model.params.items()}
    adapters_before = {k: v.copy() for k, v in model.adapter_params().items()}
    opt = AdamW(lr=1e-2)
    x, y = counter_task().sample(np.random.default_rng(3))
    _, grads = model.loss_and_grads(x, y)
    opt.step(model.trainable_params(), grads)
    for k, v in model.params.items():
        assert np.array_equal(v, params_before[k]) == (k not in model.trainable), k
    assert all(not np.array_equal(v, adapters_before[k]) for k, v in model.adapter_params().items() if k.endswith("lora_B"))


@pytest.mark.parametrize("estimator", ["exact", "gen"])
@pytest.mark.parametrize("direction", ["adam", "sgd"])
def test_probe_advances_the_optimizer_once_per_step(estimator, direction):
    """The probe's trajectory is a plain training run: replaying the same batches (and, for GeN, the
    same extra batch drawn at each probed step) with one optimizer step each gives bit-identical
    parameters and moments, and every tensor's step count equals the number of probe steps."""
    steps, every = 5, 2
    model = tiny_gpt()
    groups = build_groups(TINY, "modules", 2)
    records, opt = probe(model, counter_task(), np.random.default_rng(7), groups, estimator, direction,
                         steps=steps, every=every, lr=1e-2, lora_alpha=4)
    assert [r["step"] for r in records] == [0, 2, 4]
    replay = tiny_gpt()
    rng = np.random.default_rng(7)
    replay.freeze()
    for g in groups:
        g.activate(replay, 4, rng)
    ropt = AdamW(lr=1e-2, weight_decay=0.0) if direction == "adam" else SGD(lr=1e-2)
    task = counter_task()
    for step in range(steps):
        x, y = task.sample(rng)
        _, grads = replay.loss_and_grads(x, y)
        if step % every == 0 and estimator == "gen":
            task.sample(rng)
        ropt.step(replay.trainable_params(), grads)
    mine, theirs = model.trainable_params(), replay.trainable_params()
    assert set(mine) == set(theirs) and all(np.array_equal(mine[k], theirs[k]) for k in mine)
    for k, st in opt.state.items():
        assert st["step"] == steps, k
        assert all(np.array_equal(v, ropt.state[k][s]) for s, v in st.items() if s != "step"), k


@pytest.mark.parametrize("direction", ["adam", "sgd"])
def test_probe_measures_then_steps(monkeypatch, direction):
    """Order of operations at a probed step: the influence is measured at θ_s, the parameters BEFORE
    that step's update, along the direction of the update that follows, d = (θ_s − θ_{s+1}) / lr —
    not after the step (where Adam would count the gradient twice: GeN's pitfall). Oracle: a replay
    of the same batches with one optimizer step each, recording every θ_s."""
    import minisft.methods.adapeft.method as mod

    seen = []
    measure = mod.group_influence

    def recording(groups, sizes, grads, direction_, *args, params, **kw):
        seen.append(({k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in direction_.items()}))
        return measure(groups, sizes, grads, direction_, *args, params=params, **kw)

    monkeypatch.setattr(mod, "group_influence", recording)
    steps, every, lr = 5, 2, 1e-2
    groups = build_groups(TINY, "modules", 2)
    probe(tiny_gpt(), counter_task(), np.random.default_rng(7), groups, "exact", direction, steps=steps, every=every,
          lr=lr, lora_alpha=4)
    replay, rng, task = tiny_gpt(), np.random.default_rng(7), counter_task()
    replay.freeze()
    for g in groups:
        g.activate(replay, 4, rng)
    ropt = AdamW(lr=lr, weight_decay=0.0) if direction == "adam" else SGD(lr=lr)
    thetas = []
    for step in range(steps):
        x, y = task.sample(rng)
        _, grads = replay.loss_and_grads(x, y)
        thetas.append({k: v.copy() for k, v in replay.trainable_params().items()})
        ropt.step(replay.trainable_params(), grads)
    thetas.append({k: v.copy() for k, v in replay.trainable_params().items()})
    assert len(seen) == len(range(0, steps, every))
    for (params, d), s in zip(seen, range(0, steps, every)):
        for k, v in params.items():
            assert np.array_equal(v, thetas[s][k]), f"step {s}, {k}: measured at other parameters than θ_s"
            step_taken = (thetas[s][k] - thetas[s + 1][k]) / lr  # rounded by ~u·|θ|/lr in the subtraction
            tol = 1e-12 * np.max(np.abs(step_taken)) + 4 * np.finfo(np.float64).eps * np.max(np.abs(v)) / lr
            assert np.max(np.abs(d[k] - step_taken)) <= tol, f"step {s}, {k}: the direction is not the update that follows"


def test_prepare_is_deterministic_given_the_generator():
    _, m1, _ = prepared(seed=3)
    _, m2, _ = prepared(seed=3)
    assert json.dumps(m1.report()) == json.dumps(m2.report())


# --------------------------------------------------------------------------------- transfer
def pretrained_tiny(cfg, seed):
    model = tiny_gpt(cfg, dtype="float32", seed=seed)
    train(model, FullFineTune(), counter_task(B=8), TrainConfig(steps=60, lr=1e-2, eval_every=60, seed=seed))
    return model.state_dict()


def test_transfer_of_a_subset_by_group_name_across_model_sizes():
    """The transfer claim at mini scale: pretrain a small (2×16) and a larger (3×32) GPT on one walk,
    choose groups on the target walk with AdaPEFT on each (budget: half of LoRA r=2 everywhere),
    apply the small model's choice BY NAME to the larger one, and fine-tune both subsets there.
    Reported: overlap (Jaccard) of the chosen sets, Spearman correlation of the groups' PPI across
    sizes, the share of the larger model's optimal influence the transferred set captures, and the
    realised target losses. Checked: the transferred set trains exactly its groups on the larger
    model, both subsets lower the target loss, the numbers are well defined, and what docs/results.md
    reports: the chosen sets overlap little (Jaccard at most 1/3) and the transferred set does not
    reach a lower target loss than the directly chosen one in every seed (no transfer advantage;
    the page quotes the printed losses, `pytest -s` shows them). Runs by default: a documented claim
    rests on it (a slow mark had let it fail unnoticed)."""

    small, large = TINY, GPTConfig(vocab_size=40, block_size=8, n_layer=3, n_head=2, n_embd=32)
    target = counter_task(steps=(1, 3), B=8, seed=1)
    lines, jaccards, wins = [], [], []
    for seed in range(3):
        reports, bases = {}, {}
        for key, cfg in (("small", small), ("large", large)):
            bases[key] = pretrained_tiny(cfg, seed)
            model = GPT.from_state_dict(bases[key], cfg, backend="numpy")
            method = AdaPEFT(budget=lora_trainable(cfg, 2) // 2, lora_r=2, lora_alpha=2, probe_lr=1e-2,
                             probe_steps=16, every=2, estimator="exact")
            method.prepare(model, target, np.random.default_rng(seed))
            reports[key] = method.report()
        chosen = {k: reports[k]["chosen"]["groups"] for k in reports}
        cfg = TrainConfig(steps=30, lr=1e-2, eval_every=30, seed=seed)
        losses = {}
        for label, names in (("direct", chosen["large"]), ("transferred", chosen["small"])):
            model = GPT.from_state_dict(bases["large"], large, backend="numpy")
            base_loss = np.mean([model.loss(x, y) for x, y in target.val_target])
            subset = GroupSubset(names, lora_r=2, lora_alpha=2)
            r = train(model, subset, target, cfg)
            groups = {g.name: g for g in build_groups(large, "modules", 2)}
            assert count_params(model)["trainable"] == sum(groups[n].size for n in names)
            assert r["final"]["target"] < base_loss, (label, r["final"]["target"], base_loss)
            losses[label] = r["final"]["target"]
        infl = {g["name"]: g["influence"] or 0.0 for g in reports["large"]["groups"]}
        ppi = {k: [g["ppi"] or 0.0 for g in reports[k]["groups"]] for k in reports}
        a, b = set(chosen["small"]), set(chosen["large"])
        captured = sum(infl[n] for n in a) / sum(infl[n] for n in b)
        rho = spearmanr(ppi["small"], ppi["large"])[0]
        assert 0 <= len(a & b) / len(a | b) <= 1 and np.isfinite(rho) and captured >= 0
        jaccards.append(len(a & b) / len(a | b))
        wins.append(losses["transferred"] < losses["direct"])
        lines.append(f"seed {seed}: small {sorted(a)} large {sorted(b)} Jaccard {len(a & b) / len(a | b):.2f} "
                     f"PPI Spearman {rho:.2f} captured influence {captured:.2f} target loss direct "
                     f"{losses['direct']:.4f} transferred {losses['transferred']:.4f}")
    print("\n" + "\n".join(lines))
    assert max(jaccards) <= 1 / 3 and not all(wins), f"docs/results.md's transfer sentence no longer holds: {lines}"


# ----------------------------------------------------------------------------------- front
FRONT_PRESET = replace(MICRO, finetune_steps=2)  # each front point trains 2 steps


def test_adapeft_front_writes_json_and_plot(tmp_path):
    """The front command on a micro preset: JSON with the report, the LoRA-matched default budget,
    a PNG (matplotlib present) or a reason, and with train_front one realised loss per front point."""
    data = ex.build_data(FRONT_PRESET, tmp_path)
    out, folder, png, why = adapeft_front(FRONT_PRESET, tmp_path, data, backend="numpy", train_front=True,
                                          probe_steps=2, every=1)
    saved = json.loads((folder / f"{front_name(probe_steps=2, every=1, train_front=True)}.json").read_text())
    assert saved["report"]["budget"]["capacity"] == 2 * (4 + 2 + 5 + 5) * 16  # LoRA r=2 on the one block
    assert saved["options"]["probe_lr"] == FRONT_PRESET.peft_lr
    assert len(saved["trained"]) == len(saved["report"]["front"]) - 1
    assert all(t["final"]["target"] is not None for t in saved["trained"])
    assert (png is not None and png.exists() and why is None) or (png is None and "matplotlib" in why)
    assert out["report"] == saved["report"]


# ------------------------------------------------------------------------------- bad input
def test_bad_input():
    for budget in (0, -5, 0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="budget"):
            AdaPEFT(budget=budget)
    for budget in (True, "1%", None):
        with pytest.raises(TypeError, match="budget"):
            AdaPEFT(budget=budget)
    model = tiny_gpt()
    with pytest.raises(ValueError, match="budget.*no subset fits"):
        AdaPEFT(budget=100).prepare(model, counter_task(), np.random.default_rng(0))  # smallest group: 160
    assert not model.adapters and model.trainable == set(model.params)  # refused before the probe
    for kw, arg in (({"estimator": "hessian"}, "estimator"), ({"direction": "lion"}, "direction"),
                    ({"groups": "layers"}, "groups"), ({"probe_steps": 0}, "probe_steps"), ({"every": 0}, "every"),
                    ({"lora_r": 0}, "lora_r"), ({"lora_alpha": 0}, "lora_alpha"), ({"probe_lr": 0}, "probe_lr"),
                    ({"eta": -1.0}, "eta")):
        with pytest.raises(ValueError, match=arg):
            AdaPEFT(**kw)
    with pytest.raises(TypeError, match="groups"):
        AdaPEFT(groups=["bias"])
    model, _, _ = prepared()
    with pytest.raises(ValueError, match="model"):
        AdaPEFT().prepare(model, counter_task(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="names"):
        apply_groups_by_name(tiny_gpt(), ["lora:attn.q"])
    with pytest.raises(ValueError, match="names"):
        apply_groups_by_name(tiny_gpt(), [])
    with pytest.raises(ValueError, match="names"):
        GroupSubset([])
    with pytest.raises(ValueError, match="names"):
        apply_groups_by_name(tiny_gpt(), ["bias", "nope"])


def test_no_valid_estimate_is_an_error_not_an_empty_selection(monkeypatch):
    """When every estimate of every group is invalid, prepare refuses to train nothing."""
    import minisft.methods.adapeft.method as mod

    def all_invalid(groups, sizes, *args, **kw):
        return [{"group": g, "n": sizes[g], "a": -1.0, "b": 1.0, "r2": None, "influence": None, "ppi": None,
                 "valid": False, "reason": "curvature a=-1 <= 0"} for g in groups]

    monkeypatch.setattr(mod, "group_influence", all_invalid)
    with pytest.raises(ValueError, match="probe.*valid influence"):
        AdaPEFT(budget=0.5).prepare(tiny_gpt(), counter_task(), np.random.default_rng(0))


def test_non_finite_probe_loss_is_an_error():
    model = tiny_gpt()
    model.params["ln_f.weight"][...] = np.nan
    with pytest.raises(NonFiniteLossError, match="probe step 0"):
        AdaPEFT(budget=0.5).prepare(model, counter_task(), np.random.default_rng(0))
