"""Fused CuPy kernels for the memory-bound steps of a training step (GPU only).

The reference `xp` bodies in minisft.nn, minisft.model.adapters, minisft.training.optim,
minisft.methods.select and minisft.distributed.buckets are the definition; each kernel here computes
the same function in fewer passes over memory and fewer launches. The modules beside this one
register them as those functions' fast paths (minisft.core.fastpath), and tests/test_kernels.py checks
each against its reference body on the GPU (`pytest -m gpu` on a GPU machine).

| kernel                  | replaces (plain xp)                                    | passes over the big array |
|-------------------------|--------------------------------------------------------|---------------------------|
| cross_entropy_rows      | argmax, subtract, exp, sum, log1p, gather, divide      | 2 reads + 1 write         |
| cross_entropy_backward  | copy, scatter −(1 − p), scale, mask                    | 1 read + 1 write          |
| gelu / gelu_backward    | 8 / 12 elementwise kernels                             | 1 / 2 reads + 1 write     |
| layernorm / backward    | 9 / 7 kernels                                          | 1-2 reads + 1-2 writes    |
| adamw                   | ~15 kernels per tensor                                 | one kernel per tensor     |
| adamw_many              | adamw once per tensor (optim.AdamW.step)               | one kernel for all        |
| column_sums             | a∘b, sum over rows (CuPy's leading-axis reduction)     | 1 read, coalesced         |
| gemm (cuBLAS)           | a @ b, then scale and add into out (adapters)          | the GEMM's own epilogue   |
| gather_columns          | a[:, cols] (RowDelta, ColumnDelta)                     | 1 read of r columns       |
| scatter_add_columns     | y[:, cols] += part + b: gather, add, scatter           | 1 read-modify-write       |
| smallest_k_keep_masks   | per-tensor partition/sort + cumulative tie count       | 6 reads (f64: 10), ~12    |
|                         | (minisft.methods.select)                                       | launches for all tensors  |
| nan_counts              | isnan + count per tensor (minisft.methods.select)              | 1 read, 1 launch for all  |
| scatter_add_rows        | cupy.add.at (atomic, order varies run to run)          | 1 read + 1 RMW, in order  |
| zero_dropped_count_kept | zero_where_dropped + count_nonzero per tensor (GMT)    | 1 read of the masks, 1 launch|
| copy_many               | one slice copy per piece (a bucket's pack and unpack,  | 1 read + 1 write, 1 launch|
|                         | minisft.distributed.buckets)                           |                           |

The multi-tensor kernels (adamw_many, smallest_k_keep_masks, nan_counts, copy_many,
zero_dropped_count_kept) take a device table of
the tensors' pointers and cut every tensor into CHUNK-element pieces, one block each, so a model's
148 tensors cost a handful of launches instead of a few per tensor.

Attention has its own tiled kernels in minisft.gpu.flash_attention. Rows are reduced by one thread block
each; the cross-entropy's (max, sum) pairs join as in the online softmax (Milakov & Gimelshein 2018),
the sum leaving out the max's own term: (m, s) ⊕ (m', s') = (m, s + (s' + 1)·e^{m'−m}) for m > m',
(m, s + s' + 1) for m = m' (proofs/cross_entropy.md).
"""

import functools
import math

import numpy as np

THREADS = 256

_COMMON = r"""
#define NEG_INF __int_as_float(0xff800000)  // NVRTC has no math.h: −∞ from its bit pattern
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
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
// Cross-entropy state of a set of logits: its max m and s = Σ e^{z − m} over all but one of the entries equal
// to m (the max's own e^0 = 1 is left out, so that a small s survives: the loss is (m − z_y) + log1p(s)).
// Empty: (−∞, 0). Joining two states, the smaller max becomes one of the terms of the larger's sum.
// Symmetric in the two states (bit for bit), so every lane of a butterfly ends with the same state.
template <typename T> __device__ __forceinline__ void ce_join(T &m, T &s, T m2, T s2) {
    if (m2 == m) {  // a tie: one of the two maxima becomes a term e^0 = 1
        if (m != (T)NEG_INF) s = (s + s2) + (T)1;
        return;
    }
    if (m2 > m) { T t = m; m = m2; m2 = t; t = s; s = s2; s2 = t; }
    if (m2 != (T)NEG_INF) s += (s2 + (T)1) * exp(m2 - m);  // m2 < m here; an empty state adds nothing
}
template <typename T> __device__ void block_ce_join(T &m, T &s) {
    __shared__ T bm[32], bs[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) ce_join(m, s, __shfl_xor_sync(0xffffffff, m, o), __shfl_xor_sync(0xffffffff, s, o));
    __syncthreads();
    if (lane == 0) { bm[warp] = m; bs[warp] = s; }
    __syncthreads();
    m = lane < nw ? bm[lane] : (T)NEG_INF;
    s = lane < nw ? bs[lane] : (T)0;
    for (int o = 16; o > 0; o >>= 1) ce_join(m, s, __shfl_xor_sync(0xffffffff, m, o), __shfl_xor_sync(0xffffffff, s, o));
}

// Row r of z: probs[r, :] = softmax(z[r, :]) = e^{z − m} / (1 + s); loss[r] = (m − z_y) + log1p(s) (0 where y_r is
// ignored); comp[r] = 1 − probs[r, y_r], as s / (1 + s) where z_y = m (no cancellation when probs[r, y_r] ≈ 1).
// The reference is minisft.nn.cross_entropy.cross_entropy_rows.
template <typename T>
__device__ void cross_entropy_rows(const T* Z, const long long* __restrict__ y, T* probs,
                                   T* __restrict__ loss, T* __restrict__ comp, long long n_cols, long long ignore_index) {
    long long r = blockIdx.x;
    const T* z = Z + r * n_cols;
    T* p = probs + r * n_cols;
    T m = (T)NEG_INF, s = 0;
    for (long long j = threadIdx.x; j < n_cols; j += blockDim.x) ce_join(m, s, z[j], (T)0);  // one logit: (z_j, 0)
    bool ignored = y[r] == ignore_index;
    T z_target = z[ignored ? 0 : y[r]];  // read before the barrier in block_ce_join: probs may alias Z
    block_ce_join(m, s);
    T inv = (T)1 / ((T)1 + s);
    for (long long j = threadIdx.x; j < n_cols; j += blockDim.x) p[j] = exp(z[j] - m) * inv;
    if (threadIdx.x == 0) {
        loss[r] = ignored ? (T)0 : (m - z_target) + log1p(s);
        comp[r] = z_target == m ? s * inv : (T)1 - exp(z_target - m) * inv;
    }
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

// ---- columns of row-major matrices (RowDelta, ColumnDelta) ----
// out[n, j] = a[n·lda + cols[j]]: (N, r) contiguous
template <typename T>
__device__ void gather_columns(const T* __restrict__ a, const long long* __restrict__ cols, T* __restrict__ out,
                               long long N, long long r, long long lda) {
    long long total = N * r, step = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += step) {
        long long n = i / r;
        out[i] = a[n * lda + cols[i - n * r]];
    }
}
// y[n·ldy + cols[j]] += part[n, j] (+ b[j] first, when has_b: the order of linear_forward's bias and the
// plain body's y[:, cols] += part); cols are distinct, so no two threads touch one element
template <typename T>
__device__ void scatter_add_columns(const T* __restrict__ part, const T* __restrict__ b, const long long* __restrict__ cols,
                                    T* __restrict__ y, long long N, long long r, long long ldy, long long has_b) {
    long long total = N * r, step = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += step) {
        long long n = i / r, j = i - n * r;
        T v = part[i];
        if (has_b) v += b[j];
        y[n * ldy + cols[j]] += v;
    }
}

// ---- segmented exact smallest-k by magnitude (minisft.methods.select) ----
// Tensors t = 0..S-1 (pointers ptrs[t], sizes[t]) are cut into chunks of `chunk` elements; chunk c covers
// [chunk_start[c], +chunk) of tensor chunk_tensor[c], which belongs to segment chunk_seg[c]; a segment's chunks
// are consecutive, in (tensor, index) order. The key of x is the bits of |x| (sign cleared): monotone in |x|.
template <typename T> struct MagKey;
template <> struct MagKey<float> {
    typedef unsigned int U;
    static __device__ __forceinline__ U of(float x) { return __float_as_uint(x) & 0x7fffffffu; }
};
template <> struct MagKey<double> {
    typedef unsigned long long U;
    static __device__ __forceinline__ U of(double x) { return (unsigned long long)__double_as_longlong(x) & 0x7fffffffffffffffull; }
};
__device__ __forceinline__ long long chunk_end(long long start, long long chunk, long long size) {
    return start + chunk < size ? start + chunk : size;
}
// hist[s, d] += #{keys of chunk c whose bits above shift + 8 equal prefix[s]'s and whose digit (key >> shift) & 255 is d}
template <typename T>
__device__ void radix_hist(const unsigned long long* __restrict__ ptrs, const long long* __restrict__ sizes,
                           const int* __restrict__ chunk_tensor, const int* __restrict__ chunk_seg,
                           const long long* __restrict__ chunk_start, const long long* __restrict__ k,
                           const unsigned long long* __restrict__ prefix, unsigned long long* __restrict__ hist,
                           long long shift, long long chunk) {
    typedef typename MagKey<T>::U U;
    __shared__ unsigned int h[256];
    int c = blockIdx.x, s = chunk_seg[c], t = chunk_tensor[c];
    if (k[s] == 0) return;  // the same for the whole block, before any barrier
    h[threadIdx.x] = 0;
    __syncthreads();
    const T* x = (const T*)ptrs[t];
    long long start = chunk_start[c], end = chunk_end(start, chunk, sizes[t]);
    int top = (int)shift + 8;
    U above = top >= (int)(8 * sizeof(U)) ? (U)0 : (~(U)0) << top;  // the digits already fixed
    U pre = (U)prefix[s] & above;
    for (long long i = start + threadIdx.x; i < end; i += 256) {
        U key = MagKey<T>::of(x[i]);
        if ((key & above) == pre) atomicAdd(&h[(unsigned int)(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    unsigned int v = h[threadIdx.x];
    if (v) atomicAdd(&hist[(long long)s * 256 + threadIdx.x], (unsigned long long)v);
}
// per segment (one block of 256): the digit d holding the rank[s]-th key: prefix[s] |= d << shift,
// rank[s] -= #{keys of smaller digit}; hist[s, :] zeroed for the next pass
__device__ void radix_pick_body(unsigned long long* __restrict__ hist, unsigned long long* __restrict__ prefix,
                           long long* __restrict__ rank, const long long* __restrict__ k, long long shift) {
    __shared__ unsigned long long cum[256];
    int s = blockIdx.x, d = threadIdx.x;
    if (k[s] == 0) return;
    unsigned long long r = (unsigned long long)rank[s];  // read by all before the one write below
    unsigned long long own = hist[(long long)s * 256 + d];
    cum[d] = own;
    __syncthreads();
    for (int o = 1; o < 256; o <<= 1) {  // inclusive scan
        unsigned long long add = d >= o ? cum[d - o] : 0ull;
        __syncthreads();
        cum[d] += add;
        __syncthreads();
    }
    unsigned long long below = cum[d] - own;
    if (below < r && r <= cum[d]) {
        prefix[s] |= (unsigned long long)d << shift;
        rank[s] = (long long)(r - below);
    }
    hist[(long long)s * 256 + d] = 0;
}
// ties[c] = #{keys of chunk c equal to t = prefix[s]}
template <typename T>
__device__ void radix_ties(const unsigned long long* __restrict__ ptrs, const long long* __restrict__ sizes,
                           const int* __restrict__ chunk_tensor, const int* __restrict__ chunk_seg,
                           const long long* __restrict__ chunk_start, const long long* __restrict__ k,
                           const unsigned long long* __restrict__ prefix, unsigned long long* __restrict__ ties,
                           long long chunk) {
    typedef typename MagKey<T>::U U;
    int c = blockIdx.x, s = chunk_seg[c], t = chunk_tensor[c];
    unsigned long long n = 0;
    if (k[s] != 0) {
        const T* x = (const T*)ptrs[t];
        U target = (U)prefix[s];
        long long start = chunk_start[c], end = chunk_end(start, chunk, sizes[t]);
        for (long long i = start + threadIdx.x; i < end; i += 256) n += MagKey<T>::of(x[i]) == target;
    }
    n = block_sum(n);
    if (threadIdx.x == 0) ties[c] = n;
}
// keep[offset[t] + i] = not (key < t_s or (key == t_s and its 1-based rank among the segment's ties, in
// (tensor, index) order, is at most need[s] = rank[s])); everything kept where k[s] = 0
template <typename T>
__device__ void radix_keep(const unsigned long long* __restrict__ ptrs, const long long* __restrict__ sizes,
                           const int* __restrict__ chunk_tensor, const int* __restrict__ chunk_seg,
                           const long long* __restrict__ chunk_start, const int* __restrict__ seg_first_chunk,
                           const long long* __restrict__ k, const unsigned long long* __restrict__ prefix,
                           const long long* __restrict__ rank, const unsigned long long* __restrict__ ties,
                           const long long* __restrict__ offset, bool* __restrict__ keep, long long chunk) {
    typedef typename MagKey<T>::U U;
    __shared__ unsigned int warp_ties[8];
    int c = blockIdx.x, s = chunk_seg[c], t = chunk_tensor[c];
    long long start = chunk_start[c], end = chunk_end(start, chunk, sizes[t]);
    bool* out = keep + offset[t];
    if (k[s] == 0) {
        for (long long i = start + threadIdx.x; i < end; i += 256) out[i] = true;
        return;
    }
    unsigned long long before = 0;  // ties in the segment's earlier chunks
    for (int j = seg_first_chunk[s] + threadIdx.x; j < c; j += 256) before += ties[j];
    before = block_sum(before);
    const T* x = (const T*)ptrs[t];
    U target = (U)prefix[s];
    unsigned long long need = (unsigned long long)rank[s];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (long long base = start; base < end; base += 256) {  // the same trip count in every thread
        long long i = base + threadIdx.x;
        bool valid = i < end;
        U key = valid ? MagKey<T>::of(x[i]) : (U)0;
        bool tie = valid && key == target;
        unsigned int ballot = __ballot_sync(0xffffffffu, tie);
        if (lane == 0) warp_ties[warp] = __popc(ballot);
        __syncthreads();
        unsigned int earlier = 0, tile = 0;
        for (int w = 0; w < 8; ++w) {
            unsigned int m = warp_ties[w];
            tile += m;
            if (w < warp) earlier += m;
        }
        if (valid) {
            unsigned long long r1 = before + earlier + __popc(ballot & ((1u << lane) - 1u)) + 1;
            out[i] = !(key < target || (tie && r1 <= need));
        }
        before += tile;
        __syncthreads();  // warp_ties is written again in the next tile
    }
}
// One AdamW step of every tensor t over its chunks: table[5t..5t+4] = pointers to p, g, m, v and the keep mask
// (0: none), scal[2t], scal[2t + 1] = lr / bc1 and sqrt(bc2) of t's own step count; the body of kernels.adamw
template <typename T>
__device__ void adamw_many(const unsigned long long* __restrict__ table, const T* __restrict__ scal,
                           const long long* __restrict__ sizes, const int* __restrict__ chunk_tensor,
                           const long long* __restrict__ chunk_start, T lr, T wd, T b1, T b2, T eps, long long chunk) {
    int c = blockIdx.x, t = chunk_tensor[c];
    T* p = (T*)table[5 * t];
    const T* g = (const T*)table[5 * t + 1];
    T* m = (T*)table[5 * t + 2];
    T* v = (T*)table[5 * t + 3];
    const bool* keep = (const bool*)table[5 * t + 4];
    T step = scal[2 * t], sbc2 = scal[2 * t + 1];
    long long start = chunk_start[c], end = chunk_end(start, chunk, sizes[t]);
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
        if (keep != 0 && !keep[i]) continue;
        T pi = p[i], mi = m[i], vi = v[i], gi = g[i];
        pi = pi * ((T)1 - lr * wd);
        mi = b1 * mi + ((T)1 - b1) * gi;
        vi = b2 * vi + ((T)1 - b2) * gi * gi;
        pi = pi - step * (mi / (sqrt(vi) / sbc2 + eps));
        p[i] = pi; m[i] = mi; v[i] = vi;
    }
}
// nans[t] += #{NaN in chunk c}
template <typename T>
__device__ void nan_count(const unsigned long long* __restrict__ ptrs, const long long* __restrict__ sizes,
                          const int* __restrict__ chunk_tensor, const long long* __restrict__ chunk_start,
                          unsigned long long* __restrict__ nans, long long chunk) {
    int c = blockIdx.x, t = chunk_tensor[c];
    const T* x = (const T*)ptrs[t];
    long long start = chunk_start[c], end = chunk_end(start, chunk, sizes[t]);
    unsigned long long n = 0;
    for (long long i = start + threadIdx.x; i < end; i += 256) n += x[i] != x[i];
    n = block_sum(n);
    if (threadIdx.x == 0 && n) atomicAdd(&nans[t], n);
}
// g_t[i] = +0 where !keep_t[i], kept[t] += #{keep_t[i]} over tensor t's chunks; table[2t] = g_t, table[2t + 1] = keep_t
template <typename T>
__device__ void zero_dropped_count_kept(const unsigned long long* __restrict__ table, const long long* __restrict__ sizes,
                                        const int* __restrict__ chunk_tensor, const long long* __restrict__ chunk_start,
                                        unsigned long long* __restrict__ kept, long long chunk) {
    int c = blockIdx.x, t = chunk_tensor[c];
    T* g = (T*)table[2 * t];
    const bool* keep = (const bool*)table[2 * t + 1];
    long long start = chunk_start[c], end = chunk_end(start, chunk, sizes[t]);
    unsigned long long n = 0;
    for (long long i = start + threadIdx.x; i < end; i += 256) {
        if (keep[i]) ++n;
        else g[i] = (T)0;
    }
    n = block_sum(n);
    if (threadIdx.x == 0 && n) atomicAdd(&kept[t], n);
}
// target[r] += Σ_n values[n] over the n with rows[n] = r, each row's sum taken from zero in order of n and then
// added: key = sorted rows[n]·N + n (distinct keys, so the order is fixed); block j works only if key[j]
// starts a row's run, and walks that run in order; its threads take the columns
template <typename T>
__device__ void row_sums_in_order(const long long* __restrict__ key, long long N, const T* __restrict__ values,
                                  T* __restrict__ target, long long C) {
    long long j = blockIdx.x, row = key[j] / N;
    if (j > 0 && key[j - 1] / N == row) return;
    long long end = j + 1;
    while (end < N && key[end] / N == row) ++end;
    for (long long c = threadIdx.x; c < C; c += blockDim.x) {
        T acc = (T)0;
        for (long long i = j; i < end; ++i) acc += values[(key[i] % N) * C + c];
        target[row * C + c] += acc;
    }
}
// dst_t[i] = src_t[i] over every piece t's chunks, table[2t] = src_t, table[2t + 1] = dst_t (U: an unsigned
// integer of the element's size, so any dtype's bits move unchanged)
template <typename U>
__device__ void copy_many(const unsigned long long* __restrict__ table, const long long* __restrict__ sizes,
                          const int* __restrict__ chunk_tensor, const long long* __restrict__ chunk_start, long long chunk) {
    int c = blockIdx.x, t = chunk_tensor[c];
    const U* src = (const U*)table[2 * t];
    U* dst = (U*)table[2 * t + 1];
    long long start = chunk_start[c], end = chunk_end(start, chunk, sizes[t]);
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) dst[i] = src[i];
}
"""

_ENTRY = r"""
extern "C" {
#define INSTANTIATE(T, S) \
__global__ void cross_entropy_rows_##S(const T* z, const long long* y, T* p, T* l, T* c, long long n, long long ig) { cross_entropy_rows<T>(z, y, p, l, c, n, ig); } \
__global__ void layernorm_rows_##S(const T* x, const T* w, const T* b, T* y, T* xh, T* rs, long long C, T eps, int kx, int kr) { layernorm_rows<T>(x, w, b, y, xh, rs, C, eps, kx, kr); } \
__global__ void column_sums_##S(const T* a, const T* b, T* p, long long N, long long C, long long R, int hb) { column_sums<T>(a, b, p, N, C, R, hb); } \
__global__ void layernorm_rows_backward_##S(const T* dy, const T* xh, const T* rs, const T* w, T* dx, long long C) { layernorm_rows_backward<T>(dy, xh, rs, w, dx, C); } \
__global__ void gather_columns_##S(const T* a, const long long* cols, T* out, long long N, long long r, long long lda) { gather_columns<T>(a, cols, out, N, r, lda); } \
__global__ void scatter_add_columns_##S(const T* p, const T* b, const long long* cols, T* y, long long N, long long r, long long ldy, long long hb) { scatter_add_columns<T>(p, b, cols, y, N, r, ldy, hb); } \
__global__ void radix_hist_##S(const unsigned long long* p, const long long* n, const int* ct, const int* cs, const long long* c0, const long long* k, const unsigned long long* pre, unsigned long long* h, long long sh, long long ch) { radix_hist<T>(p, n, ct, cs, c0, k, pre, h, sh, ch); } \
__global__ void radix_ties_##S(const unsigned long long* p, const long long* n, const int* ct, const int* cs, const long long* c0, const long long* k, const unsigned long long* pre, unsigned long long* ties, long long ch) { radix_ties<T>(p, n, ct, cs, c0, k, pre, ties, ch); } \
__global__ void radix_keep_##S(const unsigned long long* p, const long long* n, const int* ct, const int* cs, const long long* c0, const int* first, const long long* k, const unsigned long long* pre, const long long* rank, const unsigned long long* ties, const long long* off, bool* keep, long long ch) { radix_keep<T>(p, n, ct, cs, c0, first, k, pre, rank, ties, off, keep, ch); } \
__global__ void nan_count_##S(const unsigned long long* p, const long long* n, const int* ct, const long long* c0, unsigned long long* nans, long long ch) { nan_count<T>(p, n, ct, c0, nans, ch); } \
__global__ void adamw_many_##S(const unsigned long long* tab, const T* sc, const long long* n, const int* ct, const long long* c0, T lr, T wd, T b1, T b2, T eps, long long ch) { adamw_many<T>(tab, sc, n, ct, c0, lr, wd, b1, b2, eps, ch); } \
__global__ void row_sums_in_order_##S(const long long* key, long long N, const T* v, T* t, long long C) { row_sums_in_order<T>(key, N, v, t, C); } \
__global__ void zero_dropped_count_kept_##S(const unsigned long long* tab, const long long* n, const int* ct, const long long* c0, unsigned long long* kept, long long ch) { zero_dropped_count_kept<T>(tab, n, ct, c0, kept, ch); }
__global__ void radix_pick(unsigned long long* h, unsigned long long* pre, long long* rank, const long long* k, long long sh) { radix_pick_body(h, pre, rank, k, sh); }
INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
#define COPY_MANY(U, S) \
__global__ void copy_many_##S(const unsigned long long* tab, const long long* n, const int* ct, const long long* c0, long long ch) { copy_many<U>(tab, n, ct, c0, ch); }
COPY_MANY(unsigned char, u1)
COPY_MANY(unsigned short, u2)
COPY_MANY(unsigned int, u4)
COPY_MANY(unsigned long long, u8)
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
    """(probs (N, V), per-row loss (N,), 1 − probs[n, y[n]] (N,)) of logits z (N, V) and int64 targets
    y (N,), as minisft.nn.cross_entropy.cross_entropy_rows; probs are written into `out` when given
    (it may be z itself)."""
    import cupy

    z = cupy.ascontiguousarray(z)
    y = cupy.ascontiguousarray(y, dtype=cupy.int64)
    N, V = z.shape
    probs = cupy.empty_like(z) if out is None else out
    loss, complement = cupy.empty(N, dtype=z.dtype), cupy.empty(N, dtype=z.dtype)
    _launch("cross_entropy_rows", z, N, (z, y, probs, loss, complement, V, ignore_index))
    return probs, loss, complement


@functools.cache
def _ce_backward_kernel():
    import cupy

    return cupy.ElementwiseKernel(
        "T p, raw int64 y, raw T complement, raw bool valid, int64 V, T scale", "T dz",
        "long long r = i / V; dz = valid[r] ? ((i % V) == y[r] ? -complement[r] : p) * scale : (T)0;",
        "minisft_ce_backward")


def cross_entropy_backward(probs, y, complement, valid, scale, out=None):
    """dz = scale · (probs − onehot(y)) on valid rows, 0 on ignored rows, the target entry written as
    −scale · complement; into `out` when given (it may be probs itself: each element is read, then
    written, by one thread)."""
    args = (probs, y, complement, valid, probs.shape[-1], probs.dtype.type(scale))
    return _ce_backward_kernel()(*args) if out is None else _ce_backward_kernel()(*args, out)


# ------------------------------------------------------------------------------------- gelu
_GELU_U = "T u = (T)%r * (x + (T)%r * x * x * x);" % (math.sqrt(2.0 / math.pi), 0.044715)


@functools.cache
def _gelu_kernels():
    """minisft.nn.gelu's forms: y = x / (1 + e^{−2u}), dy/dx = σ(2u) + ½ x sech²(u) u'(x) (no cancellation
    in the tails; an overflowing exp or cosh gives the limits 0)."""
    import cupy

    fwd = cupy.ElementwiseKernel("T x", "T y", _GELU_U + " y = x / ((T)1 + exp((T)-2 * u));", "minisft_gelu")
    bwd = cupy.ElementwiseKernel(
        "T dy, T x", "T dx",
        _GELU_U + " T c = cosh(u); T du = (T)%r * ((T)1 + (T)%r * x * x);"
        " dx = dy * ((T)1 / ((T)1 + exp((T)-2 * u)) + (T)0.5 * x * du / (c * c));"
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
    """One AdamW update of p, m, v in place (torch's operation order; see minisft.training.optim)."""
    t = p.dtype.type
    args = (g, t(lr), t(wd), t(b1), t(b2), t(eps), t(lr / bc1), t(math.sqrt(bc2)))
    plain, masked = _adamw_kernels()
    if mask is None:
        plain(*args, p, m, v)
    else:
        masked(*args, mask, p, m, v)


# ------------------------------------------------------------------------------------- GEMM
@functools.cache
def _cublas():
    import cupy
    from cupy._core import _routines_linalg as linalg
    from cupy_backends.cuda.api import runtime
    from cupy_backends.cuda.libs import cublas

    algo = cublas.CUBLAS_GEMM_DEFAULT_TENSOR_OP if int(cupy.cuda.Device().compute_capability) >= 80 \
        else cublas.CUBLAS_GEMM_DEFAULT
    return cupy, linalg, runtime, cublas, algo


def _leading(a):
    """The row stride of a 2-D array in elements when each row is contiguous (cuBLAS's leading
    dimension of its column-major view), else None."""
    rows, cols = a.shape
    size = a.itemsize
    if a.size == 0:  # no element is read or written: any leading dimension will do
        return max(cols, 1)
    if cols > 1 and a.strides[1] != size:
        return None
    if rows <= 1:
        return max(cols, 1)
    if a.strides[0] % size or a.strides[0] // size < cols:
        return None
    return a.strides[0] // size


def gemm(a, b, out=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """out = alpha · op(a) @ op(b) + beta · out by one cuBLAS GEMM, op(a) = a.T when trans_a.

    With beta = 1 the product is added into `out` by the GEMM's epilogue: no temporary, no extra pass.
    a, b, out: 2-D CuPy arrays of one dtype (float32 or float64); out's rows must be contiguous (a block
    of columns of a wider array is fine) and must not overlap a or b. out=None: a new (M, N) array (beta
    ignored). The compute type is the one CuPy's own matmul uses (TF32 under CUPY_TF32), so a product
    costs here what `a @ b` costs there."""
    cupy, linalg, runtime, cublas, algo = _cublas()
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    K_b, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if out is None:
        out, beta = cupy.empty((M, N), dtype=a.dtype), 0.0
    ld_out = _leading(out)
    if K != K_b or out.shape != (M, N) or ld_out is None or not a.dtype == b.dtype == out.dtype \
            or a.dtype.char not in "fd":
        raise ValueError(f"gemm: op(a) {M, K} @ op(b) {K_b, N} into {out.shape} "
                         f"({a.dtype}, {b.dtype}, {out.dtype}, rows contiguous: {ld_out is not None})")
    ld_a, ld_b = _leading(a), _leading(b)
    if ld_a is None:
        a = cupy.ascontiguousarray(a)
        ld_a = _leading(a)
    if ld_b is None:
        b = cupy.ascontiguousarray(b)
        ld_b = _leading(b)
    if M == 0 or N == 0:
        return out
    if K == 0:  # an empty sum: out = beta · out (0 when beta = 0, whatever out held)
        if beta == 0:
            out.fill(0)
        else:
            out *= beta
        return out
    if a.dtype.char == "d":
        data, scalar = runtime.CUDA_R_64F, np.float64
        compute = cublas.CUBLAS_COMPUTE_64F_PEDANTIC if linalg.get_compute_type(a.dtype) == linalg.COMPUTE_TYPE_PEDANTIC \
            else cublas.CUBLAS_COMPUTE_64F
    else:
        data, scalar = runtime.CUDA_R_32F, np.float32
        kind = linalg.get_compute_type(a.dtype)
        compute = (cublas.CUBLAS_COMPUTE_32F_FAST_TF32 if kind == linalg.COMPUTE_TYPE_TF32 else
                   cublas.CUBLAS_COMPUTE_32F_PEDANTIC if kind == linalg.COMPUTE_TYPE_PEDANTIC else
                   cublas.CUBLAS_COMPUTE_32F)
    al, be = np.array(alpha, dtype=scalar), np.array(beta, dtype=scalar)
    # row-major out (M, N) is column-major outᵀ (N, M): outᵀ = op(b)ᵀ op(a)ᵀ, b and a read as stored
    cublas.gemmEx(cupy.cuda.device.get_cublas_handle(), int(trans_b), int(trans_a), N, M, K,
                  al.ctypes.data, b.data.ptr, data, ld_b, a.data.ptr, data, ld_a,
                  be.ctypes.data, out.data.ptr, data, ld_out, compute, algo)
    return out


# ------------------------------------------------------------------------------ columns
def _grid(total):
    return (int(min(-(-total // THREADS), 1 << 20)),)


def gather_columns(a, cols):
    """(N, r) contiguous copy of a[:, cols]: a (N, C) with contiguous rows, cols (r,) int64 on the device."""
    import cupy

    ld = _leading(a)
    if ld is None:
        a = cupy.ascontiguousarray(a)
        ld = _leading(a)
    N, r = a.shape[0], int(cols.size)
    out = cupy.empty((N, r), dtype=a.dtype)
    if N * r:
        _fn("gather_columns", a.dtype)(_grid(N * r), (THREADS,), (a, cols, out, np.int64(N), np.int64(r), np.int64(ld)))
    return out


def scatter_add_columns(y, part, cols, bias=None):
    """y[:, cols] += part (+ bias, added to part first) in place: y (N, C) with contiguous rows, part
    (N, r), cols (r,) distinct int64 indices, bias (r,) or None. One pass over the r columns."""
    import cupy

    ld = _leading(y)
    if ld is None:
        raise ValueError(f"scatter_add_columns: y of strides {y.strides} has no contiguous rows")
    part = cupy.ascontiguousarray(part)
    N, r = part.shape
    if N * r:
        b = part if bias is None else cupy.ascontiguousarray(bias)
        _fn("scatter_add_columns", y.dtype)(_grid(N * r), (THREADS,), (
            part, b, cols, y, np.int64(N), np.int64(r), np.int64(ld), np.int64(bias is not None)))


# -------------------------------------------------------------------- smallest-k by magnitude
CHUNK = 16384  # elements one block takes in the multi-tensor kernels (selection, NaN count, AdamW)


class _Chunks:
    """Device tables cutting tensors of `sizes` into CHUNK-element pieces, in (tensor, index) order;
    segment ids per tensor (consecutive tensors share one) for the selection."""

    def __init__(self, sizes, segments):
        import cupy

        n = np.asarray(sizes, dtype=np.int64)
        counts = -(-n // CHUNK)
        tensor = np.repeat(np.arange(len(sizes), dtype=np.int32), counts)
        first_of_tensor = np.cumsum(counts) - counts
        start = (np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first_of_tensor, counts)) * CHUNK
        seg = np.asarray(segments, dtype=np.int32)[tensor]
        self.n_chunks, self.n_seg = int(counts.sum()), (int(max(segments)) + 1 if len(segments) else 0)
        self.offsets = np.cumsum(n) - n  # each tensor's start in the concatenation
        self.total = int(n.sum())
        first = np.searchsorted(seg, np.arange(self.n_seg), side="left").astype(np.int32)
        self.sizes, self.tensor, self.start, self.seg, self.first, self.offset = (
            cupy.asarray(a) for a in (n, tensor, start, seg, first, self.offsets))


@functools.lru_cache(maxsize=128)
def _chunks(sizes, segments=None):
    """_Chunks of these sizes (segment = tensor when None), cached: a training step asks for the same
    tensors' tables at every step."""
    return _Chunks(sizes, range(len(sizes)) if segments is None else segments)


def nan_counts(arrays):
    """(len(arrays),) uint64 device array: the NaN entries of each (C-contiguous, one float dtype) array."""
    import cupy

    tab = _chunks(tuple(int(a.size) for a in arrays))
    nans = cupy.zeros(len(arrays), dtype=np.uint64)
    if tab.n_chunks:
        ptrs = cupy.asarray(np.array([a.data.ptr for a in arrays], dtype=np.uint64))
        _fn("nan_count", arrays[0].dtype)((tab.n_chunks,), (THREADS,), (
            ptrs, tab.sizes, tab.tensor, tab.start, nans, np.int64(CHUNK)))
    return nans


def smallest_k_keep_masks(arrays, ks, segments=None):
    """Keep masks (True = kept, shapes of `arrays`) dropping, in each segment s, the ks[s] smallest |x|
    over the segment's tensors, ties by (tensor, flat index) first. segments[t] is tensor t's segment:
    non-decreasing, from 0 (None: each tensor its own; all tensors together: 0, 0, ...). arrays: CuPy
    arrays of one dtype, float32 or float64, without NaN (minisft.methods.select checks); 0 <= ks[s] <= size.

    Radix select on the bits of |x|, 8 bits a pass from the top, every segment at once: per pass one
    histogram launch over all chunks (shared-memory counters, then integer atomics: an order-free
    sum) and one launch picking each segment's digit; then one launch counting each chunk's ties
    with the k-th key t, and one writing the masks, each tie ranked by a prefix count over the
    segment's earlier chunks and a ballot inside its own. The masks are views of one buffer."""
    import cupy

    shapes = [a.shape for a in arrays]  # before ascontiguousarray, which makes a 0-d array 1-d
    arrays = [cupy.ascontiguousarray(a) for a in arrays]
    dtype = arrays[0].dtype
    tab = _chunks(tuple(int(a.size) for a in arrays), None if segments is None else tuple(int(s) for s in segments))
    keep = cupy.empty(tab.total, dtype=bool)
    views = [keep[o:o + a.size].reshape(shape) for o, a, shape in zip(tab.offsets.tolist(), arrays, shapes)]
    if not tab.n_chunks:
        return views
    ptrs = cupy.asarray(np.array([a.data.ptr for a in arrays], dtype=np.uint64))
    k = cupy.asarray(np.asarray(ks, dtype=np.int64))
    prefix = cupy.zeros(tab.n_seg, dtype=np.uint64)  # the bits of the k-th key found so far
    rank = k.copy()  # the k-th key's rank among the keys matching the prefix
    hist = cupy.zeros(tab.n_seg * 256, dtype=np.uint64)
    chunk, grid = np.int64(CHUNK), (tab.n_chunks,)
    tables = (ptrs, tab.sizes, tab.tensor, tab.seg, tab.start)
    for shift in range(8 * dtype.itemsize - 8, -1, -8):
        _fn("radix_hist", dtype)(grid, (256,), tables + (k, prefix, hist, np.int64(shift), chunk))
        _module().get_function("radix_pick")((tab.n_seg,), (256,), (hist, prefix, rank, k, np.int64(shift)))
    ties = cupy.empty(tab.n_chunks, dtype=np.uint64)
    _fn("radix_ties", dtype)(grid, (256,), tables + (k, prefix, ties, chunk))
    _fn("radix_keep", dtype)(grid, (256,), tables + (tab.first, k, prefix, rank, ties, tab.offset, keep, chunk))
    return views


def zero_dropped_count_kept(grads, masks):
    """For every tensor t at once (one launch): grads[t][~masks[t]] = +0.0 in place, as
    select.zero_where_dropped, and the number of kept entries, returned as a (len(grads),) uint64
    device array (integer atomics: exact, order-free). grads: C-contiguous CuPy arrays of one float
    dtype; masks: C-contiguous bool arrays of the same sizes. GMT's per-step masking, which took two
    launches per tensor (148 for gpt2) with their host time."""
    import cupy

    kept = cupy.zeros(len(grads), dtype=np.uint64)
    tab = _chunks(tuple(int(g.size) for g in grads))
    if tab.n_chunks:
        table = np.array([[g.data.ptr, k.data.ptr] for g, k in zip(grads, masks)], dtype=np.uint64)
        _fn("zero_dropped_count_kept", grads[0].dtype)((tab.n_chunks,), (THREADS,), (
            cupy.asarray(table), tab.sizes, tab.tensor, tab.start, kept, np.int64(CHUNK)))
    return kept


def scatter_add_rows(target, rows, values):
    """target[rows[n]] += values[n] (target (V, C), rows (N,), values (N, C)), deterministic: each row's
    values summed from zero in order of n, then added to the row, as the NumPy CSR product in
    minisft.nn.embedding computes it (so float64 and float32 results equal NumPy's bit for bit: only
    additions, in the same order). Replaces cupy.add.at, whose atomic adds sum repeated rows in a
    varying order (the last bits of the embedding gradient changed from run to run).
    One sort of the keys rows[n]·N + n, one launch."""
    import cupy

    N, C = values.shape
    if N and C:
        key = cupy.sort(rows.astype(np.int64) * N + cupy.arange(N, dtype=np.int64))
        _fn("row_sums_in_order", target.dtype)((int(N),), (THREADS,), (
            key, np.int64(N), cupy.ascontiguousarray(values), target, np.int64(C)))
    return target


def copy_many(src_ptrs, dst_ptrs, sizes, itemsize):
    """One launch for many copies: sizes[t] elements of `itemsize` bytes (1, 2, 4 or 8) from device
    address src_ptrs[t] to dst_ptrs[t], for every t (pieces must not overlap). Replaces one
    `dst[a:b] = src[c:d]` launch per piece: a data-parallel bucket's pack and unpack
    (minisft.distributed.buckets), whose ~100-300 pieces would otherwise cost more in launches
    than the all-reduce itself."""
    import cupy

    if itemsize not in (1, 2, 4, 8):
        raise ValueError(f"itemsize={itemsize}: expected 1, 2, 4 or 8 bytes")
    tab = _chunks(tuple(int(n) for n in sizes))
    if tab.n_chunks:
        table = cupy.asarray(np.stack([np.asarray(src_ptrs, dtype=np.uint64), np.asarray(dst_ptrs, dtype=np.uint64)], axis=1))
        _module().get_function(f"copy_many_u{itemsize}")((tab.n_chunks,), (THREADS,), (
            table, tab.sizes, tab.tensor, tab.start, np.int64(CHUNK)))


def adamw_many(params, grads, exp_avgs, exp_avg_sqs, masks, lr, wd, b1, b2, eps, bc1s, bc2s):
    """kernels.adamw on every tensor at once (one launch): lists of same-dtype C-contiguous CuPy
    arrays of matching shapes, a bool mask or None per tensor, and each tensor's own bias
    corrections bc1s[t], bc2s[t]. Each element's arithmetic is kernels.adamw's."""
    import cupy

    if not params:
        return
    dtype = params[0].dtype
    tab = _chunks(tuple(int(p.size) for p in params))
    if not tab.n_chunks:
        return
    ptrs = np.array([[p.data.ptr, g.data.ptr, m.data.ptr, v.data.ptr, 0 if k is None else k.data.ptr]
                     for p, g, m, v, k in zip(params, grads, exp_avgs, exp_avg_sqs, masks)], dtype=np.uint64)
    scal = np.array([[lr / bc1, math.sqrt(bc2)] for bc1, bc2 in zip(bc1s, bc2s)], dtype=dtype)
    t = dtype.type
    _fn("adamw_many", dtype)((tab.n_chunks,), (THREADS,), (
        cupy.asarray(ptrs), cupy.asarray(scal), tab.sizes, tab.tensor, tab.start,
        t(lr), t(wd), t(b1), t(b2), t(eps), np.int64(CHUNK)))
