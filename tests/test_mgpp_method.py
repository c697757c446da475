"""MGPP and MagnitudePruning as methods (minisft.methods.mgpp). Oracles: the PyTorch twin written from
the authors' code (reference_models/mgpp.py: MWA.apply_prior_grad's update, the BayesianPruner
schedule, torch.kthvalue / stable torch.sort masks, torch.optim.AdamW, clipping of the loss gradient
only) over 30 steps with identical masks at every pruning step, including regrowth; exact Fraction
counts and a stable argsort of |w| computed afresh at every pruning step; the schedule written out
here; finite differences of J = mean loss + (1/n) Σ −log π; FullFineTune (zero sparsity: bit for
bit); an uninterrupted run (resume). Derivations: proofs/gmt_mgpp_methods.md; decisions:
proofs/decisions.md §MGPP.
"""

import math
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minisft.core.backend import to_numpy
from minisft.training.checkpoint import load_checkpoint
from minisft.methods import make_method
from minisft.methods.base import FullFineTune
from minisft.methods.mgpp import MGPP, MagnitudePruning
from minisft.methods.mgpp.prior import neg_log_prior, neg_log_prior_grad
from minisft.model.gpt import linear_layer_names
from minisft.training.train import TrainConfig, train
from tests.gradcheck import assert_directional, assert_trained_like
from tests.helpers import TINY, counter_task, host_copy, stable_argsort_keep, tiny_gpt

PRUNABLE = [f"{layer}.weight" for layer in linear_layer_names(TINY)]
N_PRUNABLE = sum(int(np.prod(tiny_gpt().params[n].shape)) for n in PRUNABLE)
SCHEDULE = dict(initial_sparsity=0.3, t_start=0.1, t_end=0.7, every=3)  # 20 steps: t_i 2, t_f 14


def half_up(ratio, n):
    return math.floor(Fraction(repr(float(ratio))) * n + Fraction(1, 2))


def cubic(t, final, initial, t_i, t_f):
    """The schedule in exact arithmetic: 0 before t_i, the cubic from s_i at t_i to s_f at t_f."""
    if t < t_i:
        return Fraction(0)
    if t >= t_f:
        return Fraction(final)
    f, i = Fraction(final), Fraction(initial)
    return f + (i - f) * (1 - Fraction(t - t_i, t_f - t_i)) ** 3


def oracle_pruned(weights, counts, scope):
    """{name: |w|} -> {name: bool pruned}: the first `count` positions of a stable argsort of |w|,
    over all matrices concatenated in order (global: counts = [k]) or per matrix."""
    groups = [list(weights)] if scope == "global" else [[n] for n in weights]
    out = {}
    for names, k in zip(groups, counts):
        keep = stable_argsort_keep([weights[n] for n in names], k)
        out.update({n: ~m for n, m in zip(names, keep)})
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
        log.append((step, before, {n: to_numpy(model.params[n]).copy() for n in PRUNABLE}, host_copy(method.masks)))

    method.after_step = after_step
    return method


def regrowth(masks_by_step):
    """[(t, name, flat index)] of entries pruned at one pruning step and kept at the next."""
    steps = sorted(masks_by_step)
    return [(t, n, int(i)) for a, t in zip(steps, steps[1:]) for n in masks_by_step[t]
            for i in np.flatnonzero(~masks_by_step[a][n] & masks_by_step[t][n])]


# ------------------------------------------------------------ regrow mode (the authors' masks)
@pytest.mark.parametrize("cls,scope,final,initial", [(MagnitudePruning, "global", 0.8, 0.75), (MGPP, "layer", 0.5, 0.3),
                                                     (MGPP, "global", 0.9, 0.85)])
def test_regrow_masks_are_recomputed_from_scratch_and_fixed_after_t_f(xp, cls, scope, final, initial):
    """20 trainer steps (t_i = 2, t_f = 14, Δt = 3: pruning at 2, 5, 8, 11, 14). At each pruning step
    the masks are the smallest |w| of ALL the updated weights (stable-argsort oracle, exact counts
    round(s_t n) of the exact cubic value), pruned weights set to 0 and nothing else touched;
    between pruning steps nothing is applied, so pruned weights move again, and some regrow (an
    entry pruned at one step is kept at the next: the schedules are flat enough, s_i close to s_f,
    that the threshold rises less than Adam's momentum carries a pruned weight in 3 steps at
    lr 1e-2); after t_f the t_f masks are re-applied after every update; the final sparsity is exact."""
    steps = 20
    model, task = tiny_gpt(xp=xp, seed=5), counter_task(seed=5)
    options = {**SCHEDULE, "initial_sparsity": initial}
    method = watching(cls(final, scope=scope, total_steps=steps, **options), log := [])
    result = train(model, method, task, TrainConfig(steps=steps, lr=1e-2, eval_every=steps, seed=5), progress=False)
    t_i, t_f = math.floor(Fraction("0.1") * steps), math.floor(Fraction("0.7") * steps)
    assert (t_i, t_f) == (2, 14) and method.pruning_steps() == [2, 5, 8, 11, 14]
    at_step, moved = {}, 0
    for t, before, after, masks in log:
        if t in (2, 5, 8, 11, 14):
            s = cubic(t, final, initial, t_i, t_f)
            assert abs(method.sparsity_at(t) - float(s)) <= 1e-15
            want = oracle_pruned(before, target_counts(method.sparsity_at(t), scope, model), scope)
            for n in PRUNABLE:
                assert np.array_equal(~masks[n], want[n]), f"step {t}, {n}: not the smallest |w| of all weights"
                assert np.all(after[n][want[n]] == 0) and np.array_equal(after[n][~want[n]], before[n][~want[n]])
            at_step[t] = masks
        elif t > t_f:
            for n in PRUNABLE:
                keep = at_step[t_f][n]
                assert np.array_equal(masks[n], keep), f"step {t}: the mask changed after t_f"
                assert np.all(after[n][~keep] == 0) and np.array_equal(after[n][keep], before[n][keep])
        else:
            assert all(np.array_equal(after[n], before[n]) for n in PRUNABLE), f"step {t}: weights touched off schedule"
            if at_step:
                last = at_step[max(at_step)]
                moved += sum(int(np.count_nonzero(before[n][~last[n]])) for n in PRUNABLE)
    assert moved > 0, "no pruned weight moved between pruning steps"
    regrown = regrowth(at_step)
    assert regrown, "no pruned weight regrew: the case does not exercise regrowth"
    rep = result["report"]
    assert rep["regrown"] == len(regrown) and [h["step"] for h in rep["history"]] == [2, 5, 8, 11, 14]
    final_counts = target_counts(final, scope, model)
    w = host_copy({n: model.params[n] for n in PRUNABLE})
    assert sum(int((w[n] == 0).sum()) for n in PRUNABLE) == sum(final_counts)
    assert rep["pruned"] == rep["target_pruned"] == sum(final_counts)
    assert rep["sparsity"] == {n: int((w[n] == 0).sum()) / w[n].size for n in PRUNABLE}


# ------------------------------------------------------------------------- monotone mode
@pytest.mark.parametrize("cls,scope,final", [(MGPP, "global", 0.8), (MagnitudePruning, "layer", 0.8)])
def test_monotone_mode_pruned_weights_stay_zero_and_masks_only_shrink(xp, cls, scope, final):
    """mode="monotone": at EVERY step no pruned weight is non-zero and no mask entry comes back; at
    each pruning step exactly round(s_t n) are pruned, the newly pruned being the smallest |w|."""
    steps = 20
    model, task = tiny_gpt(xp=xp, seed=5), counter_task(seed=5)
    method = watching(cls(final, scope=scope, mode="monotone", total_steps=steps, **SCHEDULE), log := [])
    result = train(model, method, task, TrainConfig(steps=steps, lr=1e-2, weight_decay=0.01, eval_every=steps, seed=5),
                   progress=False)
    prev = {n: np.ones(model.params[n].shape, dtype=bool) for n in PRUNABLE}
    for t, before, after, masks in log:
        keep = {n: masks.get(n, np.ones(after[n].shape, dtype=bool)) for n in PRUNABLE}
        for n in PRUNABLE:
            assert not np.any(keep[n] & ~prev[n]), f"step {t}, {n}: a pruned weight came back"
            assert np.all(after[n][~keep[n]] == 0) and np.all(before[n][~prev[n]] == 0), f"step {t}, {n}"
        if t in method.pruning_steps():
            want = oracle_pruned(before, target_counts(method.sparsity_at(t), scope, model), scope)
            assert all(np.array_equal(~keep[n], want[n]) for n in PRUNABLE), f"step {t}: not the smallest |w|"
        else:
            assert all(np.array_equal(keep[n], prev[n]) for n in PRUNABLE), f"step {t}: masks changed off schedule"
        prev = keep
    rep = result["report"]
    assert rep["regrown"] == 0 and rep["pruned"] == rep["target_pruned"] == sum(target_counts(final, scope, model))


def test_monotone_survivor_at_exactly_zero_does_not_revive_a_pruned_weight():
    """40 survivors set to exactly 0 tie with the pruned zeros; ranking all weights by (|w|, matrix,
    index) would prune 18 of them and revive pruned weights that come later in that order. The
    monotone mode ranks the survivors only: the masks only lose entries, the count is exact."""
    model = tiny_gpt(xp=np, seed=6)
    method = MGPP(0.9, mode="monotone", total_steps=10)
    method.prepare(model, counter_task(seed=6), np.random.default_rng(6))
    method.prune(model, 0.3)
    first = host_copy(method.masks)
    name = PRUNABLE[0]
    zeroed = np.flatnonzero(first[name].ravel())[:40]
    model.params[name].ravel()[zeroed] = 0.0
    k_new = half_up(0.303, N_PRUNABLE) - half_up(0.3, N_PRUNABLE)
    assert 0 < k_new < 40
    naive = oracle_pruned(host_copy({n: model.params[n] for n in PRUNABLE}), [half_up(0.303, N_PRUNABLE)], "global")
    assert any(np.any(~first[n] & ~naive[n]) for n in PRUNABLE), "the case is not adversarial"
    method.prune(model, 0.303)
    for n in PRUNABLE:
        assert not np.any(method.masks[n] & ~first[n]), f"{n}: a pruned weight came back"
    newly = {n: ~method.masks[n] & first[n] for n in PRUNABLE}
    assert sum(int(v.sum()) for v in newly.values()) == k_new
    assert set(np.flatnonzero(newly[name].ravel())) <= set(zeroed) and int(newly[name].sum()) == k_new


# ---------------------------------------------------------------------------- the schedule
@given(total=st.integers(1, 400), start=st.integers(0, 98), length=st.integers(1, 99), every=st.integers(0, 50))
@example(total=10, start=10, length=60, every=10)  # t_f - t_i = 6 < Δt: t_i and t_f alone
@example(total=1, start=98, length=1, every=0)  # the latest t_start below t_end = 0.99: t_f = t_i = 0
@example(total=150, start=10, length=80, every=0)  # the small preset: Δt = 1% of 150 = 1
@example(total=1000, start=1, length=89, every=0)  # the gpt2 config's t_i = 1%: Δt = 10
@settings(max_examples=40, deadline=None)
def test_pruning_steps_are_t_i_the_grid_from_t_i_and_t_f(total, start, length, every):
    """t_i = floor(t_start T), t_f = floor(t_end T) (exact decimals), Δt = every or max(1, floor(T/100));
    pruning at t_i, t_i + kΔt < t_f and t_f (0-based steps); t_f < T so the mask is always fixed.
    (t_start < t_end <= 0.99: t_end <= t_start is another error, tested with the bad options.)"""
    t_start, t_end = start / 100, min(start + length, 99) / 100
    t_i, t_f = math.floor(Fraction(repr(t_start)) * total), math.floor(Fraction(repr(t_end)) * total)
    kw = dict(t_start=t_start, t_end=t_end, every=every or None, total_steps=total, initial_sparsity=0.0)
    if t_f <= t_i:
        with pytest.raises(ValueError, match="total_steps"):
            MagnitudePruning(**kw)
        return
    method = MagnitudePruning(**kw)
    delta = every or max(1, total // 100)
    want = sorted({t_i, t_f} | {t for t in range(t_i, t_f) if (t - t_i) % delta == 0})
    assert method.pruning_steps() == want and want[-1] == t_f < total


# ------------------------------------------------------------------------ the prior gradient
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, len(PRUNABLE) - 1))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_prior_gradient_is_the_gradient_of_the_regularised_objective(seed, which):
    """transform_grads_after_clip(mean-loss gradient) = ∇[L(W) + (1/n) Σ −log π(W)], by finite
    differences along a random direction (a broad prior, so the prior term is large and smooth
    at the step); var0, var1 are variances."""
    lam, v0, v1, n = 0.1, 0.005**2, 0.05**2, 7
    model, task = tiny_gpt(xp=np, seed=seed % 5), counter_task(seed=seed % 5)
    method = MGPP(0.5, lam=lam, var0=v0, var1=v1, n_train=n, total_steps=10)
    rng = np.random.default_rng(seed)
    method.prepare(model, task, rng)
    x, y = task.sample(rng)
    name = PRUNABLE[which]
    theta0 = model.params[name].copy()

    def objective(theta):
        model.params[name][...] = theta
        return model.loss(x, y) + float(np.sum(neg_log_prior(theta, lam, v0, v1))) / n

    _, grads = model.loss_and_grads(x, y)
    loss_grad = grads[name].copy()
    g = method.transform_grads_after_clip(model, grads, 0)[name].copy()
    added, scale = float(np.max(np.abs(g - loss_grad))), float(np.max(np.abs(loss_grad)))
    assert added > 1e-3 * scale, "the prior term is negligible"
    assert_directional(objective, theta0.copy(), g, rng, tol=1e-7, label=name)


def test_prior_is_added_after_clipping_and_only_while_t_le_t_f():
    """With grad_clip tiny, the gradient reaching transform_grads_after_clip is the clipped loss
    gradient, and the method adds exactly (1/n) ∇(−log π)(w) of the pre-update weights to it for
    t <= t_f, nothing after; the run records the clipping it used."""
    steps, clip = 12, 1e-6
    model, task = tiny_gpt(xp=np, seed=2), counter_task(seed=2)
    method = MGPP(0.6, lam_final=1e-4, lam=0.1, total_steps=steps, **SCHEDULE)  # t_f = 8; λ annealed
    seen, inner = [], method.transform_grads_after_clip

    def after_clip(model, grads, step):
        before = {n: g.copy() for n, g in grads.items()}
        out = inner(model, grads, step)
        seen.append((step, before, {n: out[n].copy() for n in PRUNABLE}, host_copy({n: model.params[n] for n in PRUNABLE})))
        return out

    method.transform_grads_after_clip = after_clip
    result = train(model, method, task, TrainConfig(steps=steps, lr=1e-3, grad_clip=clip, eval_every=steps, seed=2),
                   progress=False)
    assert result["train"]["grad_clip"] == clip and method.t_f == 8
    n = (len(task.train_ids) // (TINY.block_size + 1)) * TINY.block_size
    for t, before, out, w in seen:
        norm = math.sqrt(sum(float(np.vdot(g, g)) for g in before.values()))
        assert norm <= clip * (1 + 1e-9), f"step {t}: the loss gradient was not clipped ({norm:.3e})"
        for name in PRUNABLE:
            added = out[name] - before[name]
            if t <= 8:
                want = neg_log_prior_grad(w[name], method.lam_at(t), method.config.var0, method.config.var1) / n
                assert np.max(np.abs(added - want)) <= 1e-12 * np.max(np.abs(want)), f"step {t}, {name}"
                assert np.max(np.abs(want)) > 100 * clip, "the prior would not be visible under clipping"
            else:
                assert not np.any(added), f"step {t} > t_f: the prior still acts"
    assert method.lam_at(0) == 0.1 and method.lam_at(8) == 1e-4


def test_n_defaults_to_the_predicted_training_tokens():
    """n = disjoint training windows × block_size (each window of T + 1 tokens predicts T)."""
    task = counter_task(seed=0, n=3000)
    for n_train, want in ((None, (3000 // (TINY.block_size + 1)) * TINY.block_size), (12345, 12345)):
        method = MGPP(n_train=n_train, total_steps=10)
        method.prepare(tiny_gpt(), task, np.random.default_rng(0))
        assert method.report()["n_train"] == want


def test_zero_sparsity_is_full_fine_tuning_bit_for_bit():
    cfg = TrainConfig(steps=6, lr=1e-2, weight_decay=0.1, accumulation=2, eval_every=6, seed=8)
    for mode in ("regrow", "monotone"):
        full, pruned = tiny_gpt(xp=np, seed=8), tiny_gpt(xp=np, seed=8)
        train(full, FullFineTune(), counter_task(seed=8), cfg, progress=False)
        method = MagnitudePruning(0.0, initial_sparsity=0.0, t_start=0.0, t_end=0.5, every=1, mode=mode, total_steps=6)
        r = train(pruned, method, counter_task(seed=8), cfg, progress=False)
        assert r["report"]["pruned"] == 0 and set(pruned.trainable) == set(pruned.params)
        for name, p in full.params.items():
            assert np.array_equal(pruned.params[name], p), (mode, name)


# ------------------------------------------------------------------------------ torch parity
@pytest.fixture(scope="module")
def twin():
    pytest.importorskip("torch")
    from reference_models import mgpp
    from reference_models.torch_gpt import TorchGPT

    return mgpp, TorchGPT


CASES = {  # name: (method, options, trainer grad_clip, accumulation)
    "mgpp-regrow": ("mgpp", {}, None, 1),
    "mgpp-authors-count-layer-clip-acc2": ("mgpp", {"count_rule": "authors", "scope": "layer"}, 0.3, 2),
    "mgpp-monotone-annealed": ("mgpp", {"mode": "monotone", "lam": 0.1, "lam_final": 1e-4}, None, 1),
    "magprune-clip": ("magprune", {}, 1.0, 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_authors_twin_over_30_steps(twin, case):
    """30 trainer steps (t_i 3, t_f 21, Δt 4: pruning at 3, 7, 11, 15, 19, 21; then the fixed mask)
    against the twin written from the authors' MWA.py / BayesianPruner: the same masks at every
    pruning step and parameters within 1e-10. The trainer clips only the loss gradient, the twin
    adds the prior after torch's clip_grad_norm_. Regrowth is constructed in the regrow cases: with
    lr = 1e-2, far above the pruned weights' magnitudes, Adam's momentum carries pruned weights
    past surviving ones within Δt = 4 steps; both must show it, on the same entries."""
    ref, TorchGPT = twin
    name, options, clip, acc = CASES[case]
    seed, steps, lr = 9, 30, 1e-2
    model, task = tiny_gpt(xp=np, seed=seed), counter_task(seed=seed)
    torch_model = TorchGPT.from_minisft(model.state_dict(), TINY)
    start = host_copy(model.params)
    method = watching(make_method(name, final_sparsity=0.8, initial_sparsity=0.3, t_start=0.1, t_end=0.7, every=4,
                                  total_steps=steps, **options), log := [])
    train(model, method, task, TrainConfig(steps=steps, lr=lr, grad_clip=clip, accumulation=acc, eval_every=steps,
                                           seed=seed), progress=False)
    rng = np.random.default_rng(seed)
    batches = [[task.sample(rng) for _ in range(acc)] for _ in range(steps)]
    n = (len(task.train_ids) // (TINY.block_size + 1)) * TINY.block_size
    c = method.config
    prior = {"lam": c.lam, "var0": c.var0, "var1": c.var1, "lam_final": c.lam_final,
             "train_size": n} if name == "mgpp" else {}
    want, want_masks = ref.train(torch_model, batches, lr=lr, weight_decay=0.0, final_sparsity=0.8,
                                 initial_sparsity=0.3, t_i=3, t_f=21, every=4, prior=name == "mgpp",
                                 mode=c.mode, count_rule=c.count_rule, scope=c.scope, grad_clip=clip,
                                 **prior)
    assert sorted(want_masks) == method.pruning_steps() == [3, 7, 11, 15, 19, 21]
    masks_at = {t: masks for t, _, _, masks in log}
    for t, ref_masks in want_masks.items():
        for p, m in ref_masks.items():
            assert np.array_equal(masks_at[t][p], m), f"step {t}, {p}: masks differ from the authors' twin"
    if c.mode == "regrow":
        regrown = regrowth(want_masks)
        assert regrown, "no weight regrew: the regrowth case is not exercised"
        assert regrown == regrowth({t: masks_at[t] for t in want_masks})
    assert_trained_like(model.params, want, start, steps)


def test_the_kept_golden_mgpp_case_replays_in_the_authors_twin(twin):
    """tests/data/vectors/train_mgpp (the golden case `minisft vectors` writes: 4 steps, clipping 0.6,
    weight decay, pruning at 1 and 2, the mask re-applied at 3) replayed from its start state and
    batches by the twin written from the authors' code: the final tensors within the case's
    tolerances, the same masks."""
    import minisft.testing as mt
    from minisft.core.config import GPTConfig

    ref, TorchGPT = twin
    case = mt.load_case(Path(__file__).parent / "data" / "vectors", "train_mgpp")
    s, o = case.settings, case.settings["options"]
    steps = s["train"]["steps"]
    t_i = math.floor(Fraction(repr(o["t_start"])) * steps)
    t_f = math.floor(Fraction(repr(o["t_end"])) * steps)
    torch_model = TorchGPT.from_minisft(case.inputs("start/"), GPTConfig(**s["config"]))
    batches = [[(x, y)] for x, y in zip(case["batch/x"], case["batch/y"])]
    final, masks = ref.train(torch_model, batches, lr=s["train"]["lr"], weight_decay=s["train"]["weight_decay"],
                             final_sparsity=o["final_sparsity"], initial_sparsity=o["initial_sparsity"], t_i=t_i,
                             t_f=t_f, every=o["every"], lam=o["lam"], var0=o["var0"], var1=o["var1"],
                             lam_final=o["lam_final"], train_size=o["n_train"], mode=o["mode"],
                             count_rule=o["count_rule"], scope=o["scope"], grad_clip=s["train"]["grad_clip"])
    assert sorted(masks) == [1, 2]
    for name, value in final.items():
        mt.assert_close(value, case[f"step/param/{name}"][-1], **case.tolerance(f"step/param/{name}"), name=name)
    for t, by_name in masks.items():
        for name, m in by_name.items():
            assert np.array_equal(case[f"step/keep/{name}"][t], m), f"step {t}, {name}: mask differs from the twin's"


# ---------------------------------------------------------------------------------- resume
class Killed(Exception):
    pass


def run(workdir, method, resume=False, kill_after=None):
    """9 steps (pruning at 0, 2, 4 = t_f, then the fixed mask), checkpoints every 3; optionally die
    right after `kill_after` steps are done (the method's own after_step included)."""
    if kill_after is not None:
        inner = method.after_step

        def after_step(model, step):
            inner(model, step)
            if step + 1 == kill_after:
                raise Killed

        method.after_step = after_step
    model = tiny_gpt(xp=np, seed=3)
    cfg = TrainConfig(steps=9, lr=1e-2, checkpoint_every=3, eval_every=9, seed=3)
    return model, train(model, method, counter_task(seed=3), cfg, workdir=workdir, resume=resume, progress=False)


def resumable():
    return MGPP(0.7, initial_sparsity=0.2, t_start=0.0, t_end=0.5, every=2, total_steps=9)


def test_resume_carries_the_masks_and_history(tmp_path):
    """Killed after 7 steps (checkpoint at 6, after t_f = 4), resumed to 9: parameters, masks, losses
    and report equal the uninterrupted run's; the checkpoint holds the fixed masks, and a resumed
    method that drops them ends elsewhere (after t_f the masks are what keeps pruned weights at 0)."""
    full_model, full = run(tmp_path / "a", resumable())
    with pytest.raises(Killed):
        run(tmp_path / "b", resumable(), kill_after=7)
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    arrays, meta = load_checkpoint(tmp_path / "b" / "checkpoint.safetensors")
    assert meta["step"] == 6
    assert {k for k in arrays if k.startswith("method/mask/")} == {f"method/mask/{n}" for n in PRUNABLE}
    assert sum(int((~arrays[f"method/mask/{n}"]).sum()) for n in PRUNABLE) == half_up(0.7, N_PRUNABLE)
    model, resumed = run(tmp_path / "b", resumable(), resume=True)
    assert [h["loss"] for h in resumed["history"]["train"]] == [h["loss"] for h in full["history"]["train"]]
    for name, p in full_model.params.items():
        assert np.array_equal(model.params[name], p), name
    assert resumed["report"] == full["report"]

    forgetful = resumable()
    forgetful.load_state_arrays = lambda arrays: None
    amnesiac, _ = run(tmp_path / "c", forgetful, resume=True)
    assert any(not np.array_equal(amnesiac.params[n], full_model.params[n]) for n in PRUNABLE)


# ------------------------------------------------------------------- options, configs, errors
def test_named_configs_and_explicit_overrides():
    d, g = MGPP(total_steps=100), MGPP(config="gpt2", total_steps=100)
    dc, gc = d.config, g.config
    assert (dc.lam, dc.var0, dc.var1, dc.initial_sparsity, dc.t_start, dc.t_end) == (1e-3, 1e-10, 0.05, 0.3, 0.1, 0.9)
    assert (gc.lam, gc.var0, gc.var1, gc.initial_sparsity, gc.t_start, gc.t_end) == (1e-4, 1e-10, 0.01, 0.1, 0.01, 0.9)
    assert (d.t_i, d.t_f, d.delta_t, g.t_i) == (10, 90, 1, 1)
    assert MGPP(config="gpt2", var1=0.02).config.var1 == 0.02
    assert MagnitudePruning(config="gpt2").config.initial_sparsity == 0.1
    assert d.options()["config"] == "default" and g.options()["var1"] == 0.01


@pytest.mark.parametrize("kwargs,arg", [
    ({"final_sparsity": -0.1}, "final_sparsity"),
    ({"final_sparsity": 1.0}, "final_sparsity"),
    ({"final_sparsity": float("nan")}, "final_sparsity"),
    ({"final_sparsity": 0.2}, "initial_sparsity"),  # below the config's s_i = 0.3
    ({"initial_sparsity": -0.1}, "initial_sparsity"),
    ({"t_start": 0.5, "t_end": 0.5}, "t_end"),
    ({"t_start": 0.6, "t_end": 0.5}, "t_end"),
    ({"t_start": -0.1}, "t_start"),
    ({"t_start": 1.0}, "t_start"),
    ({"t_end": 0.0}, "t_end"),
    ({"t_end": 1.0}, "t_end"),
    ({"every": 0}, "every"),
    ({"every": -3}, "every"),
    ({"lam": 0.0}, "lam"),
    ({"lam": 1.0}, "lam"),
    ({"lam": float("nan")}, "lam"),
    ({"lam_final": 0.0}, "lam_final"),
    ({"var0": 0.0}, "var0"),
    ({"var0": -1e-4}, "var0"),
    ({"var1": float("inf")}, "var1"),
    ({"var0": 0.1, "var1": 0.05}, "var1"),
    ({"var0": 0.05, "var1": 0.05}, "var1"),
    ({"scope": "tensor"}, "scope"),
    ({"mode": "frozen"}, "mode"),
    ({"count_rule": "round"}, "count_rule"),
    ({"config": "bert"}, "config"),
    ({"n_train": 0}, "n_train"),
    ({"total_steps": 0}, "total_steps"),
    ({"total_steps": 1}, "total_steps"),  # floor(0.1) = floor(0.9) = 0: no ramp
])
def test_bad_input_names_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        MGPP(**kwargs)


@pytest.mark.parametrize("kwargs,arg", [({"every": 1.5}, "every"), ({"final_sparsity": "0.8"}, "final_sparsity"),
                                        ({"total_steps": 10.0}, "total_steps"), ({"lam_final": "1e-4"}, "lam_final")])
def test_bad_types_name_the_argument(kwargs, arg):
    with pytest.raises(TypeError, match=arg):
        MGPP(**kwargs)


def test_prepare_needs_total_steps():
    for cls in (MGPP, MagnitudePruning):
        with pytest.raises(ValueError, match="total_steps"):
            cls().prepare(tiny_gpt(), counter_task(), np.random.default_rng(0))
