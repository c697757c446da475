"""AdaPEFT end to end against its PyTorch twin (reference_models/adapeft.py, written from the
definitions): the same groups and sizes; at every probed step the same slope b_k, curvature a_k,
R² and validity and influence I_k = b_k²/(2a_k) of every group; the same mean influences; the same
knapsack selection (brute force over the "modules" partition's 2^7 subsets, scipy.optimize.milp over
the "tensors" partition's 28 groups); and N training steps of the chosen subset within 1e-10.

The run is minisft's own: `train(model, AdaPEFT(...), task, cfg)` from one seed; the test records
every batch the task hands out, the generator's state when prepare starts (to recover the probe's
LoRA initial values) and the trainable values when prepare ends (the chosen groups' fresh start).

Tolerances (proofs/adapeft.md §2-3; derivation in `exact_tolerance` and `gen_tolerance`):
- b_k = g_kᵀd_k: two float64 gradients and directions, 1e-12 of |g_k|·|d_k|.
- "exact" a_k: minisft takes H d_k by Richardson's extrapolation of central differences of its
  gradients at the step ε of its documented rule; the twin takes it exactly (torch.func). Their
  difference is minisft's truncation error (ε⁴/480)·φ⁽⁶⁾ plus its rounding, both measured on the
  twin's gradients (`exact_tolerance`).
- "gen" a_k, b_k: both sides fit the same 4 losses; the losses of two float64 implementations differ
  by rounding only, δy, which the fit amplifies by at most (10/17)/η² (a) and (6/10)/η (b)
  (`gen_tolerance`).
- I_k = b²/2a: the first-order propagation of both (`influence_tolerance`).
The test prints the worst |Δ|/tolerance of each quantity and the largest relative influence
difference.
"""

import copy
import itertools
import math

import numpy as np
import pytest

from minisft.methods.adapeft.groups import build_groups
from minisft.methods.adapeft.method import AdaPEFT
from minisft.model.gpt import GPT
from minisft.training.train import Task, TrainConfig, train
from tests.gradcheck import assert_trained_like
from tests.helpers import TINY, counter_task, tiny_gpt

torch = pytest.importorskip("torch")
from reference_models import adapeft as twin_ref  # noqa: E402

U = np.finfo(np.float64).eps / 2
R, ALPHA, PROBE_LR, PROBE_STEPS, EVERY = 2, 4, 1e-2, 8, 4


class RecordingTask(Task):
    """A Task that keeps every batch it hands out, in order."""

    def __init__(self, task):
        super().__init__(task.train_ids, task.val_target, task.val_source, task.batch_size, task.block_size)
        self.handed_out = []

    def sample(self, generator):
        batch = super().sample(generator)
        self.handed_out.append(tuple(np.array(a) for a in batch))
        return batch


class RecordingAdaPEFT(AdaPEFT):
    """AdaPEFT that keeps the base weights and the generator's state at the start of prepare, and
    the trainable values at its end."""

    def prepare(self, model, task, rng):
        self.base, self.rng_state = model.state_dict(), copy.deepcopy(rng.bit_generator.state)
        super().prepare(model, task, rng)
        self.start = {k: np.array(v) for k, v in model.trainable_params().items()}


def probe_lora_init(method, groups):
    """{layer: (A, B)} the probe drew: every group activated in partition order from the generator
    as it was when prepare started (the probe's first draws)."""
    rng = np.random.default_rng()
    rng.bit_generator.state = method.rng_state
    scratch = GPT.from_state_dict(method.base, TINY, backend="numpy", dtype="float64")
    scratch.freeze()
    for g in build_groups(TINY, groups, R):
        g.activate(scratch, ALPHA, rng)
    return {layer: (np.array(ad.A), np.array(ad.B)) for layer, (ad,) in scratch.adapters.items()}


def run_minisft(estimator, direction, groups, budget, seed, steps, lr, wd):
    model = tiny_gpt(seed=seed)
    task = RecordingTask(counter_task(seed=seed))
    method = RecordingAdaPEFT(budget=budget, groups=groups, estimator=estimator, direction=direction,
                              probe_steps=PROBE_STEPS, every=EVERY, lora_r=R, lora_alpha=ALPHA, probe_lr=PROBE_LR)
    cfg = TrainConfig(steps=steps, lr=lr, weight_decay=wd, grad_clip=None, eval_every=steps, seed=seed)
    train(model, method, task, cfg, progress=False)
    return model, method, task.handed_out


def split_batches(handed_out, estimator, steps):
    """(probe batches, {probed step: fresh GeN batch}, training batches) in the documented order:
    each probe step's batch, then (GeN, probed steps) the fresh batch; then the training batches."""
    it = iter(handed_out)
    probe, fresh = [], {}
    for step in range(PROBE_STEPS):
        probe.append(next(it))
        if estimator == "gen" and step % EVERY == 0:
            fresh[step] = next(it)
    rest = list(it)
    assert len(rest) == steps, f"{len(rest)} training batches, expected {steps}"
    return probe, fresh, rest


def norm(t):
    return math.sqrt(sum(float((v * v).sum()) for v in t.values()))


def exact_tolerance(twin, batch, d_k, a):
    """Bound on |a_minisft − a| for the Richardson estimate R(ε) = (4D(ε/2) − D(ε))/3,
    D(h) = d_kᵀ(∇L(θ + h d_k) − ∇L(θ − h d_k))/2h, at minisft's documented step
    ε = u^{1/5} · 0.02 · RMS(θ_S) / max|d_k| (minisft/methods/adapeft/__init__.py). Its error is
    truncation plus rounding (proofs/adapeft.md §3), each taken from the TWIN's own autograd
    gradients (no minisft code):
    - truncation: D(h) = φ'' + h²/6 φ⁽⁴⁾ + h⁴/120 φ⁽⁶⁾ + …, so R(ε) = φ'' − (ε⁴/480) φ⁽⁶⁾ + O(ε⁶); the
      ε⁴ term is measured at 8ε, where it is 8⁴ times larger and dominates the rounding:
      T = |R_twin(8ε) − a| / 8⁴, counted twice;
    - rounding: R's rounding is (4·2δ + δ)/(3ε) for gradients off by δ along d_k, so it is
      measured, not bounded a priori: σ = max |R_twin(fε) − a| over f ∈ {0.8, 0.9, 1, 1.1} (the
      same scheme on the twin's float64 gradients; truncation is ≤ T there), counted 10 times:
      minisft's gradients round differently from torch's, and over 168 probes (random, gradient
      and Adam directions; 1-3 blocks, width 8-32) minisft's error stayed below 2.3·σ. (A bound
      3u‖d_k‖‖g‖/ε, each gradient off by u‖g‖, failed there by up to 93× on wte directions.)
    """
    base = twin.values()
    keys = list(d_k)
    size = sum(v.numel() for v in d_k.values())
    rms = math.sqrt(sum(float((base[k] ** 2).sum()) for k in keys) / size) or 1.0
    eps = U ** 0.2 * 0.02 * rms / max(float(v.abs().max()) for v in d_k.values())

    def dir_grad(h):  # d_kᵀ ∇L(θ + h d_k) from the twin
        x, y = (torch.as_tensor(np.asarray(a)) for a in batch)
        p = {k: (base[k] + h * d_k[k] if k in d_k else base[k]).requires_grad_(True) for k in base}
        loss = torch.func.functional_call(twin.model, {twin.path[k]: v for k, v in p.items()}, (x, y))[1]
        gr = torch.autograd.grad(loss, [p[k] for k in keys])
        return sum(float((gi * d_k[k]).sum()) for gi, k in zip(gr, keys))

    def richardson(h):
        def central(step):
            return (dir_grad(step) - dir_grad(-step)) / (2 * step)
        return (4 * central(h / 2) - central(h)) / 3

    truncation = abs(richardson(8 * eps) - a) / 8**4
    rounding = max(abs(richardson(f * eps) - a) for f in (0.8, 0.9, 1.0, 1.1))
    return 2 * truncation + 10 * rounding


def gen_tolerance(loss_scale, eta):
    """Both fits see the same 4 losses up to rounding: δy per point is the two sides' loss rounding,
    taken as 4u·|L| each (an assumption: a mean of 32 float64 cross-entropies after a small GPT;
    the worst |Δ|/tolerance the test prints is 0.17), doubled for the anchor they subtract;
    amplified by (10/17)/η² for a and (6/10)/η for b (proofs/adapeft.md §2)."""
    dy = 2 * 2 * 4 * U * loss_scale
    return 10 / 17 * dy / eta**2, 6 / 10 * dy / eta


def influence_tolerance(a, b, tol_a, tol_b):
    """|Δ(b²/2a)| to first order: I·(|Δa|/|a| + 2|Δb|/|b|), with 1% for the second order."""
    return 1.01 * b * b / (2 * a) * (tol_a / abs(a) + 2 * tol_b / abs(b))


CASES = [  # estimator, direction, partition, budget
    ("exact", "adam", "modules", 700),
    ("gen", "adam", "modules", 700),
    ("exact", "sgd", "modules", 1100),
    ("gen", "adam", "tensors", 2000),
]


@pytest.mark.parametrize("estimator,direction,groups,budget", CASES, ids=["-".join(c[:3]) for c in CASES])
def test_probe_selection_and_training_match_the_twin(estimator, direction, groups, budget):
    seed, steps, lr, wd = 1, 20, 1e-2, 0.01
    model, method, handed_out = run_minisft(estimator, direction, groups, budget, seed, steps, lr, wd)
    rep = method.report()
    probe_batches, fresh, train_batches = split_batches(handed_out, estimator, steps)

    # the same groups with the same sizes
    part = twin_ref.partition(TINY, groups, R)
    sizes = {k: v["n"] for k, v in part.items()}
    assert {g["name"]: g["n"] for g in rep["groups"]} == sizes

    # the twin's probe; each estimate's tolerance from the twin's state at that step
    twin = twin_ref.Twin(method.base, TINY, part, probe_lora_init(method, groups), ALPHA / R)
    tolerance = {}

    def inspect(step, batch, g, d, est):
        for group, keys in twin.members.items():
            g_k, d_k = {k: g[k] for k in keys}, {k: d[k] for k in keys}
            if estimator == "exact":
                tol_a = exact_tolerance(twin, batch, d_k, est[group]["a"])
                tol_b = 1e-12 * norm(g_k) * norm(d_k)
            else:
                tol_a, tol_b = gen_tolerance(abs(float(twin.loss(fresh[step]))), PROBE_LR)
            tolerance[step, group] = tol_a, tol_b

    records = twin_ref.probe(twin, probe_batches, fresh, estimator, direction, EVERY, PROBE_LR, inspect=inspect)
    assert [r["step"] for r in rep["probes"]] == [r["step"] for r in records] == [0, 4]
    worst = {"a": 0.0, "b": 0.0, "influence": 0.0}
    rel_influence = 0.0
    tol_mean = {}
    for mine, theirs in zip(rep["probes"], records):
        assert sorted(e["group"] for e in mine["estimates"]) == sorted(theirs["estimates"])
        for e in mine["estimates"]:
            t = theirs["estimates"][e["group"]]
            tol_a, tol_b = tolerance[mine["step"], e["group"]]
            assert abs(t["a"]) > tol_a and abs(t["b"]) > tol_b, f"{e['group']}: a or b within its tolerance of 0"
            assert e["valid"] == t["valid"], (mine["step"], e, t)
            checks = [("a", tol_a), ("b", tol_b)]
            if t["valid"]:
                tol_i = influence_tolerance(t["a"], t["b"], tol_a, tol_b)
                tol_mean.setdefault(e["group"], []).append(tol_i)
                checks.append(("influence", tol_i))
            if estimator == "gen":
                assert abs(e["r2"] - t["r2"]) <= 1e-9, (e["group"], e["r2"], t["r2"])
            if t["valid"]:
                rel_influence = max(rel_influence, abs(e["influence"] - t["influence"]) / t["influence"])
            for key, tol in checks:
                diff = abs(e[key] - t[key])
                worst[key] = max(worst[key], diff / tol)
                assert diff <= tol, (f"step {mine['step']} {e['group']} {key}: minisft {e[key]!r} vs twin {t[key]!r}, "
                                     f"|Δ| {diff:.3e} > tolerance {tol:.3e}")
    n_valid = sum(e["valid"] for p in rep["probes"] for e in p["estimates"])
    print(f"{estimator}-{direction}-{groups}: worst |Δ|/tolerance " + ", ".join(f"{k} {v:.2g}" for k, v in worst.items())
          + f"; max relative influence difference {rel_influence:.2e} over {n_valid} valid estimates")
    assert n_valid >= 3, "too few valid estimates to compare"

    # the mean influences and the selection
    means = twin_ref.mean_influence(records)
    for g in rep["groups"]:
        if means[g["name"]] is None:
            assert g["influence"] is None, g
        else:
            tol = sum(tol_mean[g["name"]]) / len(tol_mean[g["name"]])
            assert abs(g["influence"] - means[g["name"]]) <= tol, (g, means[g["name"]], tol)
    capacity = rep["budget"]["capacity"]
    chosen, best = twin_ref.select(means, sizes, capacity)
    candidates = [g for g, v in means.items() if v is not None]
    if groups == "tensors":
        assert len(candidates) > twin_ref.BRUTE_FORCE_MAX, "the MILP path did not run"
    assert set(rep["chosen"]["groups"]) == chosen, (rep["chosen"], chosen)
    slack = sum(max(t) for t in tol_mean.values())  # the most the estimates may move any subset's total
    assert abs(rep["chosen"]["influence"] - best) <= slack
    if len(candidates) <= twin_ref.BRUTE_FORCE_MAX:  # the selection is determined: no other subset within slack
        runner_up = max(sum(means[g] for g in z) for n in range(len(candidates) + 1)
                        for z in itertools.combinations(candidates, n)
                        if set(z) != chosen and sum(sizes[g] for g in z) <= capacity)
        assert best - runner_up > 2 * slack, f"best {best} and runner-up {runner_up} within the tolerance {slack}"

    # training the chosen groups from prepare's fresh start, over the trainer's batches
    start = method.start
    lora_start = {layer: (start[f"{layer}.lora.lora_A"], start[f"{layer}.lora.lora_B"])
                  for g in chosen for layer in part[g]["lora"]}
    trained = twin_ref.Twin(method.base, TINY, {g: part[g] for g in part if g in chosen}, lora_start, ALPHA / R)
    assert set(trained.params) == set(model.trainable_params())
    want = twin_ref.train(trained, train_batches, lr, wd)
    assert_trained_like(model.trainable_params(), want, start, steps)
