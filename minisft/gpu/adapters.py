"""The adapters' fast paths: the same equations as minisft.model.adapters in fewer passes, each
product a cuBLAS GEMM whose scale and accumulation are the GEMM's own alpha and beta (kernels.gemm).

LoRA (y += s · (x Aᵀ) Bᵀ): four GEMMs; y += s · h Bᵀ and dx += dh A are added into y and dx by the
GEMM (no (N, d_out) or (N, d_in) temporaries, no extra passes over them), s · dy is never formed,
and dh is written once.
RowDelta (Y[:, idx] += X ΔW_rᵀ + Δb_r): the forward adds the product into Y's columns by one
scatter-add kernel (no gathered copy of Y[:, idx], no second scatter); the backward gathers dY[:, idx]
once and adds dY[:, idx] ΔW_r into dX inside the GEMM (beta = 1: no (N, d_in) temporary).
ColumnDelta (Y += X[:, cols] ΔW_cᵀ): adds its product into Y inside the GEMM and scatter-adds its
input gradient into dX's columns.

They write into y and dx in place, so they take only calls whose y, dy (and dx) are C-contiguous CuPy
arrays; tests/test_adapters.py checks each against the reference body on the GPU.
"""

from ..core.fastpath import on_device, register
from ..model.adapters import ColumnDelta, LoRA, RowDelta
from ..nn.linear import LinearCache
from . import kernels


def rows_view(a):
    """a as a 2-D (N, last) view sharing its memory when a is C-contiguous, else None: the fast
    paths write into it in place, which a reshaped copy would silently lose."""
    if not a.flags.c_contiguous:
        return None
    return a.reshape(-1, a.shape[-1])


def _forward_takes(adapter, x, y):
    return on_device(y) and y.flags.c_contiguous and x.flags.c_contiguous


def _backward_takes(adapter, dy, cache, dx):
    return on_device(dy) and dy.flags.c_contiguous and (dx is None or dx.flags.c_contiguous)


def lora_forward(self, x, y):
    x2 = x.reshape(-1, self.d_in)  # (N, d_in)
    h = kernels.gemm(x2, self.A, trans_b=True)  # h = x Aᵀ  (N, r)
    kernels.gemm(h, self.B, out=rows_view(y), trans_b=True, alpha=self.scaling, beta=1.0)  # y += s · h Bᵀ
    both = frozenset(("x", "weight"))
    return y, (LinearCache(x2=x2, weight=self.A, x_shape=x.shape, need=both),
               LinearCache(x2=h, weight=self.B, x_shape=(*x.shape[:-1], h.shape[1]), need=both))


def lora_backward(self, dy, cache, dx):
    cache_a, cache_b = cache
    dy2, s = rows_view(dy), self.scaling
    d_B = kernels.gemm(dy2, cache_b.x2, trans_a=True, alpha=s)  # dB = s · dyᵀ h
    dh = kernels.gemm(dy2, self.B, alpha=s)  # dh = s · dy B  (N, r)
    d_A = kernels.gemm(dh, cache_a.x2, trans_a=True)  # dA = dhᵀ x
    if dx is not None:
        kernels.gemm(dh, self.A, out=rows_view(dx), beta=1.0)  # dx += dh A
    return {self.name_A: d_A, self.name_B: d_B}


def row_delta_forward(self, x, y):
    x2 = x.reshape(-1, self.d_in)  # (N, d_in)
    part = kernels.gemm(x2, self.weight, trans_b=True)  # (N, r) = X ΔW_rᵀ
    kernels.scatter_add_columns(rows_view(y), part, self.rows, self.bias)  # Y[:, idx] += part + Δb_r
    need = frozenset(("x", "weight") + (("bias",) if self.bias is not None else ()))
    return y, LinearCache(x2=x2, weight=self.weight, x_shape=x.shape, need=need)


def row_delta_backward(self, dy, cache, dx):
    d_part = kernels.gather_columns(rows_view(dy), self.rows)  # d part = dY[:, idx]  (N, r)
    grads = {self.name("weight"): kernels.gemm(d_part, cache.x2, trans_a=True)}  # dΔW_r = d partᵀ X
    if self.bias is not None:
        grads[self.name("bias")] = kernels.column_sums(d_part)  # dΔb_r = Σ_n d part
    if dx is not None:
        kernels.gemm(d_part, self.weight, out=rows_view(dx), beta=1.0)  # dX += d part ΔW_r
    return grads


def column_delta_forward(self, x, y):
    x_cols = kernels.gather_columns(rows_view(x), self.cols)  # (N, c): the only activation it adds
    kernels.gemm(x_cols, self.weight, out=rows_view(y), trans_b=True, beta=1.0)  # Y += X[:, cols] ΔW_cᵀ
    return y, LinearCache(x2=x_cols, weight=self.weight, x_shape=(*x.shape[:-1], x_cols.shape[1]),
                          need=frozenset(("x", "weight")))


def column_delta_backward(self, dy, cache, dx):
    dy2 = rows_view(dy)
    if dx is not None:  # dX[:, cols] += dY ΔW_c
        kernels.scatter_add_columns(rows_view(dx), kernels.gemm(dy2, self.weight), self.cols)
    return {self.name("weight"): kernels.gemm(dy2, cache.x2, trans_a=True)}  # dΔW_c = dYᵀ X[:, cols]


register(LoRA._forward, lora_forward, _forward_takes)
register(LoRA._backward, lora_backward, _backward_takes)
register(RowDelta._forward, row_delta_forward, _forward_takes)
register(RowDelta._backward, row_delta_backward, _backward_takes)
register(ColumnDelta._forward, column_delta_forward, _forward_takes)
register(ColumnDelta._backward, column_delta_backward, _backward_takes)
