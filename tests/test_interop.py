"""Round trips with the tools users already have (minisft.model.interop): LoRA and LoRA-drop results as
PEFT adapter folders that peft.PeftModel.from_pretrained loads onto HF GPT-2, fine-tuned models
(adapters merged) as HF GPT-2 folders that GPT2LMHeadModel.from_pretrained loads, `minisft finetune
--init DIR` from a folder written by save_pretrained, and a clear error for every bad folder.
Everything offline (HF_HUB_OFFLINE=1)."""

import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minisft as ms
import minisft.app.experiment as ex
from minisft.model.adapters import merge_adapters
from minisft.app.cli import main
from minisft.methods import make_method
from minisft.training.train import TrainConfig, train
from tests.gradcheck import max_rel_diff
from tests.helpers import MICRO, TINY, counter_task, tiny_gpt

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

IDX = np.random.default_rng(0).integers(0, 40, (2, 8))


def trained(name, steps=4, **options):
    """(model, method): a float64 model of TINY after `steps` steps of method `name` (LoRA's B moves
    off zero)."""
    model, method = tiny_gpt(), make_method(name, **options)
    train(model, method, counter_task(), TrainConfig(steps=steps, lr=1e-2, eval_every=steps), progress=False)
    return model, method


def hf_model(state_dict):
    """transformers' GPT2LMHeadModel (float64, eval) holding a minisft state dict via to_hf_gpt2."""
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**ms.interop.hf_gpt2_config(TINY))).double().eval()
    hf.load_state_dict({k: torch.tensor(v) for k, v in ms.interop.to_hf_gpt2(state_dict).items()})
    return hf


def logits_of(hf):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(IDX)).logits.numpy()


@pytest.mark.parametrize("name,options", [("lora", {"r": 2, "alpha": 5}), ("lora", {"r": 3, "alpha": 4, "use_rslora": True}),
                                          ("loradrop", {"r": 2, "alpha": 4, "probe_steps": 3, "sample_fraction": 0.5})])
def test_lora_result_loads_in_peft_with_equal_logits(tmp_path, name, options):
    model, method = trained(name, **options)
    base = model.state_dict()  # LoRA training leaves the base tensors as they were
    assert base["h.0.attn.c_attn.weight"].tolist() == ms.GPT(TINY, backend="numpy", dtype="float64", seed=0
                                                             ).state_dict()["h.0.attn.c_attn.weight"].tolist()
    folder = ms.interop.save_peft_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    pm = peft.PeftModel.from_pretrained(hf_model(base), str(folder)).eval()
    d = max_rel_diff(logits_of(pm), model.logits(IDX))
    assert d <= 1e-10, f"PEFT logits vs minisft's: max rel diff {d:.3e}"
    if name == "loradrop":  # the shared LoRA: one copy of its factors per layer that uses it
        shared = {layer: sfx for sfx, layers in method.report()["shared"].items() for layer in layers}
        assert shared, "the case must exercise a shared LoRA"
        tensors = load_file(str(folder / "adapter_model.safetensors"))
        for layer, sfx in shared.items():
            np.testing.assert_array_equal(tensors[f"base_model.model.transformer.{layer}.lora_A.weight"],
                                          model.adapter_params()[f"shared.{sfx}.lora_A"])


@pytest.mark.parametrize("name,options", [("spruft", {"rows": 4}), ("lora", {"r": 2}), ("gmt", {"drop_ratio": 0.5})])
def test_merged_result_loads_in_transformers_with_equal_logits(tmp_path, name, options):
    model, _ = trained(name, **options)
    before = model.logits(IDX)
    merge_adapters(model)
    merged = model.state_dict()
    assert max_rel_diff(model.logits(IDX), before) <= 1e-12
    folder = ms.interop.save_hf_gpt2(merged, TINY, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(folder), dtype=torch.float64).eval()
    d = max_rel_diff(logits_of(hf), before)
    assert d <= 1e-10, f"GPT2LMHeadModel.from_pretrained logits vs minisft's: max rel diff {d:.3e}"
    config, state_dict = ms.interop.load_hf_gpt2(folder)
    assert config == TINY and all(np.array_equal(state_dict[k], v) for k, v in merged.items())


def hf_random(tmp_path, n_positions=8, prefix=True, **extra):
    """A random HF GPT-2 (LayerNorms and biases moved off 1 / 0) written by save_pretrained."""
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=40, n_positions=n_positions,
                                     bos_token_id=None, eos_token_id=None, **extra)
    hf = transformers.GPT2LMHeadModel(hf_cfg).double().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / "hf"
    (hf if prefix else hf.transformer).save_pretrained(str(folder))
    return hf, folder


@pytest.mark.parametrize("prefix", [True, False], ids=["GPT2LMHeadModel", "GPT2Model"])
def test_load_hf_gpt2_reads_save_pretrained(tmp_path, prefix):
    hf, folder = hf_random(tmp_path, prefix=prefix)
    config, sd = ms.interop.load_hf_gpt2(folder)
    model = ms.GPT.from_state_dict(sd, config, backend="numpy", dtype="float64")
    d = max_rel_diff(model.logits(IDX), logits_of(hf))
    assert d <= 1e-10, f"minisft on load_hf_gpt2 vs HF logits: max rel diff {d:.3e}"


def _edit_config(folder, **changes):
    path = folder / "config.json"
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def _edit_tensors(folder, fn):
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


BAD_FOLDERS = {
    "not a folder": (lambda f: shutil.rmtree(f), "an existing folder"),
    "no config": (lambda f: (f / "config.json").unlink(), "with config.json"),
    "wrong model_type": (lambda f: _edit_config(f, model_type="llama"), "model_type='llama'.*'gpt2'"),
    "other activation": (lambda f: _edit_config(f, activation_function="relu"), "activation_function='relu'"),
    "untied head": (lambda f: _edit_config(f, tie_word_embeddings=False), "tie_word_embeddings=False"),
    "other MLP width": (lambda f: _edit_config(f, n_inner=17), "n_inner=17"),
    "missing tensor": (lambda f: _edit_tensors(f, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias")),
                       r"missing \['h.1.mlp.c_fc.bias'\]"),
    "extra tensor": (lambda f: _edit_tensors(f, lambda t: t.update({"transformer.h.0.adapter.weight": np.zeros(3)})),
                     r"unexpected \['h.0.adapter.weight'\]"),
    "wrong shape": (lambda f: _edit_tensors(f, lambda t: t.update({"transformer.wpe.weight": np.zeros((9, 16))})),
                    r"wpe.weight of shape \(8, 16\)"),
    "pickle only": (lambda f: ((f / "model.safetensors").rename(f / "pytorch_model.bin")),
                    "found only pytorch_model.bin.*pickle"),
    "sharded": (lambda f: ((f / "model.safetensors").rename(f / "model-00001-of-00002.safetensors"),
                           (f / "model.safetensors.index.json").write_text("{}")), "sharded checkpoints"),
    "truncated": (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:100]),
                  "a complete safetensors file"),
}


@pytest.mark.parametrize("what", list(BAD_FOLDERS))
def test_bad_hf_folder_is_a_clear_error(tmp_path, what):
    _, folder = hf_random(tmp_path)
    spoil, message = BAD_FOLDERS[what]
    spoil(folder)
    with pytest.raises(ValueError, match=message) as e:
        ms.interop.load_hf_gpt2(folder)
    assert str(folder) in str(e.value)


def test_peft_export_refuses_what_peft_lora_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="LoRA adapters only"):
        ms.interop.save_peft_adapter(trained("spruft", steps=1, rows=2)[0], tmp_path)
    with pytest.raises(ValueError, match="no trainable base tensors"):
        ms.interop.save_peft_adapter(trained("full", steps=1)[0], tmp_path)
    model, _ = trained("lora", steps=1, r=2)
    merge_adapters(model)
    with pytest.raises(ValueError, match="a merged LoRA"):
        ms.interop.save_peft_adapter(model, tmp_path)
    bare = ms.GPT(TINY, backend="numpy", dtype="float64")
    bare.freeze()
    with pytest.raises(ValueError, match="no LoRA adapter"):
        ms.interop.save_peft_adapter(bare, tmp_path)
    assert not any(tmp_path.iterdir())


def test_write_peft_lora_validates_its_factors(tmp_path):
    A, B = np.zeros((2, 16)), np.zeros((48, 2))
    with pytest.raises(ValueError, match="one rank and one scaling"):
        ms.interop.write_peft_lora({"h.0.attn.c_attn": (A, B, 2.0), "h.1.attn.c_attn": (A, B, 1.0)}, tmp_path)
    with pytest.raises(ValueError, match=r"A \(r, d_in\) and B \(d_out, r\)"):
        ms.interop.write_peft_lora({"h.0.attn.c_attn": (A, B.T, 2.0)}, tmp_path)
    with pytest.raises(TypeError, match="non-empty dict"):
        ms.interop.write_peft_lora({}, tmp_path)
    assert not any(tmp_path.iterdir())


def test_save_hf_gpt2_validates_its_input(tmp_path):
    sd = ms.GPT(TINY, backend="numpy", dtype="float64").state_dict()
    with pytest.raises(ValueError, match=r"missing \['wpe.weight'\]"):
        ms.interop.save_hf_gpt2({k: v for k, v in sd.items() if k != "wpe.weight"}, TINY, tmp_path)
    with pytest.raises(ValueError, match=r"state_dict\['ln_f.bias'\].shape"):
        ms.interop.save_hf_gpt2(dict(sd, **{"ln_f.bias": np.zeros(3)}), TINY, tmp_path)
    with pytest.raises(ValueError, match="one float dtype"):
        ms.interop.save_hf_gpt2(dict(sd, **{"ln_f.bias": sd["ln_f.bias"].astype(np.float32)}), TINY, tmp_path)
    with pytest.raises(TypeError, match="GPTConfig"):
        ms.interop.save_hf_gpt2(sd, TINY.to_dict(), tmp_path)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------- finetune --init DIR
def hf_loss(hf, batches):
    """Mean over batches of HF's mean cross-entropy (what minisft.training.train.evaluate computes)."""
    with torch.no_grad():
        return float(np.mean([torch.nn.functional.cross_entropy(
            hf(input_ids=torch.tensor(x)).logits.reshape(-1, hf.config.vocab_size), torch.tensor(y).reshape(-1)).item()
            for x, y in batches]))


@pytest.fixture
def micro(monkeypatch, tmp_path):
    monkeypatch.setitem(ex.PRESETS, "micro", MICRO)
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=MICRO.model.vocab_size, n_positions=12,
                                     bos_token_id=None, eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(hf_cfg).double().eval()
    hf.save_pretrained(str(tmp_path / "hf"))
    return hf, tmp_path / "hf", tmp_path / "work"


def test_finetune_starts_from_an_hf_folder(micro):
    """The run's base loss is the HF model's own loss on the run's validation batches (computed by
    transformers), and fine-tuning lowers it."""
    hf, folder, work = micro
    data = ex.build_data(MICRO, work)
    method = make_method("full")
    preset = replace(MICRO, finetune_steps=6)
    _, r = ex.finetune(preset, work, data, method, "full", backend="numpy", dtype="float64", lr=1e-2, init=folder)
    _, init_data = ex.init_model(folder, work, data, backend="numpy", dtype="float64")
    assert init_data.tokenizer.vocab_size <= MICRO.model.vocab_size and init_data.config.block_size == 12
    preset = replace(preset, model=replace(preset.model, block_size=12))  # windows: the model's 12 positions
    task = ex.make_task(init_data.target, preset, init_data.code)
    base = r["base"]["val"]["target"]
    assert abs(base - hf_loss(hf, task.val_target)) <= 1e-10 * base
    assert r["final"]["target"] < base - 0.1


def test_cli_finetune_init(micro, capsys):
    hf, folder, work = micro
    args = ["finetune", "--preset", "micro", "--backend", "numpy", "--workdir", str(work), "--quiet", "--method", "lora",
            "--set", "r=2", "--steps", "2"]
    assert main(args + ["--init", str(folder)]) == 0
    assert "lora" in capsys.readouterr().out
    (folder / "config.json").unlink()
    assert main(args + ["--init", str(folder)]) == 2
    assert f"--init: '{folder}': expected an HF model folder with config.json" in capsys.readouterr().err


def test_init_uses_the_folders_tokenizer(micro):
    """A tokenizer.json in the folder is used as it is (here: a BPE of 280 entries for the model's 300)."""
    from minisft.data.corpus import load_corpus
    from minisft.data.tokenizer import build_tokenizer

    _, folder, work = micro
    data = ex.build_data(MICRO, work)
    small = build_tokenizer([load_corpus("code", max_chars=MICRO.max_chars)], vocab_size=280, cache_dir=work / "t")
    small.save(folder / "tokenizer.json")  # a plain tokenizer JSON (the cache's file holds a checksum too)
    _, init_data = ex.init_model(folder, work, data, backend="numpy")
    assert init_data.tokenizer.to_str() == small.to_str() and init_data.tokenizer.vocab_size == small.vocab_size
