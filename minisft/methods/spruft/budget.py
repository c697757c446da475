"""SPruFT's budget: how many rows (or neuron groups) each layer trains, exact trainable counts,
and the budget that matches LoRA's (map: minisft/methods/spruft/__init__.py)."""

import math
from fractions import Fraction

from ...model.budgets import lora_trainable, target_shapes
from ...core.errors import bad_value, boolean, positive_int, real_in, require
from ...model.gpt import LINEAR_SUFFIXES
from ..select import decimal_fraction, ratio_count

DEFAULT_RATIO = 0.024  # the released script's --finetuning_ratio (proofs/decisions.md §1)


def check_budget(ratio, rows):
    """(ratio, rows) validated: at most one of them given; ratio in (0, 1], DEFAULT_RATIO when neither
    is given; rows a positive integer. The one not used is None."""
    if ratio is not None and rows is not None:
        raise bad_value("ratio/rows", (ratio, rows), "exactly one of ratio and rows (the other None)")
    if rows is None:
        return real_in("ratio", DEFAULT_RATIO if ratio is None else ratio, 0.0, 1.0, low_open=True, high_open=False), None
    return None, positive_int("rows", rows)


def rows_for_ratio(d_out, ratio):
    """floor(ratio · d_out) rounded down to a multiple of 4, at least 1; ratio in (0, 1]."""
    d_out = positive_int("d_out", d_out)
    ratio = real_in("ratio", ratio, 0.0, 1.0, low_open=True, high_open=False)
    k = ratio_count(ratio, d_out, "floor")
    return max(1, k - k % 4)


def unit_count(size, ratio, rows):
    """What one unit of `size` rows (or groups) trains: rows_for_ratio(size, ratio), or `rows`."""
    return rows_for_ratio(size, ratio) if rows is None else rows


def spruft_rows_per_layer(model_config, ratio=None, rows=None, targets=LINEAR_SUFFIXES):
    """{layer: kept rows} of SPruFT's row mode with scope="layer" (exactly one of ratio, rows)."""
    ratio, rows = check_budget(ratio, rows)
    layers = target_shapes(model_config, targets)
    if rows is not None:
        smallest = min(d_out for _, d_out, _ in layers)
        require(rows <= smallest, "rows", rows, f"at most {smallest}, the rows of the smallest layer")
    return {layer: unit_count(d_out, ratio, rows) for layer, d_out, _ in layers}


def spruft_trainable(model_config, ratio=None, rows=None, targets=LINEAR_SUFFIXES, bias=True):
    """Exact SPruFT trainable count (row mode, scope="layer"): Σ_layers k_l·(d_in + bias)."""
    d_in = {layer: d for layer, _, d in target_shapes(model_config, targets)}
    counts = spruft_rows_per_layer(model_config, ratio, rows, targets)
    return sum(k * (d_in[layer] + int(boolean("bias", bias))) for layer, k in counts.items())


def _short_decimal_in(low, high):
    """The shortest decimal ratio ρ with low <= ρ < high (Fractions, 0 <= low < high <= 1), or 1 when
    high is past 1; a float whose decimal reading (`select.decimal_fraction`) is exactly ρ."""
    for digits in range(1, 18):
        scale = 10**digits
        candidate = Fraction(math.ceil(max(low, Fraction(1, scale)) * scale), scale)
        if candidate < high:
            value = float(candidate)
            if decimal_fraction(value) == candidate:
                return value
    raise AssertionError(f"no short decimal in [{low}, {high})")  # unreachable: high - low >= 1/d_out²


def rows_matching_lora(model_config, r, targets=LINEAR_SUFFIXES, bias=True):
    """The SPruFT budget (row mode, scope="layer") whose exact trainable count — row weights plus bias
    deltas — is closest to LoRA's at rank r on the same target layers.

    Searches every per-layer row count `rows` = k (1 <= k <= smallest d_out) and every distinct
    outcome of `ratio` (the per-layer counts change only at ratio = 4m/d_out; each interval between
    breakpoints is represented by its shortest decimal). Ties: `rows` first, then the smaller count.
    Returns {"options": {"rows": k} or {"ratio": ρ}, "spruft_trainable", "lora_trainable",
    "rows_per_layer": {layer: k_l}}.
    """
    layers = target_shapes(model_config, targets)
    lora = lora_trainable(model_config, r, targets)
    bias = boolean("bias", bias)
    candidates = [{"rows": k} for k in range(1, min(d_out for _, d_out, _ in layers) + 1)]
    breaks = sorted({Fraction(4 * m, d_out) for _, d_out, _ in layers for m in range(1, d_out // 4 + 1)})
    edges = [Fraction(0)] + breaks + [Fraction(2)]
    candidates += [{"ratio": _short_decimal_in(lo, hi)} for lo, hi in zip(edges[:-1], edges[1:]) if lo < 1]
    totals = [spruft_trainable(model_config, targets=targets, bias=bias, **o) for o in candidates]
    best = min(range(len(candidates)), key=lambda c: (abs(totals[c] - lora), "rows" not in candidates[c], totals[c]))
    options = candidates[best]
    return {"options": options, "spruft_trainable": totals[best], "lora_trainable": lora,
            "rows_per_layer": spruft_rows_per_layer(model_config, targets=targets, **options)}
