"""SPruFT (minisft.methods.spruft: method, budget, calibration): scores and selections against the PyTorch
twin (reference_models.spruft: autograd gradients, per-sequence backward passes, explicit group
sums, stable sorts), 20-step AdamW training parity, exact budgets, neuron mode, memory, the released
code's pitfalls as regression tests, LoRA budget matching and bad input. Derivations: proofs/spruft.md.
"""

import math
from dataclasses import replace
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from minisft.model.adapters import ColumnDelta, RowDelta, adapter_delta_weights
from minisft.core.backend import to_numpy
from minisft.data.batches import TokenStream, validation_batches
from minisft.model.budgets import count_params, lora_trainable
from minisft.core.config import GPTConfig
from minisft.core.errors import CheckpointError
from minisft.methods.base import LoRAMethod
from minisft.methods.spruft.budget import rows_matching_lora, spruft_trainable
from minisft.methods.spruft.calibration import (GradientProbe, SquaredGradientProbe, StreamingTaylorProbe,
    calibration_batches, run_calibration, zeroth_order_weight_gradients)
from minisft.methods.spruft.method import SPruFT
from minisft.model.gpt import GPT, linear_layer_names
from minisft.training.train import Task, TrainConfig, train
from tests.gradcheck import max_rel_diff
from tests.helpers import TINY, host_copy, tiny_gpt

LAYERS = linear_layer_names(TINY)
KINDS = [("magnitude", {}), ("magnitude", {"p": 1}), ("taylor", {}), ("taylor", {"multivariable": True}),
         ("obd", {}), ("zeroth_order", {"zo_samples": 2}), ("wanda", {}), ("random", {})]
KIND_IDS = ["magnitude-p2", "magnitude-p1", "taylor", "taylor-multivariable", "obd", "zeroth_order", "wanda", "random"]


def make_task(seed=0, B=3, T=8):
    rng = np.random.default_rng(seed)
    ids = TokenStream(rng.integers(0, TINY.vocab_size, 2000).astype(np.int32), "synthetic", TINY.vocab_size)
    val = validation_batches(ids, B, T, 1)
    return Task(ids, val, [], B, T)


def assert_same_indices(got, want, what):
    assert set(got) == set(want), f"{what}: layers {sorted(got)} vs reference {sorted(want)}"
    for k in want:
        assert np.array_equal(got[k], want[k]), f"{what} {k}: {got[k].tolist()} vs reference {want[k].tolist()}"


# ------------------------------------------------------------------------------------------------
# parity with the PyTorch twin
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tr():
    """The PyTorch twin: (reference_models.spruft, TorchGPT); skips without torch. One torch thread
    while these tests run (tiny tensors: avoids OpenMP spin-waits on a busy 2-core machine)."""
    torch = pytest.importorskip("torch")
    from reference_models import spruft
    from reference_models.torch_gpt import TorchGPT

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield SimpleNamespace(ref=spruft, TorchGPT=TorchGPT)
    torch.set_num_threads(before)


def reference_selection(tr, model_sd, task, seed, importance, extra, mode, scope, ratio=None, rows=None, calib=2,
                        calib_batch_size=1):
    """The twin's unit scores and adapter indices, with the batches (of `calib_batch_size` sequences,
    SPruFT's default 1) and the ZO / random draws of the same seed."""
    twin = tr.TorchGPT.from_minisft(model_sd, TINY)
    rng = np.random.default_rng(seed)
    calib_task = replace(task, batch_size=calib_batch_size)
    batches = [] if importance in ("magnitude", "random") else [calib_task.sample(rng) for _ in range(calib)]
    kw = {"p": extra.get("p", 2), "multivariable": extra.get("multivariable", False), "batches": batches,
          "zo_samples": extra.get("zo_samples"), "zo_eps": 1e-3, "rng": rng}
    scores, units = tr.ref.unit_scores(twin, LAYERS, importance, mode=mode, **kw)
    chosen = tr.ref.select(scores, units, ratio=ratio, rows=rows, scope=scope)
    return scores, tr.ref.adapter_indices(chosen, units), rng, twin


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("mode", ["rows", "neurons"])
@pytest.mark.parametrize("importance,extra", KINDS, ids=KIND_IDS)
def test_scores_and_selection_match_torch_reference(tr, xp, importance, extra, mode, scope):
    seed, ratio = 3, 0.3
    model, task = tiny_gpt(xp=xp, seed=seed, perturbed=True), make_task(seed)
    sd = model.state_dict()
    method = SPruFT(ratio=ratio, importance=importance, mode=mode, scope=scope, calib_batches=2, **extra)
    method.prepare(model, task, np.random.default_rng(seed))
    scores, (rows, cols), _, _ = reference_selection(tr, sd, task, seed, importance, extra, mode, scope, ratio=ratio)
    tol = 1e-8 if importance == "zeroth_order" else 1e-11  # ZO: loss rounding / 2ε
    assert set(method.unit_scores) == set(scores)
    for unit, s in scores.items():
        d = max_rel_diff(method.unit_scores[unit], s.numpy())
        assert d <= tol, f"{unit}: scores differ from the torch twin, max rel diff {d:.3e}"
    assert_same_indices(method.selected_rows, rows, "rows")
    assert_same_indices(method.selected_cols, cols, "columns")


@pytest.mark.parametrize("mode,init", [("rows", "zeros"), ("rows", "kaiming_uniform"),
                                       ("neurons", "zeros"), ("neurons", "kaiming_uniform")])
def test_training_matches_torch_after_20_adamw_steps(tr, mode, init):
    """The trainer's run (prepare, then 20 batches from the same Generator, AdamW, no clipping)
    against the twin: same calibration batches, same kaiming draws in the documented order, same
    training batches, torch.optim.AdamW on RowDeltaLinear / ColumnDeltaLinear wrappers."""
    seed, lr, wd, steps = 11, 1e-2, 0.01, 20
    model, task = tiny_gpt(xp=np, seed=seed, perturbed=True), make_task(seed)
    sd = model.state_dict()
    method = SPruFT(ratio=0.25, importance="taylor", mode=mode, init=init, calib_batches=2)
    cfg = TrainConfig(steps=steps, lr=lr, weight_decay=wd, grad_clip=None, eval_every=steps, seed=seed)
    train(model, method, task, cfg, progress=False)
    _, (rows, cols), rng, twin = reference_selection(tr, sd, task, seed, "taylor", {}, mode, "layer", ratio=0.25)
    assert_same_indices(method.selected_rows, rows, "rows")
    assert_same_indices(method.selected_cols, cols, "columns")
    init_deltas = tr.ref.initial_deltas(twin, rows, cols, init, True, rng)
    trained = tr.ref.train_deltas(twin, rows, cols, init_deltas, [task.sample(rng) for _ in range(steps)], lr, wd)
    params = host_copy(model.adapter_params())
    expected = {}
    for (layer, axis), (w, b) in trained.items():
        kind = "row_delta" if axis == "rows" else "column_delta"
        expected[f"{layer}.{kind}.weight"] = w
        if b is not None:
            expected[f"{layer}.{kind}.bias"] = b
    assert set(params) == set(expected)
    for name, want in expected.items():
        diff = float(np.max(np.abs(params[name] - want)))
        assert diff <= 1e-10, f"{name}: max |Δ| vs torch after {steps} AdamW steps {diff:.3e}"
        assert np.max(np.abs(want)) > 1e-3, f"{name} did not train"  # the comparison is not vacuous


def test_calibration_statistics_match_autograd(tr, xp):
    """G (GradientProbe) = Σ_b ∂L_b/∂W, F (SquaredGradientProbe) = mean per-sequence (∂ℓ_s/∂W)²,
    Ĝ (zeroth order) = the twin's SPSA with the same draws; every target layer at once."""
    seed = 4
    model, task = tiny_gpt(xp=xp, seed=seed, perturbed=True), make_task(seed)
    model.freeze()
    rng = np.random.default_rng(seed)
    batches = calibration_batches(task, rng, 3)
    grad = {layer: GradientProbe(model, layer) for layer in LAYERS}
    sq = {layer: SquaredGradientProbe(model, layer) for layer in LAYERS}
    run_calibration(model, grad, batches)
    run_calibration(model, sq, batches)
    zo = zeroth_order_weight_gradients(model, LAYERS, batches, 2, 1e-3, np.random.default_rng(seed + 1))
    twin = tr.TorchGPT.from_minisft(model.state_dict(), TINY)
    G_ref = tr.ref.summed_gradients(twin, LAYERS, batches)
    F_ref = tr.ref.mean_squared_sample_gradients(twin, LAYERS, batches)
    zo_ref = tr.ref.zeroth_order_gradients(twin, LAYERS, batches, 2, 1e-3, np.random.default_rng(seed + 1))
    assert not model.adapters, "probes must be detached after calibration"
    for layer in LAYERS:
        checks = ((grad[layer].G, G_ref[layer], 1e-10, "G"), (sq[layer].fisher(), F_ref[layer], 1e-10, "F"),
                  (zo[layer], zo_ref[layer], 1e-8, "zeroth-order G"))
        for got, want, tol, what in checks:
            d = max_rel_diff(to_numpy(got), want.numpy())
            assert d <= tol, f"{layer} {what}: max rel diff vs torch {d:.3e}"
        assert sq[layer].samples == 3 * task.batch_size and grad[layer].batches == 3


# ------------------------------------------------------------------------------------------------
# the streaming identity: no d_out × d_in buffer for the multivariable score
# ------------------------------------------------------------------------------------------------


def test_streaming_probe_holds_only_vectors_and_equals_full_gradient_score(xp):
    seed = 6
    model, task = tiny_gpt(xp=xp, seed=seed, perturbed=True), make_task(seed)
    model.freeze()
    batches = calibration_batches(task, np.random.default_rng(seed), 3)
    full = {layer: GradientProbe(model, layer) for layer in LAYERS}
    stream = {layer: StreamingTaylorProbe(model, layer, rows=True, cols=True) for layer in LAYERS}
    run_calibration(model, full, batches)
    run_calibration(model, stream, batches)
    for layer in LAYERS:
        d_out, d_in = model.params[layer + ".weight"].shape
        bufs = stream[layer].buffers()
        assert {k: tuple(v.shape) for k, v in bufs.items()} == {"rows": (d_out,), "cols": (d_in,)}, layer
        WG = to_numpy(model.params[layer + ".weight"] * full[layer].G)
        got = host_copy(stream[layer].scores())
        for axis, want in (("rows", np.abs(WG.sum(axis=1))), ("cols", np.abs(WG.sum(axis=0)))):
            d = max_rel_diff(got[axis], want)
            assert d <= 1e-10, f"{layer} {axis}: streaming vs |Σ W⊙G| max rel diff {d:.3e}"
    method = SPruFT(ratio=0.25, importance="taylor", multivariable=True, mode="neurons", calib_batches=2)
    method.prepare(tiny_gpt(xp=xp, seed=seed, perturbed=True), task, np.random.default_rng(seed))
    shapes = method.report()["calibration"]["buffers"]
    assert set(shapes) == set(LAYERS) and all(len(s) == 1 for b in shapes.values() for s in b.values()), shapes


# ------------------------------------------------------------------------------------------------
# the released code's pitfalls (the choices in minisft/methods/spruft/__init__.py)
# ------------------------------------------------------------------------------------------------


def _probe_run(model, make, layer, batches):
    probe = make(model, layer)
    run_calibration(model, {layer: probe}, batches)
    return probe


def test_each_calibration_batch_adds_only_its_own_gradient(xp):
    """Per-class (here per-batch) gradients must not leak: with a gradient left to accumulate, a
    second batch would add G₁ + G₂ instead of G₂. The two-batch probe equals the sum of one-batch
    probes, and differs from the cumulative reading 2G₁ + G₂."""
    model, task = tiny_gpt(xp=xp, seed=1, perturbed=True), make_task(1)
    model.freeze()
    b1, b2 = calibration_batches(task, np.random.default_rng(1), 2)
    layer = "h.0.mlp.c_fc"
    both = to_numpy(_probe_run(model, GradientProbe, layer, [b1, b2]).G)
    G1, G2 = (to_numpy(_probe_run(model, GradientProbe, layer, [b]).G) for b in (b1, b2))
    assert max_rel_diff(both, G1 + G2) <= 1e-13
    assert max_rel_diff(both, 2 * G1 + G2) > 1e-3


def test_obd_accumulator_sums_squares_over_batches(xp):
    """Regression: the released code keyed its OBD accumulator inconsistently, so each batch's
    squares overwrote the last. Two batches: sum of the single-batch sums, count 2B, F = sum / 2B."""
    model, task = tiny_gpt(xp=xp, seed=2, perturbed=True), make_task(2)
    model.freeze()
    b1, b2 = calibration_batches(task, np.random.default_rng(2), 2)
    layer = "h.1.attn.c_proj"
    both = _probe_run(model, SquaredGradientProbe, layer, [b1, b2])
    S1, S2 = (to_numpy(_probe_run(model, SquaredGradientProbe, layer, [b]).sq_sum) for b in (b1, b2))
    assert both.samples == 2 * task.batch_size
    assert max_rel_diff(to_numpy(both.sq_sum), S1 + S2) <= 1e-13
    assert max_rel_diff(to_numpy(both.sq_sum), S2) > 1e-3
    assert max_rel_diff(to_numpy(both.fisher()), (S1 + S2) / (2 * task.batch_size)) <= 1e-15


@pytest.mark.parametrize("mode", ["rows", "neurons"])
def test_kaiming_init_with_bias_deltas_does_not_crash(mode):
    """Regression: the released code applied a kaiming initialiser to the 1-D bias delta (it raises).
    Here weights follow U(±1/√fan_in), bias deltas start at zero."""
    model = tiny_gpt(xp=np, seed=0, perturbed=True)
    method = SPruFT(ratio=0.25, importance="magnitude", mode=mode, init="kaiming_uniform", bias=True)
    method.prepare(model, None, np.random.default_rng(0))
    for ads in model.adapters.values():
        for ad in ads:
            fan_in = ad.d_in if isinstance(ad, RowDelta) else ad.weight.shape[1]
            assert np.all(np.abs(ad.weight) <= 1 / math.sqrt(fan_in)) and np.any(ad.weight != 0)
            if isinstance(ad, RowDelta):
                assert ad.bias is not None and np.all(ad.bias == 0)


@pytest.mark.parametrize("axis", ["rows", "cols"])
@pytest.mark.parametrize("importance,extra", KINDS[:-1], ids=KIND_IDS[:-1])  # random reads no weight
def test_scores_reduce_over_the_right_axis(importance, extra, axis):
    """Regression (an activation-weighted score reduced over the wrong axis): a row score reads only
    row i of W (d_out, d_in) and has d_out entries; a column score (neuron mode, c_proj) only column
    j and has d_in entries. With row 3 of every weight (or column 5 of every c_proj) zeroed, exactly
    that score vanishes, for every importance. (Rows and columns are zeroed in separate models: a
    zero c_proj column makes the neuron feeding it dead, so its c_fc row's gradient vanishes too.)"""
    model, task = tiny_gpt(xp=np, seed=8, perturbed=True), make_task(8)
    for layer in LAYERS:
        if axis == "rows":
            model.params[layer + ".weight"][3] = 0.0
        elif layer.endswith("c_proj"):
            model.params[layer + ".weight"][:, 5] = 0.0
    method = SPruFT(ratio=0.25, importance=importance, mode="rows" if axis == "rows" else "neurons",
                    calib_batches=2, **extra)
    method.prepare(model, task, np.random.default_rng(8))
    checked = 0
    for layer, by_axis in method.layer_scores.items():
        d_out, d_in = model.params[layer + ".weight"].shape
        if axis in by_axis:
            s = by_axis[axis]
            n, zero = (d_out, 3) if axis == "rows" else (d_in, 5)
            assert s.shape == (n,), f"{layer} {axis}: shape {s.shape}, expected ({n},)"
            assert s[zero] == 0.0 and np.all(np.delete(s, zero) > 0), f"{layer} {axis}: {s}"
            checked += 1
    assert checked == (len(LAYERS) if axis == "rows" else len(LAYERS) // 2)


def test_default_calibration_is_the_released_codes_50_batches_of_one_sequence(tr):
    """SPruFT's default calibration (the released LLM script's --taylor_batchs 50, --BATCH_SIZE 1):
    50 batches of ONE sequence each, whatever the task's batch size; the Taylor scores and rows
    equal the twin's on exactly those batches."""
    seed = 4
    model, task = tiny_gpt(xp=np, seed=seed, perturbed=True), make_task(seed, B=3)
    sd = model.state_dict()
    method = SPruFT(ratio=0.25, importance="taylor")
    c = method.config
    assert (c.calib_batches, c.calib_batch_size, c.init) == (50, 1, "zeros")
    method.prepare(model, task, np.random.default_rng(seed))
    assert method.report()["calibration"]["batches"] == 50
    scores, (rows, _), _, _ = reference_selection(tr, sd, task, seed, "taylor", {}, "rows", "layer", ratio=0.25,
                                                  calib=50)
    for unit, s in scores.items():
        d = max_rel_diff(method.unit_scores[unit], s.numpy())
        assert d <= 1e-11, f"{unit}: max rel diff {d:.3e}"
    assert_same_indices(method.selected_rows, rows, "rows")
    (x, y), = calibration_batches(task, np.random.default_rng(0), 1, batch_size=1)
    assert x.shape == y.shape == (1, task.block_size)


def test_defaults_are_the_released_runs():
    """The defaults the authors run (proofs/decisions.md §1): the README's `--finetuning_type ZOtaylor
    --n_estimate 2`, the script's `--finetuning_ratio 0.024`, `--taylor_batchs 50`, `--BATCH_SIZE 1`."""
    c = SPruFT().config
    assert (c.importance, c.zo_samples, c.ratio, c.rows) == ("zeroth_order", 2, 0.024, None)
    assert (c.calib_batches, c.calib_batch_size, c.zo_eps, c.scope) == (50, 1, 1e-3, "layer")


# ------------------------------------------------------------------------------------------------
# selection: determinism, ties, budgets
# ------------------------------------------------------------------------------------------------


def test_selection_is_deterministic_and_ties_go_to_lower_indices():
    task = make_task(5)
    reports = []
    for _ in range(2):
        method = SPruFT(ratio=0.25, importance="taylor", calib_batches=2)
        method.prepare(tiny_gpt(xp=np, seed=5, perturbed=True), task, np.random.default_rng(5))
        reports.append(method.report())
    assert reports[0] == reports[1]
    for mode in ("rows", "neurons"):
        model = tiny_gpt(xp=np, seed=5, perturbed=True)
        for layer in LAYERS:
            model.params[layer + ".weight"][...] = 0.5  # every row, column and group ties
        method = SPruFT(ratio=0.5, importance="magnitude", mode=mode)
        method.prepare(model, None, np.random.default_rng(0))
        if mode == "rows":
            for layer, idx in method.selected_rows.items():
                assert idx.tolist() == list(range(idx.size)), layer
        else:
            for unit, groups in method.report()["groups"].items():
                assert groups == list(range(len(groups))), unit


def oracle_rows_for_ratio(n, ratio):
    k = math.floor(Fraction(repr(ratio)) * n)
    return max(1, 4 * (k // 4))


@given(ratio=st.floats(0.001, 1.0))
@example(ratio=0.05)
@example(ratio=0.7)
@example(ratio=1.0)
@settings(max_examples=15)
def test_ratio_budget_counts_are_exact(ratio):
    model = tiny_gpt(xp=np, seed=0, perturbed=True)
    method = SPruFT(ratio=ratio, importance="magnitude")
    method.prepare(model, None, np.random.default_rng(0))
    rep = method.report()
    expected = {layer: oracle_rows_for_ratio(model.params[layer + ".weight"].shape[0], ratio) for layer in LAYERS}
    assert rep["counts"] == expected
    assert all(k == 1 or k % 4 == 0 for k in rep["counts"].values())
    d_in = {layer: model.params[layer + ".weight"].shape[1] for layer in LAYERS}
    trainable = sum(k * (d_in[layer] + 1) for layer, k in expected.items())
    assert rep["trainable"] == trainable == count_params(model)["trainable"]
    assert rep["trainable"] == spruft_trainable(TINY, ratio=ratio)


@given(ratio=st.floats(0.001, 1.0))
@example(ratio=0.05)
@settings(max_examples=10)
def test_global_budget_total_is_exact(ratio):
    model = tiny_gpt(xp=np, seed=0, perturbed=True)
    method = SPruFT(ratio=ratio, importance="magnitude", scope="global")
    method.prepare(model, None, np.random.default_rng(0))
    total = sum(model.params[layer + ".weight"].shape[0] for layer in LAYERS)
    assert sum(method.report()["counts"].values()) == max(1, math.floor(Fraction(repr(ratio)) * total))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_rows_budget_counts_are_exact(scope):
    method = SPruFT(rows=5, importance="magnitude", scope=scope)
    method.prepare(tiny_gpt(xp=np, seed=0, perturbed=True), None, np.random.default_rng(0))
    counts = method.report()["counts"]
    if scope == "layer":
        assert counts == dict.fromkeys(LAYERS, 5)
    else:
        assert sum(counts.values()) == 5 * len(LAYERS)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_neuron_budget_counts_groups(scope):
    """ratio 0.3: per block ⌊0.3·64⌋ → 16 MLP neurons and max(1, ⌊0.3·2⌋) = 1 head (C=16, 2 heads);
    globally ⌊0.3·128⌋ = 38 neurons and ⌊0.3·4⌋ = 1 head over both blocks."""
    method = SPruFT(ratio=0.3, importance="magnitude", mode="neurons", scope=scope)
    model = tiny_gpt(xp=np, seed=0, perturbed=True)
    method.prepare(model, None, np.random.default_rng(0))
    groups = method.report()["groups"]
    n = {kind: [len(groups[f"h.{i}.{kind}"]) for i in range(2)] for kind in ("mlp", "attn")}
    if scope == "layer":
        assert n == {"mlp": [16, 16], "attn": [1, 1]}
    else:
        assert sum(n["mlp"]) == 38 and sum(n["attn"]) == 1
    hd = TINY.n_embd // TINY.n_head
    for i in range(2):
        assert len(method.selected_rows.get(f"h.{i}.attn.c_attn", [])) == 3 * hd * n["attn"][i]
        assert len(method.selected_cols.get(f"h.{i}.attn.c_proj", [])) == hd * n["attn"][i]


# ------------------------------------------------------------------------------------------------
# neuron mode, frozen base, memory
# ------------------------------------------------------------------------------------------------


def test_neuron_mode_trains_exactly_the_groups_rows_and_columns():
    seed = 9
    model, task = tiny_gpt(xp=np, seed=seed, perturbed=True), make_task(seed)
    method = SPruFT(ratio=0.3, importance="taylor", mode="neurons", calib_batches=2)
    method.prepare(model, task, np.random.default_rng(seed))
    groups, C, hd = method.report()["groups"], TINY.n_embd, TINY.n_embd // TINY.n_head
    for i in range(TINY.n_layer):
        neurons, heads = groups[f"h.{i}.mlp"], groups[f"h.{i}.attn"]
        want = {f"h.{i}.mlp.c_fc": (sorted(neurons), None), f"h.{i}.mlp.c_proj": (None, sorted(neurons)),
                f"h.{i}.attn.c_attn": (sorted(p * C + h * hd + t for h in heads for p in range(3)
                                              for t in range(hd)), None),
                f"h.{i}.attn.c_proj": (None, sorted(h * hd + t for h in heads for t in range(hd)))}
        for layer, (rows, cols) in want.items():
            (ad,) = model.adapters[layer]
            assert isinstance(ad, RowDelta if rows is not None else ColumnDelta), layer
            got = ad.rows_host if rows is not None else ad.cols_host
            assert got.tolist() == (rows if rows is not None else cols), layer
    # at the zero initialisation the deltas' gradients are slices of the dense gradient
    x, y = task.sample(np.random.default_rng(0))
    _, g = model.loss_and_grads(x, y)
    dense = GPT.from_state_dict(model.state_dict(), TINY, backend="numpy", dtype="float64")
    dense.freeze()
    dense.unfreeze([layer + s for layer in LAYERS for s in (".weight", ".bias")])
    _, gd = dense.loss_and_grads(x, y)
    for layer, (ad,) in model.adapters.items():
        if isinstance(ad, ColumnDelta):
            pairs = [(g[ad.name("weight")], gd[layer + ".weight"][:, ad.cols_host])]
        else:
            pairs = [(g[ad.name("weight")], gd[layer + ".weight"][ad.rows_host]),
                     (g[ad.name("bias")], gd[layer + ".bias"][ad.rows_host])]
        for got, want in pairs:
            d = max_rel_diff(got, want)
            assert d <= 1e-12, f"{layer}: delta gradient vs dense gradient slice, max rel diff {d:.3e}"
    # after training, the effective weight change covers exactly the selected rows / columns
    train(model, _Prepared(), task, TrainConfig(steps=3, lr=1e-2, grad_clip=None, eval_every=3), progress=False)
    for layer, (dW, db) in adapter_delta_weights(model).items():
        (ad,) = model.adapters[layer]
        mask = np.zeros(dW.shape, dtype=bool)
        if isinstance(ad, RowDelta):
            mask[ad.rows_host] = True
            assert np.array_equal(db != 0, mask[:, 0]), layer
        else:
            mask[:, ad.cols_host] = True
            assert np.all(db == 0), layer
        assert np.array_equal(dW != 0, mask), layer


class _Prepared(SPruFT):
    """Trains the adapters already attached (prepare does nothing)."""

    def prepare(self, model, task, rng):
        pass


def test_only_adapter_tensors_change_and_no_full_size_buffer_in_training():
    model, task = tiny_gpt(xp=np, seed=3, dtype="float32", perturbed=True), make_task(3)
    base = model.state_dict()
    r = train(model, SPruFT(ratio=0.25, importance="taylor", calib_batches=2), task,
              TrainConfig(steps=3, lr=1e-2, grad_clip=None, eval_every=3), progress=False)
    for k, v in model.state_dict().items():
        assert np.array_equal(v, base[k]), f"frozen {k} changed"
    adapters = model.adapter_params()
    assert adapters and all(np.any(a != 0) for a in adapters.values())
    adapter_bytes = sum(a.nbytes for a in adapters.values())
    mem = r["memory"]
    assert mem["trainable"] == adapter_bytes
    assert mem["grads"] == adapter_bytes, "a gradient buffer other than the row deltas' exists"
    assert mem["optimizer"] == 2 * adapter_bytes, "optimizer state for a frozen weight exists"
    assert mem["frozen"] == sum(v.nbytes for v in model.params.values())
    for name, a in adapters.items():  # e.g. h.0.mlp.c_fc.row_delta.weight: a slice of that layer's rows
        assert a.size < model.params[name.rsplit(".", 2)[0] + ".weight"].size, name


def test_resume_reselects_and_checks_the_selection(tmp_path):
    class Killed(Exception):
        pass

    def run(workdir, resume=False, kill_at=None):
        method = SPruFT(ratio=0.25, importance="taylor", calib_batches=2)
        if kill_at is not None:
            def after_step(model, step):
                if step + 1 == kill_at:
                    raise Killed
            method.after_step = after_step
        model = tiny_gpt(xp=np, seed=2, perturbed=True)
        cfg = TrainConfig(steps=6, lr=1e-2, grad_clip=None, eval_every=6, checkpoint_every=3, seed=2)
        return model, method, train(model, method, make_task(2), cfg, workdir=workdir, resume=resume, progress=False)

    full_model, _, full = run(tmp_path / "a")
    with pytest.raises(Killed):
        run(tmp_path / "b", kill_at=5)
    model, method, resumed = run(tmp_path / "b", resume=True)
    assert [h["loss"] for h in resumed["history"]["train"]] == [h["loss"] for h in full["history"]["train"]]
    for k, v in full_model.trainable_params().items():
        assert np.array_equal(v, model.trainable_params()[k]), k
    state = method.state_arrays()
    method.load_state_arrays(state)
    changed = dict(state)
    key = next(iter(changed))
    changed[key] = (changed[key] + 1) % 16
    with pytest.raises(CheckpointError, match="selection"):
        method.load_state_arrays(changed)


# ------------------------------------------------------------------------------------------------
# equal budget with LoRA
# ------------------------------------------------------------------------------------------------


def lora_closed_form(C, L, r):
    """r·((C+3C) + (C+C) + (C+4C) + (4C+C)) = 16·r·C per block."""
    return 16 * r * C * L


def spruft_rows_closed_form(C, L, k):
    """k rows per layer, each with its bias: k·(3(C+1) + (4C+1)) = k·(7C+4) per block."""
    return k * (7 * C + 4) * L


@pytest.mark.parametrize("C,L,H,r", [(16, 2, 2, 2), (16, 1, 4, 4), (24, 2, 3, 1), (32, 1, 2, 8)])
def test_rows_matching_lora_is_closest_and_counts_are_exact(C, L, H, r):
    cfg = GPTConfig(vocab_size=30, block_size=8, n_layer=L, n_head=H, n_embd=C)
    out = rows_matching_lora(cfg, r)
    assert out["lora_trainable"] == lora_closed_form(C, L, r) == lora_trainable(cfg, r)
    lora_model = GPT(cfg, backend="numpy", dtype="float32", seed=0)
    LoRAMethod(r=r, alpha=r).prepare(lora_model, None, np.random.default_rng(0))
    assert count_params(lora_model)["trainable"] == out["lora_trainable"]
    model = GPT(cfg, backend="numpy", dtype="float32", seed=0)
    method = SPruFT(importance="magnitude", **out["options"])
    method.prepare(model, None, np.random.default_rng(0))
    assert count_params(model)["trainable"] == method.report()["trainable"] == out["spruft_trainable"]
    assert method.report()["counts"] == out["rows_per_layer"]
    # brute force over every per-layer row count and a fine grid of ratios
    gap = abs(out["spruft_trainable"] - out["lora_trainable"])
    best_rows = min(abs(spruft_rows_closed_form(C, L, k) - lora_closed_form(C, L, r)) for k in range(1, C + 1))
    shapes = [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)]
    best_ratio = min(abs(L * sum(oracle_rows_for_ratio(o, j / 1000) * (i + 1) for o, i in shapes)
                         - lora_closed_form(C, L, r)) for j in range(1, 1001))
    assert gap <= min(best_rows, best_ratio), (out, best_rows, best_ratio)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    ({"ratio": 0.0}, "ratio"), ({"ratio": 1.5}, "ratio"), ({"ratio": -0.1}, "ratio"),
    ({"ratio": float("nan")}, "ratio"),
    ({"ratio": 0.1, "rows": 4}, "ratio/rows"), ({"rows": 0}, "rows"),
    ({"importance": "fisher"}, "importance"), ({"importance": "quantile_taylor"}, "importance.*classes"),
    ({"mode": "cols"}, "mode"), ({"scope": "block"}, "scope"), ({"init": "xavier"}, "init"),
    ({"calib_batches": 0}, "calib_batches"), ({"calib_batches": -2}, "calib_batches"),
    ({"calib_batch_size": 0}, "calib_batch_size"), ({"importance": "wanda", "multivariable": True}, "multivariable"),
    ({"importance": "obd", "multivariable": True}, "multivariable"), ({"p": 3}, "p"),
    ({"targets": ("mlp.c_fx",)}, "targets"), ({"targets": ()}, "targets"),
    ({"targets": ("mlp.c_fc", "mlp.c_fc")}, "targets"), ({"mode": "neurons", "targets": ("mlp.c_fc",)}, "targets"),
    ({"zo_samples": 0}, "zo_samples"), ({"zo_eps": 0.0}, "zo_eps"),
])
def test_bad_options_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SPruFT(**kwargs)


@pytest.mark.parametrize("kwargs,arg", [({"ratio": "0.1"}, "ratio"), ({"rows": 1.5}, "rows"),
                                        ({"calib_batches": 2.0}, "calib_batches"), ({"targets": "mlp.c_fc"}, "targets"),
                                        ({"calib_batch_size": 1.0}, "calib_batch_size"),
                                        ({"bias": "yes"}, "bias"), ({"multivariable": 1}, "multivariable")])
def test_bad_option_types_fail_at_construction(kwargs, arg):
    with pytest.raises(TypeError, match=arg):
        SPruFT(**kwargs)


def test_model_dependent_errors_at_prepare_leave_the_model_untouched():
    for method in (SPruFT(rows=17, importance="magnitude"),  # attn.c_proj has 16 rows
                   SPruFT(rows=3, mode="neurons", importance="magnitude")):  # 2 heads per block
        model = tiny_gpt(xp=np, seed=0, perturbed=True)
        with pytest.raises(ValueError, match="rows"):
            method.prepare(model, None, np.random.default_rng(0))
        assert not model.adapters and model.trainable == set(model.params)
    model = tiny_gpt(xp=np, seed=0, perturbed=True)
    with pytest.raises(TypeError, match="task"):
        SPruFT(importance="taylor").prepare(model, None, np.random.default_rng(0))
    assert not model.adapters and model.trainable == set(model.params)
    SPruFT(importance="magnitude").prepare(model, None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="model.adapters"):
        SPruFT(importance="magnitude").prepare(model, None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="r="):
        rows_matching_lora(TINY, 17)
    with pytest.raises(TypeError, match="model_config"):
        rows_matching_lora({"n_embd": 16}, 2)
