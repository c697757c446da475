"""LoRA-drop as a method (minisft.methods.loradrop). Oracles: the layer outputs recomputed explicitly
in PyTorch from A, B and the layer inputs captured by forward hooks; the PyTorch reference of the
selection (reference_models/primitives.py); finite differences and independent per-layer LoRA copies for the shared gradient;
exact closed-form parameter counts; the PyTorch reference (reference_models/loradrop.py) for the
whole probe -> score -> select -> shared-LoRA training pipeline. Derivations:
proofs/loradrop_method.md.
"""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minisft.model.adapters import LoRA
from minisft.core.backend import to_numpy
from minisft.data.batches import TokenStream
from minisft.model.budgets import count_params
from minisft.core.config import GPTConfig
from minisft.methods.base import LoRAMethod
from minisft.methods.loradrop.method import LoRADrop, keep_and_share, layer_importance, layer_scores
from minisft.model.gpt import GPT, LINEAR_SUFFIXES, linear_layer_names
from minisft.training.train import Task, TrainConfig, train
from tests.gradcheck import assert_directional, max_rel_diff
from tests.helpers import counter_task

def tiny(seed=0, L=2, C=8, H=2, V=29, T=6, backend="numpy"):
    cfg = GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C)
    return GPT(cfg, backend=backend, dtype="float64", seed=seed)


def make_task(model, B=3, n=1500, seed=0):
    """The counter task (tests.helpers) for the model's vocabulary and window."""
    return counter_task(model.config.vocab_size, model.config.block_size, B, n, seed, val_batches=1)


def batches(model, seed, n=2, B=2):
    rng = np.random.default_rng(seed)
    V, T = model.config.vocab_size, model.config.block_size
    return [(rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))) for _ in range(n)]


def with_loras(model, layers, rng, r=2, alpha=3.0, zero_B=()):
    """A LoRA with random A and B (B = 0 on the layers in zero_B) on each layer."""
    model.freeze()
    for n in layers:
        ad = model.add_adapter(n, LoRA(model, n, r=r, alpha=alpha, generator=rng))
        ad.A[...] = model.xp.asarray(rng.standard_normal(ad.A.shape))
        ad.B[...] = 0.0 if n in zero_B else model.xp.asarray(rng.standard_normal(ad.B.shape) * 0.3)
    return model


def prepared(seed=0, L=3, **opts):
    """A tiny model after LoRADrop.prepare on the synthetic task."""
    model = tiny(seed, L=L)
    options = dict(r=2, alpha=4, threshold=0.7, sample_fraction=0.2, probe_steps=4, probe_lr=1e-2)
    options.update(opts)
    method = LoRADrop(**options)
    method.prepare(model, make_task(model, seed=seed), np.random.default_rng(seed))
    return model, method


# ------------------------------------------------------------------------- importance: backends
@given(seed=st.integers(0, 10**6))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_importance_is_nonnegative_sums_to_one_on_every_backend(xp, seed):
    """I >= 0, sum I = 1, I = g / sum g on each backend; on CuPy, the same scores as on NumPy (the
    NumPy ones are checked against torch below; NumPy against itself would check nothing)."""
    rng = np.random.default_rng(seed)
    layers = list(rng.choice(linear_layer_names(tiny().config), size=4, replace=False))
    dev = tiny(seed, backend="numpy" if xp is np else "cupy")
    with_loras(dev, layers, np.random.default_rng(seed))
    data = batches(dev, seed)
    g_dev, _ = layer_scores(dev, [(xp.asarray(x), xp.asarray(y)) for x, y in data])
    if xp is not np:
        host = with_loras(tiny(seed), layers, np.random.default_rng(seed))
        g_host, _ = layer_scores(host, data)
        for n in layers:
            assert abs(g_dev[n] - g_host[n]) <= 1e-12 * g_host[n], f"{n}: {g_dev[n]} vs {g_host[n]}"
    imp = layer_importance(g_dev)
    assert set(imp) == set(layers)
    assert all(v >= 0 for v in imp.values())
    assert abs(sum(imp.values()) - 1.0) <= 4 * len(imp) * np.finfo(np.float64).eps
    total = sum(g_dev.values())
    for n in layers:
        assert abs(imp[n] - g_dev[n] / total) <= 2 * np.finfo(np.float64).eps * imp[n]


def test_scoring_leaves_the_model_as_it_was():
    """The scoring stand-ins are removed again and the model computes the same loss."""
    model = with_loras(tiny(3), ["h.0.mlp.c_fc", "h.1.attn.c_attn"], np.random.default_rng(3))
    data = batches(model, 3)
    before = {n: list(ads) for n, ads in model.adapters.items()}
    losses = [model.loss(x, y) for x, y in data]
    _, mean_loss = layer_scores(model, data)
    assert {n: list(ads) for n, ads in model.adapters.items()} == before
    assert all(a is b for n in before for a, b in zip(model.adapters[n], before[n]))
    assert [model.loss(x, y) for x, y in data] == losses
    assert mean_loss == pytest.approx(float(np.mean(losses)), rel=1e-15)


# ----------------------------------------------------------------------------- selection
@given(seed=st.integers(0, 10**6), n_zero=st.integers(1, 6), percent=st.integers(1, 100))
@example(seed=0, n_zero=6, percent=100)
@settings(max_examples=20, deadline=None)
def test_zero_output_layer_never_kept_before_a_nonzero_one(seed, n_zero, percent):
    """B = 0 gives a layer g = 0 exactly; it is never kept, and every kept layer is at least as
    important as every dropped one."""
    rng = np.random.default_rng(seed)
    layers = linear_layer_names(tiny().config)
    zero = set(rng.choice(layers, size=n_zero, replace=False).tolist())
    model = with_loras(tiny(seed), layers, rng, zero_B=zero)
    g, _ = layer_scores(model, batches(model, seed))
    assert all(g[n] == 0.0 for n in zero) and all(g[n] > 0 for n in layers if n not in zero)
    kept, shared = keep_and_share(layers, g, percent / 100)
    dropped = [n for d in shared.values() for n in d]
    assert not zero & set(kept)
    assert sorted(kept + dropped) == sorted(layers)
    if dropped:
        assert min(g[n] for n in kept) >= max(g[n] for n in dropped)
    if percent == 100:
        assert set(kept) == set(layers) - zero


@pytest.mark.parametrize("selection", ["joint", "per_type"])
@pytest.mark.parametrize("targets", [LINEAR_SUFFIXES, ("attn.c_attn",)])
def test_kept_set_equals_the_reference_selection_and_the_rest_share_one_lora_per_type(selection, targets):
    """The kept layers are those the PyTorch reference selection (reference_models/primitives.py:
    torch.sort + cumsum, written apart from minisft's select_layers) keeps from the report's scores,
    jointly or per module type; every other target layer shares its type's one LoRA."""
    torch = pytest.importorskip("torch")
    from reference_models.primitives import select_layers as reference_select

    def kept(pool):
        scores = torch.tensor([rep["scores"][n] for n in pool], dtype=torch.float64)
        return [pool[i] for i in reference_select(scores, 0.7).tolist()]

    model, method = prepared(1, selection=selection, targets=targets)
    rep = method.report()
    layers = [n for n in linear_layer_names(model.config) if n.split(".", 2)[2] in targets]
    assert list(rep["scores"]) == layers
    if selection == "joint":
        expect = kept(layers)
    else:
        pools = [[n for n in layers if n.endswith(s)] for s in LINEAR_SUFFIXES]
        expect = [n for pool in pools if pool for n in kept(pool)]
        expect = [n for n in layers if n in expect]
    assert rep["kept"] == expect
    assert set(model.adapters) == set(layers), "an adapter on a non-target layer, or a target layer without one"
    assert all(len(ads) == 1 and isinstance(ads[0], LoRA) for ads in model.adapters.values()), "probe adapters left"
    for n in rep["kept"]:
        assert set(model.adapters[n][0].params) == {f"{n}.lora.lora_A", f"{n}.lora.lora_B"}
    for s, dropped in rep["shared"].items():
        assert dropped == [n for n in layers if n.endswith(s) and n not in rep["kept"]]
        views = [model.adapters[n][0] for n in dropped]
        assert all(v.A is views[0].A and v.B is views[0].B for v in views), f"{s}: not one shared LoRA"
        assert set(views[0].params) == {f"shared.{s}.lora_A", f"shared.{s}.lora_B"}
    assert set(rep["shared"]) == {n.split(".", 2)[2] for n in layers if n not in rep["kept"]}


def test_retained_parameter_fraction_is_exact():
    """Counts against the model's own trainable tensors, plain LoRA (LoRAMethod) on the same
    targets, and the closed form r (d_in + d_out) per kept layer and per shared group."""
    model, method = prepared(2, L=4, threshold=0.5)
    rep = method.report()
    C, r = model.config.n_embd, 2
    size = {"attn.c_attn": r * 4 * C, "attn.c_proj": r * 2 * C, "mlp.c_fc": r * 5 * C, "mlp.c_proj": r * 5 * C}
    closed = sum(size[n.split(".", 2)[2]] for n in rep["kept"]) + sum(size[s] for s in rep["shared"])
    plain = tiny(2, L=4)
    LoRAMethod(r=2, alpha=4).prepare(plain, None, np.random.default_rng(0))
    n_plain = count_params(plain)["trainable"]
    assert rep["shared"] and any(len(d) > 1 for d in rep["shared"].values()), "precondition: a shared group"
    assert rep["params"]["loradrop"] == count_params(model)["trainable"] == closed
    assert rep["params"]["lora_all_targets"] == n_plain == 4 * sum(size.values())
    assert rep["params"]["kept"] + rep["params"]["shared"] == rep["params"]["loradrop"]
    assert rep["retained_fraction"] == float(Fraction(closed, n_plain)) < 1


# ------------------------------------------------------------------------ shared LoRA gradient
@given(seed=st.integers(0, 10**6))
@settings(max_examples=3, deadline=None)
@example(seed=1)  # FD at h = 1e-3 missed the shared c_attn gradient by 1e-4 of ‖g‖‖v‖ (truncation: at h = 1e-4, 5e-12)
def test_shared_lora_gradient_fd_and_sum_over_its_layers(seed):
    """Every trainable tensor after prepare against Richardson finite differences; each shared
    LoRA's gradient equals the sum of the gradients of independent per-layer copies."""
    model, method = prepared(seed, L=3, threshold=0.5)
    rep = method.report()
    assert any(len(d) > 1 for d in rep["shared"].values()), "precondition: a group of several layers"
    rng = np.random.default_rng(seed)
    for a in model.adapter_params().values():
        a[...] = rng.standard_normal(a.shape) * 0.3
    (x, y), = batches(model, seed, n=1)
    _, grads = model.loss_and_grads(x, y)
    params = model.adapter_params()
    assert set(grads) == set(params)
    for name, a in params.items():
        a0 = a.copy()

        def f(theta):
            a[...] = theta
            try:
                return model.loss(x, y)
            finally:
                a[...] = a0

        # adapters of scale 0.3 make the attention logits steep: a Richardson step of 1e-3 (of the
        # tensor's rms) leaves a truncation error up to 1e-4 of ‖g‖‖v‖; 1e-4 leaves none measurable
        assert_directional(f, a0, grads[name], rng, label=name, h=1e-4)
    copies = tiny(seed, L=3)
    copies.freeze()
    for n, (ad,) in model.adapters.items():
        c = copies.add_adapter(n, LoRA(copies, n, r=2, alpha=4))
        c.A[...], c.B[...] = ad.A, ad.B
    _, per_layer = copies.loss_and_grads(x, y)
    for s, dropped in rep["shared"].items():
        for local in ("lora_A", "lora_B"):
            total = sum(per_layer[f"{n}.lora.{local}"] for n in dropped)
            d = max_rel_diff(grads[f"shared.{s}.{local}"], total)
            assert d <= 1e-12, f"shared.{s}.{local}: max rel diff to the per-layer sum {d:.3e}"


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": 0.0}, "threshold"), ({"threshold": 1.5}, "threshold"), ({"threshold": float("nan")}, "threshold"),
    ({"sample_fraction": 0.0}, "sample_fraction"), ({"sample_fraction": 1.01}, "sample_fraction"),
    ({"probe_steps": 0}, "probe_steps"), ({"probe_steps": -2}, "probe_steps"),
    ({"probe_lr": 0.0}, "probe_lr"), ({"r": 0}, "r"), ({"alpha": -1.0}, "alpha"),
    ({"targets": ()}, "targets"), ({"targets": ("attn.q",)}, "targets"), ({"targets": ("mlp.c_fc", "mlp.c_fc")}, "targets"),
    ({"selection": "global"}, "selection"),
])
def test_bad_options_raise_in_init(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRADrop(**kwargs)


def test_bad_option_types_raise_in_init():
    with pytest.raises(TypeError, match="reinit"):
        LoRADrop(reinit="yes")
    with pytest.raises(TypeError, match="threshold"):
        LoRADrop(threshold="0.9")
    with pytest.raises(TypeError, match="probe_steps"):
        LoRADrop(probe_steps=2.5)
    with pytest.raises(TypeError, match="targets"):  # one suffix, not a list of them
        LoRADrop(targets="attn.c_attn")


def test_probe_steps_zero_names_the_cause():
    with pytest.raises(ValueError, match="probe_steps=0.*B = 0.*zero"):
        LoRADrop(probe_steps=0)


def test_bad_importance_input():
    model = tiny(4)
    data = batches(model, 4)
    with pytest.raises(ValueError, match="model.*LoRA"):
        layer_importance(layer_scores(model, data)[0])
    with_loras(model, ["h.0.mlp.c_fc", "h.1.mlp.c_fc"], np.random.default_rng(4))
    with pytest.raises(ValueError, match="batches"):
        layer_importance(layer_scores(model, [])[0])
    with pytest.raises(TypeError, match="batches"):
        layer_importance(layer_scores(model, iter(data))[0])
    model.adapters["h.0.mlp.c_fc"][0].A[0, 0] = np.nan
    with pytest.raises(ValueError, match="importance.*finite"):
        layer_importance(layer_scores(model, data)[0])
    untrained = tiny(4)
    untrained.freeze()
    for n in linear_layer_names(untrained.config):
        untrained.add_adapter(n, LoRA(untrained, n, r=2))  # B = 0: what a probe with no step leaves
    with pytest.raises(ValueError, match="importance.*every LoRA output is zero.*untrained probe"):
        layer_importance(layer_scores(untrained, data)[0])
    merged = with_loras(tiny(4), ["h.0.mlp.c_fc"], np.random.default_rng(4))
    merged.adapters["h.0.mlp.c_fc"][0].merge(merged)
    with pytest.raises(ValueError, match="merged"):
        layer_importance(layer_scores(merged, data)[0])
    twice = tiny(4)
    with_loras(twice, ["h.0.mlp.c_fc"], np.random.default_rng(4))
    with_loras(twice, ["h.0.mlp.c_fc"], np.random.default_rng(5))
    with pytest.raises(ValueError, match="at most one LoRA"):
        layer_importance(layer_scores(twice, data)[0])


def test_sample_too_small_for_the_stream():
    model = tiny(5)
    task = make_task(model, n=60)  # 8 windows of T + 1 = 7 tokens: 0.1 * 8 -> 0 windows
    with pytest.raises(ValueError, match="sample_fraction"):
        LoRADrop(sample_fraction=0.1).prepare(model, task, np.random.default_rng(0))
    short = Task(TokenStream(np.arange(5), "synthetic/short"), [], [], 3, model.config.block_size)
    with pytest.raises(ValueError, match=r"len\(synthetic/short\)"):
        LoRADrop().prepare(model, short, np.random.default_rng(0))


# ----------------------------------------------------------------------- PyTorch reference
torch = pytest.importorskip("torch")
from reference_models.adapters import LoRAFactors, freeze_base  # noqa: E402
from reference_models.loradrop import ReferenceLoRADrop, attach, lora_output_sq_norms  # noqa: E402
from reference_models.torch_gpt import TorchGPT  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny float64 ops: one thread is ~100x faster than contended intra-op threads on 2 cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@given(seed=st.integers(0, 10**6), L=st.integers(1, 3), C=st.sampled_from([4, 8]), H=st.sampled_from([1, 2]),
       r=st.integers(1, 4), n_lora=st.integers(1, 6), n_batches=st.integers(1, 3))
@settings(max_examples=15, deadline=None)
def test_scores_equal_explicit_output_norms_from_hooked_inputs(seed, L, C, H, r, n_lora, n_batches):
    """g_i accumulated during minisft's forward == sum ||s (x_i A^T) B^T||^2 formed explicitly in torch
    from A, B and the layer input x_i captured by a forward hook on the torch twin."""
    model = tiny(seed, L=L, C=C, H=H)
    rng = np.random.default_rng(seed)
    names = linear_layer_names(model.config)
    layers = [str(n) for n in rng.choice(names, size=min(n_lora, len(names)), replace=False)]
    with_loras(model, layers, rng, r=min(r, C))
    data = batches(model, seed, n=n_batches)
    g, _ = layer_scores(model, data)
    ref = TorchGPT.from_minisft(model.state_dict(), model.config)
    freeze_base(ref)
    for n in layers:
        ad = model.adapters[n][0]
        attach(ref, n, LoRAFactors(to_numpy(ad.A), to_numpy(ad.B), ad.scaling))
    oracle = lora_output_sq_norms(ref, layers, data)
    assert set(g) == set(oracle)
    for n in layers:
        assert abs(g[n] - oracle[n]) <= 1e-12 * oracle[n], f"{n}: {g[n]!r} vs explicit {oracle[n]!r}"


def run_both(seed, steps=20, **opts):
    """minisft's trainer with LoRADrop, and the torch reference on the same draws and batches."""
    model = tiny(seed, L=3)
    task = make_task(model, seed=seed)
    options = dict(r=2, alpha=4, threshold=0.7, sample_fraction=0.2, probe_steps=6, probe_lr=1e-2)
    options.update(opts)
    ref = TorchGPT.from_minisft(model.state_dict(), model.config)
    freeze_base(ref)
    result = train(model, LoRADrop(**options), task,
                   TrainConfig(steps=steps, lr=1e-2, grad_clip=None, eval_every=steps, seed=seed))
    rng = np.random.default_rng(seed)
    R = ReferenceLoRADrop(**options).prepare(ref, to_numpy(task.train_ids.ids), task.batch_size, task.block_size, rng)
    return model, result["report"], ref, R, task, rng


@pytest.mark.parametrize("reinit", [True, False])
@pytest.mark.parametrize("selection", ["joint", "per_type"])
def test_parity_with_torch_reference_over_20_adamw_steps(reinit, selection):
    model, rep, ref, R, task, rng = run_both(7, reinit=reinit, selection=selection)
    assert rep["kept"] and any(len(d) > 1 for d in rep["shared"].values()), "precondition: kept and shared layers"
    for n, v in R.scores.items():
        assert abs(rep["scores"][n] - v) <= 1e-10 * v, f"{n}: score {rep['scores'][n]!r} vs reference {v!r}"
    assert rep["kept"] == R.kept and rep["shared"] == R.shared
    R.train(ref, [task.sample(rng) for _ in range(20)], 1e-2)
    params = model.trainable_params()
    assert set(params) == set(R.params)
    for k, p in params.items():
        d = max_rel_diff(to_numpy(p), R.params[k].detach().numpy())
        assert d <= 1e-10, f"{k}: max rel diff after 20 AdamW steps {d:.3e}"


def test_reinit_false_carries_the_probe_weights():
    """Kept layers start from the probe's trained factors (B != 0) with reinit=False, and from a
    fresh PEFT init (B = 0) with reinit=True; the shared LoRA is fresh either way."""
    for reinit in (False, True):
        model, method = prepared(8, reinit=reinit)
        ref = TorchGPT.from_minisft(model.state_dict(), model.config)
        freeze_base(ref)
        R = ReferenceLoRADrop(**method.options()).prepare(ref, to_numpy(make_task(model, seed=8).train_ids.ids), 3,
                                              model.config.block_size, np.random.default_rng(8))
        rep = method.report()
        assert rep["kept"] == R.kept and rep["kept"]
        for n in rep["kept"]:
            ad = model.adapters[n][0]
            probe = R.probe_factors[n]
            if reinit:
                assert not np.any(to_numpy(ad.B)) and max_rel_diff(to_numpy(ad.A), probe.A.detach().numpy()) > 1e-3
            else:
                assert np.any(to_numpy(ad.B))
                for local, t in (("A", probe.A), ("B", probe.B)):
                    d = max_rel_diff(to_numpy(getattr(ad, local)), t.detach().numpy())
                    assert d <= 1e-10, f"{n}.{local}: {d:.3e} from the probe's weights"
        for s in rep["shared"]:
            assert not np.any(to_numpy(model.adapters[rep["shared"][s][0]][0].B))


def test_prepare_is_deterministic_given_the_generator():
    (a, ma), (b, mb) = prepared(9), prepared(9)
    assert ma.report() == mb.report()
    pa, pb = a.trainable_params(), b.trainable_params()
    assert set(pa) == set(pb) and all(np.array_equal(pa[k], pb[k]) for k in pa)


def test_resume_after_a_kill_is_bit_identical(tmp_path):
    """prepare re-runs the same probe and selection on resume, so the checkpoint's tensors fit."""
    def run(workdir, resume=False, die_after=None):
        model = tiny(6)
        method = LoRADrop(r=2, alpha=4, threshold=0.7, sample_fraction=0.2, probe_steps=3, probe_lr=1e-2)
        if die_after is not None:
            def after_step(m, step):
                if step + 1 == die_after:
                    raise KeyboardInterrupt
            method.after_step = after_step
        cfg = TrainConfig(steps=6, lr=1e-2, eval_every=3, checkpoint_every=2, seed=6)
        train(model, method, make_task(model, seed=6), cfg, workdir=workdir, resume=resume)
        return model

    full = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", die_after=5)  # checkpoint at step 4
    resumed = run(tmp_path / "b", resume=True)
    pa, pb = full.trainable_params(), resumed.trainable_params()
    assert set(pa) == set(pb) and all(np.array_equal(pa[k], pb[k]) for k in pa)
