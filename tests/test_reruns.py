"""No command destroys or silently replaces an earlier result (minisft.training.train's reruns,
minisft.app.experiment's paths and compare rows, minisft.app.adapeft_front's file names).

- A rerun in a run directory holding an earlier run (finished, killed after a checkpoint, killed
  before one) is refused without --resume / --overwrite, leaving every file as it was; --resume
  continues it bit for bit (or reports a finished one); --overwrite replaces it.
- A resumed run whose files were damaged (log lines that are valid JSON but wrong, a deleted log, a
  non-object result, a finished run's missing or foreign model file) either resumes to the
  uninterrupted run (the log is written again from the checkpoint's history) or is a clear error.
- Results of other settings never share a path: compare tables of other seed counts, AdaPEFT fronts
  of other options; a compare row whose folder holds a run of other settings (a --label equal to a
  row's label) is refused naming the settings that differ; compare reuses its finished rows and
  --overwrite retrains them.
"""

import json
from pathlib import Path

import numpy as np
import pytest

import minisft.app.experiment as ex
import minisft.training.train as train_module
from minisft.app.adapeft_front import DEFAULTS, front_name
from minisft.core.errors import MinisftError
from minisft.methods import LoRAMethod
from minisft.training.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers import (MICRO, assert_one_line_error, copy_workdir, counter_task, micro_workdir, run_cli,
                           tiny_gpt, tree)
from tests.test_train import Killed, killed_after, run

STEPS = 9  # the trainer-level runs: tests.test_train.run (LoRA, eval every 4, accumulation 2)


# ------------------------------------------------------------------------------------ the trainer
def _finished(folder):
    run(folder, STEPS, ckpt_every=3)


def _killed_after_a_checkpoint(folder):  # checkpoint at step 6, log to step 7
    with pytest.raises(Killed):
        run(folder, STEPS, ckpt_every=3, method=killed_after(LoRAMethod(r=2, alpha=4), 7))


def _killed_before_a_checkpoint(folder):  # log to step 2, no checkpoint yet
    with pytest.raises(Killed):
        run(folder, STEPS, ckpt_every=3, method=killed_after(LoRAMethod(r=2, alpha=4), 2))


EARLIER = {"finished": _finished, "killed after a checkpoint": _killed_after_a_checkpoint,
           "killed before a checkpoint": _killed_before_a_checkpoint}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model, result = run(tmp_path_factory.mktemp("whole"), STEPS, ckpt_every=3)
    return model, result


def _same_run(model, result, uninterrupted):
    whole_model, whole = uninterrupted
    assert [h["loss"] for h in result["history"]["train"]] == [h["loss"] for h in whole["history"]["train"]]
    for k, v in whole_model.trainable_params().items():
        assert np.array_equal(v, model.trainable_params()[k]), k


@pytest.mark.parametrize("earlier", sorted(EARLIER))
@pytest.mark.parametrize("flag", ["none", "resume", "overwrite"])
def test_a_rerun_refuses_resumes_or_replaces_never_silently(earlier, flag, tmp_path, uninterrupted, capsys):
    """Each earlier state x each way of running again: refused (every file byte for byte as it
    was, the message naming --resume and --overwrite), continued (the uninterrupted run's losses
    and tensors, the log holding exactly steps 1..9), or replaced (the same, with a note)."""
    EARLIER[earlier](tmp_path)
    before = tree(tmp_path)
    capsys.readouterr()
    if flag == "none":
        with pytest.raises(MinisftError, match="expected a new run directory.*--resume.*--overwrite") as info:
            run(tmp_path, STEPS, ckpt_every=3)
        assert info.value.arg == "rerun"
        assert tree(tmp_path) == before, "a refused rerun changed the run directory"
        return
    model, result = (run(tmp_path, STEPS, ckpt_every=3, resume=True) if flag == "resume"
                     else _overwritten(tmp_path))
    err = capsys.readouterr().err
    if flag == "resume" and earlier == "finished":
        assert "is finished (9 steps); nothing to do" in err and tree(tmp_path) == before
        assert result == json.loads((tmp_path / "result.json").read_text())
        return
    if flag == "overwrite":
        assert "replacing" in err
    _same_run(model, result, uninterrupted)
    log = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, STEPS + 1))
    assert not (tmp_path / "checkpoint.safetensors").exists() and (tmp_path / "model" / "merged.safetensors").exists()


def _overwritten(folder):
    """tests.test_train.run's run, with overwrite=True."""
    model = tiny_gpt(dtype="float32")
    cfg = train_module.TrainConfig(steps=STEPS, lr=1e-2, eval_every=4, checkpoint_every=3, seed=5, accumulation=2)
    result = train_module.train(model, LoRAMethod(r=2, alpha=4), counter_task(), cfg, workdir=folder,
                                overwrite=True, progress=False)
    return model, result


def test_overwrite_removes_every_trace_of_the_earlier_run_before_its_own_first_checkpoint(tmp_path, uninterrupted):
    """An earlier run of other settings (lr 0.02) killed after its checkpoint; --overwrite with this
    run's settings killed before its own first checkpoint: nothing of the earlier run is left to be
    resumed (its checkpoint would be refused as another run's), so --resume starts afresh and gives
    the uninterrupted run."""
    with pytest.raises(Killed):
        run(tmp_path, STEPS, ckpt_every=3, lr=2e-2, method=killed_after(LoRAMethod(r=2, alpha=4), 7))
    model = tiny_gpt(dtype="float32")
    cfg = train_module.TrainConfig(steps=STEPS, lr=1e-2, eval_every=4, checkpoint_every=3, seed=5, accumulation=2)
    with pytest.raises(Killed):
        train_module.train(model, killed_after(LoRAMethod(r=2, alpha=4), 2), counter_task(), cfg, workdir=tmp_path,
                           overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == ["log.jsonl"]
    _same_run(*run(tmp_path, STEPS, ckpt_every=3, resume=True), uninterrupted)


def _append(line):
    def damage(folder):
        with open(folder / "log.jsonl", "a") as f:
            f.write(line)
    return damage


def _other_runs_model_file(folder):
    """merged.safetensors of another run (re-saved with another run's identity in its manifest)."""
    path = folder / "model" / "merged.safetensors"
    arrays, meta = load_checkpoint(path)
    save_checkpoint(path, arrays, {"manifest": {**meta["manifest"], "run": "0" * 64}})


# (the earlier run, what is done to its files, what --resume must do: "resumes" to the uninterrupted
# run, or an error matching the text)
DAMAGED = {
    "U09 a log line {}": (_killed_after_a_checkpoint, _append("{}\n"), "resumes"),
    "U10 a log line [1, 2]": (_killed_after_a_checkpoint, _append("[1, 2]\n"), "resumes"),
    "U11 a log line with step 'x'": (_killed_after_a_checkpoint, _append('{"step": "x"}\n'), "resumes"),
    "U19 a log line null": (_killed_after_a_checkpoint, _append("null\n"), "resumes"),
    "U20 a log line with step 1e400": (_killed_after_a_checkpoint, _append('{"step": 1e400}\n'), "resumes"),
    "S03 a torn last log line (full disk)": (_killed_after_a_checkpoint, _append('{"step": 8, "lo'), "resumes"),
    "U17 the log deleted": (_killed_after_a_checkpoint, lambda f: (f / "log.jsonl").unlink(), "resumes"),
    "the log emptied": (_killed_after_a_checkpoint, lambda f: (f / "log.jsonl").write_text(""), "resumes"),
    "U12 result.json is []": (_killed_after_a_checkpoint, lambda f: (f / "result.json").write_text("[]"),
                              "result.json.*expected a result of this run"),
    "U28 result.json truncated": (_finished, lambda f: (f / "result.json").write_bytes(
        (f / "result.json").read_bytes()[:100]), "result.json.*valid JSON"),
    "U21 merged.safetensors deleted": (_finished, lambda f: (f / "model" / "merged.safetensors").unlink(),
                                       "model/merged.safetensors is missing.*--overwrite"),
    "trained.safetensors truncated": (_finished, lambda f: (f / "model" / "trained.safetensors").write_bytes(b"x" * 9),
                                      "model/trained.safetensors is damaged"),
    "another run's merged.safetensors": (_finished, _other_runs_model_file,
                                         "model/merged.safetensors is another run's"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_resume_of_damaged_run_files_resumes_exactly_or_is_a_clear_error(case, tmp_path, uninterrupted):
    make, damage, outcome = DAMAGED[case]
    make(tmp_path)
    damage(tmp_path)
    if outcome != "resumes":
        with pytest.raises(MinisftError, match=outcome):
            run(tmp_path, STEPS, ckpt_every=3, resume=True)
        return
    model, result = run(tmp_path, STEPS, ckpt_every=3, resume=True)
    _same_run(model, result, uninterrupted)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    whole = [json.loads(line) for line in lines]
    assert [r["step"] for r in whole] == list(range(1, STEPS + 1)), "the log must hold exactly steps 1..9"
    expected = uninterrupted[1]["history"]["train"]
    assert [r["loss"] for r in whole] == [r["loss"] for r in expected]
    assert [r["step"] for r in whole if "eval" in r] == [4, 8, 9]


def test_the_log_written_again_on_resume_is_the_uninterrupted_log_byte_for_byte(tmp_path):
    run(tmp_path / "whole", STEPS, ckpt_every=3)
    _killed_after_a_checkpoint(tmp_path / "cut")
    (tmp_path / "cut" / "log.jsonl").unlink()
    run(tmp_path / "cut", STEPS, ckpt_every=3, resume=True)
    assert (tmp_path / "cut" / "log.jsonl").read_bytes() == (tmp_path / "whole" / "log.jsonl").read_bytes()


def test_a_method_scheduled_beyond_the_run_says_so(capsys):
    """AD09: MGPP / magnitude pruning told total_steps > the run's steps does not finish its schedule
    (MGPP with 1000 never prunes in 6 steps): a note says so, naming total_steps, where the sparsity
    was reported 0 without a word; a schedule that fits says nothing (the command line refuses the
    first: tests/test_bad_inputs.py::test_a_schedule_that_does_not_fit_the_run_names_the_option_that_set_it)."""
    from minisft.methods import MGPP, MagnitudePruning

    for method, noted in ((MGPP(final_sparsity=0.8, total_steps=1000), True), (MagnitudePruning(0.5, total_steps=7), True),
                          (MagnitudePruning(0.5, total_steps=6), False)):
        capsys.readouterr()
        result = train_module.train(tiny_gpt(dtype="float32"), method, counter_task(), train_module.TrainConfig(steps=6),
                                    progress=None)
        err = capsys.readouterr().err
        assert ("total_steps=" in err and "beyond the run's 6 steps" in err) == noted, err
        if method.options()["total_steps"] == 1000:
            assert result["sparsity"] == 0.0


# ---------------------------------------------------------------------------- the command line
@pytest.fixture()
def micro(monkeypatch):
    monkeypatch.setitem(ex.PRESETS, "micro", MICRO)
    return MICRO


@pytest.fixture()
def work(tmp_path, tmp_path_factory, micro):
    """A copy of the session's micro workdir: tokenizer, base, and a finished 4-step LoRA run."""
    return copy_workdir(micro_workdir(tmp_path_factory, MICRO), tmp_path / "w")


COMMON = ["--preset", "micro", "--backend", "numpy", "--quiet"]
RUN = Path("runs/micro-prose-steps4/lora/seed0")


def test_finetune_rerun_is_refused_before_the_base_is_loaded_and_resume_reports(work, capsys, monkeypatch):
    """K09/K10 through the command line: the same command again is one line naming --resume and
    --overwrite, before the base model is loaded; --resume reports the finished run; --resume and
    --overwrite together are a usage error."""
    argv = ["finetune", *COMMON, "--workdir", work, "--method", "lora", "--steps", "4", "--checkpoint-every", "2"]
    before = tree(work / RUN)
    with monkeypatch.context() as m:
        m.setattr(ex, "pretrained", lambda *a, **k: pytest.fail("loaded the base before refusing the rerun"))
        rc, _, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, "--resume", "--overwrite", "a finished run")
    assert tree(work / RUN) == before
    rc, out, err = run_cli(argv + ["--resume"], capsys)
    assert rc == 0 and "nothing to do" in err and tree(work / RUN) == before
    rc, _, err = run_cli(argv + ["--resume", "--overwrite"], capsys)
    assert_one_line_error(rc, err, "--overwrite", "not allowed with argument --resume")


def test_a_label_equal_to_a_compare_row_is_never_overwritten_by_compare(work, capsys):
    """C008: `finetune --label gmt-d0.5` with other settings at the rate compare's row runs (its
    folder is the row's), then `compare --only gmt-d0.5`: one line naming the settings that differ
    (compare's accumulation 4), the user's run untouched."""
    lr = MICRO.finetune_lr  # GMT trains base tensors; the micro preset's grid is its two rates
    argv = ["finetune", *COMMON, "--workdir", work, "--steps", "2", "--method", "gmt", "--set", "drop_ratio=0.5",
            "--label", "gmt-d0.5", "--lr", repr(lr)]
    assert run_cli(argv, capsys)[0] == 0
    folder = work / "runs" / "micro-prose-steps2" / "gmt-d0.5" / f"lr{lr!r}" / "seed0"
    before = tree(folder)
    rc, _, err = run_cli(["compare", *COMMON, "--workdir", work, "--steps", "2", "--only", "gmt-d0.5"], capsys)
    assert_one_line_error(rc, err, "train.accumulation: 1 then, 4 now", "--overwrite")
    assert tree(folder) == before


def test_compare_reuses_finished_rows_keeps_seed_counts_apart_and_overwrite_retrains(work, capsys, monkeypatch):
    """A second compare reuses its finished rows (no step trained) and writes the same table; a table
    of 2 seeds goes to compare-seeds2.json and leaves the 1-seed table as it was (C007, C002);
    --overwrite trains the rows again, to the same table (the CPU is deterministic)."""
    args = ["compare", *COMMON, "--workdir", work, "--steps", "2", "--only", "lora-r2"]
    assert run_cli(args, capsys)[0] == 0
    folder = work / "runs" / "micro-prose-steps2"
    first = (folder / "compare.json").read_bytes()
    with monkeypatch.context() as m:
        m.setattr(train_module, "_step_grads", lambda *a, **k: pytest.fail("a finished row was trained again"))
        assert run_cli(args, capsys)[0] == 0
    assert (folder / "compare.json").read_bytes() == first
    assert run_cli(args + ["--seeds", "2"], capsys)[0] == 0
    two = json.loads((folder / "compare-seeds2.json").read_text())
    assert two["seeds"] == [0, 1] and [r["seeds"] for r in two["rows"]] == [[0, 1]]
    assert (folder / "compare.json").read_bytes() == first
    rc, _, err = run_cli(["claims", folder], capsys)  # two tables in the folder: name one
    assert_one_line_error(rc, err, "compare-seeds2.json", "name the file")
    assert run_cli(["claims", folder / "compare-seeds2.json"], capsys)[0] == 0
    row = folder / "lora-r2" / f"lr{MICRO.peft_lr!r}" / "seed0"
    stamp = (row / "result.json").stat().st_mtime_ns
    rc, _, err = run_cli(args + ["--overwrite"], capsys)
    assert rc == 0 and (row / "result.json").stat().st_mtime_ns != stamp
    assert (folder / "compare.json").read_bytes() == first


class Stop(Exception):
    pass


def test_a_killed_compare_resumes_its_unfinished_row(work, capsys, monkeypatch):
    """A compare stopped inside a row (after step 3 of 4; its checkpoint at step 1 or later): the next
    compare trains only that row's remaining steps and writes the table an uninterrupted compare
    writes."""
    args = ["compare", *COMMON, "--workdir", work, "--steps", "4", "--only", "lora-r2", "--seed", "0"]
    real, calls = train_module._step_grads, []

    def stop_after_three(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise Stop
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(train_module, "_step_grads", stop_after_three)
        with pytest.raises(Stop):
            run_cli(args, capsys)
    folder = work / "runs/micro-prose-steps4/lora-r2" / f"lr{MICRO.peft_lr!r}" / "seed0"
    step = load_checkpoint(folder / "checkpoint.safetensors")[1]["step"]
    calls.clear()
    with monkeypatch.context() as m:
        m.setattr(train_module, "_step_grads", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
        assert run_cli(args, capsys)[0] == 0
    assert len(calls) == 4 - step, f"{len(calls)} steps trained after a checkpoint at step {step}"
    resumed = (work / "runs/micro-prose-steps4/compare.json").read_bytes()
    assert run_cli(args + ["--overwrite"], capsys)[0] == 0
    assert (work / "runs/micro-prose-steps4/compare.json").read_bytes() == resumed


FRONT_OPTIONS = [{}, {"budget": 100000000000}, {"groups": "tensors"}, {"estimator": "exact"}, {"direction": "sgd"},
                 {"probe_steps": 16}, {"every": 2}, {"train_front": True},
                 {"groups": "tensors", "estimator": "exact", "direction": "sgd", "budget": 0.5}]


def test_adapeft_fronts_of_other_options_never_share_a_file():
    """AF10: every option that is not the default is part of the file name (and of the trained
    points' labels, which must stay plain names)."""
    names = [front_name(**options) for options in FRONT_OPTIONS]
    assert names[0] == "adapeft-front" and len(set(names)) == len(names), names
    from minisft.core.fileio import check_name

    for name in names:
        check_name("label", f"{name}-001")
    assert set(DEFAULTS) == {"budget", "groups", "estimator", "direction", "probe_steps", "every", "train_front"}
    with pytest.raises(MinisftError, match="options"):
        front_name(bogus=1)


def test_adapeft_front_cli_writes_each_option_set_to_its_own_file(work, capsys):
    base = ["adapeft-front", *COMMON, "--workdir", work, "--probe-steps", "2", "--every", "1"]
    rc, out, _ = run_cli(base, capsys)
    assert rc == 0
    first = Path(out.split("written to ")[1].split(",")[0].split(" (")[0].strip())
    kept = first.read_bytes()
    rc, out, _ = run_cli(base + ["--direction", "sgd"], capsys)
    second = Path(out.split("written to ")[1].split(",")[0].split(" (")[0].strip())
    assert rc == 0 and second != first and second.name == f"{front_name(probe_steps=2, every=1, direction='sgd')}.json"
    assert first.read_bytes() == kept
