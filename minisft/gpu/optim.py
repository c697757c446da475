"""AdamW's fast path: torch's AdamW arithmetic (minisft.training.optim.AdamW._update) as one fused
kernel per tensor (kernels.adamw), and every tensor of a step in one launch (kernels.adamw_many:
each with its own step count and bias corrections) when they are all C-contiguous arrays of one
dtype. A model's 148 tensors then cost one launch instead of ~15 per tensor."""

import weakref

from ..core.backend import array_module
from ..core.fastpath import on_device, register
from ..training.optim import AdamW
from . import kernels

# optimizer -> {name: (p, exp_avg, exp_avg_sq)} found fit for the one-launch update: p and its moments
# live across steps, so they are checked again only when one of them is another array (identity)
_CHECKED = weakref.WeakKeyDictionary()


def _todo(params, grads):
    return [(name, p, grads[name]) for name, p in params.items() if grads.get(name) is not None]


def _one_launch(opt, name, p, g, dtype):
    """Whether tensor `name` can join the one-launch update: C-contiguous, of `dtype`, g and any
    existing moments alike."""
    if not (g.dtype == dtype and g.shape == p.shape and g.flags.c_contiguous):
        return False
    st = opt.state.get(name, {})
    held = (p, st.get("exp_avg"), st.get("exp_avg_sq"))
    checked = _CHECKED.setdefault(opt, {})
    seen = checked.get(name)
    if seen is not None and all(a is b for a, b in zip(seen, held)):
        return True
    ok = all(a is None or (a.dtype == dtype and a.shape == p.shape and a.flags.c_contiguous) for a in held)
    if ok:
        checked[name] = held
    return ok


def _step_takes(opt, params, grads, masks, lr):
    todo = _todo(params, grads)
    return bool(todo) and on_device(todo[0][1]) and all(_one_launch(opt, name, p, g, todo[0][1].dtype)
                                                         for name, p, g in todo)


def adamw_step_one_launch(opt, params, grads, masks, lr):
    """AdamW._apply with every tensor's update in one kernels.adamw_many launch."""
    todo = _todo(params, grads)
    xp = array_module(todo[0][1])
    states, bc1s, bc2s = [], [], []
    for name, p, _ in todo:
        st = opt.state.setdefault(name, {})
        st["step"] = st.get("step", 0) + 1
        opt._moments(st, p)
        states.append(st)
        bc1s.append(1 - opt.b1 ** st["step"])
        bc2s.append(1 - opt.b2 ** st["step"])
    keep = [masks.get(name) for name, _, _ in todo]
    kernels.adamw_many([p for _, p, _ in todo], [g for _, _, g in todo],
                       [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states],
                       [None if k is None else xp.ascontiguousarray(k) for k in keep],
                       lr, opt.weight_decay, opt.b1, opt.b2, opt.eps, bc1s, bc2s)


def adamw_update_fused(opt, st, p, g, lr, mask):
    """AdamW._update as one kernels.adamw launch."""
    opt._moments(st, p)
    kernels.adamw(p, g, st["exp_avg"], st["exp_avg_sq"], lr, opt.weight_decay, opt.b1, opt.b2, opt.eps,
                  1 - opt.b1 ** st["step"], 1 - opt.b2 ** st["step"], mask)


register(AdamW._apply, adamw_step_one_launch, _step_takes)
register(AdamW._update, adamw_update_fused, lambda opt, st, p, g, lr, mask: on_device(p))
