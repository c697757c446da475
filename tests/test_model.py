"""Whole-model checks: parity with the PyTorch twin and with HF GPT2LMHeadModel, determinism,
gradient planning for frozen tensors, and input validation."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import minisft as ms
import minisft.testing as mt
from minisft.core.backend import gpu_available, to_numpy
from minisft.core.config import GPTConfig
from minisft.model.gpt import GPT, linear_layer_names, param_shapes
from tests.gradcheck import assert_directional, max_rel_diff, rms_or_one

configs = mt.gpt_configs()  # head_dim >= 3: why, in its docstring


def batch(cfg, seed, B=2, T=None, ignore=0):
    rng = np.random.default_rng(seed)
    T = T or cfg.block_size
    idx = rng.integers(0, cfg.vocab_size, (B, T))
    tgt = rng.integers(0, cfg.vocab_size, (B, T))
    tgt.reshape(-1)[: min(ignore, B * T - 1)] = -100
    return idx, tgt


@given(cfg=configs, seed=st.integers(0, 1000))
@example(cfg=GPTConfig(vocab_size=17, block_size=9, n_layer=2, n_head=2, n_embd=8), seed=0)  # every kind in 2 blocks
@example(cfg=GPTConfig(vocab_size=2, block_size=1, n_layer=1, n_head=1, n_embd=3), seed=115)  # ln_1.bias: ⟨g, v⟩ ~ 3e-7,
# its FD error 9e-14 is the loss's rounding (1 ulp / h), above 1e-7·‖g‖‖v‖: gradcheck's 3δ/h rounding term covers it
@settings(max_examples=10)
def test_model_gradient_fd(cfg, seed):
    """Directional finite differences of the whole model's loss: along one random direction over
    ALL parameter tensors at once (each scaled to its tensor's RMS), then along a random direction
    in each tensor alone — every tensor (wte, wpe, each ln_*, c_attn, c_proj, c_fc, ln_f) in every draw."""
    model = GPT(cfg, backend="numpy", dtype="float64", seed=seed)
    # perturb LayerNorms and biases away from 1/0 so their gradients are generic
    rng = np.random.default_rng(seed)
    for k in model.params:
        if not k.endswith("weight") or ".ln_" in k or k.startswith("ln_f"):
            model.params[k] = model.params[k] + 0.1 * rng.standard_normal(model.params[k].shape)
    idx, tgt = batch(cfg, seed, ignore=1)
    _, grads = model.loss_and_grads(idx, tgt)
    names = list(model.params)
    assert set(grads) == set(names)
    theta0 = {k: model.params[k] for k in names}
    sizes = [theta0[k].size for k in names]
    cuts = np.cumsum(sizes)[:-1]

    def loss_at(flat):
        for k, part in zip(names, np.split(flat, cuts)):
            model.params[k] = part.reshape(theta0[k].shape)
        try:
            return model.loss(idx, tgt)
        finally:
            model.params.update(theta0)

    flat = np.concatenate([theta0[k].ravel() for k in names])
    scale = np.concatenate([np.full(n, rms_or_one(theta0[k])) for k, n in zip(names, sizes)])
    assert_directional(loss_at, flat, np.concatenate([grads[k].ravel() for k in names]), rng,
                       scale=scale, label="all tensors at once")
    for name in names:
        def f(theta, name=name):
            model.params[name] = theta
            try:
                return model.loss(idx, tgt)
            finally:
                model.params[name] = theta0[name]

        assert_directional(f, theta0[name], grads[name], rng, label=name)


torch = pytest.importorskip("torch")
from reference_models.torch_gpt import TorchGPT  # noqa: E402


def twin_loss_and_grads(sd, cfg, idx, tgt, dtype):
    ref = TorchGPT.from_minisft(sd, cfg, dtype=dtype)
    _, loss = ref(torch.tensor(idx), torch.tensor(tgt))
    loss.backward()
    return loss.item(), ref.grads()


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
@given(cfg=configs, seed=st.integers(0, 1000))
@settings(max_examples=8)
def test_model_matches_torch_twin(dtype, tol, cfg, seed):
    model = GPT(cfg, backend="numpy", dtype=dtype, seed=seed)
    idx, tgt = batch(cfg, seed, ignore=2)
    loss, grads = model.loss_and_grads(idx, tgt)
    tdt = torch.float64 if dtype == "float64" else torch.float32
    ref_loss, ref_grads = twin_loss_and_grads(model.state_dict(), cfg, idx, tgt, tdt)
    assert abs(loss - ref_loss) <= tol * abs(ref_loss), f"loss {loss} vs {ref_loss}"
    worst = max(((max_rel_diff(grads[k], ref_grads[k]), k) for k in ref_grads))
    assert worst[0] <= tol, f"max rel grad diff {worst[0]:.3e} at {worst[1]}"
    ref_logits, _ = TorchGPT.from_minisft(model.state_dict(), cfg, dtype=tdt)(torch.tensor(idx))
    d = max_rel_diff(model.logits(idx), ref_logits.detach().numpy())
    assert d <= tol, f"logits max rel diff {d:.3e}"


def test_model_matches_hf_gpt2():
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(0)
    for seed, (L, H, C, V, T) in enumerate([(2, 2, 16, 37, 9), (3, 4, 32, 50, 16), (1, 1, 8, 11, 5)]):
        hf_cfg = transformers.GPT2Config(n_layer=L, n_head=H, n_embd=C, vocab_size=V, n_positions=T,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                         bos_token_id=None, eos_token_id=None)
        torch.manual_seed(seed)
        hf = transformers.GPT2LMHeadModel(hf_cfg).double().eval()
        with torch.no_grad():  # make LayerNorms and biases non-trivial
            for name, p in hf.named_parameters():
                if "ln" in name or name.endswith("bias"):
                    p.add_(0.1 * torch.randn_like(p))
        cfg = ms.interop.config_from_hf(hf_cfg)
        sd = ms.interop.from_hf_gpt2({k: v.detach().numpy() for k, v in hf.state_dict().items()})
        model = GPT.from_state_dict(sd, cfg, backend="numpy", dtype="float64")
        idx = rng.integers(0, V, (2, T))
        out = hf(input_ids=torch.tensor(idx))
        tgt = np.concatenate([idx[:, 1:], np.full((2, 1), -100)], axis=1)  # HF's label shift
        hf_loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, V), torch.tensor(tgt).reshape(-1))
        hf_loss.backward()
        d = max_rel_diff(model.logits(idx), out.logits.detach().numpy())
        assert d <= 1e-10, f"logits max rel diff vs HF {d:.3e}"
        loss, grads = model.loss_and_grads(idx, tgt)
        assert abs(loss - hf_loss.item()) <= 1e-10 * abs(loss)
        hf_grads = ms.interop.from_hf_gpt2(
            {k: p.grad.numpy() for k, p in hf.named_parameters() if k != "lm_head.weight"})
        worst = max((max_rel_diff(grads[k], hf_grads[k]), k) for k in hf_grads)
        assert worst[0] <= 1e-10, f"max rel grad diff vs HF {worst[0]:.3e} at {worst[1]}"
        round_trip = ms.interop.to_hf_gpt2(model.state_dict())
        for k, v in hf.state_dict().items():
            if k in round_trip:
                np.testing.assert_array_equal(round_trip[k], v.numpy(), err_msg=k)


# ------------------------------------------------------------------------ planning
def test_frozen_tensors_get_no_gradient_and_the_rest_are_unchanged():
    cfg = GPTConfig(vocab_size=23, block_size=8, n_layer=3, n_head=2, n_embd=8)
    model = GPT(cfg, backend="numpy", dtype="float64", seed=1)
    idx, tgt = batch(cfg, 1)
    _, full = model.loss_and_grads(idx, tgt)
    full_act = model.last_activation_bytes
    for keep in (["h.2.mlp.c_fc.weight"], ["h.1.ln_2.bias", "ln_f.weight"], ["wpe.weight"], ["wte.weight"]):
        model.freeze()
        model.unfreeze(keep)
        _, g = model.loss_and_grads(idx, tgt)
        assert set(g) == set(keep)
        for k in keep:
            np.testing.assert_allclose(g[k], full[k], rtol=1e-13, atol=1e-15)
        if keep[0].startswith("h.2"):
            assert model.last_activation_bytes < full_act / 2, "frozen lower blocks must cache nothing"
    model.freeze()
    loss, g = model.loss_and_grads(idx, tgt)
    assert g == {} and loss == pytest.approx(model.loss(idx, tgt), rel=1e-15)


def test_determinism_20_sgd_steps_bit_identical():
    cfg = GPTConfig(vocab_size=31, block_size=8, n_layer=2, n_head=2, n_embd=16)

    def run():
        model = GPT(cfg, backend="numpy", dtype="float32", seed=7)
        rng = np.random.default_rng(3)
        losses = []
        for _ in range(20):
            idx, _ = batch(cfg, int(rng.integers(1 << 30)))
            tgt = (idx + 1) % cfg.vocab_size  # a learnable rule: the next token id
            loss, grads = model.loss_and_grads(idx, tgt)
            for k, g in grads.items():
                model.params[k] -= 0.5 * g
            losses.append(loss)
        return losses, model.state_dict()

    (l1, s1), (l2, s2) = run(), run()
    assert l1 == l2
    assert l1[-1] < l1[0]
    for k in s1:
        assert np.array_equal(s1[k], s2[k]), k


def test_same_seed_same_init_different_seed_different():
    cfg = GPTConfig()
    a, b, c = (GPT(cfg, backend="numpy", seed=s).state_dict() for s in (0, 0, 1))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["wte.weight"], c["wte.weight"])


def test_gpt2_initialisation_statistics():
    cfg = GPTConfig(vocab_size=300, block_size=64, n_layer=4, n_head=4, n_embd=128)
    sd = GPT(cfg, backend="numpy", dtype="float64", seed=0).state_dict()
    assert np.std(sd["h.0.mlp.c_fc.weight"]) == pytest.approx(0.02, rel=0.02)
    assert np.std(sd["h.3.mlp.c_proj.weight"]) == pytest.approx(0.02 / np.sqrt(8), rel=0.02)
    assert np.all(sd["h.1.ln_2.weight"] == 1) and np.all(sd["h.1.attn.c_attn.bias"] == 0)
    assert list(sd) == list(param_shapes(cfg))


# ------------------------------------------------------------------ gradients reported when final
def _with_trainables(kind):
    """A 3-block float64 model training `kind`: every base tensor, LoRA or SPruFT's row deltas on every
    linear layer, a LoRA shared by blocks 0 and 2 (LoRA-drop's), or one tensor of the top block and
    ln_f (the backward stops above block 2)."""
    cfg = GPTConfig(vocab_size=23, block_size=8, n_layer=3, n_head=2, n_embd=8)
    model = GPT(cfg, backend="numpy", dtype="float64", seed=3)
    rng = np.random.default_rng(4)
    if kind != "full":
        model.freeze()
    if kind == "top-only":
        model.unfreeze(["h.2.mlp.c_fc.weight", "ln_f.bias"])
    for layer in linear_layer_names(cfg) if kind in ("lora", "rows", "shared-lora") else ():
        if kind == "rows":
            model.add_adapter(layer, ms.adapters.RowDelta(model, layer, rng.choice(8, size=3, replace=False)))
        elif not (kind == "shared-lora" and layer.endswith("mlp.c_fc")):
            model.add_adapter(layer, ms.adapters.LoRA(model, layer, r=2, alpha=4))
    if kind == "shared-lora":
        ms.adapters.SharedLoRA(model, "c_fc", "h.0.mlp.c_fc", r=2).attach(model, ["h.0.mlp.c_fc", "h.2.mlp.c_fc"])
    for a in model.adapter_params().values():
        a[...] = 0.3 * rng.standard_normal(a.shape)  # non-zero: every gradient path runs
    return model


def _block_of(name):
    """The block a name belongs to (h.{i}.*), -1 for one outside the blocks (ln_f, wte, shared.*)."""
    return int(name.split(".")[1]) if name.startswith("h.") else -1


@pytest.mark.parametrize("kind", ["full", "lora", "rows", "shared-lora", "top-only"])
def test_on_ready_reports_every_gradient_once_when_final_block_by_block(kind):
    """on_ready (the data-parallel overlap's hook) reports every gradient exactly once: after each
    block's backward its own tensors, top block first, the rest (ln_f, wpe, wte: the head's and the
    embedding's contributions) in one last call; a LoRA shared by blocks 0 and 2 once block 0 is done.
    Each array reported holds its final value from then on (copies taken in the callback equal the
    returned gradients exactly), and the loss and gradients equal those of a call without on_ready
    bit for bit."""
    model = _with_trainables(kind)
    idx, tgt = batch(model.config, 5)
    calls = []

    def on_ready(grads, names):
        calls.append({n: grads[n].copy() for n in names})
        assert list(names) == sorted(names)

    loss, grads = model.loss_and_grads(idx, tgt, on_ready=on_ready)
    plain_loss, plain = model.loss_and_grads(idx, tgt)
    assert loss == plain_loss and set(grads) == set(plain)
    for k in plain:
        np.testing.assert_array_equal(grads[k], plain[k], err_msg=k)
    reported = [n for call in calls for n in call]
    assert sorted(reported) == sorted(grads) and len(reported) == len(set(reported)), reported
    for call in calls:
        for n, at_report in call.items():
            np.testing.assert_array_equal(at_report, grads[n], err_msg=f"{n} changed after it was reported")
    blocks = range(model.config.n_layer - 1, -1, -1) if kind != "top-only" else [2]
    assert len(calls) == len(blocks) + 1
    shared = {n for n in grads if n.startswith("shared.")}
    for i, call in zip(blocks, calls):
        assert {n for n in call if n not in shared} == {n for n in grads if _block_of(n) == i}, (i, sorted(call))
        assert shared.isdisjoint(call) or i == 0
    assert {n for n in calls[-1]} == {n for n in grads if _block_of(n) == -1} - shared
    if kind == "full":
        assert {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"} == set(calls[-1])
    if kind == "shared-lora":
        assert shared == {"shared.c_fc.lora_A", "shared.c_fc.lora_B"} and shared <= set(calls[-2])


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,arg", [
    (dict(n_embd=10, n_head=3), "n_embd"), (dict(n_layer=0), "n_layer"), (dict(vocab_size=-1), "vocab_size"),
    (dict(block_size=2.5), "block_size"), (dict(n_head=True), "n_head"),
])
def test_bad_config(kwargs, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        GPTConfig(**kwargs)


def test_bad_tokens():
    cfg = GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=4)
    m = GPT(cfg, backend="numpy")
    ok = np.zeros((1, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"idx.*\[0, 10\)"):
        m.loss(np.array([[1, 10]]), np.array([[1, 1]]))
    with pytest.raises(ValueError, match="idx"):
        m.logits(np.array([[-1]]))
    with pytest.raises(ValueError, match="block_size=4"):
        m.logits(np.zeros((1, 5), dtype=np.int64))
    with pytest.raises(TypeError, match="idx.*integer"):
        m.logits(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="targets.shape"):
        m.loss(ok, ok[:, :2])
    with pytest.raises(ValueError, match="targets"):
        m.loss(ok, np.full((1, 4), 11))
    with pytest.raises(ValueError, match="idx.shape"):
        m.logits(np.zeros(4, dtype=np.int64))


def test_bad_state_dict():
    cfg = GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=4)
    sd = GPT(cfg, backend="numpy").state_dict()
    with pytest.raises(ValueError, match="missing.*wpe"):
        GPT.from_state_dict({k: v for k, v in sd.items() if k != "wpe.weight"}, cfg, backend="numpy")
    with pytest.raises(ValueError, match="unexpected.*extra"):
        GPT.from_state_dict(dict(sd, extra=np.zeros(1)), cfg, backend="numpy")
    with pytest.raises(ValueError, match=r"h.0.mlp.c_fc.weight.*\(16, 4\)"):
        GPT.from_state_dict(dict(sd, **{"h.0.mlp.c_fc.weight": np.zeros((4, 16))}), cfg, backend="numpy")
    with pytest.raises(ValueError, match="backend"):
        GPT(cfg, backend="jax")
    with pytest.raises(ValueError, match="dtype"):
        GPT(cfg, backend="numpy", dtype="float16")
    with pytest.raises(ValueError, match="layer"):
        GPT(cfg, backend="numpy").add_adapter("h.0.attn", object())
    assert linear_layer_names(cfg) == ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_fc", "h.0.mlp.c_proj"]


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="NumPy vs CuPy needs CuPy and a GPU (NumPy vs NumPy would compare the code with itself)")
def test_backends_agree():
    """NumPy vs CuPy: same init from the same seed, same loss and gradients."""
    import cupy as xp
    cfg = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)
    idx, tgt = batch(cfg, 5)
    backend = "cupy"
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-5)):
        a = GPT(cfg, backend="numpy", dtype=dtype, seed=4)
        b = GPT(cfg, backend=backend, dtype=dtype, seed=4)
        la, ga = a.loss_and_grads(idx, tgt)
        lb, gb = b.loss_and_grads(xp.asarray(idx), xp.asarray(tgt))
        worst = max(max_rel_diff(to_numpy(gb[k]), ga[k]) for k in ga)
        print(f"{backend} {dtype}: loss diff {abs(la - lb):.3e}, max rel grad diff {worst:.3e}")
        assert abs(la - lb) <= tol * abs(la) and worst <= tol, f"{dtype}: max rel grad diff {worst:.3e}"
