"""Adapters: finite differences (hypothesis shapes), PyTorch and HF PEFT parity, merge round trip,
the RowDelta identities, frozen-base guarantees, memory accounting and bad input."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minisft.model.adapters import (ColumnDelta, Dense, ElementMask, LoRA, RowDelta, SharedLoRA, merge_adapters,
    unmerge_adapters)
from minisft.core.backend import to_numpy
from minisft.core.config import GPTConfig
from minisft.model.memory import memory_report
from minisft.model.gpt import GPT, linear_layer_names
from minisft.training.optim import SGD, AdamW
from tests.gradcheck import assert_directional, max_rel_diff

KINDS = ["dense", "element_mask", "rows", "cols", "lora", "shared_lora"]


def tiny(seed=0, L=2, C=8, H=2, V=29, T=6, dtype="float64"):
    cfg = GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C)
    return GPT(cfg, backend="numpy", dtype=dtype, seed=seed)


def data(model, seed, B=2):
    rng = np.random.default_rng(seed)
    cfg = model.config
    return rng.integers(0, cfg.vocab_size, (B, cfg.block_size)), rng.integers(0, cfg.vocab_size, (B, cfg.block_size))


def attach(model, kind, layer, rng):
    """Attach one adapter of `kind` with random non-zero parameters; returns the adapters made."""
    d_out, d_in = model.params[layer + ".weight"].shape
    if kind == "dense":
        ads = [model.add_adapter(layer, Dense(model, layer))]
    elif kind == "element_mask":
        ads = [model.add_adapter(layer, ElementMask(model, layer, rng.random((d_out, d_in)) < 0.5))]
    elif kind == "rows":
        rows = rng.choice(d_out, size=int(rng.integers(1, d_out + 1)), replace=False)
        ads = [model.add_adapter(layer, RowDelta(model, layer, rows))]
    elif kind == "cols":
        cols = rng.choice(d_in, size=int(rng.integers(1, d_in + 1)), replace=False)
        ads = [model.add_adapter(layer, ColumnDelta(model, layer, cols))]
    elif kind == "lora":
        ads = [model.add_adapter(layer, LoRA(model, layer, r=2, alpha=3, generator=int(rng.integers(99))))]
    else:
        suffix = layer.split(".", 2)[2]
        same = [n for n in linear_layer_names(model.config) if n.endswith(suffix)]
        shared = SharedLoRA(model, suffix, layer, r=2, alpha=4).attach(model, same)
        ads = [a for n in same for a in model.adapters[n]]
        _ = shared
    for ad in ads:  # non-zero values everywhere so every gradient path is exercised
        for a in ad.params.values():
            a[...] = rng.standard_normal(a.shape) * 0.3
    return ads


@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 10**6), layer_i=st.integers(0, 7),
       C=st.sampled_from([4, 6, 8]), H=st.sampled_from([1, 2]))
@settings(max_examples=30)
def test_adapter_gradients_fd(kind, seed, layer_i, C, H):
    """Every adapter parameter, and the input gradient it passes on (checked through wpe, which
    lies below every adapter), against float64 Richardson finite differences."""
    model = tiny(seed, C=C, H=H)
    rng = np.random.default_rng(seed)
    model.freeze()
    model.unfreeze(["wpe.weight"])
    layer = linear_layer_names(model.config)[layer_i]
    attach(model, kind, layer, rng)
    idx, tgt = data(model, seed)
    _, grads = model.loss_and_grads(idx, tgt)
    arrays = dict(model.adapter_params(), **{"wpe.weight": model.params["wpe.weight"]})
    assert set(grads) == set(arrays)
    for name, a in arrays.items():
        a0 = a.copy()

        def f(theta):
            a[...] = theta
            try:
                return model.loss(idx, tgt)
            finally:
                a[...] = a0

        assert_directional(f, a0, grads[name], rng, label=f"{kind} {name}")


# ----------------------------------------------------------------------- PyTorch parity
torch = pytest.importorskip("torch")
from reference_models.adapters import (  # noqa: E402
    ColumnDeltaLinear, DenseDeltaLinear, LoRAFactors, LoRALinear, RowDeltaLinear, freeze_base, wrap_linear)
from reference_models.torch_gpt import TorchGPT  # noqa: E402


def torch_twin_with(model, adapters_by_layer):
    """TorchGPT with the same base and the same adapters (shared LoRA factors shared in torch too)."""
    ref = TorchGPT.from_minisft(model.state_dict(), model.config)
    freeze_base(ref)
    names = {}
    factors = {}
    for layer, ads in adapters_by_layer.items():
        for ad in ads:
            p = {k.rsplit(".", 1)[-1]: to_numpy(v) for k, v in ad.params.items()}
            if isinstance(ad, Dense):  # Dense and ElementMask
                mask = to_numpy(ad.mask) if isinstance(ad, ElementMask) else None
                mod = wrap_linear(ref, layer, lambda b: DenseDeltaLinear(b, p["weight"], p.get("bias"), mask))
                names[ad.name("weight")] = mod.weight
                if ad.bias is not None:
                    names[ad.name("bias")] = mod.bias
            elif isinstance(ad, RowDelta):
                mod = wrap_linear(ref, layer, lambda b: RowDeltaLinear(b, ad.rows_host, p["weight"], p["bias"]))
                names[ad.name("weight")], names[ad.name("bias")] = mod.weight, mod.bias
            elif isinstance(ad, ColumnDelta):
                mod = wrap_linear(ref, layer, lambda b: ColumnDeltaLinear(b, ad.cols_host, p["weight"]))
                names[ad.name("weight")] = mod.weight
            elif isinstance(ad, LoRA):
                key = tuple(sorted(ad.params))
                if key not in factors:
                    factors[key] = LoRAFactors(p["lora_A"], p["lora_B"], ad.scaling)
                f = factors[key]
                wrap_linear(ref, layer, lambda b: LoRALinear(b, f))
                names[key[0]], names[key[1]] = f.A, f.B
    return ref, names


@pytest.mark.parametrize("kind", ["dense", "element_mask", "rows", "cols", "lora", "shared_lora"])
@given(seed=st.integers(0, 10**6))
@settings(max_examples=6)
def test_adapters_match_torch_reference(kind, seed):
    model = tiny(seed, L=2)
    model.freeze()
    rng = np.random.default_rng(seed)
    for layer in rng.choice(linear_layer_names(model.config), size=2, replace=False):
        if not model.adapters.get(layer):
            attach(model, kind, str(layer), rng)
    ref, names = torch_twin_with(model, model.adapters)
    idx, tgt = data(model, seed)
    loss, grads = model.loss_and_grads(idx, tgt)
    _, ref_loss = ref(torch.tensor(idx), torch.tensor(tgt))
    ref_loss.backward()
    assert abs(loss - ref_loss.item()) <= 1e-12 * abs(loss)
    assert set(grads) == set(names)
    for k, p in names.items():
        d = max_rel_diff(grads[k], p.grad.numpy())
        assert d <= 1e-10, f"{k}: max rel diff {d:.3e}"


def test_lora_matches_hf_peft_on_linear():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    for r, alpha, rs in ((4, 8, False), (3, 5, True)):
        net = torch.nn.Sequential(torch.nn.Linear(7, 6)).double()
        pm = peft.get_peft_model(net, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["0"],
                                                      use_rslora=rs, lora_dropout=0.0))
        lin = pm.base_model.model[0]
        with torch.no_grad():
            lin.lora_B["default"].weight.normal_()
        model = tiny(0, C=8)
        # a stand-in layer of the right shape: attach LoRA to a 6x7 weight on a bare model object
        host = type("M", (), {})()
        host.params = {"l.weight": lin.base_layer.weight.detach().numpy().copy()}
        host.xp, host.dtype = np, model.dtype
        ad = LoRA(host, "l", r=r, alpha=alpha, use_rslora=rs)
        assert ad.scaling == lin.scaling["default"]
        ad.A[...] = lin.lora_A["default"].weight.detach().numpy()
        ad.B[...] = lin.lora_B["default"].weight.detach().numpy()
        x = np.random.default_rng(r).standard_normal((5, 7))
        dy = np.random.default_rng(r + 1).standard_normal((5, 6))
        xt = torch.tensor(x, requires_grad=True)
        yt = pm(xt)
        (yt * torch.tensor(dy)).sum().backward()
        base = x @ host.params["l.weight"].T + lin.base_layer.bias.detach().numpy()
        y, cache = ad.forward(x, base.copy())
        dx = dy @ host.params["l.weight"]
        g = ad.backward(dy, cache, dx)
        for ours, theirs, what in ((y, yt.detach().numpy(), "output"), (dx, xt.grad.numpy(), "dx"),
                                   (g["l.lora.lora_A"], lin.lora_A["default"].weight.grad.numpy(), "dA"),
                                   (g["l.lora.lora_B"], lin.lora_B["default"].weight.grad.numpy(), "dB")):
            d = max_rel_diff(ours, theirs)
            assert d <= 1e-10, f"{what}: max rel diff vs PEFT {d:.3e}"
        # PEFT's own initialisation law: A by torch's kaiming_uniform_(a=√5), i.e. U(±gain·√(3/d_in))
        # with torch's leaky-ReLU gain, drawn from the adapter's generator; B = 0
        fresh = LoRA(host, "l", r=r, alpha=alpha, generator=5)
        bound = torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5)) * math.sqrt(3 / 7)
        np.testing.assert_allclose(fresh.A, np.random.default_rng(5).uniform(-bound, bound, (r, 7)), rtol=1e-14)
        assert np.all(fresh.B == 0)


def test_lora_matches_hf_peft_on_gpt2():
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    import minisft as ms
    hf_cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=40, n_positions=8,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=None, eos_token_id=None)
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(hf_cfg).double().eval()
    sd = ms.interop.from_hf_gpt2({k: v.detach().numpy() for k, v in hf.state_dict().items()})
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                                                 lora_dropout=0.0, fan_in_fan_out=True))
    model = GPT.from_state_dict(sd, ms.interop.config_from_hf(hf_cfg), backend="numpy", dtype="float64")
    model.freeze()
    pairs = {}
    for name, mod in pm.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            layer = name.split("transformer.", 1)[1]
            with torch.no_grad():
                mod.lora_B["default"].weight.normal_()
            ad = model.add_adapter(layer, LoRA(model, layer, r=4, alpha=8))
            ad.A[...] = mod.lora_A["default"].weight.detach().numpy()
            ad.B[...] = mod.lora_B["default"].weight.detach().numpy()
            pairs[layer] = (ad, mod)
    assert len(pairs) == 4
    idx = np.random.default_rng(0).integers(0, 40, (2, 8))
    tgt = np.concatenate([idx[:, 1:], np.full((2, 1), -100)], axis=1)
    out = pm(input_ids=torch.tensor(idx))
    torch.nn.functional.cross_entropy(out.logits.reshape(-1, 40), torch.tensor(tgt).reshape(-1)).backward()
    d = max_rel_diff(model.logits(idx), out.logits.detach().numpy())
    assert d <= 1e-10, f"logits max rel diff vs PEFT GPT-2 {d:.3e}"
    _, grads = model.loss_and_grads(idx, tgt)
    for layer, (ad, mod) in pairs.items():
        for local, t in (("lora_A", mod.lora_A["default"].weight), ("lora_B", mod.lora_B["default"].weight)):
            d = max_rel_diff(grads[ad.name(local)], t.grad.numpy())
            assert d <= 1e-10, f"{layer} {local}: max rel diff vs PEFT {d:.3e}"


# ------------------------------------------------------------------------- identities
@pytest.mark.parametrize("kind", KINDS)
def test_merge_unmerge_round_trip_and_zero_delta_is_identity(kind):
    model = tiny(3)
    idx, _ = data(model, 3)
    before = model.logits(idx)
    base = model.state_dict()
    rng = np.random.default_rng(0)
    ads = attach(model, kind, "h.1.mlp.c_fc", rng)
    values = {k: v.copy() for ad in ads for k, v in ad.params.items()}
    for ad in ads:  # a zero delta (B=0 for LoRA) leaves the output bit-identical
        for name, a in ad.params.items():
            if kind not in ("lora", "shared_lora") or name.endswith("lora_B"):
                a[...] = 0
    assert np.array_equal(model.logits(idx), before)
    for ad in ads:
        for name, a in ad.params.items():
            a[...] = values[name]
    with_adapter = model.logits(idx)
    assert not np.allclose(with_adapter, before)
    merge_adapters(model)
    assert all(ad.merged for ad in ads)
    np.testing.assert_allclose(model.logits(idx), with_adapter, rtol=1e-12, atol=1e-12)
    unmerge_adapters(model)
    np.testing.assert_allclose(model.logits(idx), with_adapter, rtol=1e-12, atol=1e-12)
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(v, base[k], rtol=0, atol=1e-14, err_msg=k)


@given(seed=st.integers(0, 10**6), n_rows=st.integers(1, 32))
@settings(max_examples=15)
def test_row_delta_equals_masked_dense_sgd_step(seed, n_rows):
    """One SGD step on RowDelta = one step of full fine-tuning whose gradient is masked to the rows."""
    layer = "h.0.mlp.c_fc"
    rng = np.random.default_rng(seed)
    rows = rng.choice(32, size=n_rows, replace=False)
    dense = tiny(seed)
    dense.freeze()
    dense.unfreeze([layer + ".weight", layer + ".bias"])
    idx, tgt = data(dense, seed)
    _, g = dense.loss_and_grads(idx, tgt)
    mask = np.zeros(32, dtype=bool)
    mask[rows] = True
    SGD(lr=0.1).step(dense.trainable_params(), {k: v * (mask[:, None] if v.ndim == 2 else mask) for k, v in g.items()})
    sparse = tiny(seed)
    sparse.freeze()
    ad = sparse.add_adapter(layer, RowDelta(sparse, layer, rows))
    _, g2 = sparse.loss_and_grads(idx, tgt)
    np.testing.assert_allclose(g2[ad.name("weight")], g[layer + ".weight"][np.sort(rows)], rtol=1e-13, atol=1e-16)
    SGD(lr=0.1).step(sparse.trainable_params(), g2)
    merge_adapters(sparse)
    for k in (layer + ".weight", layer + ".bias"):
        np.testing.assert_allclose(sparse.params[k], dense.params[k], rtol=0, atol=1e-15, err_msg=k)


def test_row_delta_equals_lora_with_selector_b():
    rng = np.random.default_rng(0)
    layer, rows = "h.1.attn.c_attn", np.array([2, 5, 11, 17])
    a, b = tiny(1), tiny(1)
    for m in (a, b):
        m.freeze()
    rd = a.add_adapter(layer, RowDelta(a, layer, rows, bias=False))
    rd.weight[...] = rng.standard_normal(rd.weight.shape)
    lo = b.add_adapter(layer, LoRA(b, layer, r=4, alpha=4))  # scaling α/r = 1
    lo.A[...] = rd.weight
    lo.B[...] = np.eye(24)[:, rows]  # the one-hot row selector Mᵀ
    idx, tgt = data(a, 0)
    (la, ga), (lb, gb) = a.loss_and_grads(idx, tgt), b.loss_and_grads(idx, tgt)
    assert la == pytest.approx(lb, rel=1e-14)
    np.testing.assert_allclose(ga[rd.name("weight")], gb[lo.name("lora_A")], rtol=1e-12, atol=1e-15)


def test_shared_lora_gradient_is_sum_of_per_layer_gradients():
    """Oracle: the same model with an independent LoRA copy (same values) on each layer; the shared
    LoRA's gradient must be the sum of the copies' gradients."""
    layers = ["h.0.mlp.c_fc", "h.2.mlp.c_fc"]
    model = tiny(2, L=3)
    model.freeze()
    shared = SharedLoRA(model, "c_fc", layers[0], r=2).attach(model, layers)
    rng = np.random.default_rng(1)
    shared.A[...] = rng.standard_normal(shared.A.shape)
    shared.B[...] = rng.standard_normal(shared.B.shape)
    idx, tgt = data(model, 1)
    _, g = model.loss_and_grads(idx, tgt)
    assert len(model.adapter_params()) == 2
    separate = tiny(2, L=3)
    separate.freeze()
    copies = []
    for layer in layers:
        ad = separate.add_adapter(layer, LoRA(separate, layer, r=2, alpha=8))
        ad.A[...], ad.B[...] = shared.A, shared.B
        copies.append(ad)
    _, gs = separate.loss_and_grads(idx, tgt)
    for local in ("lora_A", "lora_B"):
        total = sum(gs[ad.name(local)] for ad in copies)
        np.testing.assert_allclose(g[f"shared.c_fc.{local}"], total, rtol=1e-12, atol=1e-15)


def test_only_adapter_tensors_change_after_adamw_steps():
    model = tiny(4, dtype="float32")
    base = model.state_dict()
    model.freeze()
    rng = np.random.default_rng(0)
    for kind, layer in zip(KINDS, linear_layer_names(model.config)):
        attach(model, kind, layer, rng)
    before = {k: v.copy() for k, v in model.adapter_params().items()}
    opt = AdamW(lr=1e-2)
    for s in range(3):
        idx, tgt = data(model, s)
        _, g = model.loss_and_grads(idx, tgt)
        opt.step(model.trainable_params(), g)
    for k, v in model.state_dict().items():
        assert np.array_equal(v, base[k]), f"frozen {k} changed"
    assert all(not np.array_equal(v, before[k]) for k, v in model.adapter_params().items())


# -------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_matches_torch_over_10_steps(wd):
    rng = np.random.default_rng(0)
    shapes = {"a": (4, 3), "b": (5,)}
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    topt = torch.optim.AdamW(tparams.values(), lr=3e-2, betas=(0.8, 0.95), eps=1e-8, weight_decay=wd)
    opt = AdamW(lr=3e-2, betas=(0.8, 0.95), eps=1e-8, weight_decay=wd)
    for _ in range(10):
        grads = {k: rng.standard_normal(s) for k, s in shapes.items()}
        for k, t in tparams.items():
            t.grad = torch.tensor(grads[k])
        topt.step()
        opt.step(params, grads)
    for k in params:
        d = max_rel_diff(params[k], tparams[k].detach().numpy())
        assert d <= 1e-12, f"{k}: max rel diff vs torch.optim.AdamW {d:.3e}"


def test_sgd_momentum_matches_torch():
    rng = np.random.default_rng(1)
    p = rng.standard_normal(6)
    tp = torch.tensor(p.copy(), requires_grad=True)
    topt = torch.optim.SGD([tp], lr=0.1, momentum=0.9, weight_decay=0.01)
    opt = SGD(lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(10):
        g = rng.standard_normal(6)
        tp.grad = torch.tensor(g)
        topt.step()
        opt.step({"p": p}, {"p": g})
    d = max_rel_diff(p, tp.detach().numpy())
    assert d <= 1e-13, f"max rel diff vs torch.optim.SGD {d:.3e}"


def test_optimizer_mask_leaves_entries_and_moments_untouched():
    rng = np.random.default_rng(2)
    p = rng.standard_normal((4, 4))
    p0 = p.copy()
    mask = rng.random((4, 4)) < 0.5
    opt = AdamW(lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.step({"w": p}, {"w": rng.standard_normal((4, 4))}, masks={"w": mask})
    assert np.array_equal(p[~mask], p0[~mask])
    assert np.all(opt.state["w"]["exp_avg"][~mask] == 0) and np.all(opt.state["w"]["exp_avg_sq"][~mask] == 0)
    assert np.all(p[mask] != p0[mask])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_in_place_path_equals_masked_path_bit_for_bit(dtype, wd):
    """Without masks AdamW updates in place; with an all-True mask it runs the masked body: the
    same operations, so the same bits (parameters and both moments), step after step."""
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal((6, 5)).astype(dtype)
    plain, masked = AdamW(lr=3e-2, betas=(0.8, 0.95), weight_decay=wd), AdamW(lr=3e-2, betas=(0.8, 0.95), weight_decay=wd)
    a, b, everything = p0.copy(), p0.copy(), np.ones(p0.shape, dtype=bool)
    for _ in range(4):
        g = rng.standard_normal(p0.shape).astype(dtype)
        plain.step({"w": a}, {"w": g})
        masked.step({"w": b}, {"w": g}, masks={"w": everything})
        assert np.array_equal(a, b), f"max diff {np.max(np.abs(a - b)):.3e}"
        for k in ("exp_avg", "exp_avg_sq"):
            assert np.array_equal(plain.state["w"][k], masked.state["w"][k]), k


# ------------------------------------------------------------------------------ memory
def test_row_delta_run_holds_no_full_gradient_or_optimizer_buffer():
    cfg = GPTConfig(vocab_size=256, block_size=32, n_layer=4, n_head=4, n_embd=256)
    model = GPT(cfg, backend="numpy", dtype="float32", seed=0)
    model.freeze()
    for layer in linear_layer_names(cfg):
        d_out = model.params[layer + ".weight"].shape[0]
        model.add_adapter(layer, RowDelta(model, layer, np.arange(0, d_out, 20)))  # 5% of rows
    opt = AdamW(lr=1e-3)
    idx, tgt = data(model, 0)
    _, grads = model.loss_and_grads(idx, tgt)
    opt.step(model.trainable_params(), grads)
    rep = memory_report(model, grads, opt)
    adapter_bytes = sum(a.nbytes for a in model.adapter_params().values())
    assert rep["trainable"] == adapter_bytes
    assert rep["grads"] == adapter_bytes, "a gradient buffer other than the row deltas' exists"
    assert rep["optimizer"] == 2 * adapter_bytes, "optimizer state for a frozen weight exists"
    biggest_frozen = max(v.nbytes for k, v in model.params.items() if k.startswith("h."))
    assert all(g.nbytes < biggest_frozen / 10 for g in grads.values())


def test_activation_bytes_match_a_hand_count_for_one_layer():
    """One block, only its mlp.c_fc weight trainable: the plan caches exactly the c_fc input
    (B·T·C floats, what dW = dyᵀx needs) and no other activation below the head. Above c_fc, the
    layers must pass dx down: gelu keeps its input (B·T·4C), mlp.c_proj keeps nothing of x (its W
    reference is free), ln_f keeps xhat and rstd (B·T·C + B·T), the head keeps nothing of x, the
    loss keeps probs (B·T·V), 1 − P at the targets (B·T) and its targets/valid arrays (B·T int64 +
    B·T bool)."""
    B, T, C, V = 2, 8, 16, 50
    cfg = GPTConfig(vocab_size=V, block_size=T, n_layer=1, n_head=2, n_embd=C)
    model = GPT(cfg, backend="numpy", dtype="float32", seed=0)
    model.freeze()
    model.unfreeze(["h.0.mlp.c_fc.weight"])
    idx, tgt = data(model, 0)
    model.loss_and_grads(idx, tgt)
    f = 4
    hand = (B * T * C * f            # mlp.c_fc input x (the ln_2 output)
            + B * T * 4 * C * f      # gelu input
            + B * T * C * f + B * T * f  # ln_f xhat, rstd
            + B * T * V * f          # softmax probabilities
            + B * T * f              # 1 − P at the targets (the target entries of dz, cancellation-free)
            + B * T * 8 + B * T)     # targets (int64), valid mask (bool)
    assert model.last_activation_bytes == hand


# --------------------------------------------------------------------------- bad input
def test_bad_adapter_input():
    model = tiny(0)
    layer = "h.0.mlp.c_fc"
    with pytest.raises(ValueError, match=r"rows.*\[0, 32\)"):
        RowDelta(model, layer, [0, 32])
    with pytest.raises(ValueError, match="rows.*duplicates"):
        RowDelta(model, layer, [1, 1])
    with pytest.raises(ValueError, match="rows"):
        RowDelta(model, layer, [])
    with pytest.raises(ValueError, match="cols"):
        ColumnDelta(model, layer, [-1])
    with pytest.raises(ValueError, match="r="):
        LoRA(model, layer, r=0)
    with pytest.raises(ValueError, match="r=9"):
        LoRA(model, layer, r=9)
    with pytest.raises(ValueError, match="mask"):
        ElementMask(model, layer, np.ones((8, 32), dtype=bool))
    with pytest.raises(ValueError, match="mask"):
        ElementMask(model, layer, np.ones((32, 8)))
    with pytest.raises(ValueError, match="init"):
        RowDelta(model, layer, [0], init="xavier")
    with pytest.raises(ValueError, match="layer"):
        model.add_adapter("h.0.mlp.c_fx", Dense(model, layer))
    with pytest.raises(ValueError, match="names"):
        model.unfreeze(["h.9.mlp.c_fc.weight"])
    with pytest.raises(ValueError, match="shape"):
        SharedLoRA(model, "x", "h.0.mlp.c_fc").attach(model, ["h.0.attn.c_proj"])
    with pytest.raises(ValueError, match="lr"):
        AdamW(lr=0)


def test_kaiming_init_on_bias_does_not_crash():
    """The released SPruFT code applied a kaiming initialiser to the 1-D bias delta, which raises;
    here the bias delta starts at zero and the weight delta follows U(±1/√d_in)."""
    model = tiny(0)
    ad = RowDelta(model, "h.0.mlp.c_fc", [0, 3], init="kaiming_uniform", generator=1)
    assert np.all(ad.bias == 0) and np.all(np.abs(ad.weight) <= 1 / np.sqrt(8)) and np.any(ad.weight != 0)


def test_adamw_counts_steps_per_tensor_like_torch():
    """A tensor that gets no gradient at step 1 starts its bias correction at its own first step."""
    a, b = np.ones(3), np.ones(3)
    ta, tb = (torch.ones(3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    topt = torch.optim.AdamW([ta, tb], lr=0.1, weight_decay=0.0)
    opt = AdamW(lr=0.1, weight_decay=0.0)
    g = np.array([1.0, -1.0, 1.0])
    for step in range(3):
        ta.grad = torch.tensor(g)
        tb.grad = None if step == 0 else torch.tensor(g)
        topt.step()
        opt.step({"a": a, "b": b}, {"a": g} if step == 0 else {"a": g, "b": g})
    for ours, theirs in ((a, ta), (b, tb)):
        d = max_rel_diff(ours, theirs.detach().numpy())
        assert d <= 1e-13, f"max rel diff vs torch {d:.3e}"
