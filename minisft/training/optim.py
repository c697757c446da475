"""Optimizers (SGD with momentum, AdamW), learning-rate schedules and global-norm clipping.

Optimizers update arrays in place and hold state only for the tensors they are given (the
trainable ones), created lazily at the first step. `step(params, grads, masks=None)`:
- `params`, `grads`: {name: array}; a name in params with no gradient this step is skipped.
- `masks`: {name: bool array} of entries the step may change. Masked-out entries are left
  exactly as they are — parameter *and* optimizer state (GMT's `freeze_masked=True`, pruned weights
  in MGPP). To merely zero a gradient while AdamW's momentum and weight decay still act (GMT's
  default), mask the gradient before calling step instead.

AdamW follows torch.optim.AdamW (Loshchilov & Hutter 2019) operation for operation:
    θ ← θ·(1 − lr·λ);  m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²
    θ ← θ − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε)
with t counted per tensor, as torch does: a tensor's t advances only on steps that give it a
gradient (a tensor skipped at some step, or added later, gets torch's bias correction). Within a
tensor, t is shared by its entries: an entry masked out for a while resumes with the tensor's t.
"""

import math

import numpy as np

from ..core.backend import array_module
from ..core.errors import bad_value, ratio_in
from ..core.fastpath import has_fast_path


def _masked_assign(old, new, mask):
    """old[...] = new where mask, unchanged elsewhere (in place)."""
    xp = array_module(old)
    if mask is None:
        old[...] = new
    else:
        old[...] = xp.where(mask, new, old)


class Optimizer:
    def __init__(self, lr):
        self.lr = float(lr)
        if not self.lr > 0:
            raise bad_value("lr", lr, "a positive learning rate")
        self.state = {}

    def step(self, params, grads, masks=None, lr=None):
        lr = self.lr if lr is None else lr
        masks = masks or {}
        for name, p in params.items():
            g = grads.get(name)
            if g is not None:
                st = self.state.setdefault(name, {})
                st["step"] = st.get("step", 0) + 1
                self._update(st, p, g, lr, masks.get(name))

    def state_arrays(self):
        """{state name: array} for checkpoints and the memory meter (step counts as 0-d int64)."""
        return {f"{name}.{k}": (np.asarray(v, dtype=np.int64) if k == "step" else v)
                for name, st in self.state.items() for k, v in st.items()}

    def load_state_arrays(self, arrays):
        for key, v in arrays.items():
            name, k = key.rsplit(".", 1)
            self.state.setdefault(name, {})[k] = int(v) if k == "step" else v


class SGD(Optimizer):
    """θ ← θ − lr·b,  b ← μ b + g (+ λθ in g when weight_decay > 0), as torch.optim.SGD."""

    def __init__(self, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(lr)
        self.momentum = ratio_in("momentum", momentum, 0.0, 1.0, low_open=False, high_open=True)
        self.weight_decay = float(weight_decay)

    def _update(self, st, p, g, lr, mask):
        xp = array_module(p)
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = xp.zeros_like(p)
                _masked_assign(st["momentum_buffer"], g, mask)
            else:
                _masked_assign(st["momentum_buffer"], self.momentum * st["momentum_buffer"] + g, mask)
            g = st["momentum_buffer"]
        _masked_assign(p, p - lr * g, mask)


class AdamW(Optimizer):
    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(lr)
        self.b1 = ratio_in("betas[0]", betas[0], 0.0, 1.0, low_open=False, high_open=True)
        self.b2 = ratio_in("betas[1]", betas[1], 0.0, 1.0, low_open=False, high_open=True)
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    @has_fast_path
    def step(self, params, grads, masks=None, lr=None):
        """Optimizer.step: every tensor's update by _update (on the GPU the fast path updates all
        tensors in one launch, minisft.gpu.optim)."""
        super().step(params, grads, masks, lr)

    @staticmethod
    def _moments(st, p):
        xp = array_module(p)
        if "exp_avg" not in st:
            st["exp_avg"], st["exp_avg_sq"] = xp.zeros_like(p), xp.zeros_like(p)

    @has_fast_path
    def _update(self, st, p, g, lr, mask):
        xp = array_module(p)
        self._moments(st, p)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        bc1, bc2 = 1 - self.b1 ** st["step"], 1 - self.b2 ** st["step"]
        if mask is None:  # the same operations in place: two temporaries, no copies back
            if self.weight_decay:  # θ·1 = θ exactly: nothing to do without decay
                p *= 1 - lr * self.weight_decay
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            gg = g * g
            gg *= 1 - self.b2
            v += gg
            denom = xp.sqrt(v, out=gg)
            denom /= math.sqrt(bc2)
            denom += self.eps
            step = xp.divide(m, denom, out=denom)
            step *= lr / bc1
            p -= step
            return
        new_p = p * (1 - lr * self.weight_decay)
        new_m = self.b1 * m + (1 - self.b1) * g
        new_v = self.b2 * v + (1 - self.b2) * (g * g)
        denom = xp.sqrt(new_v) / math.sqrt(bc2) + self.eps
        new_p -= (lr / bc1) * (new_m / denom)
        for old, new in ((m, new_m), (v, new_v), (p, new_p)):
            _masked_assign(old, new, mask)


def make_optimizer(name, lr, weight_decay=0.0, **kw):
    if name == "adamw":
        return AdamW(lr=lr, weight_decay=weight_decay, **kw)
    if name == "sgd":
        return SGD(lr=lr, weight_decay=weight_decay, **kw)
    raise bad_value("optimizer", name, "'adamw' or 'sgd'")


# ----------------------------------------------------------------------------------- schedules
def lr_at(step, base_lr, schedule="constant", total_steps=None, warmup=0, gamma=0.85, step_every=1,
          final_fraction=0.0):
    """Learning rate at `step` (0-based):
    constant;  cosine — linear warmup over `warmup` steps, then cosine from base_lr down to
    final_fraction · base_lr at total_steps (torch's CosineAnnealingLR with eta_min = final_fraction ·
    base_lr);  step — base_lr · gamma^⌊step / step_every⌋ (SPruFT's ×0.85 per epoch)."""
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        if total_steps is None or total_steps <= warmup:
            raise bad_value("total_steps", total_steps, f"an integer > warmup={warmup} for the cosine schedule")
        if step < warmup:
            return base_lr * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / (total_steps - warmup))
        return base_lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))
    if schedule == "step":
        return base_lr * gamma ** (step // step_every)
    raise bad_value("schedule", schedule, "'constant', 'cosine' or 'step'")


def clip_grad_norm(grads, max_norm):
    """Scale all gradients in place so their global L2 norm is at most max_norm; returns the norm
    before clipping. As torch.nn.utils.clip_grad_norm_: the factor is max_norm / (norm + 1e-6),
    clamped at 1, so a norm less than 1e-6 below max_norm is still scaled (by less than 1e-6)."""
    if not grads:
        return 0.0
    xp = array_module(next(iter(grads.values())))
    # squared norms summed on the device: one host sync per step, no g*g temporaries
    total = math.sqrt(float(sum(xp.vdot(g.ravel(), g.ravel()) for g in grads.values())))
    scale = 1.0 if max_norm is None else max_norm / (total + 1e-6)
    if scale < 1.0:  # torch multiplies by the clamped factor; a factor of 1 changes nothing
        for g in grads.values():
            g *= scale
    return total
