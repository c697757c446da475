"""Mean softmax cross-entropy over the targets that are not `ignore_index` (as torch's default):

    L = (1/n) Σ_{valid (b,t)} [ logsumexp(z[b,t,:]) − z[b,t,y[b,t]] ]

Shapes: logits z (B, T, V), targets y (B, T) int  ->  scalar loss (0-d array).
Each row's term is evaluated as (m − z_y) + log1p(s), m = max_v z_v, s = Σ_{v≠a} e^{z_v − m} (a: the
first argmax): two non-negative terms, so it keeps its relative precision when the target is the
largest logit (the term is then log1p(s) ≈ s, where logsumexp − z_y would cancel) and under a large
common offset of the logits. Derivation and error bound: proofs/cross_entropy.md
(tests/test_nn_grad.py::test_cross_entropy_fd, ::test_cross_entropy_torch, ::test_cross_entropy_exact).
"""

from dataclasses import dataclass

from ..core.backend import array_module
from ..core.errors import bad_type, bad_value
from ..core.fastpath import has_fast_path
from .need import backward_need, need_set
from .tokens import check_token_ids

IGNORE_INDEX = -100


@dataclass
class CrossEntropyCache:
    probs: object  # (N, V) softmax(z); with the targets and `complement` it is all dz needs
    targets: object  # (N,) int, ignored entries already replaced by 0
    complement: object  # (N,) 1 − P[n, y_n], computed without the cancellation of 1 − P when P ≈ 1
    valid: object  # (N,) bool
    n_valid: int
    shape: tuple
    need: frozenset


def cross_entropy_forward(logits, targets, ignore_index=IGNORE_INDEX, need=("x",), overwrite=False):
    """Stable log-sum-exp cross-entropy; returns the mean loss as a 0-d array.

    overwrite: the probabilities may be written over `logits` (a contiguous array) instead of into a
    new (N, V) array. For a caller
    that owns the logits and reads them no more (GPT.loss_and_grads): at GPT-2's vocabulary the
    logits are the largest activation, and this keeps one copy instead of two."""
    need = need_set(need, ("x",), "cross_entropy")
    if not (hasattr(logits, "dtype") and logits.dtype.kind == "f" and logits.ndim >= 1):
        raise bad_type("logits", logits, "a floating-point array (..., V)")
    check_token_ids("targets", targets, logits.shape[-1], logits.shape[:-1], ignore_index)
    xp = array_module(logits)
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N, V)
    y = targets.reshape(-1)
    valid = y != ignore_index
    n_valid = int(xp.count_nonzero(valid))
    if n_valid == 0:
        raise bad_value("targets", f"all {y.size} equal to ignore_index={ignore_index}",
                        "at least one target that is not ignored")
    probs, row_loss, complement = cross_entropy_rows(z, y, ignore_index, out=z if overwrite else None)
    loss = xp.sum(row_loss) / n_valid
    keep = "x" in need
    return loss, CrossEntropyCache(probs if keep else None, xp.where(valid, y, 0), complement if keep else None,
                                   valid, n_valid, logits.shape, need)


@has_fast_path
def cross_entropy_rows(z, y, ignore_index, out=None):
    """(softmax(z) (N, V), per-row loss (N,), 1 − softmax(z)[n, y[n]] (N,)) of logits z (N, V) and int
    targets y (N,). With m = max z[n], a the first argmax and s = Σ_{v≠a} e^{z[n,v] − m}:

        loss[n] = (m − z[n, y[n]]) + log1p(s)        (0 where y[n] == ignore_index)
        P[n, v] = e^{z[n,v] − m} / (1 + s)
        1 − P[n, y[n]] = s / (1 + s) where z[n, y[n]] == m, else 1 − P[n, y[n]] (then P ≤ 1/2)

    The probabilities are written into `out` when given (it may be z itself)."""
    xp = array_module(z)
    valid = y != ignore_index
    y = xp.where(valid, y, 0)
    rows = xp.arange(z.shape[0])
    z_target = z[rows, y]  # read before z may be overwritten
    top = xp.argmax(z, axis=-1)
    zmax = z[rows, top]
    e = xp.subtract(z, zmax[:, None], out=out)
    xp.exp(e, out=e)
    e[rows, top] = 0.0  # s leaves out the argmax's own e^0 = 1, so a small s is not rounded away in 1 + s
    s = xp.sum(e, axis=-1)
    loss = xp.where(valid, (zmax - z_target) + xp.log1p(s), 0.0)
    total = 1.0 + s
    e /= total[:, None]
    e[rows, top] = 1.0 / total
    complement = xp.where(z_target == zmax, s / total, 1.0 - e[rows, y])
    return e, loss, complement


def cross_entropy_backward(dloss, cache, need=None, overwrite=False):
    """dz = dL · (softmax(z) − onehot(y)) / n on valid rows, 0 on ignored rows; the target entry is
    −dL · (1 − P[n, y_n]) / n with the cached complement (exact also where P[n, y_n] ≈ 1).

    overwrite: write dz over the cached probabilities (the cache is spent afterwards)."""
    need = backward_need(need, cache.need, "cross_entropy")
    if "x" not in need:
        return {}
    scale = float(dloss) / cache.n_valid
    dz = cross_entropy_input_grad(cache.probs, cache.targets, cache.complement, cache.valid, scale,
                                  out=cache.probs if overwrite else None)
    return {"x": dz.reshape(cache.shape)}


@has_fast_path
def cross_entropy_input_grad(probs, y, complement, valid, scale, out=None):
    """dz = scale · (probs − onehot(y)) on valid rows, 0 on the others, the target entry written as
    −scale · complement: probs (N, V), y (N,) int, complement (N,) = 1 − probs[n, y[n]], valid (N,)
    bool; into `out` when given (it may be probs itself)."""
    xp = array_module(probs)
    dz = probs.copy() if out is None else out
    dz[xp.arange(dz.shape[0]), y] = -complement
    dz *= xp.asarray(scale, dtype=dz.dtype) * valid[:, None]
    return dz
