"""Mean softmax cross-entropy over the targets that are not `ignore_index` (as torch's default):

    L = (1/n) Σ_{valid (b,t)} [ logsumexp(z[b,t,:]) − z[b,t,y[b,t]] ]

Shapes: logits z (B, T, V), targets y (B, T) int  ->  scalar loss (0-d array).
Derivation: proofs/cross_entropy.md (tests/test_nn_grad.py::test_cross_entropy_fd, ::..._torch).
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
    probs: object  # (N, V) softmax(z); with the targets it is all dz needs
    targets: object  # (N,) int, ignored entries already replaced by 0
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
    probs, row_loss = cross_entropy_rows(z, y, ignore_index, out=z if overwrite else None)
    loss = xp.sum(row_loss) / n_valid
    probs = probs if "x" in need else None
    return loss, CrossEntropyCache(probs, xp.where(valid, y, 0), valid, n_valid, logits.shape, need)


@has_fast_path
def cross_entropy_rows(z, y, ignore_index, out=None):
    """(softmax(z) (N, V), per-row loss (N,)) of logits z (N, V) and int targets y (N,): the loss of
    row n is logsumexp(z[n]) − z[n, y[n]], 0 where y[n] == ignore_index; the probabilities are
    written into `out` when given (it may be z itself)."""
    xp = array_module(z)
    valid = y != ignore_index
    y = xp.where(valid, y, 0)
    z_target = xp.take_along_axis(z, y[:, None], axis=-1)[:, 0]  # read before z may be overwritten
    zmax = xp.max(z, axis=-1, keepdims=True)
    e = xp.subtract(z, zmax, out=out)
    xp.exp(e, out=e)
    sumexp = xp.sum(e, axis=-1, keepdims=True)
    lse = (zmax + xp.log(sumexp))[:, 0]  # (N,)
    e /= sumexp
    return e, xp.where(valid, lse - z_target, 0.0)


def cross_entropy_backward(dloss, cache, need=None, overwrite=False):
    """dz = dL · (softmax(z) − onehot(y)) / n on valid rows, 0 on ignored rows.

    overwrite: write dz over the cached probabilities (the cache is spent afterwards)."""
    need = backward_need(need, cache.need, "cross_entropy")
    if "x" not in need:
        return {}
    scale = float(dloss) / cache.n_valid
    dz = cross_entropy_input_grad(cache.probs, cache.targets, cache.valid, scale,
                                  out=cache.probs if overwrite else None)
    return {"x": dz.reshape(cache.shape)}


@has_fast_path
def cross_entropy_input_grad(probs, y, valid, scale, out=None):
    """dz = scale · (probs − onehot(y)) on valid rows, 0 on the others: probs (N, V), y (N,) int,
    valid (N,) bool; into `out` when given (it may be probs itself)."""
    xp = array_module(probs)
    dz = probs.copy() if out is None else out
    dz[xp.arange(dz.shape[0]), y] -= 1.0
    dz *= xp.asarray(scale, dtype=dz.dtype) * valid[:, None]
    return dz
