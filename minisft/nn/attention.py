"""Causal multi-head self-attention on a fused qkv input (GPT-2), before the output projection.

    q, k, v = split(qkv)                       each (B, H, T, hd), hd = C / H
    S = q kᵀ / √hd,  S_ij = −∞ for j > i        (B, H, T, T)
    P = softmax(S)                             row-wise
    y = P v                                    (B, H, T, hd)  ->  (B, T, C)

Shapes: qkv (B, T, 3C)  ->  y (B, T, C).
Derivation: proofs/attention.md (tests/test_nn_grad.py::test_attention_fd, ::test_attention_torch).

On CuPy arrays (unless kernels.FUSED is off: MINISFT_FUSED=0) the same function is computed in tiles by
minisft.flash_attention, which never stores S or P; the body below is its oracle
(tests/test_kernels.py::test_flash_attention).
"""

import math
from dataclasses import dataclass

from .. import flash_attention, kernels
from ..backend import array_module
from .need import backward_need, need_set


@dataclass
class AttentionCache:
    q: object  # (B, H, T, hd)  needed for dk
    k: object  # (B, H, T, hd)  needed for dq
    v: object  # (B, H, T, hd)  needed for dP
    p: object  # (B, H, T, T)   softmax probabilities, needed for dv and dS
    need: frozenset


@dataclass
class TiledAttentionCache:
    """What minisft.flash_attention's backward reads: P is recomputed from L."""
    qkv: object  # (B, T, 3C)  q, k, v
    y: object    # (B, T, C)   output, for δ = rowsum(dy ∘ y)
    lse: object  # (B, H, T)   log-sum-exp of each query row's scaled scores
    n_head: int
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


def causal_mask(T, xp):
    """(T, T) bool, True where key j lies in the future of query i (j > i)."""
    return xp.arange(T)[:, None] < xp.arange(T)


def attention_forward(qkv, n_head, need=("x",)):
    """Scaled dot-product attention with a causal mask, heads split from the fused qkv."""
    need = need_set(need, ("x",), "attention")
    xp = array_module(qkv)
    keep = "x" in need
    if kernels.enabled(qkv) and flash_attention.supported(qkv.shape[-1] // (3 * n_head), qkv.dtype):
        y, lse = flash_attention.flash_attention(qkv, n_head)
        return y, TiledAttentionCache(*((qkv, y, lse) if keep else (None,) * 3), n_head=n_head, need=need)
    q, k, v = _split_heads(qkv, n_head)
    s = q @ k.transpose(0, 1, 3, 2)  # (B, H, T, T)
    s *= 1.0 / math.sqrt(q.shape[-1])  # in place: s is fresh from the matmul
    xp.copyto(s, -xp.inf, where=causal_mask(qkv.shape[1], xp))
    s -= _row_max(s)  # the diagonal is always finite: no row is all −∞
    p = xp.exp(s, out=s)
    p /= (p @ xp.ones(p.shape[-1], dtype=p.dtype))[..., None]  # row sums as a matrix-vector product
    B, T, H, hd = qkv.shape[0], qkv.shape[1], n_head, q.shape[-1]
    y = xp.empty((B, T, H, hd), dtype=p.dtype)
    xp.matmul(p, v, out=_head_major(y))  # y = P v, each head into its columns of (B, T, C)
    cache = AttentionCache(*(a if keep else None for a in (q, k, v, p)), need=need)
    return y.reshape(B, T, H * hd), cache


def _row_max(s):
    """max over the last axis, keepdims: elementwise maxima of halves while the row is even (vector
    work on NumPy, where a reduction along a short contiguous row is not), the rest by xp.max. The
    maximum is exact, so any order gives the same value."""
    xp = array_module(s)
    while s.shape[-1] % 2 == 0 and s.shape[-1] > 1:
        h = s.shape[-1] // 2
        s = xp.maximum(s[..., :h], s[..., h:])
    return xp.max(s, axis=-1, keepdims=True)


def attention_backward(dy, cache, need=None):
    """Gradient with respect to the fused qkv input."""
    need = backward_need(need, cache.need, "attention")
    if "x" not in need:
        return {}
    if isinstance(cache, TiledAttentionCache):
        return {"x": flash_attention.flash_attention_backward(dy, cache.qkv, cache.y, cache.lse, cache.n_head)}
    xp = array_module(dy)
    q, k, v, p = cache.q, cache.k, cache.v, cache.p
    B, H, T, hd = q.shape
    dy = dy.reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, T, C) -> (B, H, T, hd)
    dqkv = xp.empty((B, T, 3, H, hd), dtype=xp.result_type(dy, p))  # (B, T, 3C): [dq | dk | dv], heads inside each
    dq, dk, dv = (_head_major(dqkv[:, :, i]) for i in range(3))  # (B, H, T, hd) views
    xp.matmul(p.transpose(0, 1, 3, 2), dy, out=dv)  # y = P v  =>  dv = Pᵀ dy
    dp = dy @ v.transpose(0, 1, 3, 2)  # y = P v  =>  dP = dy vᵀ
    # P = softmax(S):  dS = P ∘ (dP − rowsum(dP ∘ P)); masked entries have P = 0, hence dS = 0
    # and S = q kᵀ / √hd brings the factor 1/√hd
    ds = dp  # in place: dp is fresh from the matmul
    ds -= xp.einsum("bhij,bhij->bhi", dp, p)[..., None]  # rowsum(dP ∘ P), no temporary
    ds *= p
    ds *= 1.0 / math.sqrt(hd)
    xp.matmul(ds, k, out=dq)  # dq = dS k
    xp.matmul(ds.transpose(0, 1, 3, 2), q, out=dk)  # dk = dSᵀ q
    return {"x": dqkv.reshape(B, T, 3 * H * hd)}
