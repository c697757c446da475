"""The `need` protocol shared by every layer: which gradients backward will compute."""

from ..core.errors import bad_value


def need_set(need, allowed, layer):
    """Validate a forward-time `need` (an iterable of input names) against `allowed`."""
    need = frozenset(need)
    unknown = need - frozenset(allowed)
    if unknown:
        raise bad_value(f"{layer}: need", sorted(need), f"a subset of {sorted(allowed)}")
    return need


def backward_need(need, cache_need, layer):
    """The gradients to compute in backward: `need` (default: all prepared at forward), which must
    be a subset of what the forward pass cached for."""
    if need is None:
        return cache_need
    need = frozenset(need)
    if not need <= cache_need:
        raise bad_value(
            f"{layer}: need",
            sorted(need),
            f"a subset of the gradients prepared at forward, {sorted(cache_need)}",
        )
    return need
