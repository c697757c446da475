"""Fused CuPy kernels for the memory-bound steps of a training step (GPU only).

The plain `xp` bodies in minisft.nn and minisft.optim are the definition; each kernel here computes
the same function in fewer passes over memory and fewer launches, and tests/test_kernels.py checks
it against that plain body on the GPU (run with `pytest -m gpu` on a GPU machine). They are used
only on CuPy arrays, and only while `FUSED` is true: MINISFT_FUSED=0 in the environment when minisft
is imported gives the plain path back for comparison (the variable is read once, at import; tests
switch `kernels.FUSED` itself).

| kernel                  | replaces (plain xp)                                    | passes over the big array |
|-------------------------|--------------------------------------------------------|---------------------------|
| cross_entropy_rows      | max, subtract, exp, sum, log, gather, divide           | 2 reads + 1 write         |
| cross_entropy_backward  | copy, scatter −1, scale, mask                          | 1 read + 1 write          |
| gelu / gelu_backward    | 8 / 12 elementwise kernels                             | 1 / 2 reads + 1 write     |
| layernorm / backward    | 9 / 7 kernels                                          | 1-2 reads + 1-2 writes    |
| adamw                   | ~15 kernels per tensor                                 | one kernel per tensor     |
| column_sums             | a∘b, sum over rows (CuPy's leading-axis reduction)     | 1 read, coalesced         |

Attention has its own tiled kernels in minisft.flash_attention. Rows are reduced by one thread block
each; (max, sum) pairs combine as in the online softmax (Milakov & Gimelshein 2018):
(m, s) ⊕ (m', s') = (M, s·e^{m−M} + s'·e^{m'−M}), M = max(m, m').
"""

import functools
import math
import os

import numpy as np

THREADS = 256


FUSED = os.environ.get("MINISFT_FUSED", "1") != "0"  # read once, at import (module docstring)


def enabled(x):
    """True when `x` is a CuPy array and fused kernels are on (`FUSED`)."""
    return FUSED and type(x).__module__.startswith("cupy")


_COMMON = r"""
#define NEG_INF __int_as_float(0xff800000)  // NVRTC has no math.h: −∞ from its bit pattern
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
// combine two online-softmax states (m, s): the sum s is relative to the max m
template <typename T> __device__ __forceinline__ void combine(T &m, T &s, T m2, T s2) {
    T M = m > m2 ? m : m2;
    if (M == (T)NEG_INF) { return; }
    s = s * exp(m - M) + s2 * exp(m2 - M);
    m = M;
}
template <typename T> __device__ __forceinline__ void warp_combine(T &m, T &s) {
    for (int o = 16; o > 0; o >>= 1) {
        T m2 = __shfl_xor_sync(0xffffffff, m, o), s2 = __shfl_xor_sync(0xffffffff, s, o);
        combine(m, s, m2, s2);
    }
}
// block-wide sum; every thread gets the result. blockDim.x is a multiple of 32, at most 1024.
template <typename T> __device__ T block_sum(T v) {
    __shared__ T buf[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    v = lane < nw ? buf[lane] : (T)0;
    v = warp_sum(v);
    return v;
}
// block-wide online-softmax state; every thread gets (m, s).
template <typename T> __device__ void block_combine(T &m, T &s) {
    __shared__ T bm[32], bs[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    warp_combine(m, s);
    __syncthreads();
    if (lane == 0) { bm[warp] = m; bs[warp] = s; }
    __syncthreads();
    m = lane < nw ? bm[lane] : (T)NEG_INF;
    s = lane < nw ? bs[lane] : (T)0;
    warp_combine(m, s);
}

// probs[r, :] = softmax(Z[r, :]); loss[r] = logsumexp(Z[r, :]) − Z[r, y_r] (0 where y_r is ignored)
template <typename T>
__device__ void cross_entropy_rows(const T* Z, const long long* __restrict__ y, T* probs,
                                   T* __restrict__ loss, long long n_cols, long long ignore_index) {
    long long r = blockIdx.x;
    const T* z = Z + r * n_cols;
    T* p = probs + r * n_cols;
    T m = (T)NEG_INF, sum = 0;
    for (long long j = threadIdx.x; j < n_cols; j += blockDim.x) {
        T v = z[j];
        if (v > m) { sum = sum * exp(m - v) + 1; m = v; } else { sum += exp(v - m); }
    }
    bool ignored = y[r] == ignore_index;
    T z_target = ignored ? (T)0 : z[y[r]];  // read before the barrier in block_combine: probs may alias Z
    block_combine(m, sum);
    T inv = (T)1 / sum;
    for (long long j = threadIdx.x; j < n_cols; j += blockDim.x) p[j] = exp(z[j] - m) * inv;
    if (threadIdx.x == 0) loss[r] = ignored ? (T)0 : m + log(sum) - z_target;
}
// partial[k, c] = Σ_{r = k·R}^{min((k+1)·R, N) − 1} A[r, c] (· B[r, c] when has_b); a block covers 32 columns
// with 8 rows at a time, so a warp reads 32 consecutive elements of a row
template <typename T>
__device__ void column_sums(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ partial, long long N,
                            long long C, long long R, int has_b) {
    __shared__ T buf[8][33];
    int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    long long c = blockIdx.x * 32LL + tx, r0 = blockIdx.y * R, r1 = r0 + R < N ? r0 + R : N;
    T acc = 0;
    if (c < C)
        for (long long r = r0 + ty; r < r1; r += 8) acc += has_b ? A[r * C + c] * B[r * C + c] : A[r * C + c];
    buf[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && c < C) {
        T s = 0;
        for (int k = 0; k < 8; ++k) s += buf[k][tx];
        partial[blockIdx.y * C + c] = s;
    }
}
// layer norm of row r: y = (x − μ)·rstd·w + b; keeps xhat and rstd
template <typename T>
__device__ void layernorm_rows(const T* __restrict__ X, const T* __restrict__ w, const T* __restrict__ b,
                               T* __restrict__ Y, T* __restrict__ Xhat, T* __restrict__ rstd, long long C, T eps,
                               int keep_xhat, int keep_rstd) {
    long long r = blockIdx.x;
    const T* x = X + r * C;
    T acc = 0;
    for (long long j = threadIdx.x; j < C; j += blockDim.x) acc += x[j];
    T mean = block_sum(acc) / (T)C;
    acc = 0;
    for (long long j = threadIdx.x; j < C; j += blockDim.x) { T d = x[j] - mean; acc += d * d; }
    T rs = (T)1 / sqrt(block_sum(acc) / (T)C + eps);
    for (long long j = threadIdx.x; j < C; j += blockDim.x) {
        T xh = (x[j] - mean) * rs;
        if (keep_xhat) Xhat[r * C + j] = xh;
        Y[r * C + j] = xh * w[j] + b[j];
    }
    if (threadIdx.x == 0 && keep_rstd) rstd[r] = rs;
}
// dx = rstd · (dxhat − mean(dxhat) − xhat · mean(dxhat ∘ xhat)),  dxhat = dy ∘ w
template <typename T>
__device__ void layernorm_rows_backward(const T* __restrict__ dY, const T* __restrict__ Xhat, const T* __restrict__ rstd,
                                        const T* __restrict__ w, T* __restrict__ dX, long long C) {
    long long r = blockIdx.x;
    const T* dy = dY + r * C;
    const T* xh = Xhat + r * C;
    T a = 0, c = 0;
    for (long long j = threadIdx.x; j < C; j += blockDim.x) { T g = dy[j] * w[j]; a += g; c += g * xh[j]; }
    a = block_sum(a) / (T)C;
    c = block_sum(c) / (T)C;
    T rs = rstd[r];
    for (long long j = threadIdx.x; j < C; j += blockDim.x) dX[r * C + j] = rs * (dy[j] * w[j] - a - xh[j] * c);
}
"""

_ENTRY = r"""
extern "C" {
#define INSTANTIATE(T, S) \
__global__ void cross_entropy_rows_##S(const T* z, const long long* y, T* p, T* l, long long n, long long ig) { cross_entropy_rows<T>(z, y, p, l, n, ig); } \
__global__ void layernorm_rows_##S(const T* x, const T* w, const T* b, T* y, T* xh, T* rs, long long C, T eps, int kx, int kr) { layernorm_rows<T>(x, w, b, y, xh, rs, C, eps, kx, kr); } \
__global__ void column_sums_##S(const T* a, const T* b, T* p, long long N, long long C, long long R, int hb) { column_sums<T>(a, b, p, N, C, R, hb); } \
__global__ void layernorm_rows_backward_##S(const T* dy, const T* xh, const T* rs, const T* w, T* dx, long long C) { layernorm_rows_backward<T>(dy, xh, rs, w, dx, C); }
INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
}
"""


@functools.cache
def _module():
    import cupy

    return cupy.RawModule(code=_COMMON + _ENTRY, options=("--std=c++14",))


def _fn(name, dtype):
    return _module().get_function(f"{name}_{'f64' if dtype.itemsize == 8 else 'f32'}")


def _launch(name, x, n_rows, args):
    """One block of THREADS threads per row; Python ints go in as C long long (int64), bools as int."""
    args = tuple(np.int32(a) if isinstance(a, bool) else np.int64(a) if isinstance(a, int) else a for a in args)
    if n_rows:
        _fn(name, x.dtype)((int(n_rows),), (THREADS,), args)


def _scalar(x, v):
    """`v` as a scalar of x's dtype (float or double in the kernel)."""
    return x.dtype.type(v)


# ---------------------------------------------------------------------------- cross-entropy
def cross_entropy_rows(z, y, ignore_index, out=None):
    """(probs (N, V), per-row loss (N,)) of logits z (N, V) and int64 targets y (N,); probs are
    written into `out` when given (it may be z itself)."""
    import cupy

    z = cupy.ascontiguousarray(z)
    y = cupy.ascontiguousarray(y, dtype=cupy.int64)
    N, V = z.shape
    probs = cupy.empty_like(z) if out is None else out
    loss = cupy.empty(N, dtype=z.dtype)
    _launch("cross_entropy_rows", z, N, (z, y, probs, loss, V, ignore_index))
    return probs, loss


@functools.cache
def _ce_backward_kernel():
    import cupy

    return cupy.ElementwiseKernel(
        "T p, raw int64 y, raw bool valid, int64 V, T scale", "T dz",
        "long long r = i / V; dz = valid[r] ? (p - (T)((i % V) == y[r])) * scale : (T)0;",
        "minisft_ce_backward")


def cross_entropy_backward(probs, y, valid, scale, out=None):
    """dz = scale · (probs − onehot(y)) on valid rows, 0 on ignored rows; into `out` when given (it
    may be probs itself: each element is read, then written, by one thread)."""
    args = (probs, y, valid, probs.shape[-1], probs.dtype.type(scale))
    return _ce_backward_kernel()(*args) if out is None else _ce_backward_kernel()(*args, out)


# ------------------------------------------------------------------------------------- gelu
_GELU_U = "T u = (T)%r * (x + (T)%r * x * x * x);" % (math.sqrt(2.0 / math.pi), 0.044715)


@functools.cache
def _gelu_kernels():
    import cupy

    fwd = cupy.ElementwiseKernel("T x", "T y", _GELU_U + " y = (T)0.5 * x * ((T)1 + tanh(u));", "minisft_gelu")
    bwd = cupy.ElementwiseKernel(
        "T dy, T x", "T dx",
        _GELU_U + " T t = tanh(u); T du = (T)%r * ((T)1 + (T)%r * x * x);"
        " dx = dy * ((T)0.5 * ((T)1 + t) + (T)0.5 * x * ((T)1 - t * t) * du);"
        % (math.sqrt(2.0 / math.pi), 3 * 0.044715),
        "minisft_gelu_backward")
    return fwd, bwd


def gelu(x):
    return _gelu_kernels()[0](x)


def gelu_backward(dy, x):
    return _gelu_kernels()[1](dy, x)


# ------------------------------------------------------------------------------ column sums
COLUMN_CHUNK = 256  # rows summed by one block in a pass


def column_sums(a, b=None):
    """Σ over the leading axes of a, or of a ∘ b without forming it: (..., C) -> (C,). Blocks sum
    COLUMN_CHUNK rows each, then their partial sums are summed the same way: a fixed order, so the
    result is reproducible (bias and LayerNorm weight gradients)."""
    import cupy

    C = a.shape[-1]
    a2 = cupy.ascontiguousarray(a).reshape(-1, C)
    b2 = a2 if b is None else cupy.ascontiguousarray(b).reshape(-1, C)
    if a2.shape[0] == 0:
        return cupy.zeros(C, dtype=a.dtype)

    def one_pass(x, y, has_b):
        n = x.shape[0]
        out = cupy.empty((-(-n // COLUMN_CHUNK), C), dtype=x.dtype)
        args = tuple(np.int64(v) for v in (n, C, COLUMN_CHUNK)) + (np.int32(has_b),)
        _fn("column_sums", x.dtype)((-(-C // 32), out.shape[0]), (THREADS,), (x, y, out) + args)
        return out

    partial = one_pass(a2, b2, b is not None)
    while partial.shape[0] > 1:
        partial = one_pass(partial, partial, False)
    return partial[0]


# -------------------------------------------------------------------------------- layernorm
def layernorm(x, weight, bias, eps, keep_xhat, keep_rstd):
    """(y, xhat or None, rstd (..., 1) or None) of a LayerNorm over the last axis."""
    import cupy

    x = cupy.ascontiguousarray(x)
    C = x.shape[-1]
    n = x.size // C
    y = cupy.empty_like(x)
    xhat = cupy.empty_like(x) if keep_xhat else None
    rstd = cupy.empty((*x.shape[:-1], 1), dtype=x.dtype) if keep_rstd else None
    unused = cupy.empty(1, dtype=x.dtype)  # stands in for an output nobody needs (never written)
    _launch("layernorm_rows", x, n, (x, cupy.ascontiguousarray(weight), cupy.ascontiguousarray(bias), y,
                                     unused if xhat is None else xhat, unused if rstd is None else rstd,
                                     C, _scalar(x, eps), keep_xhat, keep_rstd))
    return y, xhat, rstd


def layernorm_backward_x(dy, xhat, rstd, weight):
    import cupy

    dy = cupy.ascontiguousarray(dy)
    C = dy.shape[-1]
    dx = cupy.empty_like(dy)
    _launch("layernorm_rows_backward", dy, dy.size // C, (dy, xhat, rstd, cupy.ascontiguousarray(weight), dx, C))
    return dx


# ------------------------------------------------------------------------------------ adamw
@functools.cache
def _adamw_kernels():
    import cupy

    body = ("p = p * ((T)1 - lr * wd);"
            " m = b1 * m + ((T)1 - b1) * g;"
            " v = b2 * v + ((T)1 - b2) * g * g;"
            " p = p - step * (m / (sqrt(v) / sbc2 + eps));")
    scalars = "T g, T lr, T wd, T b1, T b2, T eps, T step, T sbc2"
    plain = cupy.ElementwiseKernel(scalars, "T p, T m, T v", body, "minisft_adamw")
    masked = cupy.ElementwiseKernel(scalars + ", bool keep", "T p, T m, T v",
                                    "if (keep) { " + body + " }", "minisft_adamw_masked")
    return plain, masked


def adamw(p, g, m, v, lr, wd, b1, b2, eps, bc1, bc2, mask=None):
    """One AdamW update of p, m, v in place (torch's operation order; see minisft.optim)."""
    t = p.dtype.type
    args = (g, t(lr), t(wd), t(b1), t(b2), t(eps), t(lr / bc1), t(math.sqrt(bc2)))
    plain, masked = _adamw_kernels()
    if mask is None:
        plain(*args, p, m, v)
    else:
        masked(*args, mask, p, m, v)
