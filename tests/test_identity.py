"""Every cached or reused artefact is checked for identity, not only integrity: the key it was made
for is stored inside and compared with what the run expects, and a mismatch is one clear line
before any output is written (minisft.data.tokenizer's cache, minisft.app.experiment's cached base
and compare tables, minisft.app.export's run files and base model).

Each case replaces a file by another *valid* one (an intact checksum, the wrong identity), or edits
a plain-JSON file whose checksummed copy lives elsewhere, in a copy of a workdir holding a finished
micro run, then runs the command that reuses it."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

import minisft.app.experiment as ex
from minisft.core.fileio import atomic_write_checked, atomic_write_json, read_checked
from minisft.model.interop import load_hf_gpt2, save_hf_gpt2
from minisft.training.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers import MICRO, assert_one_line_error, copy_workdir, micro_workdir, run_cli, tree

COMMON = ["--preset", "micro", "--backend", "numpy", "--quiet"]
RUN = Path("runs/micro-prose-steps4/lora/seed0")


@pytest.fixture()
def work(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setitem(ex.PRESETS, "micro", MICRO)
    return copy_workdir(micro_workdir(tmp_path_factory, MICRO), tmp_path / "w")


def _only(folder, pattern):
    (path,) = Path(folder).glob(pattern)
    return path


def _json_edit(relative, edit):
    def mutate(work):
        path = work / relative
        obj = json.loads(path.read_text())
        edit(obj)
        path.write_text(json.dumps(obj))
    return mutate


def _resaved(pattern, edit):
    """Re-save a checksummed safetensors file with `edit(arrays, meta)` applied: still intact, but
    another file."""
    def mutate(work):
        path = _only(work, pattern)
        arrays, meta = load_checkpoint(path)
        save_checkpoint(path, *edit(dict(arrays), dict(meta)))
    return mutate


def _foreign_tokenizer(work):
    """The cached tokenizer re-written intact under its name, but made for another key (the
    tokenizer of other data, copied by hand)."""
    path = _only(work / "cache", "bpe-*.json")
    text = json.loads(path.read_text())["text"]
    atomic_write_checked(path, text, "0" * 64)


def _perturbed(arrays):
    return {k: v + np.float32(1e-3) if k == "wte.weight" else v for k, v in arrays.items()}


FINETUNE = ["finetune", *COMMON, "--method", "lora", "--steps", "2", "--label", "again"]
EXPORT_PEFT = ["export", str(RUN), "--peft", "OUT"]
EXPORT_HF = ["export", str(RUN), "--hf", "OUT"]

# case -> (what is done to the workdir's copy, the command (paths relative to the workdir), what the
# one-line error must say)
CASES = {
    "F05 an intact tokenizer of another key under the cache name": (_foreign_tokenizer, FINETUNE, "made for key"),
    "F07 an intact base model of another key (another seed) under its name": (
        _resaved("pretrain/micro-*.safetensors", lambda a, m: (a, {**m, "key": "f" * 64})), FINETUNE,
        "the base model of key"),
    "E03 manifest.json edited (alpha 2 -> 20)": (
        _json_edit(RUN / "model/manifest.json", lambda m: m["options"].update(alpha=20.0)), EXPORT_PEFT,
        "an unedited model/manifest.json"),
    "E02 manifest.json without options.r": (
        _json_edit(RUN / "model/manifest.json", lambda m: m["options"].pop("r")), EXPORT_PEFT,
        "an unedited model/manifest.json"),
    "E10 manifest.json method edited to full": (
        _json_edit(RUN / "model/manifest.json", lambda m: m.update(method="full")), EXPORT_HF,
        "an unedited model/manifest.json"),
    "E04 another run's merged.safetensors": (
        _resaved(f"{RUN}/model/merged.safetensors", lambda a, m: (a, {"manifest": {**m["manifest"], "seed": 1}})),
        EXPORT_HF, "the model file of the same run"),
    "E05 the cached base replaced since (same key, other weights)": (
        _resaved("pretrain/micro-*.safetensors", lambda a, m: (_perturbed(a), m)), EXPORT_PEFT,
        "as the run started from it"),
    "E14 result.json's report edited": (
        _json_edit(RUN / "result.json", lambda r: r["report"].update(shared={"bogus.suffix": ["h.0.attn.c_attn"]})),
        EXPORT_PEFT, "the result of the run the model files name"),
    "result.json's fingerprint edited": (
        _json_edit(RUN / "result.json", lambda r: r["fingerprint"]["train"].update(lr=0.5)), EXPORT_HF,
        "the result of the run the model files name"),
    "E09 result.json deleted": (lambda w: (w / RUN / "result.json").unlink(), EXPORT_HF, "result.json"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_valid_file_of_another_identity_is_refused_before_any_output(case, work, capsys):
    mutate, argv, message = CASES[case]
    mutate(work)
    before = tree(work)
    argv = [str(work / a) if a in (str(RUN), "OUT") else a for a in argv]
    workdir = ["--workdir", str(work)] if argv[0] != "export" else []
    rc, _, err = run_cli([*argv, *workdir], capsys)
    assert_one_line_error(rc, err, message)
    assert not (work / "OUT").exists(), "an export was written"
    assert tree(work) == before, "the refused command changed the workdir"


def test_the_tokenizer_cache_stores_its_key_and_a_damaged_one_is_rebuilt(work, capsys):
    """The cached tokenizer holds its cache key (read_checked with the key the name stands for); a
    flipped byte is rebuilt with a note (F04), to the same tokenizer."""
    path = _only(work / "cache", "bpe-*.json")
    key = json.loads(path.read_text())["key"]
    assert path.name.startswith(f"bpe-300-{key[:24]}") and read_checked(path, key)
    good = path.read_bytes()
    path.write_bytes(good.replace(b"<|endoftext|>", b"<|endoftexT|>", 1))
    rc, _, err = run_cli([*FINETUNE, "--workdir", work], capsys)
    assert rc == 0 and "the cached tokenizer is damaged" in err
    assert path.read_bytes() == good


@pytest.fixture()
def init_run(work, capsys):
    """(workdir, an HF folder exported from the micro run, the finished run of `--init` that folder)."""
    hf = work / "hf"
    assert run_cli(["export", work / RUN, "--hf", hf], capsys)[0] == 0
    assert run_cli(["finetune", *COMMON, "--workdir", work, "--method", "lora", "--steps", "2", "--init", hf],
                   capsys)[0] == 0
    return work, hf, _only(work / "runs", "micro-prose-steps2-init*/lora/seed0")


def test_an_init_folder_changed_after_training_is_refused_by_export(init_run, capsys):
    """I10: the --init folder's weights replaced after the run: `export --peft` of the run names the
    folder, instead of writing the new weights as the adapter's base."""
    work, hf, run = init_run
    assert run_cli(["export", run, "--peft", work / "ok"], capsys)[0] == 0
    config, state_dict = load_hf_gpt2(hf)
    (hf / "model.safetensors").unlink()
    save_hf_gpt2(_perturbed(state_dict), config, hf / "..new")
    os.replace(hf / "..new" / "model.safetensors", hf / "model.safetensors")
    rc, _, err = run_cli(["export", run, "--peft", work / "OUT"], capsys)
    assert_one_line_error(rc, err, "its --init folder", "as the run started from it")
    assert not (work / "OUT").exists()


def test_export_from_a_relative_path_finds_the_base(work, capsys, monkeypatch):
    """E06: `cd runs/<experiment> && minisft export lora/seed0 --peft OUT` (and from the run folder
    itself, E06b) exports the base the run started from."""
    monkeypatch.chdir(work / RUN.parent.parent)
    assert run_cli(["export", "lora/seed0", "--peft", "out1"], capsys)[0] == 0
    monkeypatch.chdir(work / RUN)
    assert run_cli(["export", ".", "--peft", "../../out2"], capsys)[0] == 0
    first, second = (work / RUN.parent.parent / name / "base" / "model.safetensors" for name in ("out1", "out2"))
    assert first.read_bytes() == second.read_bytes()


def _compare(work, capsys, *more):
    return run_cli(["compare", *COMMON, "--workdir", work, "--steps", "2", *more], capsys)


def _other_steps_table(work):
    """C003: a compare table of another experiment (--steps 3) copied over this one's."""
    other = json.loads((work / "runs/micro-prose-steps2/compare.json").read_text())
    other["preset"]["finetune_steps"] = 3
    atomic_write_json(work / "runs/micro-prose-steps2/compare.json", other)


def _make_fifo(path):
    path.unlink()
    os.mkfifo(path)


EARLIER_TABLES = {
    "C003 a table of another experiment": (_other_steps_table, "it differs in ['preset']"),
    "C004 a truncated table": (lambda w: (w / "runs/micro-prose-steps2/compare.json").write_bytes(
        (w / "runs/micro-prose-steps2/compare.json").read_bytes()[:500]), "a readable earlier table"),
    "a table without rows": (lambda w: atomic_write_json(w / "runs/micro-prose-steps2/compare.json", {"rows": 3}),
                             "a readable earlier table"),
    "C005 a FIFO": (lambda w: _make_fifo(w / "runs/micro-prose-steps2/compare.json"), "regular file"),
}


@pytest.mark.parametrize("case", sorted(EARLIER_TABLES))
def test_compare_only_refuses_an_earlier_table_it_cannot_keep_before_training(case, work, capsys, monkeypatch):
    """`compare --only` keeps the other rows of the earlier table: a table of another experiment, or
    one that cannot be read, is one line before any row is trained (never rows dropped or mixed)."""
    assert _compare(work, capsys, "--only", "lora-r2")[0] == 0
    mutate, message = EARLIER_TABLES[case]
    mutate(work)
    monkeypatch.setattr(ex, "finetune", lambda *a, **k: pytest.fail("a row was trained before the refusal"))
    rc, _, err = _compare(work, capsys, "--only", "full")
    assert_one_line_error(rc, err, "compare.json", message)
