"""Every fast path (minisft.gpu) against the reference xp body it stands in for (GPU only; skipped
without one). The reference runs with the fast paths off (minisft.core.fastpath.ENABLED, what
MINISFT_FUSED=0 sets at import); both run on the GPU on the same fresh random inputs."""

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minisft.core import fastpath
from minisft.gpu import kernels
from minisft.core.backend import gpu_available, to_numpy
from minisft.nn import (attention_backward, attention_forward, cross_entropy_backward, cross_entropy_forward,
    gelu_backward, gelu_forward, layernorm_backward, layernorm_forward)
from minisft.training.optim import AdamW
from tests.gradcheck import assert_directional, max_rel_diff
from tests.helpers import (check_cross_entropy_exact, check_gelu_exact, cross_entropy_cases, fast_paths,
                           spy_fast_paths, stable_argsort_keep, tiny_gpt)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a GPU")]
TOL = {"float64": 1e-12, "float32": 2e-5}


def fused(flag):
    return fast_paths(flag != "0")


def both(monkeypatch, fn):
    """(fast result, reference result) of fn() on the GPU. The fast run must really run a fast path
    and the reference run none: else the test would compare the reference with itself."""
    calls = spy_fast_paths(monkeypatch)
    monkeypatch.setattr(fastpath, "ENABLED", True)
    fused = fn()
    assert calls, "no fast path ran: the comparison would be reference against reference"
    calls.clear()
    monkeypatch.setattr(fastpath, "ENABLED", False)
    plain = fn()
    assert not calls, f"fast paths ran with the fast paths off: {sorted(set(calls))}"
    return fused, plain


def close(a, b, dtype, what):
    d = max_rel_diff(to_numpy(a), to_numpy(b))
    assert d <= TOL[dtype], f"{what}: fused vs plain max rel diff {d:.3e}"


def _attention_case(shape, dtype, seed):
    import cupy as cp
    B, T, H, hd = shape
    rng = np.random.default_rng(seed)
    qkv = cp.asarray(rng.standard_normal((B, T, 3 * H * hd)) * 3, dtype=dtype)
    dy = cp.asarray(rng.standard_normal((B, T, H * hd)), dtype=dtype)

    def run():
        y, c = attention_forward(qkv, H)
        return y, attention_backward(dy, c)["x"], type(c).__name__

    return run


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(max_examples=12)
@given(B=st.integers(1, 3), T=st.integers(1, 300), H=st.integers(1, 3), hd=st.sampled_from([16, 32, 48, 64, 128]))
@example(B=1, T=1, H=1, hd=16)       # a single query: one tile, one key
@example(B=2, T=64, H=2, hd=64)      # exactly one full tile
@example(B=1, T=129, H=2, hd=64)     # a last tile with one row
@example(B=8, T=1024, H=2, hd=64)    # the gpt2 preset's T and head dim
def test_flash_attention(dtype, B, T, H, hd):
    """minisft.gpu.flash_attention (tiled, online softmax, P recomputed) against the plain xp body."""
    if dtype == "float64" and hd == 128:
        hd = 64  # f64 tiles of hd 128 exceed an H100's shared memory per block; the plain path takes those
    run = _attention_case((B, T, H, hd), dtype, seed=T * 7 + hd)
    with fused("1"):
        yf, gf, kind = run()
    with fused("0"):
        yp, gp, plain_kind = run()
    assert (kind, plain_kind) == ("TiledAttentionCache", "AttentionCache")
    close(yf, yp, dtype, f"flash attention forward {B, T, H, hd}")
    close(gf, gp, dtype, f"flash attention backward {B, T, H, hd}")


@settings(max_examples=6)
@given(seed=st.integers(0, 2**16), B=st.integers(1, 2), T=st.integers(1, 150), H=st.integers(1, 2),
       hd=st.sampled_from([16, 32, 64]))
@example(seed=0, B=1, T=65, H=2, hd=16)  # a second key tile holding one key
def test_flash_attention_fd_and_torch_float64(seed, B, T, H, hd):
    """The tiled backward itself, in float64 on the GPU: directional Richardson FD of Σ y∘proj, and
    parity with PyTorch autograd through F.scaled_dot_product_attention(is_causal=True) on the CPU."""
    import cupy as cp
    import torch
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, T, 3 * H * hd))
    proj = rng.standard_normal((B, T, H * hd))
    with fused("1"):
        y, c = attention_forward(cp.asarray(qkv), H)
        assert type(c).__name__ == "TiledAttentionCache"
        grad = to_numpy(attention_backward(cp.asarray(proj), c)["x"])

        def f(theta):
            return float(cp.sum(attention_forward(cp.asarray(theta), H, need=())[0] * cp.asarray(proj)))

        assert_directional(f, qkv, grad, rng, label="tiled attention qkv")
    x = torch.tensor(qkv, requires_grad=True)
    q, k, v = (t.reshape(B, T, H, hd).transpose(1, 2) for t in x.split(H * hd, dim=2))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
    (ref * torch.tensor(proj)).sum().backward()
    dy, dg = max_rel_diff(to_numpy(y), ref.detach().numpy()), max_rel_diff(grad, x.grad.numpy())
    assert dy <= 1e-12 and dg <= 1e-12, f"tiled attention vs torch: y max rel diff {dy:.3e}, dqkv {dg:.3e}"


def test_flash_attention_reproducible():
    """Every sum in the tiled backward is taken in a fixed order (no atomics): two runs agree bit for bit."""
    run = _attention_case((2, 300, 3, 64), "float32", seed=0)
    with fused("1"):
        (y1, g1, _), (y2, g2, _) = run(), run()
    assert bool((y1 == y2).all()) and bool((g1 == g2).all())


# ---- TF32 tensor-core tiles: error bound derived in proofs/tf32_attention.md ----
U_TF32 = 2.0 ** -11   # unit roundoff of TF32 (11-bit significand, cvt.rna: to nearest)
W_ACC = 2.0 ** -22    # per term of an fp32 tensor-core sum (2 ulps: aligned, truncated partial sums)
EPS_E = 2.0 ** -20    # one fp32 elementwise step (scale, subtract, expf, logf, divide: 16 ulps)


def gamma(n):
    """Relative bound of an n-term fp32 accumulation: n·w / (1 − n·w)."""
    return n * W_ACC / (1 - n * W_ACC)


def round_to_tf32(x):
    """float32 array rounded to the nearest TF32 value, ties away from zero (what cvt.rna does)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def tf32_attention_bounds(qkv, dy, H, u_in):
    """Exact float64 results of the attention (y, L, dqkv) and elementwise bounds on the TF32 kernels'
    error, from proofs/tf32_attention.md: u = 2^-11 for P and dS entering a product, u_in for q, k, v
    and dy (0 when they are TF32 values already), fp32 sums of hd and T terms, fp32 elementwise steps.
    qkv (B, T, 3C), dy (B, T, C) float64 CuPy arrays holding the kernels' float32 inputs."""
    import cupy as cp
    B, T, C3 = qkv.shape
    hd = C3 // (3 * H)
    u, scale = U_TF32, 1.0 / np.sqrt(hd)
    q, k, v = (a.reshape(B, T, H, hd).transpose(0, 2, 1, 3) for a in cp.split(qkv, 3, axis=2))  # (B, H, T, hd)
    g = dy.reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    keep = ~cp.triu(cp.ones((T, T), dtype=bool), k=1)  # key j ≤ query r
    s = cp.where(keep, scale * (q @ k.transpose(0, 1, 3, 2)), -cp.inf)                  # (B, H, T, T)
    L = cp.log(cp.sum(cp.exp(s - s.max(-1, keepdims=True)), -1)) + s.max(-1)             # (B, H, T)
    p = cp.exp(s - L[..., None])
    y = p @ v
    # forward: |ΔS_rj| ≤ E_rj, e_r = max_j E_rj; P̃ = P(1 + π), |π| ≤ η_r
    rho_s = (1 + u_in) ** 2 * (1 + gamma(hd)) - 1
    s_abs = cp.where(keep, cp.abs(s), 0)
    E = cp.where(keep, rho_s * scale * (cp.abs(q) @ cp.abs(k).transpose(0, 1, 3, 2)) + EPS_E * s_abs, 0)
    e = E.max(-1)
    rho_sum = gamma(T) + 2 * EPS_E * -(-T // 64)
    eta = cp.exp(2 * e + rho_sum + EPS_E) - 1
    c_y = (1 + eta) * (1 + u) * (1 + u_in) * (1 + gamma(T)) * (1 + EPS_E) ** 2 - 1
    bound_y = c_y[..., None] * (p @ cp.abs(v))
    bound_L = e + rho_sum + EPS_E * (2 + np.log(T) + 2 * cp.abs(L))
    # backward: P̄ = P(1 + π'), |π'| ≤ η'_r;  δ, dP, dS, then dv, dk, dq
    eta_b = cp.exp(e + bound_L + EPS_E * (2 + s_abs.max(-1) + cp.abs(L))) - 1
    delta = cp.sum(g * y, -1)
    d_delta = cp.sum(cp.abs(g) * (bound_y + gamma(hd + 1) * (cp.abs(y) + bound_y)), -1)
    dp = g @ v.transpose(0, 1, 3, 2)
    ds = p * (dp - delta[..., None])
    D = cp.abs(dp - delta[..., None])
    Bd = cp.abs(g) @ cp.abs(v).transpose(0, 1, 3, 2)
    eb = eta_b[..., None]
    bound_ds = p * (eb * D + (1 + eb) * (1 + 3 * EPS_E) * (rho_s * Bd + d_delta[..., None]) + (1 + eb) * 3 * EPS_E * D)
    kappa = (1 + u) * (1 + u_in) * (1 + gamma(T)) * (1 + EPS_E) - 1
    c_v = (1 + eta_b) * (1 + u) * (1 + u_in) * (1 + gamma(T)) - 1
    x = (1 + kappa) * bound_ds + kappa * cp.abs(ds)
    bounds = {"dq": scale * (x @ cp.abs(k)), "dk": scale * (x.transpose(0, 1, 3, 2) @ cp.abs(q)),
              "dv": (p * c_v[..., None]).transpose(0, 1, 3, 2) @ cp.abs(g)}
    grads = {"dq": scale * (ds @ k), "dk": scale * (ds.transpose(0, 1, 3, 2) @ q), "dv": p.transpose(0, 1, 3, 2) @ g}

    def merge(a):  # (B, H, T, hd) -> (B, T, C)
        return a.transpose(0, 2, 1, 3).reshape(B, T, H * hd)

    def stack(d):  # dq, dk, dv -> (B, T, 3C)
        return cp.concatenate([merge(d[n]) for n in ("dq", "dk", "dv")], axis=2)

    return (merge(y), L, stack(grads)), (merge(bound_y), bound_L, stack(bounds))


def _tf32_case(shape, seed, exact_operands):
    """Fresh standard-normal float32 qkv, dy (rounded to TF32 values when exact_operands)."""
    import cupy as cp
    B, T, H, hd = shape
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, T, 3 * H * hd)).astype(np.float32)
    dy = rng.standard_normal((B, T, H * hd)).astype(np.float32)
    if exact_operands:
        qkv, dy = round_to_tf32(qkv), round_to_tf32(dy)
    return cp.asarray(qkv), cp.asarray(dy)


def _run_tf32(qkv, dy, H, poison):
    """TF32 forward and backward into outputs filled with `poison` first: (y, L, dqkv)."""
    import cupy as cp
    from minisft.gpu import flash_attention as fa
    B, T, C3 = qkv.shape
    y = cp.full((B, T, C3 // 3), poison, dtype=cp.float32)
    lse = cp.full((B, H, T), poison, dtype=cp.float32)
    fa.flash_attention(qkv, H, tf32=True, out=(y, lse))
    dqkv = fa.flash_attention_backward(dy, qkv, y, lse, H, tf32=True, out=cp.full(qkv.shape, poison, dtype=cp.float32))
    return y, lse, dqkv


@settings(max_examples=20)
@given(B=st.integers(1, 2), T=st.integers(1, 1024), H=st.integers(1, 2),
       hd=st.sampled_from([16, 32, 48, 64, 80, 96, 112, 128]), exact_operands=st.booleans(), seed=st.integers(0, 2**16))
@example(B=1, T=1, H=1, hd=16, exact_operands=True, seed=0)       # one query, one key
@example(B=2, T=63, H=1, hd=32, exact_operands=True, seed=1)      # one tile, last row empty
@example(B=1, T=64, H=2, hd=64, exact_operands=False, seed=2)     # exactly one full tile
@example(B=1, T=65, H=1, hd=128, exact_operands=True, seed=3)     # a second tile of one row
@example(B=1, T=1024, H=2, hd=64, exact_operands=False, seed=4)   # the gpt2 preset's T and head dim
@example(B=1, T=1024, H=1, hd=128, exact_operands=True, seed=5)
def test_flash_attention_tf32(B, T, H, hd, exact_operands, seed):
    """The TF32 tensor-core kernels against the plain xp body in float64 on the same inputs: every
    output element written (outputs poisoned with NaN first) and every element of y, L, dqkv within
    the error bound of proofs/tf32_attention.md. With exact_operands the inputs are TF32 values, so
    only P, dS and the fp32 sums round and the bound is ~u = 4.9e-4 relative to Σ P|v|."""
    import cupy as cp
    qkv, dy = _tf32_case((B, T, H, hd), seed, exact_operands)
    y, lse, dqkv = _run_tf32(qkv, dy, H, poison=np.nan)
    for name, a in (("y", y), ("L", lse), ("dqkv", dqkv)):
        assert not bool(cp.isnan(a).any()), f"{name}: {int(cp.isnan(a).sum())} elements not written (still NaN)"
    with fused("0"):  # the plain xp body in float64 is the oracle ...
        y_plain, c = attention_forward(qkv.astype(cp.float64), H)
        g_plain = attention_backward(dy.astype(cp.float64), c)["x"]
    (y_ref, L_ref, g_ref), (by, bL, bg) = tf32_attention_bounds(qkv.astype(cp.float64), dy.astype(cp.float64),
                                                                H, 0.0 if exact_operands else U_TF32)
    # ... and the float64 recomputation inside the bound function agrees with it
    assert max_rel_diff(to_numpy(y_ref), to_numpy(y_plain)) <= 1e-12
    assert max_rel_diff(to_numpy(g_ref), to_numpy(g_plain)) <= 1e-12
    for name, got, ref, bound in (("y", y, y_plain, by), ("L", lse, L_ref, bL), ("dqkv", dqkv, g_plain, bg)):
        err = cp.abs(got.astype(cp.float64) - ref)
        ratio = float(cp.max(err / bound))
        msg = (f"TF32 {name} {B, T, H, hd} exact_operands={exact_operands}: max |err|/bound {ratio:.3f}, "
               f"max rel diff {max_rel_diff(to_numpy(got), to_numpy(ref)):.3e}")
        assert ratio <= 1.0, msg


def test_flash_attention_tf32_reproducible():
    """TF32 mode keeps the fixed summation order: two runs (outputs poisoned with different values)
    agree bit for bit in y, L and dqkv."""
    qkv, dy = _tf32_case((2, 300, 3, 64), seed=0, exact_operands=False)
    first = _run_tf32(qkv, dy, 3, poison=np.nan)
    second = _run_tf32(qkv, dy, 3, poison=-np.inf)
    for name, a, b in zip(("y", "L", "dqkv"), first, second):
        assert bool((a.view(np.uint32) == b.view(np.uint32)).all()), f"TF32 {name} differs between two runs"


def test_cupy_tf32_switch(monkeypatch):
    """CUPY_TF32=1 (what `bench --tf32` sets) puts float32 attention on the TF32 kernels: the layer's
    output equals the tf32=True kernels bit for bit and differs from the fp32 ones; float64 ignores it;
    a value that is not an integer is an error naming CUPY_TF32. (No float32 CuPy matmul runs while
    CUPY_TF32 is set here: CuPy fixes its own GEMMs' mode at the first one.)"""
    import cupy as cp
    from minisft.gpu import flash_attention as fa
    qkv, dy = _tf32_case((1, 130, 2, 64), seed=7, exact_operands=False)
    y_tf32, _ = fa.flash_attention(qkv, 2, tf32=True)
    y_fp32, _ = fa.flash_attention(qkv, 2, tf32=False)
    monkeypatch.setenv("MINISFT_FUSED", "1")
    monkeypatch.setenv("CUPY_TF32", "1")
    y_env, c = attention_forward(qkv, 2)
    g_env = attention_backward(dy, c)["x"]
    assert bool((y_env == y_tf32).all()) and not bool((y_env == y_fp32).all())
    assert bool((g_env == fa.flash_attention_backward(dy, qkv, y_tf32, c.lse, 2, tf32=True)).all())
    assert fa.variant(cp.dtype(cp.float64)) == "f64"
    monkeypatch.setenv("CUPY_TF32", "0")
    assert bool((attention_forward(qkv, 2)[0] == y_fp32).all())
    monkeypatch.setenv("CUPY_TF32", "yes")
    with pytest.raises(ValueError, match="CUPY_TF32"):
        attention_forward(qkv, 2)


@pytest.mark.parametrize("hd", [8, 20])
def test_attention_unsupported_head_dim_takes_plain_path(hd):
    """Head dims the tiles do not take (not a multiple of 16) fall back to the plain body on the GPU."""
    run = _attention_case((2, 70, 2, hd), "float32", seed=hd)
    with fused("1"):
        yf, gf, kind = run()
    with fused("0"):
        yp, gp, _ = run()
    assert kind == "AttentionCache"
    assert bool((yf == yp).all()) and bool((gf == gp).all())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("N,V", [(7, 5), (33, 50257), (4, 1)])
def test_cross_entropy_kernels(monkeypatch, dtype, N, V):
    import cupy as cp
    rng = np.random.default_rng(N)
    z = cp.asarray(rng.standard_normal((1, N, V)) * 4, dtype=dtype)
    y = rng.integers(0, V, (1, N))
    y[0, ::3] = -100
    y[0, 1] = rng.integers(0, V)
    y = cp.asarray(y)

    def run():
        loss, c = cross_entropy_forward(z, y)
        return loss, cross_entropy_backward(0.7, c)["x"]

    (lf, gf), (lp, gp) = both(monkeypatch, run)
    close(lf, lp, dtype, "cross-entropy loss")
    close(gf, gp, dtype, "cross-entropy backward")


@given(x=st.lists(st.one_of(st.floats(-40.0, 40.0), st.floats(-1e3, 1e3)), min_size=1, max_size=300),
       dtype=st.sampled_from(["float64", "float32"]))
@example(x=[-6.03810354, -9.0, -0.7518, 0.0, 30.0], dtype="float64")  # tails, the derivative's zero
@example(x=[-6.03810354, -9.0, -0.7518, 0.0, 30.0], dtype="float32")
@example(x=[1.3514445532464727e-42], dtype="float32")  # found on an H100: flushed to 0 (proofs/gelu.md)
def test_gelu_kernels_are_exact(x, dtype):
    """kernels.gelu and kernels.gelu_backward (the registered fast paths) against mpmath within the
    bounds of proofs/gelu.md, as tests/test_nn_grad.py::test_gelu_exact checks the reference (in float32
    with the smallest normal number added: CuPy compiles its kernels with flush-to-zero)."""
    import cupy as cp
    x = np.array(x, dtype=dtype)
    xd = cp.asarray(x)
    check_gelu_exact(x, kernels.gelu(xd).get(), kernels.gelu_backward(cp.ones_like(xd), xd).get(), flush_to_zero=True)


def _wide_confident_rows():
    """Two rows of 3000 logits (more than one per thread of the kernel's block), each target leading
    by 12 over spread-4 logits, with an offset of 500."""
    rng = np.random.default_rng(5)
    z, y = rng.standard_normal((2, 3000)) * 4, np.array([7, 2999])
    z[0, 7], z[1, 2999] = z[0].max() + 12, z[1].max() + 12
    return z + 500, y


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the spy is installed once
@given(case=cross_entropy_cases(), dtype=st.sampled_from(["float64", "float32"]))
@example(case=(np.array([[9.134, -15.39]]), np.array([0])), dtype="float64")
@example(case=_wide_confident_rows(), dtype="float64")
@example(case=_wide_confident_rows(), dtype="float32")
def test_cross_entropy_kernel_is_exact(monkeypatch, case, dtype):
    """The fused cross-entropy kernel (the registered fast path) against the exact values of its
    float inputs (mpmath), loss and every gradient entry, within the error bound of
    proofs/cross_entropy.md for its order of joins (≤ 1e-13 relative in float64), in the regimes of
    cross_entropy_cases: confident rows, large offsets, tiny vocabularies."""
    import cupy as cp
    calls = spy_fast_paths(monkeypatch)
    z, y = case
    with fused("1"):
        check_cross_entropy_exact(z.astype(dtype), y, xp=cp, kernel=True)
    assert "cross_entropy_rows" in calls and "cross_entropy_input_grad" in calls, calls


@given(N=st.integers(0, 3000), C=st.integers(1, 100), with_b=st.booleans())
@example(N=8192, C=768, with_b=True)  # a gpt2 LayerNorm weight gradient: two passes of partial sums
@example(N=256 * 256 + 1, C=3, with_b=False)  # three passes
def test_column_sums_kernel(N, C, with_b):
    """kernels.column_sums against NumPy's float64 sum over rows (of a ∘ b), in float64."""
    import cupy as cp
    rng = np.random.default_rng(N + C)
    a, b = rng.standard_normal((N, C)), rng.standard_normal((N, C))
    got = kernels.column_sums(cp.asarray(a), cp.asarray(b) if with_b else None)
    want = (a * b if with_b else a).sum(axis=0)
    d = float(np.max(np.abs(to_numpy(got) - want)))
    assert got.shape == (C,) and d <= 1e-12 * max(1.0, N), f"column sums: max abs diff {d:.3e}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_kernels_in_place(dtype):
    """The fused softmax-CE writing over its own logits (GPT.loss_and_grads) equals the copying kernel."""
    import cupy as cp
    rng = np.random.default_rng(3)
    z = cp.asarray(rng.standard_normal((1, 40, 1000)) * 4, dtype=dtype)
    y = cp.asarray(rng.integers(0, 1000, (1, 40)))
    with fused("1"):
        loss, c = cross_entropy_forward(z.copy(), y)
        dz = cross_entropy_backward(1.0, c)["x"]
        z_own = z.copy()
        loss_own, c_own = cross_entropy_forward(z_own, y, overwrite=True)
        dz_own = cross_entropy_backward(1.0, c_own, overwrite=True)["x"]
    assert float(loss_own) == float(loss)
    assert bool((dz_own == dz).all()) and bool((z_own == dz).all())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_bias_gradient_kernel(monkeypatch, dtype):
    """The bias gradient of a linear layer through kernels.column_sums against the plain sum."""
    import cupy as cp
    from minisft.nn import linear_backward, linear_forward
    rng = np.random.default_rng(5)
    x = cp.asarray(rng.standard_normal((3, 700, 20)), dtype=dtype)
    w, b = cp.asarray(rng.standard_normal((30, 20)), dtype=dtype), cp.asarray(rng.standard_normal(30), dtype=dtype)
    dy = cp.asarray(rng.standard_normal((3, 700, 30)), dtype=dtype)

    def run():
        _, c = linear_forward(x, w, b)
        return linear_backward(dy, c)["bias"]

    fused_db, plain_db = both(monkeypatch, run)
    close(fused_db, plain_db, dtype, "linear bias gradient")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gelu_kernels(monkeypatch, dtype):
    import cupy as cp
    x = cp.asarray(np.random.default_rng(0).standard_normal((64, 300)) * 4, dtype=dtype)
    dy = cp.asarray(np.random.default_rng(1).standard_normal((64, 300)), dtype=dtype)

    def run():
        y, c = gelu_forward(x)
        return y, gelu_backward(dy, c)["x"]

    (yf, gf), (yp, gp) = both(monkeypatch, run)
    close(yf, yp, dtype, "gelu forward")
    close(gf, gp, dtype, "gelu backward")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("need", [("x", "weight", "bias"), ("weight",), ("x",), ()])
@pytest.mark.parametrize("C", [3, 768, 1500])
def test_layernorm_kernels(monkeypatch, dtype, need, C):
    import cupy as cp
    rng = np.random.default_rng(C)
    x = cp.asarray(rng.standard_normal((2, 9, C)) * 2 + 1, dtype=dtype)
    w, b = (cp.asarray(rng.standard_normal(C), dtype=dtype) for _ in range(2))
    dy = cp.asarray(rng.standard_normal((2, 9, C)), dtype=dtype)

    def run():
        y, c = layernorm_forward(x, w, b, need=need)
        return y, layernorm_backward(dy, c)

    (yf, gf), (yp, gp) = both(monkeypatch, run)
    close(yf, yp, dtype, "layernorm forward")
    assert set(gf) == set(gp) == set(need)
    for k in gf:
        close(gf[k], gp[k], dtype, f"layernorm backward {k}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("masked", [False, True])
def test_adamw_kernel(monkeypatch, dtype, masked):
    import cupy as cp
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((37, 11))
    grads = [rng.standard_normal((37, 11)) for _ in range(4)]
    mask = cp.asarray(rng.random((37, 11)) < 0.5) if masked else None

    def run():
        p = cp.asarray(p0, dtype=dtype)
        opt = AdamW(lr=1e-2, weight_decay=0.1)
        for g in grads:
            opt.step({"p": p}, {"p": cp.asarray(g, dtype=dtype)}, masks={"p": mask} if masked else None)
        return p, opt.state["p"]["exp_avg"], opt.state["p"]["exp_avg_sq"]

    fused, plain = both(monkeypatch, run)
    for a, b, what in zip(fused, plain, ("param", "exp_avg", "exp_avg_sq")):
        close(a, b, dtype, f"adamw {what}")
    if masked:
        assert cp.all(fused[0][~mask] == cp.asarray(p0, dtype=dtype)[~mask])


# ---- GEMM with alpha/beta, column gather/scatter, and the adapters built on them ----
def _gemm_case(rng, M, N, K, trans_a, trans_b, integer, dtype):
    def draw(shape):
        a = rng.integers(-8, 9, shape) if integer else rng.standard_normal(shape)
        return a.astype(dtype)

    a = draw((K, M) if trans_a else (M, K))
    b = draw((N, K) if trans_b else (K, N))
    return a, b, draw((M, N))


@settings(max_examples=25)
@given(M=st.integers(0, 70), N=st.integers(0, 70), K=st.integers(0, 70), trans_a=st.booleans(),
       trans_b=st.booleans(), beta=st.sampled_from([0.0, 1.0, -0.5]), integer=st.booleans(),
       dtype=st.sampled_from(["float32", "float64"]), pad=st.integers(0, 3), seed=st.integers(0, 2**16))
@example(M=8192 // 64, N=115, K=768 // 8, trans_a=False, trans_b=True, beta=1.0, integer=True, dtype="float32",
         pad=0, seed=0)  # a RowDelta forward's shape, scaled down
@example(M=3, N=5, K=0, trans_a=True, trans_b=False, beta=-0.5, integer=False, dtype="float64", pad=2, seed=1)
@example(M=0, N=2, K=0, trans_a=False, trans_b=False, beta=0.0, integer=True, dtype="float32", pad=1, seed=0)
@example(M=0, N=2, K=0, trans_a=True, trans_b=True, beta=1.0, integer=False, dtype="float32", pad=0, seed=0)
# (found on the H100: an empty column block of a wider array has CuPy strides that are no row layout)
def test_gemm_kernel(M, N, K, trans_a, trans_b, beta, integer, dtype, pad, seed):
    """kernels.gemm against NumPy: out = alpha·op(a) op(b) + beta·out into a column block of a wider
    array (the columns around it untouched). Integer-valued inputs make every product and sum exact,
    so the result must equal NumPy's bit for bit whatever the summation order: a wrong transpose,
    leading dimension or operand order cannot hide in rounding."""
    import cupy as cp
    rng = np.random.default_rng(seed)
    a, b, c = _gemm_case(rng, M, N, K, trans_a, trans_b, integer, dtype)
    alpha = 2.0 if integer else 0.7
    wide = np.full((M, N + 2 * pad), 1234.5, dtype=dtype)
    wide[:, pad:pad + N] = c
    wide_d = cp.asarray(wide)
    out = wide_d[:, pad:pad + N]
    got = kernels.gemm(cp.asarray(a), cp.asarray(b), out=out, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
    assert got is out
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    want = alpha * (opa.astype(np.float64) @ opb.astype(np.float64)) + beta * c.astype(np.float64)
    back = to_numpy(wide_d)
    assert (back[:, :pad] == 1234.5).all() and (back[:, pad + N:] == 1234.5).all(), "gemm wrote outside its columns"
    if integer:
        np.testing.assert_array_equal(back[:, pad:pad + N], want.astype(dtype))
    else:
        d = max_rel_diff(back[:, pad:pad + N], want)
        assert d <= TOL[dtype] * max(1, K), f"gemm {M, N, K}: max rel diff {d:.3e}"
    fresh = kernels.gemm(cp.asarray(a), cp.asarray(b), trans_a=trans_a, trans_b=trans_b)  # out=None
    assert fresh.shape == (M, N) and fresh.flags.c_contiguous
    if integer:
        np.testing.assert_array_equal(to_numpy(fresh), (opa.astype(np.float64) @ opb.astype(np.float64)).astype(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("N,C,r", [(1, 1, 1), (37, 50, 9), (300, 2304, 115), (5, 7, 7)])
def test_gather_scatter_columns_kernels(dtype, N, C, r):
    """gather_columns is a[:, cols] and scatter_add_columns is y[:, cols] += part + b, bit for bit
    (data movement and one add each, in the plain body's order); the other columns stay as they were."""
    import cupy as cp
    rng = np.random.default_rng(N + C + r)
    cols = np.sort(rng.choice(C, size=r, replace=False)).astype(np.int64)
    a = rng.standard_normal((N, C)).astype(dtype)
    part, b = rng.standard_normal((N, r)).astype(dtype), rng.standard_normal(r).astype(dtype)
    got = kernels.gather_columns(cp.asarray(a), cp.asarray(cols))
    np.testing.assert_array_equal(to_numpy(got), a[:, cols])
    for bias in (None, b):
        y = cp.asarray(a)
        kernels.scatter_add_columns(y, cp.asarray(part), cp.asarray(cols), None if bias is None else cp.asarray(bias))
        want = a.copy()
        want[:, cols] += part if bias is None else part + bias
        np.testing.assert_array_equal(to_numpy(y), want)


def _adapter_model(kind, dtype, seed=0):
    """A small GPT on the GPU (C = 48, 3 layers) with `kind` adapters on every linear layer, random
    non-zero adapter parameters, the base frozen except wpe (so every adapter passes dx on)."""
    from minisft.model.adapters import ColumnDelta, LoRA, RowDelta, SharedLoRA
    from minisft.core.config import GPTConfig
    from minisft.model.gpt import GPT, linear_layer_names
    cfg = GPTConfig(vocab_size=67, block_size=40, n_layer=3, n_head=3, n_embd=48)
    model = GPT(cfg, backend="cupy", dtype=dtype, seed=seed)
    model.freeze()
    model.unfreeze(["wpe.weight"])
    rng = np.random.default_rng(seed)
    for layer in linear_layer_names(cfg):
        d_out, d_in = model.params[layer + ".weight"].shape
        if kind == "rows":
            model.add_adapter(layer, RowDelta(model, layer, rng.choice(d_out, size=max(1, d_out // 20), replace=False)))
        elif kind == "rows_no_bias":
            model.add_adapter(layer, RowDelta(model, layer, rng.choice(d_out, size=d_out // 3, replace=False), bias=False))
        elif kind == "cols":
            model.add_adapter(layer, ColumnDelta(model, layer, rng.choice(d_in, size=d_in // 4, replace=False)))
        elif kind == "lora":
            model.add_adapter(layer, LoRA(model, layer, r=4, alpha=6, generator=int(rng.integers(99))))
    if kind == "shared_lora":
        names = linear_layer_names(cfg)
        SharedLoRA(model, "fc", names[2], r=3, alpha=5).attach(model, [n for n in names if n.endswith("mlp.c_fc")])
    for a in model.adapter_params().values():
        a[...] = model.xp.asarray(rng.standard_normal(a.shape) * 0.3, dtype=a.dtype)
    idx, tgt = (rng.integers(0, cfg.vocab_size, (2, cfg.block_size)) for _ in range(2))
    return model, model.xp.asarray(idx), model.xp.asarray(tgt)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["rows", "rows_no_bias", "cols", "lora", "shared_lora"])
def test_fused_adapters_equal_plain_bodies(monkeypatch, dtype, kind):
    """The adapters' fused paths (kernels.gemm with alpha/beta, column gather/scatter) against their
    plain xp bodies: loss, every adapter gradient and the wpe gradient below them (which carries every
    adapter's dx) of one whole-model step, on the same GPU model. Only the adapters switch: the other
    layers run their fused kernels in both runs, so any difference is the adapters' own."""
    from minisft.model.adapters import ColumnDelta, LoRA, RowDelta
    model, idx, tgt = _adapter_model(kind, dtype)
    gemms = []
    real_gemm = kernels.gemm
    monkeypatch.setattr(kernels, "gemm", lambda *a, **k: gemms.append(1) or real_gemm(*a, **k))
    points = [f for cls in (LoRA, RowDelta, ColumnDelta) for f in (cls._forward, cls._backward)]
    registered = [f.fast for f in points]

    def run(adapters_fast):
        for f, fast in zip(points, registered):
            monkeypatch.setattr(f, "fast", fast if adapters_fast else None)
        gemms.clear()
        loss, grads = model.loss_and_grads(idx, tgt)
        return (loss, {k: g.copy() for k, g in grads.items()}), len(gemms)

    ((lf, gf), n_fused), ((lp, gp), n_plain) = run(True), run(False)
    n_adapters = sum(len(ads) for ads in model.adapters.values())
    assert n_fused >= 3 * n_adapters and n_plain == 0, f"kernels.gemm calls: fused run {n_fused}, plain run {n_plain}"
    assert set(gf) == set(gp) == set(model.adapter_params()) | {"wpe.weight"}
    assert abs(lf - lp) <= TOL[dtype] * abs(lp), f"{kind} loss: fused {lf!r} vs plain {lp!r}"
    for name in gp:
        close(gf[name], gp[name], dtype, f"{kind} {name}")


# ---- the segmented radix select (minisft.methods.select on CuPy) ----
TIES = [0.0, -0.0, 1.0, -1.0, 2.5, np.inf, -np.inf, 5e-324, 1e-45, 3.0e38]


def _select_case(rng, n_tensors, max_size, dtype, tied):
    out = []
    for _ in range(n_tensors):
        shape = tuple(int(s) for s in rng.integers(0, max_size + 1, size=int(rng.integers(1, 3))))
        a = rng.choice(TIES, size=shape) if tied else rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 30, size=shape)
        out.append(np.asarray(a, dtype=dtype))
    return out


def _select_both_scopes(monkeypatch, arrays_np, r):
    """gradient_masks and global_gradient_masks on the GPU through the kernels (asserted) against the oracle."""
    import cupy as cp
    from minisft.methods import select
    from minisft.methods.gmt.masks import global_gradient_masks, gradient_masks
    calls = []
    real = kernels.smallest_k_keep_masks
    monkeypatch.setattr(kernels, "smallest_k_keep_masks", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(fastpath, "ENABLED", True)
    gs = [cp.asarray(a) for a in arrays_np]
    for a, m in zip(arrays_np, gradient_masks(gs, r)):
        np.testing.assert_array_equal(to_numpy(m), stable_argsort_keep([a], select.ratio_count(r, a.size, "floor"))[0])
    total = sum(a.size for a in arrays_np)
    for a, m, e in zip(arrays_np, global_gradient_masks(gs, r), stable_argsort_keep(arrays_np, select.ratio_count(r, total, "floor"))):
        assert m.shape == a.shape and m.dtype == bool
        np.testing.assert_array_equal(to_numpy(m), e)
    assert calls or not arrays_np, "the kernel select did not run"


@pytest.mark.parametrize("chunk", [64, kernels.CHUNK])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("tied", [True, False])
def test_select_kernels_equal_oracle(monkeypatch, chunk, dtype, tied):
    """Per-tensor and global masks from the segmented radix select equal the stable-argsort oracle,
    with many ties (±0, subnormals, inf) spread over several chunks of a tensor and over tensors,
    and at every ratio from 0 (nothing dropped) to 0.99; 64-element chunks put hundreds of chunks in
    one segment, the real chunk size a 40 000-entry tensor in three."""
    monkeypatch.setattr(kernels, "CHUNK", chunk)
    kernels._chunks.cache_clear()
    rng = np.random.default_rng(chunk + tied)
    arrays_np = _select_case(rng, 5, 40, dtype, tied) + [np.asarray(rng.choice(TIES, size=40_000) if tied else
                                                                    rng.standard_normal(40_000), dtype=dtype)]
    try:
        for r in (0.0, 0.3, 0.5, 0.99):
            _select_both_scopes(monkeypatch, arrays_np, r)
    finally:
        kernels._chunks.cache_clear()


@settings(max_examples=15)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 5), max_size=st.sampled_from([3, 30, 300]),
       dtype=st.sampled_from(["float32", "float64"]), tied=st.booleans(), r=st.sampled_from([0.0, 0.1, 0.5, 0.9]))
def test_select_kernels_equal_oracle_hypothesis(seed, n, max_size, dtype, tied, r):
    """As test_select_kernels_equal_oracle on drawn tensors (chunks of 16 entries)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "CHUNK", 16)
        kernels._chunks.cache_clear()
        try:
            _select_both_scopes(mp, _select_case(np.random.default_rng(seed), n, max_size, dtype, tied), r)
        finally:
            kernels._chunks.cache_clear()


def test_select_nan_check_kernel_names_the_tensor():
    """The NaN check runs as one kernel over all tensors and names the first tensor holding a NaN."""
    import cupy as cp
    from minisft.methods.gmt.masks import gradient_masks
    grads = {"a": cp.ones(5, dtype=cp.float32), "b": cp.asarray([1.0, np.nan, 2.0], dtype=cp.float32),
             "c": cp.asarray([np.nan], dtype=cp.float32)}
    with fused("1"), pytest.raises(ValueError, match=r"grads\['b'\]"):
        gradient_masks(grads, 0.5)
    assert [int(v) for v in kernels.nan_counts(list(grads.values())).get()] == [0, 1, 1]


# ---- AdamW over many tensors in one launch ----
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adamw_many_tensors_one_launch(monkeypatch, dtype):
    """Several tensors (one across three chunks), a mask on one, and a tensor without a gradient at
    one step (so its step count, hence its bias correction, differs): the one-launch update against
    the plain per-tensor body over four steps."""
    import cupy as cp
    rng = np.random.default_rng(1)
    shapes = {"big": (40_000,), "w": (37, 11), "b": (3,), "late": (5, 4)}
    p0 = {k: rng.standard_normal(s) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s) for k, s in shapes.items() if not (k == "late" and i == 1)} for i in range(4)]
    mask = cp.asarray(rng.random(shapes["w"]) < 0.5)
    calls = []
    real = kernels.adamw_many
    monkeypatch.setattr(kernels, "adamw_many", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run():
        ps = {k: cp.asarray(v, dtype=dtype) for k, v in p0.items()}
        opt = AdamW(lr=1e-2, weight_decay=0.1)
        for g in grads:
            opt.step(ps, {k: cp.asarray(v, dtype=dtype) for k, v in g.items()}, masks={"w": mask})
        return ps, opt.state

    (pf, sf), (pp, sp) = both(monkeypatch, run)
    assert len(calls) == 4, "the one-launch AdamW did not run at every fused step"
    assert sf["late"]["step"] == sp["late"]["step"] == 3
    for k in shapes:
        close(pf[k], pp[k], dtype, f"adamw_many {k}")
        close(sf[k]["exp_avg_sq"], sp[k]["exp_avg_sq"], dtype, f"adamw_many {k} exp_avg_sq")
    assert bool(cp.all(pf["w"][~mask] == cp.asarray(p0["w"], dtype=dtype)[~mask]))


# ---- the embedding's row scatter-add, deterministic ----
@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), V=st.integers(1, 50), N=st.integers(1, 600), C=st.sampled_from([1, 3, 64, 300]),
       dtype=st.sampled_from(["float32", "float64"]))
@example(seed=0, V=1, N=600, C=300, dtype="float32")  # one row repeated 600 times: a single long run
def test_scatter_add_rows_kernel_gives_numpys_bits(seed, V, N, C, dtype):
    """kernels.scatter_add_rows (the GPU embedding gradient) sums each row's values from zero in order
    of n, as the NumPy CSR product does: float32 and float64 results equal NumPy's bit for bit (no
    subnormals drawn: the GPU flushes them), on a zero target and on a non-zero one, and a second
    launch gives the same bits (cupy.add.at's atomic adds do not promise either)."""
    import cupy as cp

    from minisft.nn.embedding import scatter_add_rows

    rng = np.random.default_rng(seed)
    rows = rng.integers(0, V, N)
    values = (rng.standard_normal((N, C)) * rng.choice([1e-3, 1.0, 1e3], (N, C))).astype(dtype)
    for start in (np.zeros((V, C), dtype=dtype), rng.standard_normal((V, C)).astype(dtype)):
        expected = scatter_add_rows(start.copy(), rows, values)  # NumPy: the CSR product
        got = [kernels.scatter_add_rows(cp.asarray(start), cp.asarray(rows), cp.asarray(values)).get() for _ in range(2)]
        bits = f"u{np.dtype(dtype).itemsize}"
        differ = int((got[0].view(bits) != expected.view(bits)).sum())
        assert differ == 0, f"{differ} entries differ from NumPy's bits; max diff {np.abs(got[0] - expected).max():.3e}"
        assert np.array_equal(got[0].view(bits), got[1].view(bits)), "two launches differ"


def test_embedding_backward_on_the_gpu_uses_the_ordered_kernel(monkeypatch):
    """With the fused kernels on, the embedding's dwte comes from kernels.scatter_add_rows (one call),
    and its bits equal the NumPy backward's on the same float64 inputs."""
    import cupy as cp

    from minisft.nn import embedding_backward, embedding_forward

    rng = np.random.default_rng(3)
    idx, wte, wpe = rng.integers(0, 7, (3, 16)), rng.standard_normal((7, 8)), rng.standard_normal((16, 8))
    dx = rng.standard_normal((3, 16, 8))
    from minisft.nn import embedding

    calls = spy_fast_paths(monkeypatch, [embedding.scatter_add_rows])
    monkeypatch.setattr(fastpath, "ENABLED", True)
    g_gpu = embedding_backward(cp.asarray(dx), embedding_forward(cp.asarray(idx), cp.asarray(wte), cp.asarray(wpe))[1])
    g_cpu = embedding_backward(dx, embedding_forward(idx, wte, wpe)[1])
    assert len(calls) == 1
    assert np.array_equal(g_gpu["wte"].get().view("u8"), g_cpu["wte"].view("u8"))


# ---- GMT's masking of every gradient in one launch ----
@settings(max_examples=15)
@given(seed=st.integers(0, 2**16), sizes=st.lists(st.integers(0, 70), min_size=1, max_size=6),
       dtype=st.sampled_from(["float32", "float64"]), p=st.sampled_from([0.0, 0.3, 1.0]))
@example(seed=0, sizes=[0, 1, 70], dtype="float32", p=0.5)  # an empty tensor, one entry, one over several chunks
def test_zero_dropped_count_kept_equals_the_per_tensor_loop(seed, sizes, dtype, p):
    """kernels.zero_dropped_count_kept against select.zero_where_dropped + count_nonzero per tensor,
    with 16-entry chunks so tensors span several blocks: the same bits (+0.0 where dropped, -0.0 and
    the other entries kept as they were) and the same kept counts."""
    import cupy as cp

    from minisft.methods.select import zero_where_dropped

    rng = np.random.default_rng(seed)
    grads = [rng.choice(np.array([-0.0, 0.0, 1.5, -2.0]), n) + rng.standard_normal(n) * (rng.random(n) < 0.5) for n in sizes]
    masks = [rng.random(n) < p for n in sizes]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "CHUNK", 16)
        kernels._chunks.cache_clear()
        try:
            got = [cp.asarray(g, dtype=dtype) for g in grads]
            counts = kernels.zero_dropped_count_kept(got, [cp.asarray(m) for m in masks]).get()
        finally:
            kernels._chunks.cache_clear()
    for g, m, out, count in zip(grads, masks, got, counts):
        expected = g.astype(dtype)
        zero_where_dropped(expected, m)
        bits = f"u{np.dtype(dtype).itemsize}"
        assert np.array_equal(out.get().view(bits), expected.view(bits))
        assert int(count) == int(np.count_nonzero(m))


def test_gmt_transform_grads_in_one_launch_equals_the_loop(monkeypatch):
    """GMT.transform_grads on the GPU: the one-launch path (kernels.zero_dropped_count_kept, called
    once a step) gives the plain loop's gradients bit for bit and the same kept fractions over 3 steps."""
    import cupy as cp

    from minisft.methods import GMT, select

    rng = np.random.default_rng(5)
    calls = spy_fast_paths(monkeypatch, [select.zero_where_dropped_all])

    def run():
        model = tiny_gpt(xp="cupy", dtype="float32", seed=1)
        gmt = GMT(0.4, scope="global")
        gmt.prepare(model, None, rng)
        out = []
        for step in range(3):
            grads = {k: cp.asarray(np.random.default_rng(step).standard_normal(v.shape), dtype="float32")
                     for k, v in model.trainable_params().items()}
            out.append({k: g.get() for k, g in gmt.transform_grads(model, grads, step).items()})
        return out, gmt.report()["kept_fraction"]

    (g_fused, kept_fused), (g_plain, kept_plain) = both(monkeypatch, run)
    assert calls.count("zero_where_dropped_all") == 3, "the one-launch masking did not run at every fused step"
    assert kept_fused == kept_plain
    for a, b in zip(g_fused, g_plain):
        for k in a:
            assert np.array_equal(a[k].view("u4"), b[k].view("u4")), k
