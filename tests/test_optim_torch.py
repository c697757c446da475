"""minisft.training.optim against PyTorch's own tools: `clip_grad_norm` against torch.nn.utils.clip_grad_norm_
(gradients drawn by hypothesis, max_norm below, at and above their norm) and `lr_at` for every
schedule against torch.optim.lr_scheduler (LinearLR warmup then CosineAnnealingLR through
SequentialLR; StepLR; a constant) at every step of the run. AdamW itself is checked against
torch.optim.AdamW in tests/test_adapters.py::test_adamw_matches_torch_over_10_steps.
"""

import math
import warnings

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from minisft.training.optim import clip_grad_norm, lr_at
from tests.gradcheck import max_rel_diff

torch = pytest.importorskip("torch")
sched = torch.optim.lr_scheduler


# ------------------------------------------------------------------------------------ clipping
shapes = st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3), min_size=1, max_size=4)
# max_norm / ‖g‖: far below, just below, the 1e-6 window of torch's denominator, equal, just above, far above
ratios = st.sampled_from([1e-3, 0.5, 1 - 1e-9, 1.0, 1 + 1e-9, 1 + 1e-6, 2.0]) | st.floats(1e-3, 10.0)


@given(shapes=shapes, seed=st.integers(0, 2**32 - 1), log_scale=st.floats(-6, 4), ratio=ratios)
@example(shapes=[[3], [2, 2]], seed=0, log_scale=0.0, ratio=1.0)  # ‖g‖ = max_norm: minisft did not scale, torch does
@example(shapes=[[4]], seed=1, log_scale=-7.0, ratio=1 + 1e-9)          # tiny gradients: the 1e-6 dominates
def test_clip_grad_norm_matches_torch(shapes, seed, log_scale, ratio):
    """Same returned norm (before clipping) and the same clipped gradients as torch, float64, for
    every position of max_norm relative to the norm (torch scales by max_norm / (‖g‖ + 1e-6) clamped
    to 1, so a norm within 1e-6 below max_norm is still scaled, by less than 1e-6)."""
    rng = np.random.default_rng(seed)
    grads = {f"g{i}": np.asarray(rng.standard_normal(s) * 10.0**log_scale) for i, s in enumerate(shapes)}
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    max_norm = norm * ratio if norm > 0 else ratio
    tensors = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g)
    want_norm = float(torch.nn.utils.clip_grad_norm_(tensors, max_norm))
    got_norm = clip_grad_norm(grads, max_norm)
    assert abs(got_norm - want_norm) <= 1e-14 * max(want_norm, 1e-300), f"norm {got_norm!r} vs torch {want_norm!r}"
    for (name, g), t in zip(grads.items(), tensors):
        d = max_rel_diff(g, t.grad.numpy())
        assert d <= 1e-14, f"{name}: clipped gradient vs torch max rel diff {d:.3e} (max_norm/‖g‖ = {ratio!r})"


def test_clip_grad_norm_none_leaves_gradients_and_empty_is_zero():
    g = {"a": np.array([3.0, 4.0])}
    assert clip_grad_norm(g, None) == 5.0 and g["a"].tolist() == [3.0, 4.0]
    assert clip_grad_norm({}, 1.0) == 0.0


# ------------------------------------------------------------------------------------ schedules
def torch_lrs(base_lr, total_steps, make_scheduler):
    """The lr torch's scheduler gives each of `total_steps` steps (read before opt.step(), then
    scheduler.step(), as a training loop does)."""
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=base_lr)
    with warnings.catch_warnings():  # SequentialLR passes an epoch to the scheduler it switches to
        warnings.simplefilter("ignore", UserWarning)
        s = make_scheduler(opt)
        out = []
        for _ in range(total_steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step()
    return out


def torch_cosine(warmup, total_steps, eta_min=0.0):
    """Linear warmup whose first step is lr/warmup and whose last is lr (LinearLR), then
    CosineAnnealingLR from lr to eta_min over the remaining total_steps − warmup steps."""
    def make(opt):
        cosine = sched.CosineAnnealingLR(opt, T_max=total_steps - warmup, eta_min=eta_min)
        if warmup == 0:
            return cosine
        ramp = (sched.LinearLR(opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1) if warmup > 1
                else sched.ConstantLR(opt, factor=1.0, total_iters=0))
        return sched.SequentialLR(opt, [ramp, cosine], milestones=[warmup])
    return make


def assert_same_lrs(ours, theirs, base_lr, what):
    """Torch's cosine is a recurrence (error grows ~1e-15 over thousands of steps): 1e-12 of base_lr."""
    worst = max((abs(a - b), s) for s, (a, b) in enumerate(zip(ours, theirs)))
    assert worst[0] <= 1e-12 * base_lr, f"{what}: lr differs from torch by {worst[0]:.3e} at step {worst[1]}"


@given(total=st.integers(1, 400), warmup_frac=st.floats(0, 0.99), base_lr=st.floats(1e-5, 1.0))
@example(total=10, warmup_frac=0.3, base_lr=0.1)   # warmup 3: lr/3, 2lr/3, lr, then the cosine
@example(total=2, warmup_frac=0.5, base_lr=1.0)    # warmup 1: the warmup is the base lr itself
@example(total=1, warmup_frac=0.0, base_lr=1.0)
def test_cosine_schedule_with_warmup_matches_torch(total, warmup_frac, base_lr):
    warmup = min(int(warmup_frac * total), total - 1)
    ours = [lr_at(s, base_lr, "cosine", total, warmup) for s in range(total)]
    assert_same_lrs(ours, torch_lrs(base_lr, total, torch_cosine(warmup, total)), base_lr,
                    f"cosine, warmup {warmup} of {total}")


@given(total=st.integers(1, 400), warmup_frac=st.floats(0, 0.99), base_lr=st.floats(1e-5, 1.0),
       fraction=st.floats(0.0, 1.0))
@example(total=600, warmup_frac=0.0, base_lr=3e-4, fraction=0.1)  # compare's pruning rows: cosine to 0.1x
def test_cosine_schedule_to_a_final_fraction_matches_torch_eta_min(total, warmup_frac, base_lr, fraction):
    warmup = min(int(warmup_frac * total), total - 1)
    ours = [lr_at(s, base_lr, "cosine", total, warmup, final_fraction=fraction) for s in range(total)]
    assert_same_lrs(ours, torch_lrs(base_lr, total, torch_cosine(warmup, total, eta_min=fraction * base_lr)), base_lr,
                    f"cosine to {fraction} x, warmup {warmup} of {total}")


@given(total=st.integers(1, 300), step_every=st.integers(1, 40), gamma=st.floats(0.05, 1.0), base_lr=st.floats(1e-5, 1.0))
@example(total=30, step_every=10, gamma=0.85, base_lr=1e-3)   # SPruFT's ×0.85 per epoch
def test_step_schedule_matches_torch_steplr(total, step_every, gamma, base_lr):
    ours = [lr_at(s, base_lr, "step", total, gamma=gamma, step_every=step_every) for s in range(total)]
    theirs = torch_lrs(base_lr, total, lambda opt: sched.StepLR(opt, step_size=step_every, gamma=gamma))
    assert_same_lrs(ours, theirs, base_lr, f"step, gamma {gamma} every {step_every}")


@given(total=st.integers(1, 50), base_lr=st.floats(1e-5, 1.0))
def test_constant_schedule_matches_torch(total, base_lr):
    ours = [lr_at(s, base_lr, "constant", total) for s in range(total)]
    theirs = torch_lrs(base_lr, total, lambda opt: sched.ConstantLR(opt, factor=1.0, total_iters=0))
    assert ours == theirs


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(0, 0.1, "cosine", total_steps=3, warmup=3)
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(0, 0.1, "cosine")
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 0.1, "linear")
