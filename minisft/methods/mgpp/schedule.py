"""MGPP's pruning schedule and masks (map and choices: minisft/methods/mgpp/__init__.py).

    cubic_sparsity(t, s_f, t_i, t_f, s_i)   s_t = s_f + (s_i - s_f) * (1 - (t - t_i) / (t_f - t_i))^3
                                            for t_i <= t <= t_f; s_i before t_i, s_f from t_f on
                                            (Zhu & Gupta 2017)
    magnitude_masks(params, s_t, scope)     exactly round(s_t * n) smallest-|theta| entries pruned,
                                            over all tensors together ("global") or per tensor
                                            ("layer"); `kept=` re-prunes among an earlier step's
                                            survivors
Derivations: proofs/mgpp_prior.md.
"""

from ...backend import array_module
from ...errors import bad_value, nonnegative_int, real_in, require
from ...select import ratio_count, smallest_k_keep_mask, smallest_k_keep_masks, tensor_list

DEFAULT_PRUNE_START_FRACTION = 0.1  # t_i as a fraction of the training steps
DEFAULT_PRUNE_END_FRACTION = 0.7  # t_f as a fraction of the training steps
DEFAULT_PRUNE_EVERY = 10  # Delta t: re-prune every this many steps
SCOPES = ("global", "layer")


def cubic_sparsity(step, final, t_start, t_end, initial=0.0):
    """Sparsity s_t at integer `step` (a Python float): `initial` for step <= t_start, `final` for
    step >= t_end, s_f + (s_i - s_f) * (1 - (step - t_start) / (t_end - t_start))^3 between
    (clamped into [initial, final] against rounding). 0 <= initial <= final < 1, 0 <= t_start < t_end.
    """
    step = nonnegative_int("step", step)
    t_start = nonnegative_int("t_start", t_start)
    t_end = nonnegative_int("t_end", t_end)
    require(t_end > t_start, "t_end", t_end, f"an integer greater than t_start={t_start}")
    final = real_in("final", final, 0.0, 1.0, low_open=False, high_open=True)
    initial = real_in("initial", initial, 0.0, final, low_open=False, high_open=False)
    if step <= t_start:
        return initial
    if step >= t_end:
        return final
    remaining = 1.0 - (step - t_start) / (t_end - t_start)
    s = final + (initial - final) * (remaining * remaining * remaining)
    return min(max(s, initial), final)


def magnitude_masks(params, sparsity, scope="global", kept=None):
    """Magnitude-pruning masks. params: dict name -> float array (or a list/tuple) -> the same
    structure of bool masks (True = kept). Exactly round(sparsity * n) entries are False (rounded
    half up), n = all entries together (scope="global") or each tensor's (scope="layer"); the
    smallest |theta| go first, ties by (tensor order, lower flat index). sparsity in [0, 1).

    kept: None, or the masks of an earlier pruning step (the structure of `params`, True = kept).
    Entries pruned there stay pruned and count toward round(sparsity * n); the rest of the count is
    taken among the survivors only (pruned entries rank as +inf), so a survivor at exactly 0 cannot
    make a pruned entry come back through the tie rule. The result only loses True entries.
    """
    sparsity = real_in("sparsity", sparsity, 0.0, 1.0, low_open=False, high_open=True)
    require(scope in SCOPES, "scope", scope, f"one of {SCOPES}")
    arrays, rebuild = tensor_list("params", params)
    xp = array_module(*arrays)
    pruned = [0] * len(arrays)
    if kept is not None:
        old = _earlier_masks(kept, params, arrays)
        arrays = [xp.where(m, xp.abs(a), xp.inf) for a, m in zip(arrays, old)]
        pruned = [int(m.size - xp.count_nonzero(m)) for m in old]
    if scope == "layer":
        more = [ratio_count(sparsity, a.size, "half_up") - p for a, p in zip(arrays, pruned)]
        masks = [smallest_k_keep_mask(a, _new_count(k, sparsity)) for a, k in zip(arrays, more)]
    else:
        more = ratio_count(sparsity, sum(a.size for a in arrays), "half_up") - sum(pruned)
        masks = smallest_k_keep_masks(arrays, _new_count(more, sparsity))
    if kept is not None:
        masks = [m & o for m, o in zip(masks, old)]
    return rebuild(masks)


def _new_count(k, sparsity):
    """k entries still to prune, after checking the earlier masks did not prune more than the target."""
    require(k >= 0, "kept", f"masks that already prune {-k} entries more than sparsity={sparsity!r} asks",
            "earlier masks of a lower or equal sparsity")
    return k


def _earlier_masks(kept, params, arrays):
    """`kept` as a list of bool arrays matching `params` (structure, shapes, backend)."""
    if isinstance(params, dict):
        if not isinstance(kept, dict) or set(kept) != set(params):
            raise bad_value("kept", type(kept).__name__, f"a dict with the keys of params: {list(params)[:4]}")
        masks, labels = [kept[name] for name in params], [f"kept[{name!r}]" for name in params]
    else:
        if not isinstance(kept, (list, tuple)) or len(kept) != len(arrays):
            raise bad_value("kept", type(kept).__name__, f"a list of {len(arrays)} masks, one per array of params")
        masks, labels = list(kept), [f"kept[{i}]" for i in range(len(kept))]
    xp = array_module(*arrays)
    for label, m, a in zip(labels, masks, arrays):
        ok = getattr(m, "dtype", None) == bool and tuple(m.shape) == tuple(a.shape) and array_module(m) is xp
        require(ok, label, f"{getattr(m, 'dtype', type(m).__name__)} of shape {getattr(m, 'shape', None)}",
                f"a bool array of shape {tuple(a.shape)} on the backend of params")
    return masks
