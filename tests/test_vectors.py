"""The golden-vector suite (minisft.testing.vectors, `minisft vectors --out DIR`): byte-identical runs, the
kept copy in tests/data/vectors/, a manifest that documents every tensor, and the vectors checked by
implementations other than the code that wrote them (PyTorch functions, the PyTorch twin, HF
GPT2LMHeadModel, and each method's training steps replayed in PyTorch)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minisft as ms
import minisft.testing as mt
from minisft.app.cli import main

REPO = Path(__file__).resolve().parents[1]
KEPT = REPO / "tests" / "data" / "vectors"
REGENERATE = f"minisft vectors --out {KEPT.relative_to(REPO)}"


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors")
    assert main(["vectors", "--out", str(out)]) == 0
    return out


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


def test_two_runs_write_identical_bytes(suite, tmp_path):
    """A second run in another process (other hash seed, other thread count) writes the same bytes."""
    env = dict(os.environ, PYTHONHASHSEED="123", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", f"from minisft.app.cli import main; main(['vectors', '--out', {str(tmp_path)!r}])"],
                   check=True, env=env, cwd=REPO, capture_output=True)
    first, second = digests(suite), digests(tmp_path)
    assert first == second, f"files differ between two runs: {sorted(k for k in first if first[k] != second.get(k))}"
    assert len(first) == len(json.loads((suite / mt.MANIFEST).read_text())["cases"]) + 1


def kept_copy_differences(fresh, kept):
    """Readable lines, one per difference between a fresh suite and the kept copy ([] when the bytes match)."""
    a, b = digests(fresh), digests(kept)
    lines = [f"only in the fresh suite: {n}" for n in sorted(set(a) - set(b))]
    lines += [f"only in the kept copy: {n}" for n in sorted(set(b) - set(a))]
    for name in sorted(n for n in set(a) & set(b) if a[n] != b[n]):
        if name == mt.MANIFEST:
            lines.append(f"{name} differs (documentation, tolerances, settings or the list of cases)")
            continue
        new, old = load_file(str(Path(fresh) / name)), load_file(str(Path(kept) / name))
        for key in sorted(set(new) | set(old)):
            if key not in new or key not in old or new[key].shape != old[key].shape or new[key].dtype != old[key].dtype:
                lines.append(f"{name}:{key}: present/shape/dtype differ")
            elif not np.array_equal(new[key], old[key], equal_nan=True):
                d = np.abs(new[key].astype(np.float64) - old[key].astype(np.float64))
                lines.append(f"{name}:{key}: max |new - kept| {np.nanmax(d):.3e} at {tuple(int(i) for i in np.unravel_index(np.nanargmax(d), d.shape))}")
    return lines


def test_fresh_suite_matches_the_kept_copy(suite):
    """Any change of numerics (or of the documentation) must be a deliberate, reviewed change."""
    lines = kept_copy_differences(suite, KEPT)
    assert not lines, ("the golden vectors differ from the kept copy in tests/data/vectors/:\n  " + "\n  ".join(lines[:30])
                       + f"\nIf the change is intended, regenerate the kept copy from the repository root with\n  "
                         f"{REGENERATE}\nreview `git diff --stat tests/data/vectors` and say why in the commit message.")


def test_a_changed_vector_is_caught(tmp_path):
    """The kept-copy comparison reports one changed entry by file, tensor and size."""
    changed = tmp_path / "kept"
    changed.mkdir()
    for p in KEPT.iterdir():
        (changed / p.name).write_bytes(p.read_bytes())
    tensors = load_file(str(changed / "nn_gelu_float64.safetensors"))
    tensors["dx"][1, 2] += 1e-9
    save_file(tensors, str(changed / "nn_gelu_float64.safetensors"))
    lines = kept_copy_differences(KEPT, changed)
    assert len(lines) == 1 and lines[0].startswith("nn_gelu_float64.safetensors:dx: max |new - kept| 1.0") \
        and lines[0].endswith("at (1, 2)"), lines


def test_the_kept_copy_is_small():
    assert sum(p.stat().st_size for p in KEPT.iterdir()) < 1.5e6


def test_every_tensor_is_documented(suite):
    manifest = mt.read_manifest(suite)
    assert manifest["minisft_version"] == ms.__version__
    for name, case in manifest["cases"].items():
        assert case["description"] and case["checks"] and (suite / case["file"]).is_file(), name
        loaded = mt.load_case(suite, name)
        assert loaded.expected(), f"{name} expects nothing"
        for key, t in case["tensors"].items():
            assert t["role"] in mt.ROLES and t["meaning"] and t["axes"] and t["layout"], (name, key)
            assert list(loaded[key].shape) == t["shape"] and str(loaded[key].dtype) == t["dtype"], (name, key)
            if t["role"] == "expected":
                assert t["equation"] and t["rtol"] >= 0 and t["atol"] >= 0, (name, key)
                assert (t["rtol"], t["atol"]) == (0, 0) or loaded[key].dtype.kind == "f", (name, key)


def test_weight_layouts_are_said_per_tensor(suite):
    """HF GPT-2 case: Conv1D weights (in, out) and said so; minisft cases: (out, in) and said so."""
    hf = mt.load_case(suite, "gpt2_tiny_float64")
    w = hf.info("params/transformer.h.0.attn.c_attn.weight")
    assert w["shape"] == [8, 24] and "(in, out)" in w["layout"]
    assert "(in, out)" in hf.info("grads/transformer.h.1.mlp.c_proj.weight")["layout"]
    assert "(in, out)" not in hf.info("params/transformer.wte.weight")["layout"]
    full = mt.load_case(suite, "train_full")
    w = full.info("start/h.0.attn.c_attn.weight")
    assert w["shape"] == [24, 8] and "(out, in)" in w["layout"]
    assert mt.load_case(suite, "nn_linear_float64").info("weight")["layout"].startswith("minisft (out, in)")


def test_training_cases_set_every_option_and_move(suite):
    """Each method's case names all of its options (a changed default cannot change it silently)
    and its steps moved the trainable tensors (a comparison that could not fail would be vacuous)."""
    import inspect

    from minisft.methods import REGISTRY

    for name in mt.list_cases(suite):
        if not name.startswith("train_"):
            continue
        case = mt.load_case(suite, name)
        method = case.settings["method"]
        options = inspect.signature(REGISTRY[method].__init__).parameters.values()
        named = {p.name for p in options if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        assert set(case.settings["options"]) >= named, name
        moved = max(float(np.max(np.abs(case[f"final/{k}"] - case[f"start/{k}"]))) for k in case.settings["trainable"])
        assert moved > 1e-3, name


def test_explicit_options_are_required():
    from minisft.testing.vectors.fixtures import explicit_method

    with pytest.raises(ValueError, match=r"gmt options of a vectors case=\['freeze_masked', 'scope'\]"):
        explicit_method("gmt", drop_ratio=0.5)


# --------------------------------------------------------------------- other implementations
torch = pytest.importorskip("torch")
F = torch.nn.functional


def test_layers_match_pytorch(suite):
    """Every nn_* case (both dtypes) checked by PyTorch's own functions in float64 (autograd)."""
    for dtype in ("float64", "float32"):
        def t(case, key, grad=False):
            return torch.tensor(case[key].astype(np.float64) if case[key].dtype.kind == "f" else case[key],
                                requires_grad=grad)

        def out(tensors):
            return {k: v.detach().numpy().astype(dtype) for k, v in tensors.items()}

        c = mt.load_case(suite, f"nn_linear_{dtype}")
        x, w, b = t(c, "x", True), t(c, "weight", True), t(c, "bias", True)
        y = F.linear(x, w, b)
        y.backward(t(c, "dy"))
        c.check(out({"y": y, "dx": x.grad, "dweight": w.grad, "dbias": b.grad}))

        c = mt.load_case(suite, f"nn_layernorm_{dtype}")
        x, w, b = t(c, "x", True), t(c, "weight", True), t(c, "bias", True)
        y = F.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5)
        y.backward(t(c, "dy"))
        c.check(out({"y": y, "dx": x.grad, "dweight": w.grad, "dbias": b.grad}))

        c = mt.load_case(suite, f"nn_gelu_{dtype}")
        x = t(c, "x", True)
        y = F.gelu(x, approximate="tanh")
        y.backward(t(c, "dy"))
        c.check(out({"y": y, "dx": x.grad}))

        c = mt.load_case(suite, f"nn_attention_{dtype}")
        qkv, H = t(c, "qkv", True), c.settings["n_head"]
        B, T, C3 = qkv.shape
        q, k, v = (z.reshape(B, T, H, C3 // (3 * H)).transpose(1, 2) for z in qkv.split(C3 // 3, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C3 // 3)
        y.backward(t(c, "dy"))
        c.check(out({"y": y, "dqkv": qkv.grad}))

        c = mt.load_case(suite, f"nn_embedding_{dtype}")
        wte, wpe = t(c, "wte", True), t(c, "wpe", True)
        x = F.embedding(t(c, "idx"), wte) + wpe[: c["idx"].shape[1]]
        x.backward(t(c, "dy"))
        c.check(out({"x": x, "dwte": wte.grad, "dwpe": wpe.grad}))

        c = mt.load_case(suite, f"nn_cross_entropy_{dtype}")
        z = t(c, "logits", True)
        loss = F.cross_entropy(z.reshape(-1, z.shape[-1]), t(c, "targets").reshape(-1), ignore_index=-100)
        loss.backward()
        c.check(out({"loss": loss, "dlogits": z.grad}))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gpt2_case_matches_hf_gpt2_and_minisft(suite, dtype):
    """The case's HF-layout parameters load into transformers' GPT2LMHeadModel as they are; HF's
    logits, loss and gradients meet the case (float64 arithmetic), and so does minisft in `dtype`."""
    transformers = pytest.importorskip("transformers")
    case = mt.load_case(suite, f"gpt2_tiny_{dtype}")
    cfg = ms.GPTConfig(**case.settings["config"])
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**ms.interop.hf_gpt2_config(cfg))).double()
    params = {k: torch.tensor(v.astype(np.float64)) for k, v in case.inputs("params/").items()}
    missing, unexpected = hf.load_state_dict(params, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected  # lm_head is tied to wte
    x, y = torch.tensor(case["idx"]), torch.tensor(case["targets"])
    logits = hf(input_ids=x).logits
    loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1), ignore_index=-100)
    loss.backward()
    grads = {k: p.grad.numpy().astype(dtype) for k, p in hf.named_parameters()}
    case.check({"logits": logits.detach().numpy().astype(dtype), "loss": loss.detach().numpy().astype(dtype)})
    case.check(grads, prefix="grads/")

    model = ms.GPT.from_state_dict(ms.interop.from_hf_gpt2(case.inputs("params/")), cfg, backend="numpy", dtype=dtype)
    loss, grads = model.loss_and_grads(case["idx"], case["targets"])
    grads = ms.interop.to_hf_gpt2(grads)
    del grads["lm_head.weight"]
    case.check({"logits": model.logits(case["idx"]), "loss": np.asarray(loss, dtype=dtype)})
    case.check(grads, prefix="grads/")


def replay_in_torch(case):
    """Train a PyTorch twin from the case's start state on its batches with torch.optim.AdamW and
    torch's clipping; returns ({name: final tensor}, losses). Adapters from reference_models."""
    from reference_models.adapters import LoRAFactors, LoRALinear, RowDeltaLinear, wrap_linear
    from reference_models.primitives import gradient_mask
    from reference_models.torch_gpt import TorchGPT

    s, opts = case.settings, case.settings["options"]
    start = case.inputs("start/")
    cfg = ms.GPTConfig(**s["config"])
    base_names = set(ms.model.gpt.param_shapes(cfg))
    twin = TorchGPT.from_minisft({k: v for k, v in start.items() if k in base_names}, cfg, dtype=torch.float64)
    for p in twin.parameters():
        p.requires_grad_(False)
    named = dict(twin.named_parameters())
    params = {k: named[k].requires_grad_(True) for k in s["trainable"] if k in base_names}
    r, alpha = opts.get("r", opts.get("lora_r")), opts.get("alpha", opts.get("lora_alpha"))
    users = {f"{layer}.lora": [layer] for layer in {k.rsplit(".lora.", 1)[0] for k in start if ".lora.lora_" in k}}
    users.update({f"shared.{sfx}": layers for sfx, layers in s.get("selection", {}).get("shared", {}).items()})
    for prefix, layers in users.items():
        f = LoRAFactors(start[f"{prefix}.lora_A"], start[f"{prefix}.lora_B"], alpha / r)
        params[f"{prefix}.lora_A"], params[f"{prefix}.lora_B"] = f.A, f.B
        for layer in layers:
            wrap_linear(twin, layer, lambda b, f=f: LoRALinear(b, f))
    for layer in {k.rsplit(".row_delta.", 1)[0] for k in start if ".row_delta." in k}:
        ad = wrap_linear(twin, layer, lambda b, layer=layer: RowDeltaLinear(
            b, case[f"select/rows/{layer}"], start[f"{layer}.row_delta.weight"], start[f"{layer}.row_delta.bias"]))
        params[f"{layer}.row_delta.weight"], params[f"{layer}.row_delta.bias"] = ad.weight, ad.bias
    assert sorted(params) == sorted(s["trainable"])
    train = s["train"]
    opt = torch.optim.AdamW(list(params.values()), lr=train["lr"], betas=tuple(s["adamw"]["betas"]),
                            eps=s["adamw"]["eps"], weight_decay=train["weight_decay"])
    losses = []
    for x, y in zip(case["batch/x"], case["batch/y"]):
        opt.zero_grad()
        _, loss = twin(torch.tensor(x), torch.tensor(y))
        loss.backward()
        losses.append(loss.item())
        if s["method"] == "gmt":
            for p in params.values():
                p.grad *= gradient_mask(p.grad, opts["drop_ratio"])
        torch.nn.utils.clip_grad_norm_(list(params.values()), train["grad_clip"])
        opt.step()
    return {k: p.detach().numpy() for k, p in params.items()}, np.array(losses)


@pytest.mark.parametrize("method", ["full", "lora", "spruft", "loradrop", "adapeft", "gmt"])
def test_training_case_replays_in_pytorch(suite, method):
    """Each method's first steps, from the case's start state and batches, by a PyTorch twin with
    torch's AdamW and clipping: the losses and final tensors meet the case's float64 tolerances."""
    case = mt.load_case(suite, f"train_{method}")
    final, losses = replay_in_torch(case)
    case.check({"loss": losses})
    case.check(final, prefix="final/")
