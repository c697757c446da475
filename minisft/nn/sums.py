"""Column sums: Σ over the leading axes, the reduction behind every bias and LayerNorm-weight gradient.

    column_sums(a)     (..., C) -> (C,):  Σ_n a[n, :]
    column_sums(a, b)  (..., C) -> (C,):  Σ_n a[n, :] ∘ b[n, :], without forming a ∘ b

On NumPy a matrix-vector product (ones @ a) or an einsum: one read of each input, no temporary.
"""

from ..core.backend import array_module
from ..core.fastpath import has_fast_path


@has_fast_path
def column_sums(a, b=None):
    """Σ over the leading axes of a, or of a ∘ b (module docstring)."""
    xp = array_module(a)
    C = a.shape[-1]
    a2 = a.reshape(-1, C)  # (N, C)
    if b is None:
        return xp.ones(a2.shape[0], dtype=a2.dtype) @ a2
    return xp.einsum("nc,nc->c", a2, b.reshape(-1, C))
