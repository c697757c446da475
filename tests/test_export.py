"""`minisft export RUN --hf OUT | --peft OUT` (minisft.app.export): a finished run folder, as `minisft
finetune` writes it, loads in transformers (merged model) and in PEFT (adapter on the run's own base
model) with the logits minisft computes for the same weights, in float64 (≤ 1e-10)."""

import json

import numpy as np
import pytest

import minisft.app.experiment as ex
from minisft.training.checkpoint import load_checkpoint
from minisft.app.cli import main
from minisft.model.gpt import GPT
from tests.gradcheck import max_rel_diff
from tests.test_train import MICRO

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

IDX = np.random.default_rng(0).integers(0, 250, (2, 16))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{method: (run folder, minisft logits of the trained model)} of three finished float64 runs of
    the micro preset through the command line (LoRA-drop exercises a shared LoRA)."""
    work = tmp_path_factory.mktemp("work")
    mp = pytest.MonkeyPatch()
    mp.setitem(ex.PRESETS, "micro", MICRO)
    out = {}
    try:
        for method, sets in (("lora", ["r=2", "alpha=5"]), ("loradrop", ["r=2", "threshold=0.5", "probe_steps=3"]),
                             ("spruft", ["rows=4"])):
            argv = ["finetune", "--preset", "micro", "--backend", "numpy", "--dtype", "float64", "--workdir", str(work),
                    "--quiet", "--steps", "3", "--method", method] + [a for s in sets for a in ("--set", s)]
            assert main(argv) == 0
            run = next((work / "runs").glob(f"*/{method}/seed0"))
            merged, _ = load_checkpoint(run / "model" / "merged.safetensors")
            config = ex.GPTConfig(**json.loads((run / "model" / "manifest.json").read_text())["model"])
            out[method] = (run, GPT.from_state_dict(merged, config, backend="numpy", dtype="float64").logits(IDX))
    finally:
        mp.undo()
    return out


def hf_logits(model):
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDX)).logits.numpy()


@pytest.mark.parametrize("method", ["lora", "loradrop", "spruft"])
def test_hf_export_loads_in_transformers_with_equal_logits(runs, method, tmp_path, capsys):
    run, expected = runs[method]
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 0
    assert "HF GPT-2 folder" in capsys.readouterr().out
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf"), dtype=torch.float64).eval()
    d = max_rel_diff(hf_logits(hf), expected)
    assert d <= 1e-10, f"{method}: GPT2LMHeadModel logits vs minisft's merged model: max rel diff {d:.3e}"


@pytest.mark.parametrize("method", ["lora", "loradrop"])
def test_peft_export_applies_to_the_runs_base_with_equal_logits(runs, method, tmp_path):
    run, expected = runs[method]
    assert main(["export", str(run), "--peft", str(tmp_path / "peft")]) == 0
    base = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "peft" / "base"), dtype=torch.float64).eval()
    pm = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    d = max_rel_diff(hf_logits(pm), expected)
    assert d <= 1e-10, f"{method}: PEFT logits vs minisft's merged model: max rel diff {d:.3e}"
    if method == "loradrop":
        shared = json.loads((run / "result.json").read_text())["report"]["shared"]
        assert shared, "the case must exercise LoRA-drop's shared LoRA"


def test_export_refuses_what_it_cannot_write(runs, tmp_path, capsys):
    run, _ = runs["spruft"]
    assert main(["export", str(run), "--peft", str(tmp_path / "p")]) == 2
    assert "a run of lora or loradrop" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--hf", str(tmp_path / "h")]) == 2
    assert "RUN" in capsys.readouterr().err
    lora_run, _ = runs["lora"]
    moved = tmp_path / "moved"  # the run without its workdir: its base model cannot be found
    import shutil

    shutil.copytree(lora_run, moved / "a" / "b" / "c" / "seed0")
    assert main(["export", str(moved / "a" / "b" / "c" / "seed0"), "--peft", str(tmp_path / "p2")]) == 2
    assert "its base model" in capsys.readouterr().err
