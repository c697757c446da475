"""Trainer, checkpoints, experiment pipeline and CLI: resume bit-identity, non-finite loss, the
pretrained base beating the unigram entropy, deterministic compare, and bad input."""

import importlib.util
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import minisft.experiment as ex
from minisft.batches import TokenStream, validation_batches
from minisft.budgets import count_params
from minisft.checkpoint import load_checkpoint, save_checkpoint
from minisft.cli import main, parse_options
from minisft.config import GPTConfig
from minisft.errors import CheckpointError, NonFiniteLossError
from minisft.methods import LoRAMethod, SPruFT, make_method
from minisft.methods.spruft import rows_matching_lora, spruft_trainable
from minisft.model import GPT
from minisft.train import Task, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]

MICRO = ex.Preset("micro", GPTConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16),
                  max_chars=60_000, batch_size=8, pretrain_steps=200, pretrain_lr=1e-2,
                  finetune_steps=12, finetune_lr=3e-3, peft_lr=1e-2, eval_batches=2, lora_r=2)


def synthetic_task(V=40, T=8, B=4, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    ids = TokenStream((np.cumsum(rng.integers(1, 3, n)) % V).astype(np.int32), "synthetic", V)
    val = validation_batches(ids, B, T, 2)
    return Task(ids, val, val, B, T)


def small_model(V=40, T=8):
    return GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=2, n_head=2, n_embd=16), backend="numpy", seed=0)


def run(tmp_path, steps, resume=False, ckpt_every=3, method=None):
    model = small_model()
    cfg = TrainConfig(steps=steps, lr=1e-2, eval_every=4, checkpoint_every=ckpt_every, seed=5, accumulation=2)
    r = train(model, method or LoRAMethod(r=2, alpha=4), synthetic_task(), cfg, workdir=tmp_path, resume=resume, progress=False)
    return model, r


class Killed(Exception):
    pass


def killed_after(method, k):
    """The same method, but the process 'dies' right after step k (its checkpoint written)."""
    def after_step(model, step):
        if step + 1 == k:
            raise Killed
    method.after_step = after_step
    return method


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_is_bit_identical(tmp_path, method):
    full_model, full = run(tmp_path / "a", 9, method=make_method(method))
    with pytest.raises(Killed):
        run(tmp_path / "b", 9, method=killed_after(make_method(method), 7))  # checkpoint at 6, log to 6
    resumed_model, resumed = run(tmp_path / "b", 9, resume=True, method=make_method(method))
    assert [h["loss"] for h in resumed["history"]["train"]] == [h["loss"] for h in full["history"]["train"]]
    for k, v in full_model.trainable_params().items():
        assert np.array_equal(v, resumed_model.trainable_params()[k]), k
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 10))


def test_loss_falls_and_history_is_logged(tmp_path):
    _, r = run(tmp_path, 12, method=make_method("full"))
    losses = [h["loss"] for h in r["history"]["train"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert json.loads((tmp_path / "result.json").read_text())["counts"] == r["counts"]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    class Explode(LoRAMethod):
        def after_step(self, model, step):
            if step == 4:
                model.params["ln_f.weight"][...] = np.nan

    with pytest.raises(NonFiniteLossError, match="loss=nan at step 6"):
        run(tmp_path, 9, method=Explode(r=2))
    arrays, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["step"] == 3 and all(np.all(np.isfinite(a)) for a in arrays.values())


def test_bad_checkpoints(tmp_path):
    run(tmp_path, 3)
    ck = tmp_path / "checkpoint.safetensors"
    good = ck.read_bytes()
    ck.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="checkpoint"):
        run(tmp_path, 6, resume=True)
    ck.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="checkpoint"):
        load_checkpoint(ck)
    ck.write_bytes(good)
    with pytest.raises(CheckpointError, match="another configuration"):
        run(tmp_path, 6, resume=True, method=LoRAMethod(r=3))
    save_checkpoint(ck, {"x": np.zeros(2)}, {"no": "fingerprint"})
    with pytest.raises(CheckpointError):
        run(tmp_path, 6, resume=True)
    with pytest.raises(ValueError, match="resume"):
        run(tmp_path / "fresh", 6, resume=True)


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    with pytest.raises(ValueError, match="file"):
        run(blocker / "sub", 2)
    assert blocker.read_text() == "keep me"


def test_bad_method_and_options():
    with pytest.raises(ValueError, match="method"):
        make_method("nope")
    with pytest.raises(ValueError, match="bogus"):
        make_method("lora", bogus=1)
    with pytest.raises(ValueError, match="targets"):
        LoRAMethod(targets=("attn.q",)).prepare(small_model(), None, np.random.default_rng(0))
    assert parse_options(["r=4", "targets=('mlp.c_fc',)", "init=zeros"]) == {"r": 4, "targets": ("mlp.c_fc",), "init": "zeros"}
    with pytest.raises(ValueError, match="--set"):
        parse_options(["r"])
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)


@pytest.fixture(scope="module")
def micro_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


def test_pretrain_beats_unigram_entropy_and_finetune_helps(micro_workdir):
    data = ex.build_data(MICRO, micro_workdir)
    model, result = ex.pretrained(MICRO, micro_workdir, data, backend="numpy")
    h = ex.unigram_entropy(data.code[0], data.tokenizer.vocab_size)
    task = ex.make_task(data.code[0], data.code[1], None, MICRO)
    loss = ex.evaluate(model, task.val_target)
    print(f"micro pretrain: code val loss {loss:.4f} vs unigram entropy {h:.4f}")
    assert loss < h - 0.3
    again, cached = ex.pretrained(MICRO, micro_workdir, data, backend="numpy")
    assert cached is None and all(np.array_equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    _, r = ex.finetune(MICRO, micro_workdir, data, make_method("full"), "full", backend="numpy")
    assert r["final"]["target"] < r["base"]["target"]


def test_compare_is_deterministic_and_cli_works(micro_workdir, monkeypatch, capsys):
    monkeypatch.setitem(ex.PRESETS, "micro", MICRO)
    args = ["compare", "--preset", "micro", "--backend", "numpy", "--workdir", str(micro_workdir), "--quiet"]
    assert main(args) == 0
    first = (micro_workdir / "compare.json").read_bytes()
    out = capsys.readouterr().out
    assert "lora-r2" in out and "docs val" in out
    assert main(args) == 0
    assert (micro_workdir / "compare.json").read_bytes() == first
    assert main(["finetune", "--preset", "micro", "--backend", "numpy", "--workdir", str(micro_workdir),
                 "--quiet", "--method", "lora", "--set", "r=2"]) == 0
    assert main(["finetune", "--preset", "micro", "--workdir", str(micro_workdir), "--method", "nope"]) == 2
    assert "method='nope'" in capsys.readouterr().err


def test_cli_bad_data_paths(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (tmp_path / "missing.txt", empty):
        assert main(["compare", "--preset", "tiny", "--workdir", str(tmp_path / "w"), "--data", str(path)]) == 2
        assert str(path) in capsys.readouterr().err
    tiny_file = tmp_path / "tiny.txt"
    tiny_file.write_text("just a few words")
    assert main(["finetune", "--preset", "tiny", "--workdir", str(tmp_path / "w"), "--method", "full",
                 "--data", str(tiny_file)]) == 2
    assert "tokens" in capsys.readouterr().err


def test_tiny_preset_end_to_end(tmp_path, capsys):
    """The issue's CI run: `minisft pretrain --preset tiny` beats the unigram entropy by a wide
    margin, and `minisft compare --preset tiny` runs every method and fine-tuning lowers the docs
    validation loss below the base model's."""
    work = str(tmp_path / "work")
    assert main(["pretrain", "--preset", "tiny", "--backend", "numpy", "--workdir", work, "--quiet"]) == 0
    out = capsys.readouterr().out
    loss = float(out.split("code validation loss ")[1].split()[0])
    entropy = float(out.split("unigram entropy of the code corpus ")[1].split()[0])
    print(out)
    assert loss < entropy - 0.5
    assert main(["compare", "--preset", "tiny", "--backend", "numpy", "--workdir", work, "--quiet"]) == 0
    result = json.loads((tmp_path / "work" / "compare.json").read_text())
    assert {r["method"] for r in result["rows"]} == set(n for _, n, _ in ex.compare_runs(ex.PRESETS["tiny"]))
    for r in result["rows"]:
        assert r["final"]["target"] < r["base"]["target"], r["label"]
    assert (tmp_path / "work" / "compare.png").exists() or "matplotlib" in capsys.readouterr().out


# widths with their head counts: n_embd a multiple of n_head, 8..128
WIDTHS = [(8, 2), (16, 4), (24, 3), (48, 4), (128, 4)]


@pytest.mark.parametrize("n_layer", [1, 2, 3, 4])
@pytest.mark.parametrize("n_embd,n_head", WIDTHS)
def test_compare_rows_build_and_the_spruft_label_says_the_exact_budget(n_layer, n_embd, n_head):
    """Every row of `compare` builds its method over a grid of small models and LoRA ranks 1..16,
    whether rows_matching_lora picks a row count or a ratio (it picks a ratio for many of them; the
    label once read options['rows'] and raised KeyError), and the SPruFT row trains exactly the count
    its label names: a model prepared with the row's options (magnitude scores: scope "layer" counts
    do not depend on the scores) has spruft_trainable(config, **label's budget) trainable parameters,
    which is rows_matching_lora's count. Ranks above n_embd are refused, naming r."""
    cfg = GPTConfig(vocab_size=32, block_size=8, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    kinds = set()
    for r in range(1, 17):
        preset = replace(ex.PRESETS["tiny"], model=cfg, lora_r=r)
        if r > n_embd:
            with pytest.raises(ValueError, match=f"r={r}"):
                ex.compare_runs(preset)
            continue
        runs = ex.compare_runs(preset)
        for label, name, options in runs:
            ex.build_method(name, options, preset)
        [(label, options)] = [(label, options) for label, name, options in runs if name == "spruft"]
        kind, value = re.fullmatch(r"spruft-(rows|ratio)(.+)", label).groups()
        budget = {kind: int(value) if kind == "rows" else float(value)}
        kinds.add(kind)
        assert {k: options.get(k) for k in ("rows", "ratio") if k in options} == budget, label
        model = GPT(cfg, backend="numpy", dtype="float64", seed=r)
        SPruFT(**{**options, "importance": "magnitude"}).prepare(model, None, np.random.default_rng(0))
        exact = spruft_trainable(cfg, **budget)
        assert count_params(model)["trainable"] == exact == rows_matching_lora(cfg, r)["spruft_trainable"], label
    if n_embd > 8:
        assert kinds == {"rows", "ratio"}, kinds  # the grid exercises both kinds of budget


def test_bench_without_torch_says_what_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert main(["bench", "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install '.[test]'" in err and "Traceback" not in err


def test_bench_outside_a_checkout_says_where_the_benchmark_is(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p or ".") / "reference_models").is_dir()])
    assert main(["bench"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python -m reference_models.bench" in err and "checkout" in err


def test_bench_runs_the_checkouts_benchmark_in_a_child_process(monkeypatch, capfd):
    monkeypatch.chdir(REPO)
    assert main(["bench", "--help"]) == 0
    assert "usage: minisft bench" in capfd.readouterr().out
    assert "reference_models.bench" not in sys.modules  # it ran in the child, not in this process
