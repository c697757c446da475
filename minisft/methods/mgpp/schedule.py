"""MGPP's pruning schedule and masks (map: minisft/methods/mgpp/__init__.py; decisions:
proofs/decisions.md §MGPP).

    cubic_sparsity(t, s_f, t_i, t_f, s_i)   0 before t_i, s_i at t_i,
                                            s_t = s_f + (s_i - s_f) * (1 - (t - t_i) / (t_f - t_i))^3
                                            up to t_f, s_f from t_f on (Zhu & Gupta 2017, as the
                                            authors' CubicSparsityScheduler runs it)
    pruning_steps(t_i, t_f, every)          t_i, t_i + every, t_i + 2 every, ... below t_f, and t_f
    annealed_lambda(t, lam, lam_final, ...) PTMGP's λ annealing: lam up to t_i, linear in t to
                                            lam_final at t_f
    magnitude_masks(params, s_t, scope)     count_rule="exact": exactly round(s_t * n) smallest-|theta|
                                            entries pruned; count_rule="authors": every |theta|
                                            strictly below the k-th smallest, k = int(n * s_t);
                                            over all tensors together ("global") or per tensor
                                            ("layer"); `kept=` keeps an earlier step's pruned
                                            entries pruned (monotone mode)
Derivations: proofs/mgpp_prior.md.
"""

from ...core.backend import array_module
from ...core.errors import bad_value, nonnegative_int, positive_int, real_in, require
from ..select import (below_kth_smallest_keep_masks, ratio_count, smallest_k_keep_mask, smallest_k_keep_masks,
    tensor_list)

DEFAULT_PRUNE_END_FRACTION = 0.9  # t_f as a fraction of the training steps (BayesianPruner)
DEFAULT_PRUNE_EVERY_FRACTION = 0.01  # Δt as a fraction of the training steps (BayesianPruner)
SCOPES = ("global", "layer")
COUNT_RULES = ("exact", "authors")


def cubic_sparsity(step, final, t_start, t_end, initial=0.0):
    """Sparsity s_t at integer `step` (a Python float): 0 before t_start, then
    s_f + (s_i - s_f) * (1 - (step - t_start) / (t_end - t_start)) ** 3 up to t_end (s_i at
    t_start, s_f at t_end), `final` after. 0 <= initial <= final < 1, 0 <= t_start < t_end.

    Evaluated as the authors' code evaluates it (BayesianPruner `CubicSparsityScheduler.
    calculate_sparsity`, PTMGP `MWA.sparsity_scheduler`: the same float operations, `** 3`), so
    their count int(n * s_t) agrees bit for bit; at t_start the value is within an ulp of s_i
    (proofs/mgpp_prior.md §4)."""
    step = nonnegative_int("step", step)
    t_start = nonnegative_int("t_start", t_start)
    t_end = nonnegative_int("t_end", t_end)
    require(t_end > t_start, "t_end", t_end, f"an integer greater than t_start={t_start}")
    final = real_in("final", final, 0.0, 1.0, low_open=False, high_open=True)
    initial = real_in("initial", initial, 0.0, final, low_open=False, high_open=False)
    if step < t_start:
        return 0.0
    if step > t_end:
        return final
    remaining = 1 - (step - t_start) / (t_end - t_start)
    return max(final + (initial - final) * (remaining ** 3), 0.0)


def pruning_steps(t_start, t_end, every):
    """The steps that prune, ascending: t_start, then t_start + k * every below t_end (the grid
    counted from t_start, as BayesianPruner's CubicSparsityScheduler), and t_end."""
    t_start = nonnegative_int("t_start", t_start)
    t_end = nonnegative_int("t_end", t_end)
    require(t_end > t_start, "t_end", t_end, f"an integer greater than t_start={t_start}")
    every = positive_int("every", every)
    return list(range(t_start, t_end, every)) + [t_end]


def annealed_lambda(step, lam, lam_final, t_start, t_end):
    """λ at `step` (PTMGP pruners/MWA.py `MWA.annealing_scheduler` with alpha_i = 1): `lam` up to
    t_start, lam_final + (lam - lam_final) * (1 - (step - t_start) / (t_end - t_start)) between,
    `lam_final` from t_end on. lam_final=None: `lam` at every step (BayesianPruner's constant prior)."""
    for arg, value in (("step", step), ("t_start", t_start), ("t_end", t_end)):
        nonnegative_int(arg, value)
    lam = real_in("lam", lam, 0.0, 1.0, low_open=True, high_open=True)
    if lam_final is not None:
        lam_final = real_in("lam_final", lam_final, 0.0, 1.0, low_open=True, high_open=True)
    if lam_final is None or step <= t_start:
        return lam
    if step >= t_end:
        return lam_final
    return lam_final + (lam - lam_final) * (1.0 - (step - t_start) / (t_end - t_start))


def authors_count(sparsity, n):
    """k = int(n * sparsity) in float arithmetic: the authors' kthvalue rank (MWA.py
    `calculate_mask_threshold`, BayesianPruner `calculate_pruning_threshold`)."""
    return int(n * sparsity)


def magnitude_masks(params, sparsity, scope="global", kept=None, count_rule="exact"):
    """Magnitude-pruning masks. params: dict name -> float array (or a list/tuple) -> the same
    structure of bool masks (True = kept); n = all entries together (scope="global") or each
    tensor's (scope="layer"); sparsity in [0, 1).

    count_rule="exact": exactly round(sparsity * n) entries are False (rounded half up, the ratio
    read as its shortest decimal); the smallest |theta| go first, ties by (tensor order, lower flat
    index). count_rule="authors": the entries whose |theta| is strictly below the k-th smallest,
    k = int(n * sparsity) (k - 1 entries without ties, fewer with ties, none when k = 0).

    kept: None, or the masks of an earlier pruning step (the structure of `params`, True = kept);
    the result then only loses True entries. "exact": the pruned entries count toward
    round(sparsity * n) and the rest is taken among the survivors (pruned entries rank as +inf,
    so a survivor at exactly 0 cannot revive a pruned entry through the tie rule); "authors": the
    rule above on all entries, and-ed with `kept`.
    """
    sparsity = real_in("sparsity", sparsity, 0.0, 1.0, low_open=False, high_open=True)
    require(scope in SCOPES, "scope", scope, f"one of {SCOPES}")
    require(count_rule in COUNT_RULES, "count_rule", count_rule, f"one of {COUNT_RULES}")
    arrays, rebuild = tensor_list("params", params)
    old = None if kept is None else _earlier_masks(kept, params, arrays)
    if count_rule == "authors":
        groups = [arrays] if scope == "global" else [[a] for a in arrays]
        masks = [m for g in groups
                 for m in below_kth_smallest_keep_masks(g, authors_count(sparsity, sum(a.size for a in g)))]
    else:
        masks = _exact_masks(arrays, sparsity, scope, old)
    if old is not None:
        masks = [m & o for m, o in zip(masks, old)]
    return rebuild(masks)


def _exact_masks(arrays, sparsity, scope, old):
    """count_rule="exact" masks, among the survivors of `old` (None: all entries) when given."""
    xp = array_module(*arrays)
    pruned = [0] * len(arrays)
    if old is not None:
        arrays = [xp.where(m, xp.abs(a), xp.inf) for a, m in zip(arrays, old)]
        pruned = [int(m.size - xp.count_nonzero(m)) for m in old]
    if scope == "layer":
        more = [ratio_count(sparsity, a.size, "half_up") - p for a, p in zip(arrays, pruned)]
        return [smallest_k_keep_mask(a, _new_count(k, sparsity)) for a, k in zip(arrays, more)]
    more = ratio_count(sparsity, sum(a.size for a in arrays), "half_up") - sum(pruned)
    return smallest_k_keep_masks(arrays, _new_count(more, sparsity))


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
