"""MGPP as a method (minisft.methods.mgpp). Oracles: exact Fraction counts and a stable argsort of
|w| (which weights each pruning step removes); the cubic schedule written out here; finite
differences of the regularised objective J = mean loss + (1/n) Σ −log π (the prior gradient the
method adds); FullFineTune (zero sparsity, no prior: bit for bit); the PyTorch twin
(reference_models/gmt_mgpp.py: the prior as an explicit loss term through autograd,
torch.optim.AdamW, torch.kthvalue masks) over 30 steps with pruning; an uninterrupted run (resume).
Derivations: proofs/gmt_mgpp_methods.md.
"""

import math
import shutil
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minisft.backend import to_numpy
from minisft.checkpoint import load_checkpoint
from minisft.methods.base import FullFineTune
from minisft.methods.mgpp.method import MGPP
from minisft.methods.mgpp.prior import neg_log_prior
from minisft.model import linear_layer_names
from minisft.train import TrainConfig, train
from tests.gradcheck import assert_directional, assert_trained_like
from tests.test_gmt_method import CFG, host, synthetic_task, tiny

PRUNABLE = [f"{layer}.weight" for layer in linear_layer_names(CFG)]
N_PRUNABLE = sum(int(np.prod(tiny().params[n].shape)) for n in PRUNABLE)


def half_up(ratio, n):
    return math.floor(Fraction(repr(float(ratio))) * n + Fraction(1, 2))


def cubic(t, final, t_i, t_f):
    if t <= t_i:
        return 0.0
    if t >= t_f:
        return final
    return final * (1 - (1 - (t - t_i) / (t_f - t_i)) ** 3)


def oracle_pruned(weights, counts, scope):
    """{name: |w|} -> {name: bool pruned}: the first `count` positions of a stable argsort of |w|,
    over all matrices concatenated in order (global: counts = [k]) or per matrix."""
    groups = [list(weights)] if scope == "global" else [[n] for n in weights]
    out = {}
    for names, k in zip(groups, counts):
        flat = np.concatenate([np.abs(weights[n]).ravel() for n in names])
        drop = np.zeros(flat.size, dtype=bool)
        drop[np.argsort(flat, kind="stable")[:k]] = True
        at = 0
        for n in names:
            out[n] = drop[at: at + weights[n].size].reshape(weights[n].shape)
            at += weights[n].size
    return out


def target_counts(sparsity, scope, model):
    if scope == "global":
        return [half_up(sparsity, N_PRUNABLE)]
    return [half_up(sparsity, model.params[n].size) for n in PRUNABLE]


def watching(method, log):
    """Wrap after_step: record (step, prunable weights before, after, masks after), host copies."""
    inner = method.after_step

    def after_step(model, step):
        before = {n: to_numpy(model.params[n]).copy() for n in PRUNABLE}
        inner(model, step)
        log.append((step + 1, before, {n: to_numpy(model.params[n]).copy() for n in PRUNABLE}, host(method.masks)))

    method.after_step = after_step
    return method


# --------------------------------------------------------------- sparsity, masks, every step
@pytest.mark.parametrize("scope,prior,final", [("global", True, 0.8), ("layer", True, 0.5),
                                               ("global", False, 0.9), ("layer", False, 0.8)])
def test_every_step_pruned_weights_stay_zero_and_final_sparsity_is_exact(xp, scope, prior, final):
    """20 trainer steps (every=3: pruning at 5, 8, 11, 14): at EVERY step no pruned weight is
    non-zero and no mask entry comes back; at each pruning step exactly round(s_t n) are pruned,
    the newly pruned being the smallest |w| (stable-argsort oracle); at the end the realised
    sparsity is the target exactly and the only zeros are the pruned weights."""
    steps = 20
    model, task = tiny(xp, 5), synthetic_task(5)
    method = watching(MGPP(final, scope=scope, prior=prior, every=3, total_steps=steps), log := [])
    result = train(model, method, task, TrainConfig(steps=steps, lr=1e-2, weight_decay=0.01, eval_every=steps, seed=5),
                   progress=False)
    t_i, t_f = math.floor(Fraction("0.1") * steps), math.floor(Fraction("0.7") * steps)
    assert (t_i, t_f) == (2, 14)
    schedule = {row["step"]: row for row in result["report"]["schedule"]}
    assert sorted(schedule) == [5, 8, 11, 14]
    prev = {n: np.ones(model.params[n].shape, dtype=bool) for n in PRUNABLE}
    for t, before, after, masks in log:
        keep = {n: masks.get(n, np.ones(after[n].shape, dtype=bool)) for n in PRUNABLE}
        for n in PRUNABLE:
            assert not np.any(keep[n] & ~prev[n]), f"step {t}, {n}: a pruned weight came back"
            assert np.all(after[n][~keep[n]] == 0), f"step {t}, {n}: a pruned weight is not zero"
        if t in schedule:
            s = schedule[t]["sparsity"]
            assert abs(s - cubic(t, final, t_i, t_f)) <= 1e-15
            counts = target_counts(s, scope, model)
            assert schedule[t]["pruned"] == sum(counts)
            want = oracle_pruned(before, counts, scope)
            for n in PRUNABLE:
                assert np.array_equal(~keep[n], want[n]), f"step {t}, {n}: not the smallest |w|"
        else:
            assert all(np.array_equal(keep[n], prev[n]) for n in PRUNABLE), f"step {t}: masks changed off schedule"
        prev = keep
    final_counts = target_counts(final, scope, model)
    if scope == "global":
        assert sum(int((~prev[n]).sum()) for n in PRUNABLE) == final_counts[0]
    else:
        assert [int((~prev[n]).sum()) for n in PRUNABLE] == final_counts
    w = host({n: model.params[n] for n in PRUNABLE})
    assert sum(int((w[n] == 0).sum()) for n in PRUNABLE) == sum(final_counts)
    rep = result["report"]
    assert rep["pruned"] == rep["target_pruned"] == sum(final_counts)
    assert rep["sparsity_overall"] == sum(final_counts) / N_PRUNABLE
    assert rep["sparsity"] == {n: int((w[n] == 0).sum()) / w[n].size for n in PRUNABLE}


def test_a_survivor_at_exactly_zero_does_not_revive_a_pruned_weight():
    """40 survivors set to exactly 0 tie with the pruned zeros; ranking all weights by (|w|, matrix,
    index) would prune 18 of them and revive pruned weights that come later in that order. The
    method ranks the survivors only: the masks only lose entries, the count is exact, and the
    newly pruned are zero survivors (the smallest)."""
    model = tiny(np, 6)
    method = MGPP(0.9, total_steps=10)
    method.prepare(model, synthetic_task(6), np.random.default_rng(6))
    method.prune(model, 0.3)
    first = host(method.masks)
    name = PRUNABLE[0]
    zeroed = np.flatnonzero(first[name].ravel())[:40]
    model.params[name].ravel()[zeroed] = 0.0
    k_new = half_up(0.303, N_PRUNABLE) - half_up(0.3, N_PRUNABLE)
    assert 0 < k_new < 40
    naive = oracle_pruned(host({n: model.params[n] for n in PRUNABLE}), [half_up(0.303, N_PRUNABLE)], "global")
    assert any(np.any(~first[n] & ~naive[n]) for n in PRUNABLE), "the case is not adversarial"
    method.prune(model, 0.303)
    for n in PRUNABLE:
        assert not np.any(method.masks[n] & ~first[n]), f"{n}: a pruned weight came back"
    newly = {n: ~method.masks[n] & first[n] for n in PRUNABLE}
    assert sum(int(v.sum()) for v in newly.values()) == k_new
    assert set(np.flatnonzero(newly[name].ravel())) <= set(zeroed) and int(newly[name].sum()) == k_new


@given(total=st.integers(1, 400), start=st.integers(0, 99), length=st.integers(1, 100), every=st.integers(1, 50))
@example(total=10, start=10, length=60, every=10)  # t_f - t_i = 6 < every: t_f alone
@settings(max_examples=40, deadline=None)
def test_pruning_steps_end_at_t_f_on_the_every_grid(total, start, length, every):
    t_start, t_end = start / 100, min(start + length, 100) / 100
    t_i, t_f = math.floor(Fraction(repr(t_start)) * total), math.floor(Fraction(repr(t_end)) * total)
    if t_f <= t_i:
        with pytest.raises(ValueError, match="total_steps"):
            MGPP(t_start=t_start, t_end=t_end, every=every, total_steps=total)
        return
    method = MGPP(t_start=t_start, t_end=t_end, every=every, total_steps=total)
    want = sorted({t for t in range(t_i + 1, t_f + 1) if (t - t_i) % every == 0} | {t_f})
    assert method.pruning_steps() == want and want[-1] == t_f <= total


# ------------------------------------------------------------------------ prior gradient (FD)
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, len(PRUNABLE) - 1))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_transformed_gradient_is_the_gradient_of_the_regularised_objective(seed, which):
    """transform_grads(mean-loss gradient) = ∇[L(W) + (1/n) Σ −log π(W)], by finite differences
    along a random direction (a broad prior, so the prior term is large and smooth at the step);
    pruned entries get a zero gradient."""
    lam, s0, s1, n = 0.1, 0.005, 0.05, 7
    model, task = tiny(np, seed % 5), synthetic_task(seed % 5)
    method = MGPP(0.5, lam=lam, sigma0=s0, sigma1=s1, n_train=n, total_steps=10)
    rng = np.random.default_rng(seed)
    method.prepare(model, task, rng)
    x, y = task.sample(rng)
    name = PRUNABLE[which]
    theta0 = model.params[name].copy()

    def objective(theta):
        model.params[name][...] = theta
        return model.loss(x, y) + float(np.sum(neg_log_prior(theta, lam, s0, s1))) / n

    _, grads = model.loss_and_grads(x, y)
    loss_grad = grads[name].copy()
    g = method.transform_grads(model, grads, 0)[name].copy()
    assert float(np.max(np.abs(g - loss_grad))) > 1e-3 * float(np.max(np.abs(loss_grad))), "the prior term is negligible"
    assert_directional(objective, theta0.copy(), g, rng, tol=1e-7, label=name)
    model.params[name][...] = theta0
    method.prune(model, 0.5)
    _, grads = model.loss_and_grads(x, y)
    g = method.transform_grads(model, grads, 0)[name]
    assert np.all(g[~method.masks[name]] == 0) and np.all(g[method.masks[name]] != 0)


def test_zero_sparsity_without_prior_is_full_fine_tuning_bit_for_bit():
    cfg = TrainConfig(steps=6, lr=1e-2, weight_decay=0.1, accumulation=2, eval_every=6, seed=8)
    full, mgpp = tiny(np, 8), tiny(np, 8)
    train(full, FullFineTune(), synthetic_task(8), cfg, progress=False)
    r = train(mgpp, MGPP(0.0, prior=False, t_start=0.0, every=1, total_steps=6), synthetic_task(8), cfg, progress=False)
    assert r["report"]["pruned"] == 0 and set(mgpp.trainable) == set(mgpp.params)
    for name, p in full.params.items():
        assert np.array_equal(mgpp.params[name], p), name


def test_n_train_defaults_to_the_disjoint_training_windows():
    task = synthetic_task(0, n=3000)
    for n_train, want in ((None, 3000 // (CFG.block_size + 1)), (12345, 12345)):
        method = MGPP(n_train=n_train, total_steps=10)
        method.prepare(tiny(), task, np.random.default_rng(0))
        assert method.report()["n_train"] == want


# ------------------------------------------------------------------------------ torch parity
@pytest.fixture(scope="module")
def twin():
    pytest.importorskip("torch")
    from reference_models import gmt_mgpp
    from reference_models.torch_gpt import TorchGPT

    return gmt_mgpp, TorchGPT


@pytest.mark.parametrize("scope,prior,acc", [("global", True, 1), ("layer", True, 2), ("global", False, 1)])
def test_matches_torch_over_30_steps_with_pruning(twin, scope, prior, acc):
    """30 trainer steps (pruning at 8, 13, 18, 21; AdamW with weight decay; no clipping) against
    the twin optimising mean CE + (1/n) Σ −log π by autograd: the same masks at every pruning step,
    parameters within 1e-10."""
    ref, TorchGPT = twin
    seed, steps, lr, wd, final, every = 9, 30, 1e-2, 0.01, 0.8, 5
    model, task = tiny(np, seed), synthetic_task(seed)
    torch_model = TorchGPT.from_minisft(model.state_dict(), CFG)
    start = host(model.params)
    method = watching(MGPP(final, scope=scope, prior=prior, every=every, total_steps=steps), log := [])
    cfg = TrainConfig(steps=steps, lr=lr, weight_decay=wd, grad_clip=None, accumulation=acc, eval_every=steps, seed=seed)
    train(model, method, task, cfg, progress=False)
    rng = np.random.default_rng(seed)
    batches = [[task.sample(rng) for _ in range(acc)] for _ in range(steps)]
    n = len(task.train_ids) // (CFG.block_size + 1)
    want, want_masks = ref.train_mgpp(torch_model, batches, lr, wd, final, 1e-3, 1e-4, 0.05, 0.1, 0.7, every,
                                      prior, scope, n, steps)
    assert sorted(want_masks) == [8, 13, 18, 21]
    masks_at = {t: masks for t, _, _, masks in log}
    for t, ref_masks in want_masks.items():
        for name, m in ref_masks.items():
            assert np.array_equal(masks_at[t][name], m), f"step {t}, {name}: masks differ from the torch twin"
    assert_trained_like(model.params, want, start, steps)


# ---------------------------------------------------------------------------------- resume
class Killed(Exception):
    pass


def run(workdir, method, resume=False, kill_after=None):
    """9 steps (pruning at 2, 4, 6, 8), checkpoints every 3; optionally die right after step
    `kill_after` (the method's own after_step done)."""
    if kill_after is not None:
        inner = method.after_step

        def after_step(model, step):
            inner(model, step)
            if step + 1 == kill_after:
                raise Killed

        method.after_step = after_step
    model = tiny(np, 3)
    cfg = TrainConfig(steps=9, lr=1e-2, weight_decay=0.01, checkpoint_every=3, eval_every=9, seed=3)
    return model, train(model, method, synthetic_task(3), cfg, workdir=workdir, resume=resume, progress=False)


def resumable():
    return MGPP(0.7, t_start=0.0, t_end=0.9, every=2, total_steps=9)


def test_resume_carries_the_masks(tmp_path):
    """Killed after step 7 (checkpoint at 6, after pruning at 2, 4, 6), resumed to 9: parameters,
    masks and losses equal the uninterrupted run's; the checkpoint holds the masks, and a resumed
    method that drops them ends elsewhere (the masks are what the resume needs)."""
    full_model, full = run(tmp_path / "a", resumable())
    with pytest.raises(Killed):
        run(tmp_path / "b", resumable(), kill_after=7)
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    arrays, meta = load_checkpoint(tmp_path / "b" / "checkpoint.safetensors")
    assert meta["step"] == 6
    assert {k for k in arrays if k.startswith("method/")} == {f"method/mask/{n}" for n in PRUNABLE}
    assert sum(int((~arrays[f"method/mask/{n}"]).sum()) for n in PRUNABLE) == half_up(cubic(6, 0.7, 0, 8), N_PRUNABLE)
    method = resumable()
    model, resumed = run(tmp_path / "b", method, resume=True)
    assert [h["loss"] for h in resumed["history"]["train"]] == [h["loss"] for h in full["history"]["train"]]
    for name, p in full_model.params.items():
        assert np.array_equal(model.params[name], p), name
    assert resumed["report"] == full["report"]

    forgetful = resumable()
    forgetful.load_state_arrays = lambda arrays: None
    amnesiac, _ = run(tmp_path / "c", forgetful, resume=True)
    assert any(not np.array_equal(amnesiac.params[n], full_model.params[n]) for n in PRUNABLE)


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,arg", [
    ({"final_sparsity": -0.1}, "final_sparsity"),
    ({"final_sparsity": 1.0}, "final_sparsity"),
    ({"final_sparsity": float("nan")}, "final_sparsity"),
    ({"t_start": 0.5, "t_end": 0.5}, "t_end"),
    ({"t_start": 0.6, "t_end": 0.5}, "t_end"),
    ({"t_start": -0.1}, "t_start"),
    ({"t_start": 1.0, "t_end": 1.0}, "t_start"),
    ({"t_end": 0.0}, "t_end"),
    ({"t_end": 1.1}, "t_end"),
    ({"every": 0}, "every"),
    ({"every": -3}, "every"),
    ({"lam": 0.0}, "lam"),
    ({"lam": 1.0}, "lam"),
    ({"lam": float("nan")}, "lam"),
    ({"sigma0": 0.0}, "sigma0"),
    ({"sigma0": -1e-4}, "sigma0"),
    ({"sigma1": float("inf")}, "sigma1"),
    ({"sigma0": 0.1, "sigma1": 0.05}, "sigma1"),
    ({"sigma0": 0.05, "sigma1": 0.05}, "sigma1"),
    ({"scope": "tensor"}, "scope"),
    ({"n_train": 0}, "n_train"),
    ({"total_steps": 0}, "total_steps"),
    ({"total_steps": 1}, "total_steps"),  # floor(0.1) = floor(0.7) = 0: no ramp
])
def test_bad_input_names_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        MGPP(**kwargs)


@pytest.mark.parametrize("kwargs,arg", [({"every": 1.5}, "every"), ({"prior": "yes"}, "prior"),
                                        ({"final_sparsity": "0.8"}, "final_sparsity"),
                                        ({"total_steps": 10.0}, "total_steps")])
def test_bad_types_name_the_argument(kwargs, arg):
    with pytest.raises(TypeError, match=arg):
        MGPP(**kwargs)


def test_prepare_needs_total_steps():
    with pytest.raises(ValueError, match="total_steps"):
        MGPP().prepare(tiny(), synthetic_task(), np.random.default_rng(0))
