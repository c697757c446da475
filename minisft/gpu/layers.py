"""The layers' fast paths: minisft.nn's reference functions, each registered with the fused kernel
that computes it (minisft.gpu.kernels) or, for attention, the tiled kernels (minisft.gpu.flash_attention).

| reference (minisft.nn)                  | fast path                                  | takes            |
|-----------------------------------------|--------------------------------------------|------------------|
| gelu.gelu, gelu.gelu_input_grad         | kernels.gelu, kernels.gelu_backward        | CuPy arrays      |
| layernorm.layernorm, layernorm_backward_x | kernels.layernorm, layernorm_backward_x  | CuPy arrays      |
| sums.column_sums                        | kernels.column_sums (a fixed summation order) | CuPy arrays   |
| cross_entropy.cross_entropy_rows, _input_grad | kernels.cross_entropy_rows, _backward | CuPy arrays      |
| embedding.scatter_add_rows              | kernels.scatter_add_rows (NumPy's order)   | CuPy arrays      |
| attention.attention_forward / _backward | flash_attention (P never stored)           | head dim a multiple of 16 that fits the device's shared memory |

The tiled attention keeps a cache of its own (TiledAttentionCache: qkv, y and the row log-sum-exp L),
so its backward takes exactly the calls whose forward it made.
"""

from dataclasses import dataclass

from ..core.fastpath import on_device, register
from ..nn import attention, cross_entropy, embedding, gelu, layernorm, sums
from ..nn.need import backward_need, need_set
from . import flash_attention, kernels


@dataclass
class TiledAttentionCache:
    """What flash_attention's backward reads: P is recomputed from L."""
    qkv: object  # (B, T, 3C)  q, k, v
    y: object    # (B, T, C)   output, for δ = rowsum(dy ∘ y)
    lse: object  # (B, H, T)   log-sum-exp of each query row's scaled scores
    n_head: int
    need: frozenset


def tiled_attention_forward(qkv, n_head, need=("x",)):
    """attention.attention_forward by the tiled kernels."""
    need = need_set(need, ("x",), "attention")
    y, lse = flash_attention.flash_attention(qkv, n_head)
    keep = "x" in need
    return y, TiledAttentionCache(*((qkv, y, lse) if keep else (None,) * 3), n_head=n_head, need=need)


def tiled_attention_backward(dy, cache, need=None):
    """attention.attention_backward of a tiled forward."""
    need = backward_need(need, cache.need, "attention")
    if "x" not in need:
        return {}
    return {"x": flash_attention.flash_attention_backward(dy, cache.qkv, cache.y, cache.lse, cache.n_head)}


def _first_on_device(*args, **kwargs):
    return on_device(args[0] if args else next(iter(kwargs.values())))


def _tiles_take(qkv, n_head, need=("x",)):
    return on_device(qkv) and flash_attention.supported(qkv.shape[-1] // (3 * n_head), qkv.dtype)


def _tiled_cache(dy, cache, need=None):
    return isinstance(cache, TiledAttentionCache)


register(gelu.gelu, kernels.gelu, _first_on_device)
register(gelu.gelu_input_grad, kernels.gelu_backward, _first_on_device)
register(layernorm.layernorm, kernels.layernorm, _first_on_device)
register(layernorm.layernorm_backward_x, kernels.layernorm_backward_x, _first_on_device)
register(sums.column_sums, kernels.column_sums, _first_on_device)
register(cross_entropy.cross_entropy_rows, kernels.cross_entropy_rows, _first_on_device)
register(cross_entropy.cross_entropy_input_grad, kernels.cross_entropy_backward, _first_on_device)
register(embedding.scatter_add_rows, kernels.scatter_add_rows, _first_on_device)
register(attention.attention_forward, tiled_attention_forward, _tiles_take)
register(attention.attention_backward, tiled_attention_backward, _tiled_cache)
