"""The trainer's order of operations, end to end: gradient → method.transform_grads → global-norm
clipping → optimizer step at the schedule's learning rate (minisft.training.train's docstring; GMT and MGPP
depend on it: proofs/gmt_mgpp_methods.md). Oracle: the PyTorch GMT twin
(reference_models/gmt_mgpp.py `train_gmt`: autograd, torch.kthvalue masks, the mask applied, then
torch.nn.utils.clip_grad_norm_, then torch.optim.AdamW under a torch lr scheduler).

Clipping commutes with GMT's mask selection (|g| ranks the same after a uniform scale) but not with
the mask itself: clipped before masking, the step is scaled by max_norm / ‖g‖ instead of
max_norm / ‖mask ∘ g‖. So this test fails if clipping moves before transform_grads, if the schedule
or the clip factor is wrong, or if the lr of step t is applied at another step.
"""

import numpy as np
import pytest

from minisft.methods.gmt.method import GMT
from minisft.training.train import TrainConfig, train
from tests.gradcheck import assert_trained_like
from tests.helpers import TINY, counter_task, host_copy, tiny_gpt

torch = pytest.importorskip("torch")
from reference_models import gmt_mgpp as ref  # noqa: E402
from reference_models.torch_gpt import TorchGPT  # noqa: E402
from tests.test_optim_torch import torch_cosine, torch_lrs  # noqa: E402


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_gmt_with_clipping_and_a_schedule_matches_torch(schedule):
    """12 trainer steps of GMT (drop 0.5 per tensor, 2 micro-batches, AdamW with weight decay,
    max_norm 0.3, a warmup-cosine or a step schedule) against the twin: the trainer's logged lr is
    torch's scheduler's at every step, clipping was active on most steps (the check is not vacuous),
    the masks are the twin's and the parameters agree within 1e-10."""
    seed, steps, lr, wd, acc, clip, warmup = 5, 12, 2e-2, 0.05, 2, 0.3, 3
    model, task = tiny_gpt(xp=np, seed=seed), counter_task(seed=seed)
    twin = TorchGPT.from_minisft(model.state_dict(), TINY)
    start = host_copy(model.params)
    method = GMT(0.5, scope="tensor")
    cfg = TrainConfig(steps=steps, lr=lr, weight_decay=wd, grad_clip=clip, accumulation=acc, eval_every=steps,
                      seed=seed, schedule=schedule, warmup=warmup, gamma=0.7, step_every=4)
    result = train(model, method, task, cfg, progress=False)
    make_scheduler = (torch_cosine(warmup, steps) if schedule == "cosine"
                      else lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.7))
    logged = [h["lr"] for h in result["history"]["train"]]
    want_lrs = torch_lrs(lr, steps, make_scheduler)
    assert max(abs(a - b) for a, b in zip(logged, want_lrs)) <= 1e-15, (logged, want_lrs)
    norms = [h["grad_norm"] for h in result["history"]["train"]]
    assert sum(n > clip for n in norms) >= steps // 2, f"clipping active on too few steps: norms {norms}"
    rng = np.random.default_rng(seed)
    batches = [[task.sample(rng) for _ in range(acc)] for _ in range(steps)]
    want, masks = ref.train_gmt(twin, batches, lr, wd, 0.5, "tensor", False, grad_clip=clip,
                                make_scheduler=make_scheduler)
    for name, keep in masks[-1].items():
        assert np.array_equal(host_copy(method.masks)[name], keep), f"last step, {name}: mask differs from the twin"
    assert_trained_like(model.params, want, start, steps)
