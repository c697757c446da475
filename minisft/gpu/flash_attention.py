"""Causal attention in tiles, FlashAttention-style (Dao et al. 2022, FlashAttention-2 2023), CuPy only.

It computes exactly the function of minisft.nn.attention (the plain xp body there is its oracle,
tests/test_kernels.py::test_flash_attention): for every (batch, head)

    S = q kᵀ / √hd (causal),   P = softmax(S),   y = P v

but never stores S or P. Queries and keys go in tiles of BT = 64 rows; one thread block owns one tile.

Forward (one block per query tile i, looping over key tiles j ≤ i; tiles with j > i are entirely
masked and skipped), the online softmax of Milakov & Gimelshein (2018) per query row r:

    m_r' = max(m_r, max_j S_rj),   l_r' = l_r·e^{m_r − m_r'} + Σ_j e^{S_rj − m_r'},
    o_r' = o_r·e^{m_r − m_r'} + Σ_j e^{S_rj − m_r'} v_j,        y_r = o_r / l_r,   L_r = m_r + log l_r.

Backward recomputes P from the saved row log-sum-exp L (P_rj = e^{S_rj − L_r}) and uses
δ_r = Σ_c dy_rc y_rc = Σ_j P_rj dP_rj, so that dS = P ∘ (dP − δ) (proofs/attention.md):

    dv_j = Σ_r P_rj dy_r,   dP_rj = dy_r · v_j,   dk_j = Σ_r dS_rj q_r / √hd,   dq_r = Σ_j dS_rj k_j / √hd.

dk and dv come from one kernel (a block per key tile, looping over query tiles i ≥ j), dq from another
(a block per query tile, looping over key tiles j ≤ i). FlashAttention-2 instead adds dq with atomics
in the first kernel; the second kernel recomputes S and dP once more (7 instead of 5 tile products in
the backward) but every sum is taken in a fixed order, so the result is bit-reproducible.

Layout: q, k, v are read straight from the fused (B, T, 3C) qkv (C = H·hd), y and dy are (B, T, C),
dqkv is written as (B, T, 3C): no head split, transpose or stack is materialised. L and δ are (B, H, T).
A block has 256 threads as a 16 × 16 grid (tx, ty). In a (BT, BT) product the thread holds rows
ty + 16·a and columns tx + 16·b (a, b < 4); in a (BT, hd) product rows ty + 16·a and columns
tx·hd/16 + c (c < hd/16). Shared-memory rows are padded by 4 elements so that the 128-bit loads of
eight consecutive rows fall in distinct banks.

TF32 (float32 input while CUPY_TF32 asks for it, the switch CuPy's own float32 GEMMs read; compute
capability ≥ 8.0): the same tiles, loops, masks and online softmax, but every tile product runs on
tensor cores as `mma.sync.m16n8k8` with TF32 operands (q, k, v, dy rounded to TF32 by `cvt.rna` as
their tiles are loaded, P and dS as they enter a product) and float32 accumulators. A block is 4
warps; warp w owns rows 16w .. 16w + 15 of the (BT, BT) score tile and of the (BT, hd) output, held
in mma accumulator fragments. P and dS never leave registers: an accumulator fragment holds keys
2t, 2t + 1 of each group of 8 (t = lane % 4), which is an mma A fragment once the 8 keys of the group
are renumbered (2t -> t, 2t + 1 -> t + 4); the B operand (v, dy, q or k rows) is read in the same
order, and a sum over keys does not depend on how they are numbered. The two-kernel backward and the
fixed summation order stay, so TF32 mode is bit-reproducible too. With rows padded to hd + 4, the 32
lanes' fragment loads (rows g, columns t) fall in 32 distinct banks. Error bound: proofs/tf32_attention.md.
"""

import functools
import math
import os

from ..core.errors import bad_value

BT = 64          # rows per tile
_KERNELS = ("flash_forward", "flash_backward_dkdv", "flash_backward_dq")

_SOURCE = r"""
#define NEG_INF __int_as_float(0xff800000)  // NVRTC has no math.h: −∞ from its bit pattern
#define BT 64
#define LD (HD + 4)          // padded row of a (BT, HD) tile
#define LP (BT + 4)          // padded row of a (BT, BT) tile
#define DC (HD / 16)         // head-dim columns per thread

__device__ __forceinline__ void ld4(const float* p, float* v) {
    float4 t = *reinterpret_cast<const float4*>(p); v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
}
__device__ __forceinline__ void ld4(const double* p, double* v) {
    double2 a = *reinterpret_cast<const double2*>(p), b = *reinterpret_cast<const double2*>(p + 2);
    v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
}
__device__ __forceinline__ void st4(float* p, const float* v) { *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]); }
__device__ __forceinline__ void st4(double* p, const double* v) {
    *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]); *reinterpret_cast<double2*>(p + 2) = make_double2(v[2], v[3]);
}
// DC consecutive elements, in 128-bit loads where DC allows
template <typename T> __device__ __forceinline__ void ld_dc(const T* p, T* v) {
    if (DC % 4 == 0) {
        #pragma unroll
        for (int c = 0; c < DC; c += 4) ld4(p + c, v + c);
    } else {
        #pragma unroll
        for (int c = 0; c < DC; ++c) v[c] = p[c];
    }
}
__device__ __forceinline__ float fexp(float x) { return expf(x); }
__device__ __forceinline__ double fexp(double x) { return exp(x); }
__device__ __forceinline__ float flog(float x) { return logf(x); }
__device__ __forceinline__ double flog(double x) { return log(x); }

struct Keep {  // what load_tile stores: the value itself (fp32, fp64 tiles) ...
    template <typename T> __device__ __forceinline__ T operator()(T x) const { return x; }
};
struct RoundTF32 {  // ... or the value rounded to TF32 (10-bit mantissa, to nearest, ties away from 0)
    __device__ __forceinline__ float operator()(float x) const {
        unsigned r;
        asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
        return __uint_as_float(r);
    }
};
// tile[r][c] = op(src[(row0 + r)·stride + c]) for row0 + r < n_rows, else 0          tile (BT, HD), padded
template <typename T, typename Op = Keep>
__device__ void load_tile(T* tile, const T* src, long long stride, int row0, int n_rows, Op op = Op()) {
    for (int e = threadIdx.x; e < BT * HD / 4; e += blockDim.x) {
        int r = e / (HD / 4), c = 4 * (e % (HD / 4));
        T v[4] = {0, 0, 0, 0};
        if (row0 + r < n_rows) ld4(src + (long long)(row0 + r) * stride + c, v);
        #pragma unroll
        for (int u = 0; u < 4; ++u) v[u] = op(v[u]);
        st4(tile + r * LD + c, v);
    }
}
// vec[r] = src[row0 + r] for row0 + r < n_rows, else 0                              vec (BT,)
template <typename T> __device__ void load_vec(T* vec, const T* src, int row0, int n_rows) {
    for (int r = threadIdx.x; r < BT; r += blockDim.x) vec[r] = row0 + r < n_rows ? src[row0 + r] : (T)0;
}
// acc[a][b] += Σ_d A[ty + 16a][d] · B[tx + 16b][d]        A, B (BT, HD) tiles: the (BT, BT) product A Bᵀ
template <typename T> __device__ __forceinline__ void mm_abT(T acc[4][4], const T* A, const T* B) {
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    #pragma unroll 4
    for (int d = 0; d < HD; d += 4) {
        T a[4][4], b[4][4];
        #pragma unroll
        for (int i = 0; i < 4; ++i) { ld4(A + (ty + 16 * i) * LD + d, a[i]); ld4(B + (tx + 16 * i) * LD + d, b[i]); }
        #pragma unroll
        for (int u = 0; u < 4; ++u)
            #pragma unroll
            for (int i = 0; i < 4; ++i)
                #pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i][u] * b[j][u];
    }
}
// acc[a][c] += Σ_x P[ty + 16a][x] · V[x][tx·DC + c]       P (BT, BT), V (BT, HD): the (BT, HD) product P V
template <typename T> __device__ __forceinline__ void mm_ab(T acc[4][DC], const T* P, const T* V) {
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    #pragma unroll 2
    for (int x = 0; x < BT; x += 4) {
        T p[4][4], v[4][DC];
        #pragma unroll
        for (int i = 0; i < 4; ++i) ld4(P + (ty + 16 * i) * LP + x, p[i]);
        #pragma unroll
        for (int u = 0; u < 4; ++u) ld_dc(V + (x + u) * LD + tx * DC, v[u]);
        #pragma unroll
        for (int u = 0; u < 4; ++u)
            #pragma unroll
            for (int i = 0; i < 4; ++i)
                #pragma unroll
                for (int c = 0; c < DC; ++c) acc[i][c] += p[i][u] * v[u][c];
    }
}
template <typename T> __device__ __forceinline__ T tmax(T a, T b) { return a > b ? a : b; }
// reductions over the 16 threads (tx) that share a row: lanes differing in the low 4 bits
template <typename T> __device__ __forceinline__ T row_max(T v) {
    #pragma unroll
    for (int o = 8; o > 0; o >>= 1) v = tmax(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}
template <typename T> __device__ __forceinline__ T row_sum(T v) {
    #pragma unroll
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
// out[(row0 + ty + 16a)·stride + tx·DC + c] = scale · acc[a][c] for rows below n_rows
template <typename T> __device__ void store_rows(T* out, long long stride, int row0, int n_rows, T acc[4][DC], T scale) {
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
        int r = row0 + ty + 16 * i;
        if (r < n_rows)
            #pragma unroll
            for (int c = 0; c < DC; ++c) out[(long long)r * stride + tx * DC + c] = scale * acc[i][c];
    }
}

// grid (B·H, number of tiles): blockIdx.x = b·H + h. Blocks start in order of blockIdx, so the
// query-tile kernels count tiles from the last and the key-tile kernel from the first: under the
// causal mask the biggest tiles start first.
#define BLOCK_POINTERS                                                                     \
    int b = blockIdx.x / H, h = blockIdx.x % H;                                            \
    long long C = (long long)H * HD, s3 = 3 * C;                                           \
    const T* q = qkv + (long long)b * Tn * s3 + h * HD;  /* row t of q at q + t·3C */      \
    const T* k = q + C;                                                                    \
    const T* v = q + 2 * C;                                                                \
    long long bh = (long long)blockIdx.x * Tn;          /* row offset into L, δ (B, H, T) */ \
    extern __shared__ __align__(16) unsigned char smem_raw[];                              \
    T* smem = reinterpret_cast<T*>(smem_raw);
#define BLOCK_SETUP int tx = threadIdx.x & 15, ty = threadIdx.x >> 4; BLOCK_POINTERS

#ifndef TF32  // ---------------- fp32 / fp64 tiles on CUDA cores ----------------
template <typename T>
__device__ void flash_forward(const T* __restrict__ qkv, T* __restrict__ y, T* __restrict__ lse, int Tn, int H, T scale) {
    BLOCK_SETUP
    T *sQ = smem, *sKV = sQ + BT * LD, *sP = sKV + BT * LD;
    int i0 = ((Tn - 1) / BT - blockIdx.y) * BT;  // this block's query rows i0 .. i0 + BT − 1
    load_tile(sQ, q, s3, i0, Tn);
    T m[4], l[4], o[4][DC];
    #pragma unroll
    for (int a = 0; a < 4; ++a) { m[a] = (T)NEG_INF; l[a] = 0; for (int c = 0; c < DC; ++c) o[a][c] = 0; }
    for (int j0 = 0; j0 <= i0; j0 += BT) {
        __syncthreads();  // the previous tile's P v is done with sKV and sP
        load_tile(sKV, k, s3, j0, Tn);
        __syncthreads();
        T s[4][4] = {};
        mm_abT(s, sQ, sKV);  // S = q kᵀ
        #pragma unroll
        for (int a = 0; a < 4; ++a) {
            int r = i0 + ty + 16 * a;
            #pragma unroll
            for (int b2 = 0; b2 < 4; ++b2) {
                int j = j0 + tx + 16 * b2;
                s[a][b2] = (j <= r && j < Tn) ? s[a][b2] * scale : (T)NEG_INF;
            }
            // key j0 ≤ r is never masked, so the new max is finite from the first tile on
            T m_new = row_max(tmax(tmax(s[a][0], s[a][1]), tmax(s[a][2], s[a][3])));
            m_new = tmax(m_new, m[a]);
            T alpha = fexp(m[a] - m_new), sum = 0;
            #pragma unroll
            for (int b2 = 0; b2 < 4; ++b2) { s[a][b2] = fexp(s[a][b2] - m_new); sum += s[a][b2]; }
            l[a] = l[a] * alpha + row_sum(sum);
            m[a] = m_new;
            #pragma unroll
            for (int c = 0; c < DC; ++c) o[a][c] *= alpha;
            #pragma unroll
            for (int b2 = 0; b2 < 4; ++b2) sP[(ty + 16 * a) * LP + tx + 16 * b2] = s[a][b2];
        }
        __syncthreads();  // sP complete; sKV free for v
        load_tile(sKV, v, s3, j0, Tn);
        __syncthreads();
        mm_ab(o, sP, sKV);  // o += P v
    }
    #pragma unroll
    for (int a = 0; a < 4; ++a) {
        int r = i0 + ty + 16 * a;
        if (r < Tn && tx == 0) lse[bh + r] = m[a] + flog(l[a]);
        T inv = (T)1 / l[a];
        for (int c = 0; c < DC; ++c) o[a][c] *= inv;
    }
    store_rows(y + (long long)b * Tn * C + h * HD, C, i0, Tn, o, (T)1);
}

// dk, dv of key tile j0 = blockIdx.y·BT: loop over query tiles i0 ≥ j0. Here the (BT, BT) tiles are
// transposed, rows = keys, columns = queries:  Sᵀ = k qᵀ,  Pᵀ,  dPᵀ = v dyᵀ,  dSᵀ = Pᵀ ∘ (dPᵀ − δ).
template <typename T>
__device__ void flash_backward_dkdv(const T* __restrict__ qkv, const T* __restrict__ dy, const T* __restrict__ lse,
                                    const T* __restrict__ delta, T* __restrict__ dqkv, int Tn, int H, T scale) {
    BLOCK_SETUP
    T *sK = smem, *sV = sK + BT * LD, *sQ = sV + BT * LD, *sdY = sQ + BT * LD, *sP = sdY + BT * LD;
    T *sL = sP + BT * LP, *sD = sL + BT;
    const T* dyb = dy + (long long)b * Tn * C + h * HD;
    int j0 = blockIdx.y * BT;
    load_tile(sK, k, s3, j0, Tn);
    load_tile(sV, v, s3, j0, Tn);
    T dk[4][DC] = {}, dv[4][DC] = {};
    for (int i0 = j0; i0 < Tn; i0 += BT) {
        __syncthreads();  // the previous query tile is done with sQ, sdY, sP, sL, sD
        load_tile(sQ, q, s3, i0, Tn);
        load_tile(sdY, dyb, C, i0, Tn);
        load_vec(sL, lse + bh, i0, Tn);
        load_vec(sD, delta + bh, i0, Tn);
        __syncthreads();
        T p[4][4] = {}, dp[4][4] = {};
        mm_abT(p, sK, sQ);  // Sᵀ = k qᵀ
        #pragma unroll
        for (int a = 0; a < 4; ++a)
            #pragma unroll
            for (int b2 = 0; b2 < 4; ++b2) {
                int j = j0 + ty + 16 * a, r = i0 + tx + 16 * b2;
                p[a][b2] = (j <= r && r < Tn) ? fexp(p[a][b2] * scale - sL[tx + 16 * b2]) : (T)0;  // P = e^{S − L}
                sP[(ty + 16 * a) * LP + tx + 16 * b2] = p[a][b2];
            }
        __syncthreads();
        mm_ab(dv, sP, sdY);   // y = P v  =>  dv = Pᵀ dy
        mm_abT(dp, sV, sdY);  // y = P v  =>  dPᵀ = v dyᵀ
        __syncthreads();      // everyone is done reading Pᵀ
        #pragma unroll
        for (int a = 0; a < 4; ++a)
            #pragma unroll
            for (int b2 = 0; b2 < 4; ++b2)
                sP[(ty + 16 * a) * LP + tx + 16 * b2] = p[a][b2] * (dp[a][b2] - sD[tx + 16 * b2]);  // dSᵀ
        __syncthreads();
        mm_ab(dk, sP, sQ);    // S = q kᵀ  =>  dk = dSᵀ q (· scale, below)
    }
    T* dk_out = dqkv + (long long)b * Tn * s3 + C + h * HD;
    store_rows(dk_out, s3, j0, Tn, dk, scale);
    store_rows(dk_out + C, s3, j0, Tn, dv, (T)1);
}

// dq of query tile i0: loop over key tiles j0 ≤ i0.   S = q kᵀ,  dP = dy vᵀ,  dS = P ∘ (dP − δ),  dq = dS k.
template <typename T>
__device__ void flash_backward_dq(const T* __restrict__ qkv, const T* __restrict__ dy, const T* __restrict__ lse,
                                  const T* __restrict__ delta, T* __restrict__ dqkv, int Tn, int H, T scale) {
    BLOCK_SETUP
    T *sQ = smem, *sdY = sQ + BT * LD, *sK = sdY + BT * LD, *sV = sK + BT * LD, *sP = sV + BT * LD;
    int i0 = ((Tn - 1) / BT - blockIdx.y) * BT;
    load_tile(sQ, q, s3, i0, Tn);
    load_tile(sdY, dy + (long long)b * Tn * C + h * HD, C, i0, Tn);
    T L[4], D[4], dq[4][DC] = {};
    #pragma unroll
    for (int a = 0; a < 4; ++a) {
        int r = i0 + ty + 16 * a;
        L[a] = r < Tn ? lse[bh + r] : (T)0;
        D[a] = r < Tn ? delta[bh + r] : (T)0;
    }
    for (int j0 = 0; j0 <= i0; j0 += BT) {
        __syncthreads();  // the previous key tile is done with sK, sV, sP
        load_tile(sK, k, s3, j0, Tn);
        load_tile(sV, v, s3, j0, Tn);
        __syncthreads();
        T s[4][4] = {}, dp[4][4] = {};
        mm_abT(s, sQ, sK);   // S = q kᵀ
        mm_abT(dp, sdY, sV); // dP = dy vᵀ
        #pragma unroll
        for (int a = 0; a < 4; ++a)
            #pragma unroll
            for (int b2 = 0; b2 < 4; ++b2) {
                int r = i0 + ty + 16 * a, j = j0 + tx + 16 * b2;
                T pr = (j <= r && j < Tn && r < Tn) ? fexp(s[a][b2] * scale - L[a]) : (T)0;
                sP[(ty + 16 * a) * LP + tx + 16 * b2] = pr * (dp[a][b2] - D[a]);  // dS
            }
        __syncthreads();
        mm_ab(dq, sP, sK);   // S = q kᵀ  =>  dq = dS k (· scale, below)
    }
    store_rows(dqkv + (long long)b * Tn * s3 + h * HD, s3, i0, Tn, dq, scale);
}

extern "C" {
#define INSTANTIATE(T, S) \
__global__ void __launch_bounds__(256) flash_forward_##S(const T* qkv, T* y, T* lse, int Tn, int H, T scale) \
    { flash_forward<T>(qkv, y, lse, Tn, H, scale); } \
__global__ void __launch_bounds__(256) flash_backward_dkdv_##S(const T* qkv, const T* dy, const T* lse, const T* delta, T* dqkv, int Tn, int H, T scale) \
    { flash_backward_dkdv<T>(qkv, dy, lse, delta, dqkv, Tn, H, scale); } \
__global__ void __launch_bounds__(256) flash_backward_dq_##S(const T* qkv, const T* dy, const T* lse, const T* delta, T* dqkv, int Tn, int H, T scale) \
    { flash_backward_dq<T>(qkv, dy, lse, delta, dqkv, Tn, H, scale); }
INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
}

#else  // ---------------- TF32 tiles on tensor cores (4 warps a block) ----------------
// mma.sync.m16n8k8 (PTX ISA, "Matrix fragments for mma.m16n8k8", .tf32): a warp adds A (16 × 8) times
// B (8 × 8) to C (16 × 8). Lane 4g + t (g < 8, t < 4) holds A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4];
// B[t][g], B[t+4][g]; C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]. Operands are TF32 bit patterns.
__device__ __forceinline__ void mma_tf32(float c[4], float a0, float a1, float a2, float a3, float b0, float b1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(__float_as_uint(a0)), "r"(__float_as_uint(a1)), "r"(__float_as_uint(a2)), "r"(__float_as_uint(a3)),
          "r"(__float_as_uint(b0)), "r"(__float_as_uint(b1)));
}
#define LANE_G ((threadIdx.x & 31) >> 2)
#define LANE_T (threadIdx.x & 3)
#define WARP_ROW (16 * (threadIdx.x >> 5))  // the warp's first row in the tile
// acc[n][·] += the warp's 16 rows of A Bᵀ, columns 8n .. 8n + 7      A (16, HD) rows, B (BT, HD) tile: S = q kᵀ
__device__ __forceinline__ void mma_abT(float acc[8][4], const float* A, const float* B) {
    int g = LANE_G, t = LANE_T;
    const float* a = A + g * LD;
    #pragma unroll
    for (int d = 0; d < HD; d += 8) {
        float a0 = a[d + t], a1 = a[8 * LD + d + t], a2 = a[d + t + 4], a3 = a[8 * LD + d + t + 4];
        #pragma unroll
        for (int n = 0; n < 8; ++n) {
            const float* b = B + (8 * n + g) * LD + d;
            mma_tf32(acc[n], a0, a1, a2, a3, b[t], b[t + 4]);
        }
    }
}
// acc[n][·] += Σ_x P[warp row][x] V[x][8n .. 8n + 7], P (16, BT) held as mma_abT's accumulator p: keys
// 2t, 2t + 1 of group k are A's columns t, t + 4, and V's rows are read in that order (V (BT, HD) tile)
__device__ __forceinline__ void mma_pv(float acc[HD / 8][4], const float p[8][4], const float* V) {
    int g = LANE_G, t = LANE_T;
    RoundTF32 tf32;
    #pragma unroll
    for (int k = 0; k < 8; ++k) {
        float a0 = tf32(p[k][0]), a1 = tf32(p[k][2]), a2 = tf32(p[k][1]), a3 = tf32(p[k][3]);
        const float* v = V + (8 * k + 2 * t) * LD + g;
        #pragma unroll
        for (int n = 0; n < HD / 8; ++n) mma_tf32(acc[n], a0, a1, a2, a3, v[8 * n], v[LD + 8 * n]);
    }
}
// reductions over the 4 lanes (t) that share a fragment row
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffff, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffff, v, 1);
    return v + __shfl_xor_sync(0xffffffff, v, 2);
}
// out[(row0 + WARP_ROW + g + 8h)·stride + 8n + 2t + e] = scale[h] · acc[n][2h + e] for rows below n_rows
__device__ void store_frag_rows(float* out, long long stride, int row0, int n_rows, float acc[HD / 8][4],
                                float scale0, float scale1) {
    int g = LANE_G, t = LANE_T;
    #pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        int r = row0 + WARP_ROW + g + 8 * hf;
        float sc = hf ? scale1 : scale0;
        if (r < n_rows)
            #pragma unroll
            for (int n = 0; n < HD / 8; ++n)
                *reinterpret_cast<float2*>(out + (long long)r * stride + 8 * n + 2 * t) =
                    make_float2(sc * acc[n][2 * hf], sc * acc[n][2 * hf + 1]);
    }
}

// The kernels below follow flash_forward, flash_backward_dkdv and flash_backward_dq above line by line;
// only the thread layout (fragments) and the products differ. Fragment entry [n][2h + e] of a
// (16, BT) score block is row WARP_ROW + g + 8h, column 8n + 2t + e.
#define TF32_SETUP typedef float T; BLOCK_POINTERS int g = LANE_G, t = LANE_T;
#define TF32_BACKWARD_KERNEL(name)                                                                            \
    extern "C" __global__ void __launch_bounds__(128)                                                       \
    name(const float* __restrict__ qkv, const float* __restrict__ dy, const float* __restrict__ lse,           \
         const float* __restrict__ delta, float* __restrict__ dqkv, int Tn, int H, float scale)
extern "C" __global__ void __launch_bounds__(128)
flash_forward_tf32(const float* __restrict__ qkv, float* __restrict__ y, float* __restrict__ lse, int Tn, int H, float scale) {
    TF32_SETUP
    float *sQ = smem, *sK = sQ + BT * LD, *sV = sK + BT * LD;
    int i0 = ((Tn - 1) / BT - blockIdx.y) * BT;
    load_tile(sQ, q, s3, i0, Tn, RoundTF32());
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0, 0}, o[HD / 8][4] = {};
    for (int j0 = 0; j0 <= i0; j0 += BT) {
        __syncthreads();  // the previous tile's P v is done with sK, sV
        load_tile(sK, k, s3, j0, Tn, RoundTF32());
        load_tile(sV, v, s3, j0, Tn, RoundTF32());
        __syncthreads();
        float s[8][4] = {};
        mma_abT(s, sQ + WARP_ROW * LD, sK);  // S = q kᵀ
        #pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            int r = i0 + WARP_ROW + g + 8 * hf;
            float m_new = m[hf];
            #pragma unroll
            for (int n = 0; n < 8; ++n)
                #pragma unroll
                for (int e = 0; e < 2; ++e) {
                    int j = j0 + 8 * n + 2 * t + e;
                    float x = (j <= r && j < Tn) ? s[n][2 * hf + e] * scale : NEG_INF;
                    s[n][2 * hf + e] = x;
                    m_new = fmaxf(m_new, x);
                }
            m_new = quad_max(m_new);  // key j0 ≤ r is never masked: finite from the first tile on
            float alpha = expf(m[hf] - m_new), sum = 0;
            #pragma unroll
            for (int n = 0; n < 8; ++n)
                #pragma unroll
                for (int e = 0; e < 2; ++e) { s[n][2 * hf + e] = expf(s[n][2 * hf + e] - m_new); sum += s[n][2 * hf + e]; }
            l[hf] = l[hf] * alpha + quad_sum(sum);
            m[hf] = m_new;
            #pragma unroll
            for (int n = 0; n < HD / 8; ++n) { o[n][2 * hf] *= alpha; o[n][2 * hf + 1] *= alpha; }
        }
        mma_pv(o, s, sV);  // o += P v
    }
    #pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        int r = i0 + WARP_ROW + g + 8 * hf;
        if (r < Tn && t == 0) lse[bh + r] = m[hf] + logf(l[hf]);
    }
    store_frag_rows(y + (long long)b * Tn * C + h * HD, C, i0, Tn, o, 1.0f / l[0], 1.0f / l[1]);
}

// dk, dv of key tile j0 (fragment rows = keys, columns = queries):  Sᵀ = k qᵀ,  dPᵀ = v dyᵀ,  dSᵀ = Pᵀ ∘ (dPᵀ − δ)
TF32_BACKWARD_KERNEL(flash_backward_dkdv_tf32) {
    TF32_SETUP
    float *sK = smem, *sV = sK + BT * LD, *sQ = sV + BT * LD, *sdY = sQ + BT * LD, *sL = sdY + BT * LD, *sD = sL + BT;
    const float* dyb = dy + (long long)b * Tn * C + h * HD;
    int j0 = blockIdx.y * BT;
    load_tile(sK, k, s3, j0, Tn, RoundTF32());
    load_tile(sV, v, s3, j0, Tn, RoundTF32());
    float dk[HD / 8][4] = {}, dv[HD / 8][4] = {};
    for (int i0 = j0; i0 < Tn; i0 += BT) {
        __syncthreads();  // the previous query tile is done with sQ, sdY, sL, sD
        load_tile(sQ, q, s3, i0, Tn, RoundTF32());
        load_tile(sdY, dyb, C, i0, Tn, RoundTF32());
        load_vec(sL, lse + bh, i0, Tn);
        load_vec(sD, delta + bh, i0, Tn);
        __syncthreads();
        float p[8][4] = {}, dp[8][4] = {};
        mma_abT(p, sK + WARP_ROW * LD, sQ);  // Sᵀ = k qᵀ
        #pragma unroll
        for (int n = 0; n < 8; ++n)
            #pragma unroll
            for (int f = 0; f < 4; ++f) {
                int j = j0 + WARP_ROW + g + 8 * (f >> 1), c = 8 * n + 2 * t + (f & 1), r = i0 + c;
                p[n][f] = (j <= r && r < Tn) ? expf(p[n][f] * scale - sL[c]) : 0.0f;  // P = e^{S − L}
            }
        mma_pv(dv, p, sdY);                   // y = P v  =>  dv = Pᵀ dy
        mma_abT(dp, sV + WARP_ROW * LD, sdY); // y = P v  =>  dPᵀ = v dyᵀ
        #pragma unroll
        for (int n = 0; n < 8; ++n)
            #pragma unroll
            for (int f = 0; f < 4; ++f) p[n][f] *= dp[n][f] - sD[8 * n + 2 * t + (f & 1)];  // dSᵀ
        mma_pv(dk, p, sQ);                    // S = q kᵀ  =>  dk = dSᵀ q (· scale, below)
    }
    float* dk_out = dqkv + (long long)b * Tn * s3 + C + h * HD;
    store_frag_rows(dk_out, s3, j0, Tn, dk, scale, scale);
    store_frag_rows(dk_out + C, s3, j0, Tn, dv, 1.0f, 1.0f);
}

// dq of query tile i0:  S = q kᵀ,  dP = dy vᵀ,  dS = P ∘ (dP − δ),  dq = dS k.
TF32_BACKWARD_KERNEL(flash_backward_dq_tf32) {
    TF32_SETUP
    float *sQ = smem, *sdY = sQ + BT * LD, *sK = sdY + BT * LD, *sV = sK + BT * LD;
    int i0 = ((Tn - 1) / BT - blockIdx.y) * BT;
    load_tile(sQ, q, s3, i0, Tn, RoundTF32());
    load_tile(sdY, dy + (long long)b * Tn * C + h * HD, C, i0, Tn, RoundTF32());
    float L[2], D[2], dq[HD / 8][4] = {};
    #pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        int r = i0 + WARP_ROW + g + 8 * hf;
        L[hf] = r < Tn ? lse[bh + r] : 0.0f;
        D[hf] = r < Tn ? delta[bh + r] : 0.0f;
    }
    for (int j0 = 0; j0 <= i0; j0 += BT) {
        __syncthreads();  // the previous key tile is done with sK, sV
        load_tile(sK, k, s3, j0, Tn, RoundTF32());
        load_tile(sV, v, s3, j0, Tn, RoundTF32());
        __syncthreads();
        float s[8][4] = {}, dp[8][4] = {};
        mma_abT(s, sQ + WARP_ROW * LD, sK);    // S = q kᵀ
        mma_abT(dp, sdY + WARP_ROW * LD, sV);  // dP = dy vᵀ
        #pragma unroll
        for (int n = 0; n < 8; ++n)
            #pragma unroll
            for (int f = 0; f < 4; ++f) {
                int r = i0 + WARP_ROW + g + 8 * (f >> 1), j = j0 + 8 * n + 2 * t + (f & 1);
                float pr = (j <= r && j < Tn && r < Tn) ? expf(s[n][f] * scale - L[f >> 1]) : 0.0f;
                s[n][f] = pr * (dp[n][f] - D[f >> 1]);  // dS
            }
        mma_pv(dq, s, sK);  // S = q kᵀ  =>  dq = dS k (· scale, below)
    }
    store_frag_rows(dqkv + (long long)b * Tn * s3 + h * HD, s3, i0, Tn, dq, scale, scale);
}
#endif
"""


def shared_bytes(name, hd, variant):
    """Dynamic shared memory of one block of kernel `name` (bytes) in `variant` ("f32", "f64", "tf32").
    The CUDA-core kernels stage P or dS in a (BT, BT) tile; the tensor-core ones keep them in registers."""
    tile, ptile = BT * (hd + 4), (0 if variant == "tf32" else BT * (BT + 4))
    elems = {"flash_forward": (3 if variant == "tf32" else 2) * tile + ptile,
             "flash_backward_dkdv": 4 * tile + ptile + 2 * BT,
             "flash_backward_dq": 4 * tile + ptile}[name]
    return elems * (8 if variant == "f64" else 4)


def threads(variant):
    """Threads of a block: 16 × 16 on CUDA cores, 4 warps (each 16 rows of a tile) on tensor cores."""
    return 128 if variant == "tf32" else 256


def tf32_requested():
    """True when CUPY_TF32 is a positive integer: the switch that puts CuPy's own float32 GEMMs on TF32
    tensor cores (`python -m reference_models.bench.step --tf32` sets it) also puts these tiles there.
    Read at every call; CuPy reads it once, at its first float32 matmul, so set it before that."""
    value = os.environ.get("CUPY_TF32", "0")
    try:
        return int(value) > 0
    except ValueError:
        raise bad_value("CUPY_TF32", value, "an integer (0: IEEE float32 products, 1: TF32 tensor cores)") from None


def variant(dtype, tf32=None):
    """"f64", "f32" or "tf32": the kernels that run for arrays of `dtype`. TF32 only for float32, when
    `tf32` is True (None: when tf32_requested()) and the device has TF32 mma (compute capability ≥ 8.0)."""
    import cupy

    if dtype.itemsize == 8:
        return "f64"
    if tf32 is None:
        tf32 = tf32_requested()
    return "tf32" if tf32 and int(cupy.cuda.Device().compute_capability) >= 80 else "f32"


def supported(hd, dtype):
    """True when the kernels take head dim `hd` at `dtype` on the current device: hd a multiple of 16
    and the tiles within the device's shared memory per block (the TF32 tiles need less than fp32's)."""
    import cupy

    return _supported(hd, "f64" if dtype.itemsize == 8 else "f32", cupy.cuda.Device().id)


@functools.cache
def _supported(hd, var, device_id):
    import cupy

    limit = cupy.cuda.Device(device_id).attributes["MaxSharedMemoryPerBlockOptin"]
    return hd % 16 == 0 and 0 < hd and all(shared_bytes(n, hd, var) <= limit for n in _KERNELS)


@functools.cache
def _module(hd, tf32):
    """The kernels compiled for head dim `hd` (a compile-time constant: the tiles' loops unroll): the
    fp32 and fp64 CUDA-core kernels, or (tf32) the tensor-core ones."""
    import cupy

    return cupy.RawModule(code=_SOURCE, options=("--std=c++14", f"-DHD={hd}") + (("-DTF32",) if tf32 else ()))


@functools.cache
def _kernel(name, hd, var):
    fn = _module(hd, var == "tf32").get_function(f"{name}_{var}")
    fn.max_dynamic_shared_size_bytes = shared_bytes(name, hd, var)
    return fn


def _launch(name, var, hd, n_bh, T, dtype, args):
    import numpy as np

    grid = (n_bh, (T + BT - 1) // BT)
    args = tuple(np.int32(a) if isinstance(a, int) else dtype.type(a) if isinstance(a, float) else a for a in args)
    _kernel(name, hd, var)(grid, (threads(var),), args, shared_mem=shared_bytes(name, hd, var))


def _aligned(x):
    """x as a C-contiguous array whose start is 16-byte aligned (the kernels load 128 bits at a time)."""
    import cupy

    x = cupy.ascontiguousarray(x)
    return x if x.data.ptr % 16 == 0 else x.copy()


def _shape(qkv, n_head):
    B, T, C3 = qkv.shape
    if C3 % (3 * n_head):
        raise bad_value("qkv.shape[-1]", C3, f"a multiple of 3·n_head = {3 * n_head}")
    return B, T, C3 // (3 * n_head)


def _output(out, name, shape, dtype):
    """out (checked: a C-contiguous CuPy array of this shape and dtype), or a fresh empty one."""
    import cupy

    if out is None:
        return cupy.empty(shape, dtype=dtype)
    if not (isinstance(out, cupy.ndarray) and out.shape == shape and out.dtype == dtype and out.flags.c_contiguous
            and out.data.ptr % 16 == 0):
        got = f"{type(out).__name__} {getattr(out, 'shape', '')} {getattr(out, 'dtype', '')}"
        raise bad_value(name, got, f"a C-contiguous, 16-byte aligned CuPy array of shape {shape} and dtype {dtype}")
    return out


def flash_attention(qkv, n_head, tf32=None, out=None):
    """(y (B, T, C), L (B, H, T)): causal attention of the fused qkv (B, T, 3C) and the log-sum-exp
    of each query row's scaled scores, which is all the backward pass needs besides qkv and y.
    tf32: products on TF32 tensor cores (float32 only; None: when CUPY_TF32 asks for it).
    out: optional (y, L) arrays to write into (the tests poison them first)."""
    qkv = _aligned(qkv)
    B, T, hd = _shape(qkv, n_head)
    out = (None, None) if out is None else out
    y = _output(out[0], "out[0] (y)", (B, T, n_head * hd), qkv.dtype)
    lse = _output(out[1], "out[1] (L)", (B, n_head, T), qkv.dtype)
    if y.size:
        _launch("flash_forward", variant(qkv.dtype, tf32), hd, B * n_head, T, qkv.dtype,
                (qkv, y, lse, T, n_head, 1.0 / math.sqrt(hd)))
    return y, lse


def flash_attention_backward(dy, qkv, y, lse, n_head, tf32=None, out=None):
    """dqkv (B, T, 3C) of the attention above, from dy (B, T, C) and the forward's qkv, y and L.
    tf32 as in flash_attention; out: an optional (B, T, 3C) array to write dqkv into."""
    import cupy

    qkv, dy = _aligned(qkv), _aligned(dy)
    B, T, hd = _shape(qkv, n_head)
    # δ_r = Σ_c dy_rc y_rc per head: (B, T, H, hd) summed over hd, then laid out (B, H, T) like L
    delta = cupy.ascontiguousarray((dy * y).reshape(B, T, n_head, hd).sum(axis=-1).transpose(0, 2, 1))
    dqkv = _output(out, "out (dqkv)", qkv.shape, qkv.dtype)
    if dqkv.size:
        var = variant(qkv.dtype, tf32)
        args = (qkv, dy, lse, delta, dqkv, T, n_head, 1.0 / math.sqrt(hd))
        _launch("flash_backward_dkdv", var, hd, B * n_head, T, qkv.dtype, args)
        _launch("flash_backward_dq", var, hd, B * n_head, T, qkv.dtype, args)
    return dqkv
