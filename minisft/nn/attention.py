"""Causal multi-head self-attention on a fused qkv input (GPT-2), before the output projection.

    q, k, v = split(qkv)                       each (B, H, T, hd), hd = C / H
    S = q kᵀ / √hd,  S_ij = −∞ for j > i        (B, H, T, T)
    P = softmax(S)                             row-wise
    y = P v                                    (B, H, T, hd)  ->  (B, T, C)

Shapes: qkv (B, T, 3C)  ->  y (B, T, C).
Derivation: proofs/attention.md (tests/test_nn_grad.py::test_attention_fd, ::test_attention_torch).

The plain body keeps the scores key-major, Sᵀ (B, H, key, query): the softmax's maximum and sums
run over an axis that is not the contiguous one, so on NumPy each is one vectorised pass across
rows instead of a short reduction per row; the matrix products read Sᵀ and Pᵀ transposed for free.

On the GPU the fast path (minisft.gpu.layers) computes the same function in tiles
(minisft.gpu.flash_attention), never storing S or P; the body below is its oracle
(tests/test_kernels.py::test_flash_attention).
"""

import math
import numbers
from dataclasses import dataclass

from ..core.backend import array_module
from ..core.errors import bad_value
from ..core.fastpath import has_fast_path
from .need import backward_need, need_set


@dataclass
class AttentionCache:
    q: object  # (B, H, T, hd)  needed for dk
    k: object  # (B, H, T, hd)  needed for dq
    v: object  # (B, H, T, hd)  needed for dP
    pt: object  # (B, H, T, T)  softmax probabilities, key-major: pt[..., j, i] = P_ij; for dv and dS
    need: frozenset


def _split_heads(qkv, n_head):
    """(B, T, 3C) -> three (B, H, T, hd) views."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hd = C // n_head
    qkv = qkv.reshape(B, T, 3, n_head, hd)  # last axis 3C = [q | k | v], each C = H·hd
    return [qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3)]


def _head_major(a):
    """(B, T, H, hd) -> (B, H, T, hd) view: where a batched matmul writes the heads of a (B, T, H·hd)
    array directly, with no merging copy."""
    return a.transpose(0, 2, 1, 3)


def future_keys(T, xp):
    """(T, T) bool, key-major: True at [j, i] where key j lies in the future of query i (j > i)."""
    return xp.arange(T)[:, None] > xp.arange(T)


@has_fast_path
def attention_forward(qkv, n_head, need=("x",)):
    """Scaled dot-product attention with a causal mask, heads split from the fused qkv."""
    need = need_set(need, ("x",), "attention")
    shape = tuple(getattr(qkv, "shape", ()))
    if isinstance(n_head, bool) or not isinstance(n_head, numbers.Integral) or n_head < 1 or len(shape) != 3 \
            or shape[-1] % (3 * n_head):
        raise bad_value("n_head", n_head, f"a positive integer n_head with qkv (B, T, 3 C), C a multiple of "
                        f"n_head (qkv is {shape})")
    xp = array_module(qkv)
    keep = "x" in need
    q, k, v = _split_heads(qkv, n_head)
    st = k @ q.transpose(0, 1, 3, 2)  # Sᵀ (B, H, key, query)
    st *= 1.0 / math.sqrt(q.shape[-1])  # in place: st is fresh from the matmul
    xp.copyto(st, -xp.inf, where=future_keys(qkv.shape[1], xp))
    st -= xp.max(st, axis=-2, keepdims=True)  # each query's max over its keys; the diagonal is finite
    pt = xp.exp(st, out=st)
    pt /= (xp.ones(pt.shape[-2], dtype=pt.dtype) @ pt)[..., None, :]  # sums over keys, one product
    B, T, H, hd = qkv.shape[0], qkv.shape[1], n_head, q.shape[-1]
    y = xp.empty((B, T, H, hd), dtype=pt.dtype)
    xp.matmul(pt.transpose(0, 1, 3, 2), v, out=_head_major(y))  # y = P v, each head into its columns of (B, T, C)
    cache = AttentionCache(*(a if keep else None for a in (q, k, v, pt)), need=need)
    return y.reshape(B, T, H * hd), cache


@has_fast_path
def attention_backward(dy, cache, need=None):
    """Gradient with respect to the fused qkv input."""
    need = backward_need(need, cache.need, "attention")
    if "x" not in need:
        return {}
    xp = array_module(dy)
    q, k, v, pt = cache.q, cache.k, cache.v, cache.pt
    B, H, T, hd = q.shape
    dy = dy.reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, T, C) -> (B, H, T, hd)
    dqkv = xp.empty((B, T, 3, H, hd), dtype=xp.result_type(dy, pt))  # (B, T, 3C): [dq | dk | dv], heads inside each
    dq, dk, dv = (_head_major(dqkv[:, :, i]) for i in range(3))  # (B, H, T, hd) views
    xp.matmul(pt, dy, out=dv)  # y = P v  =>  dv = Pᵀ dy
    dst = v @ dy.transpose(0, 1, 3, 2)  # y = P v  =>  dP = dy vᵀ, here dPᵀ = v dyᵀ
    # P = softmax(S):  dS = P ∘ (dP − rowsum(dP ∘ P)); masked entries have P = 0, hence dS = 0
    # and S = q kᵀ / √hd brings the factor 1/√hd. Key-major, the row sums run over axis −2.
    dst -= xp.einsum("bhji,bhji->bhi", dst, pt)[..., None, :]  # in place: dst is fresh from the matmul
    dst *= pt
    dst *= 1.0 / math.sqrt(hd)
    xp.matmul(dst.transpose(0, 1, 3, 2), k, out=dq)  # dq = dS k
    xp.matmul(dst, q, out=dk)  # dk = dSᵀ q
    return {"x": dqkv.reshape(B, T, 3 * H * hd)}
