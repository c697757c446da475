"""Validate before work, fail before loss (minisft.core.fileio's checks, minisft.training.train's
check_run_dir, the command line's handling of OSError):

- a directory, a FIFO, a device link or a symbolic link where a command will write a file (run
  files, the run lock, model/, caches, compare.json, an export folder) is one clear line before any
  training step, never a block, never a write through the link; a damaged cache file is rebuilt;
- names longer than NAME_MAX bytes and paths longer than PATH_MAX bytes, and workdirs that cannot
  be created, are errors naming the option that gave them;
- a disk that fills up while a command writes is one line naming the file, no temporary file is
  left, and the finished work is kept: a checkpoint stays resumable, compare's finished rows are
  reused by the next compare, an earlier export stays whole.
"""

import errno
import json
import os
import signal
from pathlib import Path

import pytest

import minisft.app.experiment as ex
import minisft.training.train as train_module
from minisft.core import fileio
from minisft.training.checkpoint import load_checkpoint
from tests.helpers import MICRO, assert_one_line_error, copy_workdir, micro_workdir, run_cli, tree

COMMON = ["--preset", "micro", "--backend", "numpy", "--quiet"]
RUN = Path("runs/micro-prose-steps4/lora/seed0")
FRESH = Path("runs/micro-prose-steps2/fresh/seed0")  # the run of FINETUNE
FINETUNE = ["finetune", *COMMON, "--method", "lora", "--steps", "2", "--label", "fresh", "--checkpoint-every", "1"]
COMPARE = ["compare", *COMMON, "--steps", "2", "--only", "lora-r2"]


@pytest.fixture()
def work(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setitem(ex.PRESETS, "micro", MICRO)
    return copy_workdir(micro_workdir(tmp_path_factory, MICRO), tmp_path / "w")


@pytest.fixture()
def no_hang():
    """A command that blocks (opening a FIFO, say) fails the test after 60 s instead of hanging it."""
    def expire(*_):
        raise AssertionError("the command blocked for 60 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _only(folder, pattern):
    (path,) = Path(folder).glob(pattern)
    return path


def _fifo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path):
        path.unlink()
    os.mkfifo(path)


def _directory(path):
    if os.path.lexists(path):
        path.unlink()
    path.mkdir(parents=True)


def _link(target):
    def make(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path):
            path.unlink()
        path.symlink_to(target)
    return make


def _tokenizer(work):
    return _only(work / "cache", "bpe-*.json")


def _base(work):
    return _only(work / "pretrain", "micro-*.safetensors")


def _out_with_a_directory(work):
    (work / "OUT" / "model.safetensors").mkdir(parents=True)
    return work / "OUT"


# case -> (the path (a function of the workdir), what is put there, the command, what the one-line error
# must say, or "rebuilt": the command succeeds after a note that the cache was damaged)
CASES = {
    "F19 checkpoint.safetensors is a directory": (lambda w: w / FRESH / "checkpoint.safetensors", _directory,
                                                  FINETUNE, "checkpoint.safetensors"),
    "F20 log.jsonl is a directory": (lambda w: w / FRESH / "log.jsonl", _directory, FINETUNE, "not a directory"),
    "F21 result.json is a directory": (lambda w: w / FRESH / "result.json", _directory, FINETUNE, "not a directory"),
    "F23 model/merged.safetensors is a directory": (lambda w: w / FRESH / "model" / "merged.safetensors", _directory,
                                                    FINETUNE, "holds other files"),
    "F18 .lock is a directory": (lambda w: w / FRESH / ".lock", _directory, FINETUNE, ".lock"),
    "U14 result.json is a FIFO": (lambda w: w / FRESH / "result.json", _fifo, FINETUNE, "regular file"),
    "U15 log.jsonl is a FIFO": (lambda w: w / FRESH / "log.jsonl", _fifo, FINETUNE, "regular file"),
    "checkpoint.safetensors links to /dev/zero": (lambda w: w / FRESH / "checkpoint.safetensors",
                                                  _link("/dev/zero"), ["finetune", *FINETUNE[1:], "--resume"],
                                                  "checkpoint"),
    "F03 the cached tokenizer is a directory": (_tokenizer, _directory, FINETUNE, "not a directory"),
    "F01 the cached tokenizer is a FIFO": (_tokenizer, _fifo, FINETUNE, "rebuilt"),
    "F02 the cached tokenizer links to /dev/zero": (_tokenizer, _link("/dev/zero"), FINETUNE, "rebuilt"),
    "the cached base model is a directory": (_base, _directory, FINETUNE, "not a directory"),
    "F08 the cached base model is a FIFO": (_base, _fifo, FINETUNE, "regular file"),
    "C006 compare.json is a directory": (lambda w: w / "runs/micro-prose-steps2/compare.json", _directory, COMPARE,
                                         "not a directory"),
    "compare.png is a FIFO": (lambda w: w / "runs/micro-prose-steps2/compare.png", _fifo, COMPARE, "regular file"),
    "E07 OUT/model.safetensors is a directory": (lambda w: w / "OUT" / "model.safetensors", _directory,
                                                 ["export", RUN, "--hf", "OUT"], "holds other files"),
    "E12 export into the run folder itself": (lambda w: w / RUN / "keep.txt", lambda p: p.write_text("mine"),
                                              ["export", RUN, "--hf", RUN], "holds other files"),
    "export --peft into a file": (lambda w: w / "OUT", lambda p: p.write_text("mine"),
                                  ["export", RUN, "--peft", "OUT"], "this is a file"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_what_is_in_the_way_of_an_output_is_refused_before_any_step(case, work, capsys, monkeypatch, no_hang):
    where, make, argv, expected = CASES[case]
    make(where(work))
    monkeypatch.setattr(train_module, "_step_grads", lambda *a, **k: pytest.fail("trained before the refusal"))
    argv = [str(work / a) if isinstance(a, Path) or a == "OUT" else a for a in argv]
    workdir = ["--workdir", str(work)] if argv[0] != "export" else []
    if expected == "rebuilt":  # a damaged cache is rebuilt, with a note (the step function is not needed)
        monkeypatch.undo()
        monkeypatch.setitem(ex.PRESETS, "micro", MICRO)
        rc, _, err = run_cli([*argv, *workdir], capsys)
        assert rc == 0 and "the cached tokenizer is damaged" in err and where(work).is_file()
        return
    rc, _, err = run_cli([*argv, *workdir], capsys)
    assert_one_line_error(rc, err, expected)


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(work, capsys, tmp_path):
    """F24: .lock linked to an unrelated file: the run refuses (the lock is opened without following
    links), and the file keeps its content (it was truncated and overwritten with the pid before)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious user data, do not lose")
    (work / RUN / ".lock").unlink(missing_ok=True)
    (work / RUN / ".lock").symlink_to(victim)
    rc, _, err = run_cli(["finetune", *COMMON, "--workdir", work, "--method", "lora", "--steps", "4", "--resume"],
                         capsys)
    assert_one_line_error(rc, err, ".lock", "not a link")
    assert victim.read_text() == "precious user data, do not lose"
    with pytest.raises(fileio.MinisftError, match="not a link"):
        with fileio.RunLock(work / RUN):
            pass
    assert victim.read_text() == "precious user data, do not lose"


LONG = "d" * 300


def _dangling(tmp):
    (tmp / "dangling").symlink_to("/nonexistent/x")
    return tmp / "dangling"


def _loop(tmp):
    (tmp / "loopA").symlink_to(tmp / "loopB")
    (tmp / "loopB").symlink_to(tmp / "loopA")
    return tmp / "loopA"


# case -> (the command, with TMP for the test's folder, the option the error must name, and a fragment)
PATHS = {
    "A004 --workdir with a 300-byte name": (["finetune", "--method", "lora", "--workdir", f"TMP/{LONG}"],
                                            "--workdir", "at most 255 bytes"),
    "A005 --workdir of 25 names of 200 bytes": (["finetune", "--method", "lora", "--workdir",
                                                 "TMP/" + "/".join(["e" * 200] * 25)], "--workdir", "at most 4095 bytes"),
    "L03 export RUN with a 300-byte name": (["export", f"TMP/{LONG}", "--hf", "TMP/out"], "RUN", "at most 255 bytes"),
    "L04 --init with a 300-byte name": (["finetune", "--method", "lora", "--workdir", "TMP/w", "--init",
                                         f"TMP/{LONG}"], "--init", "at most 255 bytes"),
    "A006 --workdir that cannot be created": (["finetune", "--method", "lora", "--workdir", "/proc/self/x"],
                                              "--workdir", "created and written"),
    "A007 --workdir a dangling link": (["finetune", "--method", "lora", "--workdir", "DANGLING"], "--workdir",
                                       "created and written"),
    "A008 --workdir a loop of links": (["finetune", "--method", "lora", "--workdir", "LOOP"], "--workdir",
                                       "--workdir"),
}


@pytest.mark.parametrize("case", sorted(PATHS))
def test_paths_the_os_cannot_take_are_errors_naming_their_option(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(ex.PRESETS, "micro", MICRO)
    argv, option, fragment = PATHS[case]
    subst = {"DANGLING": str(_dangling(tmp_path)) if "DANGLING" in argv else None,
             "LOOP": str(_loop(tmp_path)) if "LOOP" in argv else None}
    argv = [subst.get(a) or a.replace("TMP", str(tmp_path)) for a in argv]
    if argv[0] != "export":
        argv += ["--preset", "micro", "--backend", "numpy", "--quiet"]
    monkeypatch.setattr(ex, "pretrained", lambda *a, **k: pytest.fail("work started before the refusal"))
    rc, _, err = run_cli(argv, capsys)
    line = assert_one_line_error(rc, err, fragment)
    assert line.startswith(f"minisft: error: {option}"), line


def _disk_full_writing(monkeypatch, fragment, after=0):
    """Writing a file whose name contains `fragment` fails with ENOSPC (as a full disk does: at the
    write of an append, at the fsync of an atomic write), after `after` such writes succeeded."""
    real_fsync, real_write = os.fsync, os.write
    done = []

    def name(fd):
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return ""

    def full(real):
        def call(fd, *args):
            if fragment in name(fd):
                done.append(fd)
                if len(done) > after:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, *args)
        return call

    monkeypatch.setattr(os, "fsync", full(real_fsync))
    monkeypatch.setattr(os, "write", full(real_write))


def _temporaries(folder):
    return [p for p in Path(folder).rglob("*.tmp")]


def test_a_full_disk_at_a_checkpoint_or_the_log_is_one_line_and_the_run_stays_resumable(work, capsys, monkeypatch):
    """S02, S03: the disk fills at the second checkpoint, then at the log: one line each naming the
    file, no temporary left; the last complete checkpoint resumes to the uninterrupted run."""
    argv = ["finetune", *COMMON, "--workdir", work, "--method", "lora", "--steps", "4", "--label", "full-disk",
            "--checkpoint-every", "1"]
    folder = work / "runs/micro-prose-steps4/full-disk/seed0"
    with monkeypatch.context() as m:
        _disk_full_writing(m, "checkpoint.safetensors", after=1)
        rc, _, err = run_cli(argv, capsys)
        assert_one_line_error(rc, err, "checkpoint.safetensors", "No space left on device")
    assert not _temporaries(folder) and load_checkpoint(folder / "checkpoint.safetensors")[1]["step"] == 1
    with monkeypatch.context() as m:
        _disk_full_writing(m, "log.jsonl")
        rc, _, err = run_cli(argv + ["--resume"], capsys)
        assert_one_line_error(rc, err, "log.jsonl", "No space left on device")
    assert run_cli(argv + ["--resume"], capsys)[0] == 0
    whole = json.loads((work / RUN / "result.json").read_text())["history"]["train"]
    resumed = json.loads((folder / "result.json").read_text())["history"]["train"]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]


def test_a_full_disk_at_the_compare_table_keeps_the_trained_rows(work, capsys, monkeypatch):
    """C006's loss, by a full disk: compare.json cannot be written (one line); the next compare
    reuses the finished row instead of training it again and writes the table."""
    args = [*COMPARE, "--workdir", work]
    with monkeypatch.context() as m:
        _disk_full_writing(m, "compare.json")
        rc, _, err = run_cli(args, capsys)
        assert_one_line_error(rc, err, "compare.json", "No space left on device")
    assert (work / "runs/micro-prose-steps2/lora-r2" / f"lr{MICRO.peft_lr!r}" / "seed0" / "result.json").is_file()
    monkeypatch.setattr(train_module, "_step_grads", lambda *a, **k: pytest.fail("a finished row was trained again"))
    assert run_cli(args, capsys)[0] == 0 and (work / "runs/micro-prose-steps2/compare.json").is_file()


def test_a_full_disk_during_an_export_leaves_the_earlier_export_whole(work, capsys, monkeypatch):
    """S05: the disk fills while `export --peft` writes the base's weights: one line, the earlier
    export into OUT unchanged, no temporary folder left."""
    out = work / "OUT"
    assert run_cli(["export", work / RUN, "--peft", out], capsys)[0] == 0
    before = tree(out)
    with monkeypatch.context() as m:
        _disk_full_writing(m, "model.safetensors")
        rc, _, err = run_cli(["export", work / RUN, "--peft", out], capsys)
        assert_one_line_error(rc, err, "No space left on device")
    assert tree(out) == before and not [p for p in work.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_writing_the_golden_vectors_is_one_line(tmp_path, capsys, monkeypatch):
    """S04: the disk fills after two case files of `minisft vectors`: one line naming --out (was a
    traceback)."""
    _disk_full_writing(monkeypatch, ".safetensors", after=2)
    rc, _, err = run_cli(["vectors", "--out", tmp_path / "vec"], capsys)
    assert_one_line_error(rc, err, "--out", "No space left on device")
