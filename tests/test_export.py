"""`minisft export RUN --hf OUT | --peft OUT` (minisft.app.export): a finished run folder, as `minisft
finetune` writes it, loads in transformers (merged model) and in PEFT (adapter on the run's own base
model) with the logits minisft computes for the same weights, in float64 (≤ 1e-10) with transformers'
default loading; the exported tokenizer loads in `tokenizers` and transformers and encodes as
minisft's."""

import json
import shutil

import numpy as np
import pytest

import minisft.app.experiment as ex
from minisft.app.cli import main
from minisft.data.tokenizer import BPETokenizer
from minisft.model.gpt import GPT
from minisft.model.interop import save_hf_gpt2
from minisft.training.checkpoint import load_checkpoint
from tests.gradcheck import max_rel_diff
from tests.test_train import MICRO

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
tokenizers = pytest.importorskip("tokenizers")

IDX = np.random.default_rng(0).integers(0, 250, (2, 16))
TEXTS = ["def f(x):\n    return x + 1\n", "  leading spaces, tabs\tand é ü 中文 emoji 🙂",
         "the literal <|endoftext|> inside a text is bytes, not the special id", ""]


def finetune(work, method, sets, init=None):
    argv = ["finetune", "--preset", "micro", "--backend", "numpy", "--dtype", "float64", "--workdir", str(work),
            "--quiet", "--steps", "3", "--method", method] + [a for s in sets for a in ("--set", s)]
    assert main(argv + (["--init", str(init)] if init else [])) == 0
    run = next((work / "runs").glob(f"*{'-init' if init else ''}*/{method}/seed0"))
    merged, _ = load_checkpoint(run / "model" / "merged.safetensors")
    config = ex.GPTConfig(**json.loads((run / "model" / "manifest.json").read_text())["model"])
    return run, GPT.from_state_dict(merged, config, backend="numpy", dtype="float64").logits(IDX)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (run folder, minisft logits of the trained model)} of finished float64 runs of the micro
    preset through the command line (LoRA-drop exercises a shared LoRA), and "init": a LoRA run
    started from a float32 HF folder (`--init`)."""
    work = tmp_path_factory.mktemp("work")
    mp = pytest.MonkeyPatch()
    mp.setitem(ex.PRESETS, "micro", MICRO)
    out = {}
    try:
        for method, sets in (("lora", ["r=2", "alpha=5"]), ("loradrop", ["r=2", "threshold=0.5", "probe_steps=3"]),
                             ("spruft", ["rows=4"])):
            out[method] = finetune(work, method, sets)
        base, _ = load_checkpoint(next((work / "pretrain").glob("*.safetensors")))
        folder = tmp_path_factory.mktemp("hf32")
        save_hf_gpt2({k: v.astype(np.float32) for k, v in base.items()}, MICRO.model, folder)
        out["init"] = finetune(work, "lora", ["r=2"], init=folder)
    finally:
        mp.undo()
    return out


def hf_logits(model):
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDX)).logits.numpy()


@pytest.mark.parametrize("method", ["lora", "loradrop", "spruft"])
def test_hf_export_loads_in_transformers_with_equal_logits(runs, method, tmp_path, capsys):
    """Loaded as transformers loads by default (the checkpoint's dtype): float64, minisft's logits."""
    run, expected = runs[method]
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 0
    assert "HF GPT-2 folder" in capsys.readouterr().out
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert next(hf.parameters()).dtype == torch.float64
    d = max_rel_diff(hf_logits(hf), expected)
    assert d <= 1e-10, f"{method}: GPT2LMHeadModel logits vs minisft's merged model: max rel diff {d:.3e}"


@pytest.mark.parametrize("method", ["lora", "loradrop", "init"])
def test_peft_export_applies_to_the_runs_base_with_equal_logits(runs, method, tmp_path):
    """Default loading of base/ and the adapter: minisft's logits within 1e-10, also for a float64 run
    started from a float32 `--init` folder (its base/ is written in the run's dtype, float64)."""
    run, expected = runs[method]
    assert main(["export", str(run), "--peft", str(tmp_path / "peft")]) == 0
    base = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "peft" / "base")).eval()
    assert next(base.parameters()).dtype == torch.float64
    pm = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    d = max_rel_diff(hf_logits(pm), expected)
    assert d <= 1e-10, f"{method}: PEFT logits vs minisft's merged model: max rel diff {d:.3e}"
    if method == "loradrop":
        shared = json.loads((run / "result.json").read_text())["report"]["shared"]
        assert shared, "the case must exercise LoRA-drop's shared LoRA"


@pytest.mark.parametrize("export", ["--hf", "--peft"])
def test_hf_tokenizer_encodes_as_minisft(runs, export, tmp_path):
    """The exported tokenizer is the run's (its SHA-256 is the manifest's); transformers'
    AutoTokenizer and PreTrainedTokenizerFast and `tokenizers` (with encode_special_tokens, as the
    docs say) give minisft's ids for every text, the literal "<|endoftext|>" included, and decode back."""
    run, _ = runs["lora"]
    assert main(["export", str(run), export, str(tmp_path / "out")]) == 0
    folder = tmp_path / "out" / ("base" if export == "--peft" else "")
    ours = BPETokenizer.from_file(folder / "tokenizer.json")
    assert ours.fingerprint() == json.loads((run / "model" / "manifest.json").read_text())["tokenizer"]
    auto = transformers.AutoTokenizer.from_pretrained(str(folder))
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    raw = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    raw.encode_special_tokens = True
    assert auto.eos_token_id == ours.eot_id and auto.model_max_length == MICRO.model.block_size
    for text in TEXTS:
        want = ours.encode(text).tolist()
        assert auto(text)["input_ids"] == want and fast(text)["input_ids"] == want, text
        assert raw.encode(text, add_special_tokens=False).ids == want, text
        assert auto.decode(want) == text


def test_export_refuses_what_it_cannot_write(runs, tmp_path, capsys):
    run, _ = runs["spruft"]
    assert main(["export", str(run), "--peft", str(tmp_path / "p")]) == 2
    assert "a run of lora or loradrop" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--hf", str(tmp_path / "h")]) == 2
    assert "RUN" in capsys.readouterr().err
    lora_run, _ = runs["lora"]
    moved = tmp_path / "moved" / "a" / "b" / "c" / "seed0"  # the run without its workdir: base and tokenizer lost
    shutil.copytree(lora_run, moved)
    assert main(["export", str(moved), "--peft", str(tmp_path / "p2")]) == 2
    assert "its base model" in capsys.readouterr().err
    assert main(["export", str(moved), "--hf", str(tmp_path / "h2")]) == 2
    err = capsys.readouterr().err
    assert "its tokenizer (SHA-256" in err and "moved or deleted" in err
    assert not (tmp_path / "h2").exists(), "nothing is written when the export is refused"


def test_export_finds_the_workdir_of_a_relative_run(runs, tmp_path, monkeypatch):
    """RUN given relative to the current directory (inside the workdir) still finds the base and tokenizer."""
    run, _ = runs["lora"]
    monkeypatch.chdir(run.parents[1])
    assert main(["export", "lora/seed0", "--peft", str(tmp_path / "p")]) == 0
