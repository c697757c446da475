"""GMT as a method (minisft.methods.gmt). Oracles: FullFineTune (drop_ratio = 0, bit for bit); a
stable argsort of |Γ| with exact Fraction counts (the masks of every step); AdamW's update in
closed form (the dropped entry that still moves); the PyTorch twin (reference_models/gmt_mgpp.py:
autograd, torch.kthvalue masks, torch.optim.AdamW) over 20 steps. Derivations:
proofs/gmt_mgpp_methods.md.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minisft.core.backend import to_numpy
from minisft.methods.base import FullFineTune
from minisft.methods.gmt.method import GMT
from minisft.model.gpt import param_shapes
from minisft.training.optim import AdamW
from minisft.training.train import TrainConfig, train
from tests.gradcheck import assert_trained_like, max_rel_diff
from tests.helpers import TINY, counter_task, host_copy, stable_argsort_keep, tiny_gpt

def dropped_count(ratio, n):
    return math.floor(Fraction(repr(float(ratio))) * n)


def oracle_keep(grads, ratio):
    """{name: grad} (one ranking over all of them, in dict order) -> {name: bool keep}: the first
    floor(ratio * N) positions of a stable argsort of |g| over the concatenation are dropped."""
    total = sum(g.size for g in grads.values())
    return dict(zip(grads, stable_argsort_keep(list(grads.values()), dropped_count(ratio, total))))


def oracle_masks(grads, ratio, scope):
    if scope == "global":
        return oracle_keep(grads, ratio)
    return {name: oracle_keep({name: g}, ratio)[name] for name, g in grads.items()}


def recording(method, model_order):
    """Wrap transform_grads: record (gradients in, gradients out, masks) of every step, host copies;
    the gradients in are put in the model's parameter order (the global ranking's tensor order)."""
    log = []
    inner = method.transform_grads

    def transform_grads(model, grads, step):
        before = {n: to_numpy(grads[n]).copy() for n in model_order if n in grads}
        out = inner(model, grads, step)
        log.append((before, host_copy(out), host_copy(method.masks), host_copy(method.optimizer_masks(model))))
        return out

    method.transform_grads = transform_grads
    return log


# ---------------------------------------------------------------------------- drop_ratio = 0
@pytest.mark.parametrize("scope,freeze_masked", [("tensor", False), ("tensor", True), ("global", False), ("global", True)])
def test_drop_ratio_zero_is_vanilla_full_fine_tuning_bit_for_bit(xp, scope, freeze_masked):
    """GMT(0) keeps every entry: 6 AdamW steps (weight decay, clipping, 2 micro-batches) give exactly
    the parameters and losses of FullFineTune. Bit for bit on the CPU; on the GPU within 1e-10
    (float64): with the fused kernels off the embedding gradient's atomic scatter-add sums in a
    varying order (minisft.nn.embedding.scatter_add_rows), so two identical runs may differ in the
    last bits there."""
    cfg = TrainConfig(steps=6, lr=1e-2, weight_decay=0.1, grad_clip=0.5, accumulation=2, eval_every=6, seed=3)
    task = counter_task(seed=3)
    full, gmt = tiny_gpt(xp=xp, seed=3), tiny_gpt(xp=xp, seed=3)
    r_full = train(full, FullFineTune(), task, cfg, progress=False)
    r_gmt = train(gmt, GMT(0.0, scope=scope, freeze_masked=freeze_masked), task, cfg, progress=False)
    assert set(gmt.trainable) == set(full.trainable) == set(full.params)
    losses = ([h["loss"] for h in r["history"]["train"]] for r in (r_gmt, r_full))
    if xp is np:
        assert next(losses) == next(losses)
        for name, p in host_copy(full.params).items():
            assert np.array_equal(to_numpy(gmt.params[name]), p), f"{name} differs from vanilla full fine-tuning"
    else:
        np.testing.assert_allclose(next(losses), next(losses), rtol=1e-10)
        for name, p in host_copy(full.params).items():
            d = max_rel_diff(to_numpy(gmt.params[name]), p)
            assert d <= 1e-10, f"{name} differs from vanilla full fine-tuning: max rel diff {d:.3e}"
    assert r_gmt["report"]["kept_fraction_overall"] == 1.0


# ------------------------------------------------------------------------ masks, every step
@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("ratio,freeze_masked", [(0.3, False), (0.9, True)])
def test_every_step_masks_exactly_the_oracle_entries(xp, scope, ratio, freeze_masked):
    """Through the trainer (2 micro-batches per step): each step's output gradient is the input
    gradient with exactly the oracle's entries zeroed; the kept count is n - floor(r n) per
    tensor (scope="tensor") or over all tensors (scope="global"); the optimizer gets the masks only
    with freeze_masked; the report's kept fractions are the realised means."""
    model, task = tiny_gpt(xp=xp, seed=1), counter_task(seed=1)
    method = GMT(ratio, scope=scope, freeze_masked=freeze_masked)
    log = recording(method, list(model.params))
    steps = 4
    result = train(model, method, task, TrainConfig(steps=steps, lr=1e-2, accumulation=2, eval_every=steps, seed=1),
                   progress=False)
    assert len(log) == steps
    kept_sum = dict.fromkeys(model.params, 0)
    for before, after, masks, opt_masks in log:
        assert list(before) == list(model.params)
        want = oracle_masks(before, ratio, scope)
        for name, g in before.items():
            assert np.array_equal(masks[name], want[name]), f"{name}: mask differs from the stable-argsort oracle"
            assert np.array_equal(after[name], np.where(want[name], g, 0.0)), f"{name}: kept entries changed or dropped ones not zeroed"
            kept_sum[name] += int(want[name].sum())
        n_total = sum(g.size for g in before.values())
        if scope == "tensor":
            assert all(int(m.sum()) == m.size - dropped_count(ratio, m.size) for m in masks.values())
        else:
            assert sum(int(m.sum()) for m in masks.values()) == n_total - dropped_count(ratio, n_total)
        assert set(opt_masks) == (set(masks) if freeze_masked else set())
    rep = result["report"]
    assert rep["steps"] == steps
    for name, k in kept_sum.items():
        assert rep["kept_fraction"][name] == k / (steps * model.params[name].size)


@given(seed=st.integers(0, 2**32 - 1), ratio=st.floats(0.0, 0.99), levels=st.integers(1, 6),
       scope=st.sampled_from(["tensor", "global"]))
@example(seed=0, ratio=0.5, levels=1, scope="global")  # every |g| tied: the index order alone decides
@example(seed=1, ratio=0.7, levels=2, scope="tensor")
@settings(max_examples=20, deadline=None)
def test_transform_grads_equals_oracle_on_tied_gradients(seed, ratio, levels, scope):
    """Gradients with heavy ties (values on a few levels, both signs): the transformed gradients
    equal the oracle's, ties dropped by (tensor in model order, lower flat index)."""
    model = tiny_gpt()
    method = GMT(ratio, scope=scope)
    method.prepare(model, counter_task(), np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    names = list(model.params)
    grads = {n: rng.integers(-levels, levels + 1, model.params[n].shape) * 0.25 for n in reversed(names)}
    before = {n: grads[n].copy() for n in names}
    out = method.transform_grads(model, grads, 0)
    want = oracle_masks(before, ratio, scope)
    for n in names:
        assert np.array_equal(out[n], np.where(want[n], before[n], 0.0)), n


@given(seed=st.integers(0, 2**32 - 1), ratio=st.floats(0.0, 0.99), which=st.integers(0, len(param_shapes(TINY)) - 1))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_global_scope_equals_per_tensor_on_a_single_trainable_tensor(xp, seed, ratio, which):
    """With one trainable tensor, one global ranking is the per-tensor ranking: same masks, same
    transformed gradient."""
    model = tiny_gpt(xp=xp, seed=seed % 7)
    name = list(model.params)[which]
    rng = np.random.default_rng(seed)
    x = rng.integers(0, TINY.vocab_size, (2, TINY.block_size))
    out = {}
    for scope in ("tensor", "global"):
        method = GMT(ratio, scope=scope)
        method.prepare(model, counter_task(), rng)
        model.freeze()
        model.unfreeze([name])
        _, grads = model.loss_and_grads(x, np.roll(x, -1, axis=1))
        assert list(grads) == [name]
        out[scope] = (to_numpy(method.transform_grads(model, grads, 0)[name]), to_numpy(method.masks[name]))
    assert np.array_equal(out["tensor"][1], out["global"][1])
    assert np.array_equal(out["tensor"][0], out["global"][0])
    assert int(out["tensor"][1].sum()) == out["tensor"][1].size - dropped_count(ratio, out["tensor"][1].size)


# --------------------------------------------------------------------------- AdamW subtlety
@pytest.mark.parametrize("freeze_masked", [False, True])
def test_dropped_entry_moves_under_adamw_unless_frozen(freeze_masked):
    """Two steps by hand, as the trainer does them. An entry kept at step 1 and dropped at step 2
    gets a zero gradient at step 2. freeze_masked=False: it still moves, by AdamW's closed form
    with g = 0 (decay θ(1 − ηλ) and the momentum term β1 m / (√(β2 v)/√(1−β2²) + ε)); an entry
    dropped at both steps moves by the decay alone. freeze_masked=True: both stay bit-identical,
    moments included."""
    lr, wd, b1, b2, eps = 1e-2, 0.1, 0.9, 0.999, 1e-8
    model, task = tiny_gpt(xp=np, seed=4), counter_task(seed=4)
    method = GMT(0.5, freeze_masked=freeze_masked)
    rng = np.random.default_rng(4)
    method.prepare(model, task, rng)
    opt = AdamW(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    name = "h.0.mlp.c_fc.weight"
    keeps, snaps = [], []
    for step in range(2):
        _, grads = model.loss_and_grads(*task.sample(rng))
        keeps.append(oracle_keep({name: grads[name].copy()}, 0.5)[name])
        grads = method.transform_grads(model, grads, step)
        assert np.all(grads[name][~keeps[-1]] == 0)
        snaps.append((model.params[name].copy(),))
        opt.step(model.trainable_params(), grads, masks=method.optimizer_masks(model))
        st_ = opt.state[name]
        snaps[-1] += (model.params[name].copy(), st_["exp_avg"].copy(), st_["exp_avg_sq"].copy())
    (_, th1, m1, v1), (_, th2, m2, v2) = snaps
    moved = keeps[0] & ~keeps[1]
    never = ~keeps[0] & ~keeps[1]
    assert moved.sum() > 10 and never.sum() > 10
    if freeze_masked:
        for what, a, b in (("value", th2, th1), ("exp_avg", m2, m1), ("exp_avg_sq", v2, v1)):
            assert np.array_equal(a[moved | never], b[moved | never]), f"a frozen entry's {what} changed"
        assert np.all(m1[~keeps[0]] == 0) and np.all(th1[~keeps[0]] == snaps[0][0][~keeps[0]]), "step 1 touched a frozen entry"
        assert np.all(th2[keeps[1]] != th1[keeps[1]]), "a kept entry did not move"
    else:
        bc1, bc2 = 1 - b1**2, 1 - b2**2
        want = th1 * (1 - lr * wd) - (lr / bc1) * ((b1 * m1) / (np.sqrt(b2 * v1) / math.sqrt(bc2) + eps))
        d = float(np.max(np.abs(th2[moved] - want[moved]) / np.abs(th1[moved] - th2[moved])))
        assert d <= 1e-9, f"dropped entry's move vs AdamW's closed form with g = 0: rel diff {d:.3e}"
        assert np.all(th2[moved] != th1[moved] * (1 - lr * wd)), "the momentum term moved nothing"
        assert np.array_equal(m2[moved | never], b1 * m1[moved | never]), "exp_avg of a dropped entry is not β1 m"
        assert np.all(m1[never] == 0) and np.array_equal(th2[never], th1[never] * (1 - lr * wd)), \
            "an entry never kept moved other than by the decay θ(1 − ηλ)"


# ------------------------------------------------------------------------------ torch parity
@pytest.fixture(scope="module")
def twin():
    pytest.importorskip("torch")
    from reference_models import gmt_mgpp
    from reference_models.torch_gpt import TorchGPT

    return gmt_mgpp, TorchGPT


@pytest.mark.parametrize("scope,freeze_masked,ratio", [("tensor", False, 0.5), ("tensor", True, 0.9),
                                                       ("global", False, 0.9), ("global", True, 0.5)])
def test_matches_torch_over_20_steps(twin, scope, freeze_masked, ratio):
    """20 trainer steps (2 micro-batches each, AdamW with weight decay, no clipping) against the
    PyTorch twin on the same batches: identical masks at every step, parameters within 1e-10."""
    ref, TorchGPT = twin
    seed, steps, lr, wd, acc = 7, 20, 1e-2, 0.05, 2
    model, task = tiny_gpt(xp=np, seed=seed), counter_task(seed=seed)
    torch_model = TorchGPT.from_minisft(model.state_dict(), TINY)
    start = host_copy(model.params)
    method = GMT(ratio, scope=scope, freeze_masked=freeze_masked)
    log = recording(method, list(model.params))
    cfg = TrainConfig(steps=steps, lr=lr, weight_decay=wd, grad_clip=None, accumulation=acc, eval_every=steps, seed=seed)
    train(model, method, task, cfg, progress=False)
    rng = np.random.default_rng(seed)
    batches = [[task.sample(rng) for _ in range(acc)] for _ in range(steps)]
    want, want_masks = ref.train_gmt(torch_model, batches, lr, wd, ratio, scope, freeze_masked)
    for t, ((_, _, masks, _), ref_masks) in enumerate(zip(log, want_masks)):
        for name, m in ref_masks.items():
            assert np.array_equal(masks[name], m), f"step {t + 1}, {name}: masks differ from the torch twin"
    assert_trained_like(model.params, want, start, steps)


# ---------------------------------------------------------------------------------- resume
def test_resume_is_bit_identical_and_carries_the_report(tmp_path):
    """Killed after step 5 (checkpoint at 4), resumed to 8: the parameters and the report's kept
    fractions equal the uninterrupted run's."""
    class Killed(Exception):
        pass

    def run(workdir, method, resume=False):
        model = tiny_gpt(xp=np, seed=2)
        cfg = TrainConfig(steps=8, lr=1e-2, weight_decay=0.01, checkpoint_every=4, eval_every=8, seed=2)
        return model, train(model, method, counter_task(seed=2), cfg, workdir=workdir, resume=resume, progress=False)

    full_model, full = run(tmp_path / "a", GMT(0.6, scope="global", freeze_masked=True))
    dying = GMT(0.6, scope="global", freeze_masked=True)

    def after_step(model, step):
        if step + 1 == 5:
            raise Killed

    dying.after_step = after_step
    with pytest.raises(Killed):
        run(tmp_path / "b", dying)
    model, resumed = run(tmp_path / "b", GMT(0.6, scope="global", freeze_masked=True), resume=True)
    for name, p in full_model.params.items():
        assert np.array_equal(model.params[name], p), name
    for key in ("steps", "kept_fraction", "kept_fraction_overall"):
        assert resumed["report"][key] == full["report"][key], key


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,arg", [
    ({"drop_ratio": float("nan")}, "drop_ratio"),
    ({"drop_ratio": -0.1}, "drop_ratio"),
    ({"drop_ratio": 1.0}, "drop_ratio"),
    ({"drop_ratio": 1.5}, "drop_ratio"),
    ({"drop_ratio": float("inf")}, "drop_ratio"),
    ({"scope": "layer"}, "scope"),
    ({"scope": None}, "scope"),
])
def test_bad_input_names_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        GMT(**kwargs)


@pytest.mark.parametrize("kwargs,arg", [({"drop_ratio": "0.5"}, "drop_ratio"), ({"drop_ratio": True}, "drop_ratio"),
                                        ({"freeze_masked": 1}, "freeze_masked")])
def test_bad_types_name_the_argument(kwargs, arg):
    with pytest.raises(TypeError, match=arg):
        GMT(**kwargs)
