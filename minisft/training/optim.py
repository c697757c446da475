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
from ..core.errors import bad_type, bad_value, boolean, nonnegative_int, ratio_in, real_in, str_keyed_dict
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
        self.lr = real_in("lr", lr, 0.0, math.inf, low_open=True, high_open=True)
        self.state = {}

    def step(self, params, grads, masks=None, lr=None, check_finite=True):
        """Update `params` in place by `grads` (module docstring). Every argument is checked first:
        gradient names among the parameters', equal shapes, floating dtypes, masks of bools, a
        positive finite `lr`, and (check_finite) finite gradients: a NaN would spread into the
        parameters. The trainer, which checks the gradients' norm itself, passes check_finite=False."""
        lr = self.lr if lr is None else real_in("lr", lr, 0.0, math.inf, low_open=True, high_open=True)
        masks = {} if masks is None else masks
        _check_step(params, grads, masks, boolean("check_finite", check_finite))
        self._apply(params, grads, masks, lr)

    def _apply(self, params, grads, masks, lr):
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


def _check_step(params, grads, masks, check_finite):
    """Optimizer.step's arguments (its docstring)."""
    for arg, d in (("params", params), ("grads", grads), ("masks", masks)):
        str_keyed_dict(arg, d)
    for arg, d in (("grads", grads), ("masks", masks)):
        unknown = sorted(set(d) - set(params))
        if unknown:
            raise bad_value(arg, unknown[:3], f"names among the parameters' ({sorted(params)[:3]}...)")
    finite = []
    for name, g in grads.items():
        if g is None:
            continue
        p = params[name]
        for arg, a in ((f"params[{name!r}]", p), (f"grads[{name!r}]", g)):
            if not (hasattr(a, "dtype") and a.dtype.kind == "f"):
                raise bad_type(arg, a, "a floating-point array (NumPy or CuPy)")
        if g.shape != p.shape:
            raise bad_value(f"grads[{name!r}].shape", g.shape, f"the parameter's shape {p.shape}")
        mask = masks.get(name)
        if mask is not None and not (getattr(mask, "dtype", None) == bool and mask.shape == p.shape):
            raise bad_value(f"masks[{name!r}]", getattr(mask, "shape", mask), f"a bool array of shape {p.shape}")
        if check_finite:
            finite.append(array_module(g).isfinite(g).all())
    if finite and not bool(array_module(finite[0]).stack(finite).all()):  # one host sync for every tensor
        bad = next(name for name, g in grads.items() if g is not None and not bool(array_module(g).isfinite(g).all()))
        raise bad_value(f"grads[{bad!r}]", "an array with NaN or infinite entries", "finite gradients (a NaN "
                        "would spread into the parameters)")


class SGD(Optimizer):
    """θ ← θ − lr·b,  b ← μ b + g (+ λθ in g when weight_decay > 0), as torch.optim.SGD."""

    def __init__(self, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(lr)
        self.momentum = ratio_in("momentum", momentum, 0.0, 1.0, low_open=False, high_open=True)
        self.weight_decay = real_in("weight_decay", weight_decay, 0.0, math.inf, low_open=False, high_open=True)

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
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise bad_type("betas", betas, "a pair (beta1, beta2)")
        self.b1 = ratio_in("betas[0]", betas[0], 0.0, 1.0, low_open=False, high_open=True)
        self.b2 = ratio_in("betas[1]", betas[1], 0.0, 1.0, low_open=False, high_open=True)
        self.eps = real_in("eps", eps, 0.0, math.inf, low_open=True, high_open=True)  # 0: 0/0 for a zero gradient
        self.weight_decay = real_in("weight_decay", weight_decay, 0.0, math.inf, low_open=False, high_open=True)

    @has_fast_path
    def _apply(self, params, grads, masks, lr):
        """Optimizer._apply: every tensor's update by _update (on the GPU the fast path updates all
        tensors in one launch, minisft.gpu.optim)."""
        super()._apply(params, grads, masks, lr)

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
    nonnegative_int("step", step)
    real_in("base_lr", base_lr, 0.0, math.inf, low_open=True, high_open=True)
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
    if max_norm is not None:
        real_in("max_norm", max_norm, 0.0, math.inf, low_open=True, high_open=True)  # -1 would flip the signs
    str_keyed_dict("grads", grads)
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
