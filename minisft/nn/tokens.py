"""Token-id arrays, checked where a layer indexes with them (embedding rows, cross-entropy targets):
NumPy and CuPy index a negative id from the end and an id past the end with an IndexError, so an id
outside [0, n) is refused here, by name, before it is used."""

from ..core.backend import array_module, to_numpy
from ..core.errors import bad_type, bad_value


def check_token_ids(arg, ids, n, shape=None, ignore_index=None):
    """`ids` after checking it is an integer array (of `shape`, when given) whose entries lie in
    [0, n) or equal `ignore_index`; one reduction on the array's device."""
    if not (hasattr(ids, "dtype") and hasattr(ids, "shape")) or ids.dtype.kind not in "iu":
        raise bad_type(arg, ids, "an integer array of token ids (NumPy or CuPy)")
    if shape is not None and tuple(ids.shape) != tuple(shape):
        raise bad_value(f"{arg}.shape", tuple(ids.shape), f"{tuple(shape)}")
    xp = array_module(ids)
    ok = (ids >= 0) & (ids < n)
    if ignore_index is not None:
        ok |= ids == ignore_index
    if not bool(xp.all(ok)):
        bad = to_numpy(ids[~ok])[:5].tolist()
        extra = "" if ignore_index is None else f" or {ignore_index} (ignored)"
        raise bad_value(arg, f"ids {bad}", f"token ids in [0, {n}){extra}")
    return ids
