"""Token + learned position embedding (GPT-2):  x[b, t] = wte[idx[b, t]] + wpe[t].

Shapes: idx (B, T) int, wte (V, C), wpe (block_size, C)  ->  x (B, T, C).
Derivation: proofs/embedding.md (tests/test_nn_grad.py::test_embedding_fd, ::test_embedding_torch).
"""

from dataclasses import dataclass

import numpy as np

from ..core.backend import array_module
from ..core.errors import bad_value
from ..core.fastpath import has_fast_path
from .need import backward_need, need_set
from .tokens import check_token_ids

ALL = ("wte", "wpe")


@dataclass
class EmbeddingCache:
    idx: object  # (B, T) token ids, needed to scatter dwte
    vocab_size: int
    block_size: int
    need: frozenset


@has_fast_path
def scatter_add_rows(target, rows, values):
    """target[rows[n]] += values[n] for every n, repeated rows accumulating (not overwriting).

    NumPy: target += S @ values with S the (rows of target, n) one-hot matrix in SciPy's CSR form
    (each row's column indices sorted), whose product sums each target row's values in order of n,
    from zero. On a zero target (the embedding's dwte) that is bit for bit what `np.add.at` gives
    (tests/test_nn_grad.py::test_scatter_add_rows_equals_add_at), about 9 times faster at the small
    preset. CuPy: cupy.add.at, whose atomic adds sum repeated rows in an order, and so to last bits,
    that may vary from run to run; the fast path (minisft.gpu) sums in NumPy's order instead.
    """
    xp = array_module(target)
    if xp is not np:
        xp.add.at(target, rows, values)
        return target
    from scipy import sparse

    n = rows.shape[0]
    onehot = sparse.csr_matrix((np.ones(n, dtype=values.dtype), (rows, np.arange(n))), shape=(target.shape[0], n))
    target += onehot @ values
    return target


def embedding_forward(idx, wte, wpe, need=ALL):
    """x = wte[idx] + wpe[:T]; idx (B, T) token ids in [0, V) with T at most wpe's rows."""
    need = need_set(need, ALL, "embedding")
    if not (getattr(wte, "ndim", 0) == 2 and getattr(wpe, "ndim", 0) == 2 and wte.shape[1] == wpe.shape[1]):
        raise bad_value("wte, wpe", (getattr(wte, "shape", wte), getattr(wpe, "shape", wpe)), "(V, C) and (block_size, C)")
    if getattr(idx, "ndim", 0) != 2 or idx.shape[1] > wpe.shape[0]:
        raise bad_value("idx.shape", getattr(idx, "shape", idx), f"(B, T) with T <= {wpe.shape[0]} (wpe's rows)")
    check_token_ids("idx", idx, wte.shape[0])
    T = idx.shape[1]
    x = wte[idx] + wpe[:T]
    return x, EmbeddingCache(
        idx=idx if "wte" in need else None,
        vocab_size=wte.shape[0],
        block_size=wpe.shape[0],
        need=need,
    )


def embedding_backward(dx, cache, need=None):
    """dwte[v] = Σ_{(b,t): idx[b,t]=v} dx[b, t];  dwpe[t] = Σ_b dx[b, t] (zero beyond T)."""
    need = backward_need(need, cache.need, "embedding")
    xp = array_module(dx)
    B, T, C = dx.shape
    grads = {}
    if "wte" in need:
        dwte = xp.zeros((cache.vocab_size, C), dtype=dx.dtype)
        grads["wte"] = scatter_add_rows(dwte, cache.idx.reshape(-1), dx.reshape(-1, C))
    if "wpe" in need:
        dwpe = xp.zeros((cache.block_size, C), dtype=dx.dtype)
        dwpe[:T] = xp.sum(dx, axis=0)
        grads["wpe"] = dwpe
    return grads
