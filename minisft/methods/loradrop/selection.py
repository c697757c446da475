"""LoRA-drop's layer-selection primitives (map and choices: minisft/methods/loradrop/__init__.py).

    g_i = sum_x ||Delta W_i x_i||^2          layer_output_sq_norm: one batch's contribution
    I_i = g_i / sum_j g_j                     normalize_importance
    keep the smallest prefix of the layers sorted by I descending whose cumulative I reaches T
                                              select_layers (default T = 0.9)

Bad importance (empty, not 1-D, NaN, inf, negative, all zero) raises, naming `importance`.
Derivations: proofs/loradrop_selection.md.
"""

from fractions import Fraction
from itertools import accumulate

import numpy as np

from ...core.backend import array_module, to_numpy
from ...core.errors import bad_type, real_in, require
from ..select import decimal_fraction


def _checked_importance(importance):
    """Host float64 copy of a valid importance vector: (n_layers,), finite, >= 0, not all zero."""
    g = np.asarray(to_numpy(importance))
    if g.dtype.kind not in "iuf":
        raise bad_type("importance", importance, "a 1-D array of real numbers (one per layer)")
    g = g.astype(np.float64)
    require(g.ndim == 1 and g.size > 0, "importance", importance, "a non-empty 1-D array (per layer)")
    require(bool(np.isfinite(g).all()), "importance", importance, "finite entries (no NaN or inf)")
    require(bool((g >= 0).all()), "importance", importance, "non-negative entries")
    require(bool((g > 0).any()), "importance", importance, "at least one positive entry")
    return g


def normalize_importance(importance):
    """I = g / sum(g). importance: (n_layers,) -> (n_layers,) float64 on the input's backend."""
    xp = array_module(importance)
    g = _checked_importance(importance)
    total = g.sum()
    if not np.isfinite(total):  # finite entries whose sum overflows: scale first (exact: by a power of 2)
        g = np.ldexp(g, -int(np.frexp(g.max())[1]))
        total = g.sum()
    return xp.asarray(g / total)


def select_layers(importance, threshold=0.9):
    """Layers that keep their own LoRA. importance: (n_layers,) g or I (normalised internally),
    threshold T in (0, 1] -> sorted (n_kept,) int64 NumPy array of layer indices: the smallest
    prefix of the layers by importance descending (ties: lower index first) with cumulative
    importance >= T, compared exactly (package docstring)."""
    threshold = real_in("threshold", threshold, 0.0, 1.0, low_open=True, high_open=False)
    g = _checked_importance(importance)
    order = np.argsort(-g, kind="stable")
    exact = [Fraction(float(v)) for v in g[order]]  # exact binary values; one per layer
    target = decimal_fraction(threshold) * sum(exact)
    n_kept = next(i for i, running in enumerate(accumulate(exact), 1) if running >= target)
    return np.sort(order[:n_kept]).astype(np.int64)


def layer_output_sq_norm(delta_out):
    """One batch's contribution to g_i: sum over rows of ||row||^2. delta_out: (N, d_out) LoRA
    outputs s * (x A^T) B^T of the batch -> 0-d float64 array (accumulated in float64)."""
    if not hasattr(delta_out, "dtype") or not np.issubdtype(delta_out.dtype, np.floating):
        raise bad_type("delta_out", delta_out, "a NumPy or CuPy float array of shape (N, d_out)")
    require(delta_out.ndim == 2, "delta_out", f"array of shape {delta_out.shape}", "shape (N, d_out)")
    xp = array_module(delta_out)
    x = delta_out.astype(xp.float64, copy=False)
    return xp.sum(x * x)
