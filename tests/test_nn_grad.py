"""Every layer's backward: float64 directional finite differences on hypothesis-drawn shapes and
values, PyTorch autograd parity, no input mutation, non-contiguous inputs, and the `need` contract.
Derivations: proofs/<layer>.md."""

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import minisft.testing as mt
from minisft.core.backend import gpu_available, to_numpy
from minisft.nn import (attention_backward, attention_forward, cross_entropy_backward, cross_entropy_forward,
    embedding_backward, embedding_forward, gelu_backward, gelu_forward, layernorm_backward, layernorm_forward,
    linear_backward, linear_forward)
from minisft.nn.gelu import COEFF, SQRT_2_OVER_PI
from tests.gradcheck import assert_directional, max_rel_diff
from tests.helpers import (check_cross_entropy_exact, check_gelu_exact, cross_entropy_cases, exact_cross_entropy,
    relative_errors)

seeds = mt.seeds()
small = mt.sides(5)


def projected(forward, name, inputs, proj):
    """f(θ) = Σ forward(inputs with `name` = θ) ∘ proj: a scalar whose gradient is backward(proj)."""
    def f(theta):
        args = dict(inputs, **{name: theta})
        return float(np.sum(forward(**args) * proj))
    return f


def check_layer(forward, backward, inputs, differentiable, rng, fwd_kwargs=None, h=1e-3):
    """FD-check every differentiable input of a layer through a random output projection (Richardson
    step h, in units of each input's rms)."""
    fwd_kwargs = fwd_kwargs or {}
    out, cache = forward(**inputs, **fwd_kwargs)
    proj = rng.standard_normal(np.shape(out))
    grads = backward(proj if np.ndim(out) else float(proj), cache)
    assert set(grads) == set(differentiable)
    f_scale = float(np.sum(np.abs(out * proj)))  # f = Σ out∘proj rounds relative to Σ|terms|
    for name in differentiable:
        f = projected(lambda **a: forward(**a, **fwd_kwargs)[0], name, inputs, proj)
        assert_directional(f, inputs[name], grads[name], rng, label=name, f_scale=f_scale, h=h)


# ------------------------------------------------------------------------------ linear
@given(seed=seeds, **mt.layer_shapes("linear"))
def test_linear_fd(seed, n, t, d_in, d_out, bias):
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((n, t, d_in)), "weight": rng.standard_normal((d_out, d_in))}
    if bias:
        inputs["bias"] = rng.standard_normal(d_out)
    check_layer(linear_forward, linear_backward, inputs, list(inputs), rng)


@given(seed=seeds, **mt.layer_shapes("layernorm"))
@example(seed=90, C=1, lead=[1])  # was C=2 (C += 1): failed at 3.1e-7 before the shift below
@example(seed=204000929, C=1, lead=[5, 5])  # a row of σ = 0.075: FD's truncation 1.5e-6 of ‖g‖‖v‖ at h = 1e-3
def test_layernorm_fd(seed, C, lead):
    rng = np.random.default_rng(seed)
    # C >= 3. C = 1 normalises to exactly zero; at C = 2 xhat = ±√(σ²/(σ²+eps)), so dx is only
    # ~eps/σ² in size and finite-difference rounding is as large as the derivative itself. Both are
    # degenerate but valid: test_layernorm_constant_vector_is_finite and the torch parity test cover them.
    C += 2
    inputs = {"x": rng.standard_normal((*lead, C)) * 3 + 1,
              "weight": rng.standard_normal(C), "bias": rng.standard_normal(C)}
    # LayerNorm's k-th derivative grows like σ⁻ᵏ of a row's spread σ: the Richardson step shrinks with
    # the narrowest row, so its truncation error stays below the tolerance (at σ = 0.075 and h = 1e-3
    # it was 1.5e-6 of ‖g‖‖v‖, while FD at h = 1e-5 met the analytic value to 7e-10 of its 17.8)
    h = 1e-3 * min(1.0, float(inputs["x"].std(axis=-1).min()))
    check_layer(layernorm_forward, layernorm_backward, inputs, list(inputs), rng, h=h)


@given(seed=seeds, **mt.layer_shapes("gelu"))
@example(seed=33729240, shape=[1], scale=4.0)  # x = −6.04: the tanh form's forward cancelled (1 + tanh u ≈ 2e-10)
@example(seed=109643, shape=[1], scale=3.0)  # x = −5.5 (a step of 0.013 on e^{2u}, rate 8: truncation 1.6e-7)
def test_gelu_fd(seed, shape, scale):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale
    # in the negative tail GELU ≈ x e^{2u}: its k-th derivative grows like the rate 2u'(x)^k, so the
    # Richardson step shrinks with the largest rate (at x = −5.5, rate 8, h = 1e-3 left 1.6e-7 of ‖g‖‖v‖)
    rate = 2 * SQRT_2_OVER_PI * (1 + 3 * COEFF * x**2)
    check_layer(gelu_forward, gelu_backward, {"x": x}, ["x"], rng, h=1e-3 / max(1.0, float(rate.max()) / 2))


@given(x=st.lists(st.one_of(st.floats(-40.0, 40.0), st.floats(-1e3, 1e3)), min_size=1, max_size=20),
       dtype=st.sampled_from(["float64", "float32"]))
@example(x=[-6.03810354], dtype="float64")  # ½x(1 + tanh u) cancelled: dGELU/dx off by 7e-7 (FD test, seed 33729240)
@example(x=[-9.0, -0.7518, 0.0, 30.0], dtype="float32")  # a tail, the derivative's zero, 0, a large x
def test_gelu_exact(x, dtype):
    """GELU and its derivative against mpmath: relative error at most (8|u| + 8)·u and (8|u| + 12)·u of
    the sum of the derivative's two terms' magnitudes (u the rounding unit; |u(x)| enters through the
    exponential's conditioning: proofs/gelu.md), plus an absolute 8|x|·tiny where e^{−2u} overflows
    and one subnormal step for subnormal results."""
    x = np.array(x, dtype=dtype)
    y, c = gelu_forward(x)
    check_gelu_exact(x, y, gelu_backward(np.ones_like(x), c)["x"])


@given(seed=seeds, spread=st.sampled_from([1.0, 3.0]), **mt.layer_shapes("attention"))
@example(seed=0, B=2, T=64, H=2, hd=32, spread=3.0)  # the largest shape: 64 keys, head dim 32
@example(seed=1, B=1, T=1, H=1, hd=1, spread=1.0)    # one query, one key
def test_attention_fd(seed, B, T, H, hd, spread):
    """Real shapes (T up to 64, head dims up to 32), float64; spread 3 sharpens the softmax."""
    rng = np.random.default_rng(seed)
    inputs = {"qkv": rng.standard_normal((B, T, 3 * H * hd)) * spread}
    check_layer(attention_forward, lambda d, c: {"qkv": attention_backward(d, c)["x"]},
                inputs, ["qkv"], rng, fwd_kwargs={"n_head": H})


@given(seed=seeds, **mt.layer_shapes("cross_entropy"))
def test_cross_entropy_fd(seed, B, T, V, n_ignored):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, V, (B, T))
    targets.reshape(-1)[: min(n_ignored, B * T - 1)] = -100
    inputs = {"logits": rng.standard_normal((B, T, V)) * 3}
    check_layer(lambda logits, need=("x",): cross_entropy_forward(logits, targets, need=need),
                lambda d, c: {"logits": cross_entropy_backward(d, c)["x"]}, inputs, ["logits"], rng)


@given(seed=seeds, **mt.layer_shapes("embedding"))
def test_embedding_fd(seed, B, T, V, C):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, (B, T))  # repeated ids exercise the scatter-add
    inputs = {"wte": rng.standard_normal((V, C)), "wpe": rng.standard_normal((T + 2, C))}
    check_layer(lambda wte, wpe, need=("wte", "wpe"): embedding_forward(idx, wte, wpe, need=need),
                embedding_backward, inputs, ["wte", "wpe"], rng)


# ----------------------------------------------------------------------- PyTorch parity
torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_grads(fn, inputs, proj):
    """Autograd gradients of Σ fn(*inputs) ∘ proj (float64)."""
    ts = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    out = fn(**ts)
    (out * torch.tensor(proj)).sum().backward()
    return out.detach().numpy(), {k: t.grad.numpy() for k, t in ts.items()}


def assert_parity(ours_out, ours_grads, ref_out, ref_grads, tol=1e-10):
    """Max difference relative to the reference's largest entry; 1e-10 is the issue's float64 bound."""
    d = max_rel_diff(ours_out, ref_out)
    assert d <= tol, f"forward max rel diff {d:.3e}"
    for k in ref_grads:
        d = max_rel_diff(ours_grads[k], ref_grads[k])
        assert d <= tol, f"grad {k}: max rel diff {d:.3e}"


@given(seed=seeds, **mt.layer_shapes("linear", "n", "d_in", "d_out"))
def test_linear_torch(seed, n, d_in, d_out):
    rng = np.random.default_rng(seed)
    inp = {"x": rng.standard_normal((n, d_in)), "weight": rng.standard_normal((d_out, d_in)),
           "bias": rng.standard_normal(d_out)}
    y, c = linear_forward(**inp)
    proj = rng.standard_normal(y.shape)
    ref = torch_grads(F.linear, {"input": inp["x"], "weight": inp["weight"], "bias": inp["bias"]}, proj)
    g = linear_backward(proj, c)
    assert_parity(y, {"input": g["x"], "weight": g["weight"], "bias": g["bias"]}, *ref)


@given(seed=seeds, C=st.integers(2, 8), n=small)
@example(seed=0, C=2, n=2)  # found by hypothesis: C=2 cancels dx to ~1e-4, rel. diff 1.9e-12
def test_layernorm_torch(seed, C, n):
    rng = np.random.default_rng(seed)
    inp = {"x": rng.standard_normal((n, 3, C)), "weight": rng.standard_normal(C), "bias": rng.standard_normal(C)}
    y, c = layernorm_forward(**inp)
    proj = rng.standard_normal(y.shape)
    ref = torch_grads(lambda x, weight, bias: F.layer_norm(x, (C,), weight, bias, eps=1e-5), inp, proj)
    assert_parity(y, layernorm_backward(proj, c), *ref)


@given(seed=seeds, n=small)
def test_gelu_torch(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 7)) * 3
    y, c = gelu_forward(x)
    proj = rng.standard_normal(y.shape)
    ref = torch_grads(lambda x: F.gelu(x, approximate="tanh"), {"x": x}, proj)
    assert_parity(y, gelu_backward(proj, c), *ref)


@given(seed=seeds, **mt.layer_shapes("attention"))
@example(seed=0, B=2, T=64, H=2, hd=32)
def test_attention_torch(seed, B, T, H, hd):
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, T, 3 * H * hd)) * 2
    y, c = attention_forward(qkv, H)
    proj = rng.standard_normal(y.shape)

    def ref(x):
        q, k, v = (t.reshape(B, T, H, hd).transpose(1, 2) for t in x.split(H * hd, dim=2))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return o.transpose(1, 2).reshape(B, T, H * hd)

    assert_parity(y, attention_backward(proj, c), *torch_grads(ref, {"x": qkv}, proj))


# logits (9.134, −15.39), target 0: lse − z_y cancelled to a relative error of 1.9e-5 (PyTorch's: 4.3e-7)
CE_CONFIDENT = (np.array([[9.134, -15.39]]), np.array([0]))


@given(case=cross_entropy_cases())
@example(case=CE_CONFIDENT)
@example(case=(np.array([[-10.18715827, 4.26082537]]), np.array([1])))  # PyTorch's loss off by 1.3e-10
def test_cross_entropy_torch(case):
    """minisft's loss and every gradient entry are at least as close to the exact values (mpmath) as
    PyTorch's F.cross_entropy in every regime of cross_entropy_cases (confident rows, large offsets,
    tiny vocabularies), up to rounding noise: 8 ulps, plus for dz_nv the rounding of its exponent
    z_nv − max_n (|z_nv − max_n| ulps, which both implementations incur, each rounding its own way).
    Where PyTorch cancels (lse − z_y and 1 − P when the target leads) minisft does not."""
    z, y = case
    loss, c = cross_entropy_forward(z[None], y[None])
    zt = torch.tensor(z, requires_grad=True)
    ref = F.cross_entropy(zt, torch.tensor(y), ignore_index=-100)
    ref.backward()
    exact_loss, exact_grad = exact_cross_entropy(z, y)
    floor, u = np.finfo(np.float64).smallest_subnormal, 2.0**-53
    ours, theirs = relative_errors(loss, exact_loss, floor), relative_errors(ref.item(), exact_loss, floor)
    assert ours <= theirs + 8 * u, f"loss: relative error {ours:.3e}, PyTorch's {theirs:.3e}"
    ours = relative_errors(cross_entropy_backward(1.0, c)["x"][0], exact_grad, floor)
    theirs = relative_errors(zt.grad.numpy(), exact_grad, floor)
    noise = (np.abs(z - z.max(axis=1, keepdims=True)) + 8) * u
    worse = np.argmax(ours - theirs - noise)
    assert np.all(ours <= theirs + noise), \
        f"dz entry {np.unravel_index(worse, ours.shape)}: relative error {ours.flat[worse]:.3e}, PyTorch's {theirs.flat[worse]:.3e}"


@given(case=cross_entropy_cases(), dtype=st.sampled_from(["float64", "float32"]))
@example(case=CE_CONFIDENT, dtype="float64")
@example(case=(np.array([[1000.5, 1000.0, 999.0]]), np.array([1])), dtype="float64")  # a common offset: lse rounded at 1e-13
@example(case=(np.array([[3.0]]), np.array([0])), dtype="float32")  # one logit: loss 0, dz 0 exactly
def test_cross_entropy_exact(case, dtype):
    """The reference cross-entropy is exact to its error bound (a few tens of ulps; ≤ 1e-13 relative
    in float64), loss and every gradient entry, in the regimes of cross_entropy_cases."""
    z, y = case
    check_cross_entropy_exact(z.astype(dtype), y)


@given(seed=seeds, **mt.layer_shapes("embedding", "V", "T"))
def test_embedding_torch(seed, V, T):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, (2, T))
    wte, wpe = rng.standard_normal((V, 3)), rng.standard_normal((T + 1, 3))
    x, c = embedding_forward(idx, wte, wpe)
    proj = rng.standard_normal(x.shape)
    ref = torch_grads(lambda wte, wpe: F.embedding(torch.tensor(idx), wte) + wpe[:T], {"wte": wte, "wpe": wpe}, proj)
    assert_parity(x, embedding_backward(proj, c), *ref)


# ------------------------------------------------------------------- contract properties
def _all_layers(rng):
    """(name, forward thunk, backward) for each layer on small random float64 inputs."""
    x3 = rng.standard_normal((2, 4, 6))
    W, b = rng.standard_normal((5, 6)), rng.standard_normal(5)
    idx = rng.integers(0, 5, (2, 4))
    return {
        "linear": ((x3, W, b), lambda x, W, b: linear_forward(x, W, b), linear_backward),
        "layernorm": ((x3, rng.standard_normal(6), rng.standard_normal(6)), layernorm_forward, layernorm_backward),
        "gelu": ((x3,), gelu_forward, gelu_backward),
        "attention": ((x3,), lambda x: attention_forward(x, 2), attention_backward),
        "embedding": ((rng.standard_normal((5, 6)), rng.standard_normal((7, 6))),
                      lambda wte, wpe: embedding_forward(idx, wte, wpe), embedding_backward),
    }


@pytest.mark.parametrize("layer", ["linear", "layernorm", "gelu", "attention", "embedding"])
def test_inputs_not_mutated_and_noncontiguous_identical(layer):
    rng = np.random.default_rng(0)
    inputs, fwd, bwd = _all_layers(rng)[layer]
    copies = [a.copy() for a in inputs]
    y, c = fwd(*inputs)
    dy = rng.standard_normal(y.shape)
    dy_copy = dy.copy()
    g = bwd(dy, c)
    for a, a0 in zip(inputs, copies):
        np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(dy, dy_copy)
    # the same values laid out non-contiguously (every other element of a wider buffer; reversed)
    spread = [np.repeat(a, 2, axis=-1)[..., ::2] for a in inputs]
    assert not any(s.flags.c_contiguous for s in spread if s.ndim > 0 and s.size > 1)
    y2, c2 = fwd(*spread)
    g2 = bwd(np.ascontiguousarray(dy[..., ::-1])[..., ::-1], c2)
    np.testing.assert_allclose(y2, y, rtol=1e-15, atol=1e-15)
    for k in g:
        np.testing.assert_allclose(g2[k], g[k], rtol=1e-14, atol=1e-14)


BLOCKED = {  # the layers whose NumPy bodies walk their arrays in row blocks (minisft.nn.blocks)
    "gelu": (lambda rng, shape, dt: (rng.standard_normal(shape).astype(dt) * 3,), gelu_forward, gelu_backward),
}


@pytest.mark.parametrize("layer", list(BLOCKED))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=seeds, shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_row_blocks_do_not_change_results(monkeypatch, layer, seed, shape, dtype):
    """Outputs and gradients of every blocked layer are bit-identical for any block size: one entry
    per block, a few, and everything in one block (so the FD and torch tests above, whose small
    arrays fit one block, speak for the blocked runs too)."""
    from minisft.nn import blocks

    rng = np.random.default_rng(seed)
    make, fwd, bwd = BLOCKED[layer]
    inputs = make(rng, shape, dtype)
    runs = []
    for size in (1 << 40, 1, 3, 7):
        monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", size)
        y, c = fwd(*inputs)
        dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype)
        runs.append((y, bwd(dy, c)))
    (y0, g0), rest = runs[0], runs[1:]
    for y, g in rest:
        np.testing.assert_array_equal(y, y0)
        for k in g0:
            np.testing.assert_array_equal(g[k], g0[k])


@given(seed=seeds, V=st.integers(1, 9), n=st.integers(1, 40), C=st.integers(1, 5),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_scatter_add_rows_equals_add_at(seed, V, n, C, dtype):
    """On NumPy the embedding's scatter-add (a CSR one-hot product) gives np.add.at's bits on a zero
    target: repeated rows summed in order of n, signed zeros and infinities included (NaN where
    add.at gives NaN)."""
    from minisft.nn.embedding import scatter_add_rows

    rng = np.random.default_rng(seed)
    rows = rng.integers(0, V, n)
    values = rng.choice(np.array([-0.0, 0.0, 1e-3, -7.5, 3.0, np.inf, -np.inf, np.nan, 1e30], dtype=dtype), (n, C))
    values += rng.standard_normal((n, C)).astype(dtype) * (rng.random((n, C)) < 0.5)
    expected = np.zeros((V, C), dtype=dtype)
    with np.errstate(invalid="ignore"):  # inf − inf
        np.add.at(expected, rows, values)
        got = scatter_add_rows(np.zeros((V, C), dtype=dtype), rows, values)
    np.testing.assert_array_equal(got, expected)  # NaN where add.at has NaN (its sign bit may differ)
    number, bits = ~np.isnan(expected), f"u{np.dtype(dtype).itemsize}"
    np.testing.assert_array_equal(got[number].view(bits), expected[number].view(bits))


def test_linear_frozen_weight_caches_no_input_and_computes_no_dW():
    rng = np.random.default_rng(1)
    x, W = rng.standard_normal((3, 4)), rng.standard_normal((2, 4))
    y, cache = linear_forward(x, W, need=("x",))
    assert cache.x2 is None  # no copy of the input kept for a weight gradient that is never asked
    assert set(linear_backward(np.ones_like(y), cache)) == {"x"}
    with pytest.raises(ValueError, match="need"):
        linear_backward(np.ones_like(y), cache, need=("weight",))
    _, cache = linear_forward(x, W, need=())
    assert cache.x2 is None and cache.weight is None


def test_need_rejects_unknown_names():
    with pytest.raises(ValueError, match="need"):
        gelu_forward(np.ones(3), need=("weight",))


def test_layernorm_constant_vector_is_finite():
    y, c = layernorm_forward(np.full((2, 5), 3.0), np.ones(5), np.zeros(5))
    assert np.all(y == 0)
    assert np.all(np.isfinite(layernorm_backward(np.ones((2, 5)), c)["x"]))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # xp is stateless
@given(seed=seeds, N=st.integers(1, 9), V=st.integers(1, 40))
def test_cross_entropy_overwrite_is_the_same_function(xp, seed, N, V):
    """overwrite=True (probabilities over the logits, dz over the probabilities) gives the very same
    loss and dz as the copying path, and really reuses the logits' memory."""
    rng = np.random.default_rng(seed)
    z = xp.asarray(rng.standard_normal((1, N, V)) * 4)
    y = rng.integers(0, V, (1, N))
    y[0, ::2] = -100 if N > 1 else y[0, 0]
    y = xp.asarray(y)
    loss, c = cross_entropy_forward(z.copy(), y)
    dz = cross_entropy_backward(2.0, c)["x"]
    z_own = z.copy()
    loss_own, c_own = cross_entropy_forward(z_own, y, overwrite=True)
    assert float(loss_own) == float(loss)
    assert bool((c_own.probs.reshape(z.shape) == z_own).all())  # the probabilities live in z_own
    dz_own = cross_entropy_backward(2.0, c_own, overwrite=True)["x"]
    assert bool((dz_own == dz).all()) and bool((z_own == dz).all())


def test_cross_entropy_all_ignored_is_an_error():
    with pytest.raises(ValueError, match="targets"):
        cross_entropy_forward(np.zeros((1, 2, 3)), np.full((1, 2), -100))


def test_cross_entropy_extreme_logits_are_finite():
    z = np.array([[[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]]])
    loss, c = cross_entropy_forward(z, np.array([[1, 2]]))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(cross_entropy_backward(1.0, c)["x"]))


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="NumPy vs CuPy needs CuPy and a GPU (NumPy vs NumPy would compare the code with itself)")
def test_backend_xp_bodies_run_on_both():
    """The same layer bodies on NumPy and on CuPy agree."""
    import cupy as xp
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((2, 5, 12))
    y_np, c_np = attention_forward(qkv, 2)
    y_xp, c_xp = attention_forward(xp.asarray(qkv), 2)
    dy = rng.standard_normal(y_np.shape)
    d = max_rel_diff(to_numpy(y_xp), y_np)
    assert d < 1e-12, f"forward max rel diff {d:.3e}"
    d = max_rel_diff(to_numpy(attention_backward(xp.asarray(dy), c_xp)["x"]), attention_backward(dy, c_np)["x"])
    assert d < 1e-12, f"backward max rel diff {d:.3e}"
