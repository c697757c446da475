"""The train_* golden trajectories replayed by PyTorch, step by step: every method's selection
(SPruFT's scores and rows, LoRA-drop's probe, scores and kept layers, AdaPEFT's probe estimates and
knapsack choice) by reference_models' twins, then its training steps by a TorchGPT with
reference_models' adapters, autograd, the twins' masks, prior and pruning, torch's clip_grad_norm_
and torch.optim.AdamW. Every step's loss, gradient, masks, clipping, AdamW moments and parameters
are compared with `minisft.testing.check_trajectory`, which names the first step, stage and tensor
that differ (its messages are tested here too)."""

import math
from fractions import Fraction

import numpy as np
import pytest

import minisft.testing as mt

torch = pytest.importorskip("torch")
twins = pytest.importorskip("tests.vector_twins")

from reference_models import adapeft as ref_adapeft  # noqa: E402
from reference_models import mgpp as ref_mgpp  # noqa: E402
from reference_models import primitives as ref_masks  # noqa: E402
from reference_models import spruft as ref_spruft  # noqa: E402
from reference_models.gmt_mgpp import _step_leaving_untouched  # noqa: E402
from reference_models.loradrop import lora_output_sq_norms  # noqa: E402

CASES = ["train_full", "train_lora", "train_spruft", "train_loradrop", "train_adapeft", "train_gmt",
         "train_gmt_global_frozen", "train_mgpp", "train_magprune"]


def numpy(t):
    return t.detach().numpy().copy()


# -------------------------------------------------------------------------------- selections
def replay_spruft(case):
    """The taylor row scores and rows by reference_models.spruft; returns the rows for training."""
    o = case.settings["options"]
    layers = case.settings["layers"]
    twin = twins.torch_model(case.inputs("start/"), twins.config_of(case))
    scores, units = ref_spruft.unit_scores(twin, layers, o["importance"], batches=list(zip(case["select/calib/x"],
                                                                                          case["select/calib/y"])))
    chosen = ref_spruft.select(scores, units, ratio=o["ratio"], rows=o["rows"], scope=o["scope"])
    case.check({f"select/scores/{n}": numpy(s) for n, s in scores.items()})
    case.check({f"select/rows/{n}": numpy(r) for n, r in chosen.items()})
    return {"rows": {n: numpy(r) for n, r in chosen.items()}}


def replay_loradrop(case):
    """The probe (torch.optim.AdamW on the LoRA factors), g by forward hooks, the selection in
    rational arithmetic; returns the shared layers for training."""
    o, layers = case.settings["options"], case.settings["layers"]
    twin = twins.torch_model(case.inputs("start/"), twins.config_of(case))
    factors = twins.attach_loras(twin, case.inputs("probe/init/"), o["alpha"] / o["r"])
    opt = torch.optim.AdamW(list(factors.values()), lr=o["probe_lr"], weight_decay=0.0)
    losses = []
    for x, y in zip(case["probe/batch/x"], case["probe/batch/y"]):
        opt.zero_grad()
        loss = twins.batch_loss(twin, x, y)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    case.check({"probe/loss": np.array(losses)})
    case.check({k: numpy(p) for k, p in factors.items()}, prefix="probe/final/")
    g = lora_output_sq_norms(twin, layers, list(zip(case["probe/sample/x"], case["probe/sample/y"])))
    values = np.array([g[n] for n in layers])
    case.check({"select/g": values, "select/importance": values / values.sum()})
    kept, shared = twins.per_type_selection(layers, dict(zip(layers, case["select/g"])), o["threshold"], o["selection"])
    case.check({"select/kept": kept, "select/shared": shared})
    dropped = [n for n, s in zip(layers, shared) if s]
    return {"shared": {sfx: [n for n in dropped if n.endswith(sfx)] for sfx in twins.SUFFIXES
                       if any(n.endswith(sfx) for n in dropped)}}


def replay_adapeft(case):
    """reference_models.adapeft's probe (torch AdamW; H·d by forward-over-reverse), mean influence and
    selection (brute force over subsets)."""
    s, o = case.settings, case.settings["options"]
    config = twins.config_of(case)
    groups = ref_adapeft.partition(config, o["groups"], o["lora_r"])
    init = case.inputs("probe/init/")
    lora_init = {layer: (init[f"{layer}.lora.lora_A"], init[f"{layer}.lora.lora_B"])
                 for g in groups.values() for layer in g["lora"]}
    base = {k: v for k, v in case.inputs("start/").items() if k in twins.base_names(config)}
    twin = ref_adapeft.Twin(base, config, groups, lora_init, o["lora_alpha"] / o["lora_r"])
    batches = list(zip(case["probe/batch/x"], case["probe/batch/y"]))
    losses = []
    records = ref_adapeft.probe(twin, batches, {}, o["estimator"], o["direction"], o["every"], o["probe_lr"],
                                inspect=lambda step, batch, *_: losses.append(twin.loss(batch).item()))
    case.check({"probe/loss": np.array(losses)})
    order = s["group_order"]
    for r in records:
        est = r["estimates"]
        case.check({f"probe/{r['step']}/{f}": np.array([np.nan if est[g][f] is None else est[g][f] for g in order])
                    for f in ("a", "b", "influence")})
        case.check({f"probe/{r['step']}/valid": np.array([est[g]["valid"] for g in order])})
    mean = ref_adapeft.mean_influence(records)
    case.check({"select/influence": np.array([np.nan if mean[g] is None else mean[g] for g in order])})
    chosen, _ = ref_adapeft.select(mean, {g: groups[g]["n"] for g in groups}, o["budget"])
    case.check({"select/chosen": np.array([g in chosen for g in order])})
    return {}


SELECTIONS = {"spruft": replay_spruft, "loradrop": replay_loradrop, "adapeft": replay_adapeft}


# -------------------------------------------------------------------------------- training
def pruning_schedule(case):
    o, steps = case.settings["options"], case.settings["train"]["steps"]
    t_i = math.floor(Fraction(repr(o["t_start"])) * steps)
    t_f = math.floor(Fraction(repr(o["t_end"])) * steps)
    return t_i, t_f


READINGS = ("monotone", "free_after_t_f", "prior_before_clip", "zero_gradient_only")


def replay_training(case, rows=None, shared=None, reading=None):
    """{step: {key: value}} of the case's training steps by the PyTorch twin (module docstring).
    `reading` swaps in one wrong reading of the case's rule (tests/test_vector_readings.py):
    "monotone" (pruned weights stay pruned), "free_after_t_f" (no mask after t_f),
    "prior_before_clip" (MGPP's prior clipped with the loss gradient), "zero_gradient_only"
    (GMT's freeze_masked as a zeroed gradient only)."""
    assert reading in (None, *READINGS), reading
    s, o, train = case.settings, case.settings["options"], case.settings["train"]
    method = s["method"]
    twin, params = twins.trainable_twin(case, case.inputs("start/"), rows, shared)
    order = [params[n] for n in s["param_order"]]
    opt = torch.optim.AdamW(order, lr=train["lr"], betas=tuple(s["adamw"]["betas"]), eps=s["adamw"]["eps"],
                            weight_decay=train["weight_decay"])
    N, dump, pruned = train["accumulation"], {}, None
    for t in range(train["steps"]):
        record = {}
        opt.zero_grad(set_to_none=True)
        losses = []
        for j in range(N):
            loss = twins.batch_loss(twin, case["batch/x"][t * N + j], case["batch/y"][t * N + j])
            (loss / N).backward()
            losses.append(loss.item())
        record["loss"] = sum(losses) / N
        record.update({f"grad/{n}": numpy(p.grad) for n, p in params.items()})
        frozen = {}
        if method == "gmt":
            grads = [params[n].grad for n in s["param_order"]]
            masks = ([ref_masks.gradient_mask(g, o["drop_ratio"]) for g in grads] if o["scope"] == "tensor"
                     else ref_masks.global_masks(grads, o["drop_ratio"]))
            for n, m in zip(s["param_order"], masks):
                params[n].grad.masked_fill_(~m, 0.0)
                record[f"keep/{n}"], record[f"grad_masked/{n}"] = m.numpy(), numpy(params[n].grad)
                if o["freeze_masked"] and reading != "zero_gradient_only":
                    frozen[n] = ~m
        if method in ("mgpp", "magprune"):
            t_i, t_f = pruning_schedule(case)
        prior = method == "mgpp" and t <= t_f
        if prior and reading == "prior_before_clip":
            ref_mgpp.apply_prior_grad(params, s["prunable"], o["lam"], o["var0"], o["var1"], o["n_train"])
        norm = float(torch.nn.utils.clip_grad_norm_(order, train["grad_clip"]))
        record["grad_norm"], record["clip_scale"] = norm, min(train["grad_clip"] / (norm + 1e-6), 1.0)
        if prior and reading != "prior_before_clip":
            ref_mgpp.apply_prior_grad(params, s["prunable"], o["lam"], o["var0"], o["var1"], o["n_train"])
        if method == "mgpp":
            record.update({f"update/{n}": numpy(p.grad) for n, p in params.items()})
        if frozen:
            _step_leaving_untouched(opt, params, frozen)
        else:
            opt.step()
        for n, p in params.items():
            record[f"exp_avg/{n}"], record[f"exp_avg_sq/{n}"] = numpy(opt.state[p]["exp_avg"]), numpy(opt.state[p]["exp_avg_sq"])
        if method in ("mgpp", "magprune"):
            sparsity, action = ref_mgpp.sparsity_and_action(t, o["initial_sparsity"], o["final_sparsity"], t_i, t_f,
                                                            o["every"])
            if action == "sparsity":
                pruned = ref_mgpp.pruning_masks({n: params[n] for n in s["prunable"]}, sparsity, o["count_rule"],
                                                o["scope"], pruned if reading == "monotone" else None)
            if action == "sparsity" or (action == "mask" and reading != "free_after_t_f"):
                with torch.no_grad():
                    for n in s["prunable"]:
                        params[n].masked_fill_(pruned[n], 0.0)
            for n in s["prunable"]:
                record[f"keep/{n}"] = np.ones(params[n].shape, bool) if pruned is None else (~pruned[n]).numpy()
        record.update({f"param/{n}": numpy(p) for n, p in params.items()})
        dump[t] = record
    return dump


@pytest.mark.parametrize("name", CASES)
def test_training_case_replays_in_pytorch(fresh_vectors, name):
    """Each method's selection, then every intermediate of every step, from the case's inputs."""
    case = mt.load_case(fresh_vectors, name)
    method = case.settings["method"]
    given = SELECTIONS[method](case) if method in SELECTIONS else {}
    dump = replay_training(case, **given)
    assert {key.partition("/")[0] for key in dump[0]} == set(case.settings["stages"])
    mt.check_trajectory(case, dump)


# ------------------------------------------------------------------------------ check_trajectory
@pytest.fixture(scope="module")
def gmt(fresh_vectors):
    return mt.load_case(fresh_vectors, "train_gmt")


def own_dump(case):
    """The case's own per-step values as a dump (what an exact re-implementation would give)."""
    keys = [k[len("step/"):] for k in case.keys() if k.startswith("step/")]
    return {t: {k: case[f"step/{k}"][t] for k in keys} for t in range(case.settings["train"]["steps"])}


def test_check_trajectory_names_the_first_step_stage_and_tensor(gmt):
    """A dump equal to the case passes; one where AdamW's m parts at step 2 (and everything after it
    differs too) is reported at step 2, stage exp_avg, the first tensor in trainable order, with the
    values and the count of later differences."""
    dump = own_dump(gmt)
    mt.check_trajectory(gmt, dump)
    name = gmt.settings["trainable"][3]
    dump[2][f"exp_avg/{name}"] = dump[2][f"exp_avg/{name}"] * 1.001
    dump[3][f"grad/{name}"] = dump[3][f"grad/{name}"] + 1.0
    dump[2][f"param/{name}"] = dump[2][f"param/{name}"] + 1.0
    with pytest.raises(mt.VectorMismatch) as e:
        mt.check_trajectory(gmt, dump)
    first = str(e.value).splitlines()[0]
    assert first == (f"train_gmt: first difference at step 2 (0-based), stage 'exp_avg' (AdamW's first moment m after "
                     f"the step), tensor '{name}'; every value compared before it agrees (2 later values differ too)")
    assert f"train_gmt:step/exp_avg/{name}[2]:" in str(e.value) and "max abs error" in str(e.value)


def test_check_trajectory_orders_by_step_then_stage(gmt):
    """A difference in a later stage of an earlier step comes before one in an earlier stage of a
    later step; a mask stage is compared before the masked gradient."""
    dump = own_dump(gmt)
    name = gmt.settings["trainable"][0]
    dump[1][f"grad_masked/{name}"] = dump[1][f"grad_masked/{name}"] + 1.0
    dump[1][f"keep/{name}"] = ~dump[1][f"keep/{name}"]
    dump[0][f"param/{name}"] = dump[0][f"param/{name}"] + 1.0
    with pytest.raises(mt.VectorMismatch, match=r"first difference at step 0 \(0-based\), stage 'param'"):
        mt.check_trajectory(gmt, dump)
    del dump[0]
    with pytest.raises(mt.VectorMismatch, match=r"first difference at step 1 \(0-based\), stage 'keep'"):
        mt.check_trajectory(gmt, {1: dump[1]})


def test_check_trajectory_rejects_what_it_cannot_compare(gmt, fresh_vectors):
    with pytest.raises(ValueError, match=r"dump\[0\] key='update/wte.weight': expected a per-step tensor of train_gmt"):
        mt.check_trajectory(gmt, {0: {"update/wte.weight": np.zeros(1)}})
    with pytest.raises(ValueError, match=r"dump step=4: expected an integer step in \[0, 4\)"):
        mt.check_trajectory(gmt, {4: {"loss": 1.0}})
    with pytest.raises(ValueError, match="a train_\\* case"):
        mt.check_trajectory(mt.load_case(fresh_vectors, "gmt_masks"), {0: {"loss": 1.0}})
    with pytest.raises(TypeError, match="a non-empty dict"):
        mt.check_trajectory(gmt, {})
