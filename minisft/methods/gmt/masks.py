"""GMT's gradient masks (map: minisft/methods/gmt/__init__.py; decisions: proofs/decisions.md §4).

    gradient_mask(G, r)          per tensor (the paper's default): exactly floor(r * n) entries
                                 of smallest |G| are dropped (False), n = G.size
    gradient_masks(Gs, r)        the same for several tensors, validated together
    global_gradient_masks(Gs, r) one ranking over all tensors: exactly floor(r * N_total) dropped

The ranking is minisft.methods.select's exact smallest-k selection. Derivations: proofs/gmt_mask.md.
"""

from ...core.errors import real_in
from ..select import ratio_count, smallest_k_keep_mask_each, smallest_k_keep_masks, tensor_list


def _drop_ratio(drop_ratio):
    return real_in("drop_ratio", drop_ratio, 0.0, 1.0, low_open=False, high_open=True)


def _per_tensor_masks(arrays, drop_ratio):
    return smallest_k_keep_mask_each(arrays, [ratio_count(drop_ratio, a.size, "floor") for a in arrays])


def gradient_mask(grad, drop_ratio):
    """Per-tensor GMT mask. grad: any shape, float -> bool of the same shape (True = kept), with
    exactly floor(drop_ratio * grad.size) False at the smallest |grad| (ties: lower flat index
    dropped first)."""
    drop_ratio = _drop_ratio(drop_ratio)
    [grad], _ = tensor_list("grad", [grad])
    return _per_tensor_masks([grad], drop_ratio)[0]


def gradient_masks(grads, drop_ratio):
    """Per-tensor GMT masks of several tensors: list/tuple or dict of float arrays -> the same
    structure of gradient_mask(grad, drop_ratio). The NaN check runs over all tensors at once, so a
    training step synchronises with the device once, not once per tensor."""
    drop_ratio = _drop_ratio(drop_ratio)
    arrays, rebuild = tensor_list("grads", grads)
    return rebuild(_per_tensor_masks(arrays, drop_ratio))


def global_gradient_masks(grads, drop_ratio):
    """Global-scope GMT masks. grads: list/tuple or dict of float arrays -> the same structure of
    bool masks (True = kept), exactly floor(drop_ratio * N_total) False over all tensors together
    (ties: earlier tensor, then lower flat index, dropped first). No concatenated copy is made."""
    drop_ratio = _drop_ratio(drop_ratio)
    arrays, rebuild = tensor_list("grads", grads)
    total = sum(a.size for a in arrays)
    return rebuild(smallest_k_keep_masks(arrays, ratio_count(drop_ratio, total, "floor")))
