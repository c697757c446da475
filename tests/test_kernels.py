"""Every fused CuPy kernel against the plain xp body it replaces (GPU only; skipped without one).
The plain body is run with kernels.FUSED off (what MINISFT_FUSED=0 sets at import); both run on the
GPU on the same fresh random inputs."""

import contextlib

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from minisft import kernels
from minisft.backend import gpu_available, to_numpy
from minisft.nn import (attention_backward, attention_forward, cross_entropy_backward, cross_entropy_forward,
                        gelu_backward, gelu_forward, layernorm_backward, layernorm_forward)
from minisft.optim import AdamW
from tests.gradcheck import assert_directional, max_rel_diff

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a GPU")]
TOL = {"float64": 1e-12, "float32": 2e-5}


@contextlib.contextmanager
def fused(flag):
    """kernels.FUSED = (flag != "0") inside the block (for hypothesis tests, where monkeypatch cannot
    be used), as MINISFT_FUSED=flag at import would set it."""
    old = kernels.FUSED
    kernels.FUSED = flag != "0"
    try:
        yield
    finally:
        kernels.FUSED = old


def both(monkeypatch, fn):
    """(fused result, plain result) of fn() on the GPU."""
    monkeypatch.setattr(kernels, "FUSED", True)
    fused = fn()
    monkeypatch.setattr(kernels, "FUSED", False)
    plain = fn()
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
    """minisft.flash_attention (tiled, online softmax, P recomputed) against the plain xp body."""
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
