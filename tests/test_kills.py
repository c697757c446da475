"""Kills and interrupts (minisft.core.fileio.replaced_folder, minisft.distributed.launch and its
rank guard, the command line's Ctrl-C):

- a folder written with replaced_folder (an export, a run's model/) is, after a SIGKILL at any
  point of the write, the old folder or the new one, never a mix; the next write removes what the
  killed one left;
- `minisft launch` killed with SIGKILL takes its ranks with it, children of the ranks included;
- Ctrl-C (SIGINT) during fine-tuning or pretraining is one line and exit status 130, no traceback,
  and what was interrupted continues: `--resume` to the uninterrupted run, pretraining by running
  it again.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import minisft.app.experiment as ex
from minisft.core import fileio
from minisft.core.errors import MinisftError
from tests.helpers import MICRO, copy_workdir, micro_workdir, run_cli, tree

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
COMMON = ["--preset", "micro", "--backend", "numpy"]
RUN = Path("runs/micro-prose-steps4/lora/seed0")


@pytest.fixture()
def work(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setitem(ex.PRESETS, "micro", MICRO)
    return copy_workdir(micro_workdir(tmp_path_factory, MICRO), tmp_path / "w")


# ---------------------------------------------------------------------------- folder atomicity
def _write_folder(path, version, files=4, fail_at=None):
    """replaced_folder(path): `files` files saying `version`, and the marker; an exception before the
    `fail_at`-th file (None: none)."""
    with fileio.replaced_folder(path, "marker.json") as tmp:
        fileio.atomic_write_json(tmp / "marker.json", {"version": version})
        for i in range(files):
            if i == fail_at:
                raise KeyboardInterrupt
            (tmp / "sub").mkdir(exist_ok=True)
            fileio.atomic_write_text(tmp / ("sub" if i % 2 else "") / f"f{i}.txt", f"{version}:{i}")


def _versions(path):
    """The set of versions the folder's files say (one when it is whole)."""
    return {p.read_text().split(":")[0] if p.suffix == ".txt" else str(json.loads(p.read_text())["version"])
            for p in Path(path).rglob("*") if p.is_file()}


@pytest.mark.parametrize("fail_at", range(4))
def test_an_interrupted_folder_write_leaves_the_old_folder_whole(tmp_path, fail_at):
    _write_folder(tmp_path / "out", "old")
    before = tree(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        _write_folder(tmp_path / "out", "new", fail_at=fail_at)
    assert tree(tmp_path / "out") == before and _versions(tmp_path / "out") == {"old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "a temporary folder was left"
    _write_folder(tmp_path / "out", "new")
    assert _versions(tmp_path / "out") == {"new"}


def test_a_folder_of_other_files_is_never_replaced(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(MinisftError, match="holds other files"):
        _write_folder(tmp_path / "mine", "new")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine" and len(list((tmp_path / "mine").iterdir())) == 1
    _write_folder(tmp_path / "empty", "new")  # absent: created
    (tmp_path / "empty2").mkdir()
    _write_folder(tmp_path / "empty2", "new")  # empty: replaced
    assert _versions(tmp_path / "empty") == _versions(tmp_path / "empty2") == {"new"}


KILLED_EXPORT = """
    import os, signal, sys
    from minisft.core import fileio
    point, seen = int(sys.argv[3]), [0]

    def die_at_point():
        seen[0] += 1
        if seen[0] == point:
            os.kill(os.getpid(), signal.SIGKILL)

    real_replace, real_exchange = fileio.os.replace, fileio._exchange

    def replace(src, dst):
        die_at_point()
        return real_replace(src, dst)

    def exchange(a, b):
        die_at_point()
        done = real_exchange(a, b)
        die_at_point()
        return done

    fileio.os.replace, fileio._exchange = replace, exchange
    from minisft.app.export import export_peft
    export_peft(sys.argv[1], sys.argv[2])
    print("points", seen[0])
"""


def test_a_killed_export_leaves_the_earlier_export_or_the_new_one_never_a_mix(work, tmp_path, capsys):
    """K14: OUT holds the export of run A; the export of run B into OUT is killed (SIGKILL) at each
    point of its write: before each of its files, before and after the folder exchange. Every time
    OUT is A's export or B's, file for file, and the next export removes the killed one's folder."""
    assert run_cli(["finetune", *COMMON, "--workdir", work, "--quiet", "--method", "lora", "--steps", "2",
                    "--label", "b", "--set", "r=1"], capsys)[0] == 0
    run_a, run_b = work / RUN, work / "runs/micro-prose-steps2/b/seed0"
    out = tmp_path / "out"
    for run, name in ((run_b, "ref-b"), (run_a, "out")):
        assert run_cli(["export", run, "--peft", tmp_path / name], capsys)[0] == 0
    export_a, export_b = tree(out), tree(tmp_path / "ref-b")
    assert export_a != export_b
    script = textwrap.dedent(KILLED_EXPORT)
    whole = subprocess.run([sys.executable, "-c", script, str(run_b), str(out), "0"], env=ENV, capture_output=True,
                           text=True, timeout=120)
    points = int(whole.stdout.split()[-1])
    assert tree(out) == export_b and points >= 7  # 5 files, the exchange's two sides
    assert run_cli(["export", run_a, "--peft", out], capsys)[0] == 0
    seen = set()
    for point in range(1, points + 1):
        child = subprocess.run([sys.executable, "-c", script, str(run_b), str(out), str(point)], env=ENV,
                               capture_output=True, text=True, timeout=120)
        assert child.returncode == -signal.SIGKILL, child.stderr
        now = tree(out)
        assert now in (export_a, export_b), f"a kill at point {point} left a mixed folder"
        seen.add("A" if now == export_a else "B")
        assert run_cli(["export", run_a, "--peft", out], capsys)[0] == 0  # back to A; the debris removed
        assert tree(out) == export_a and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert seen == {"A", "B"}, "the kill points must cover both sides of the exchange"


# ------------------------------------------------------------------------------------ launcher
RANK = """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.path.join(sys.argv[1], os.environ["RANK"]), "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    time.sleep(120)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def test_ranks_and_their_children_end_when_the_launcher_is_killed(tmp_path):
    """K16: `minisft launch --nproc 2` killed with SIGKILL: both ranks, and a child each started,
    end within seconds (before, they ran on to the end of their work)."""
    launcher = subprocess.Popen([sys.executable, "-m", "minisft.distributed.launch", "--nproc", "2", "--",
                                 sys.executable, "-c", textwrap.dedent(RANK), str(tmp_path)], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len([p for p in tmp_path.iterdir() if p.read_text().strip()]) < 2:
        assert time.monotonic() < deadline and launcher.poll() is None, "the ranks did not start"
        time.sleep(0.1)
    pids = [int(pid) for p in tmp_path.iterdir() for pid in p.read_text().split()]
    assert all(_alive(pid) for pid in pids)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if _alive(pid)]
    for pid in left:  # leave nothing behind, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes {left} of the killed launcher's ranks still run"


# --------------------------------------------------------------------------------------- Ctrl-C
MAIN_WITH_MICRO = """
    import dataclasses, sys
    sys.path.insert(0, sys.argv[1])
    import minisft.app.experiment as ex
    from tests.helpers import MICRO
    ex.PRESETS["micro"] = dataclasses.replace(MICRO, pretrain_steps=int(sys.argv[2]))
    from minisft.app.cli import main
    print("ready", file=sys.stderr, flush=True)
    sys.exit(main(sys.argv[3:]))
"""


def _interrupted(argv, ready, pretrain_steps=MICRO.pretrain_steps):
    """Run `minisft ARGV` (the micro preset) in a child, send it SIGINT once `ready(stderr line)`
    holds for a line it printed; its (exit status, stderr)."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(MAIN_WITH_MICRO), str(REPO), str(pretrain_steps),
                              *map(str, argv)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in child.stderr:
        lines.append(line)
        if ready(line):
            break
    else:
        pytest.fail(f"the command ended before the interrupt: {''.join(lines)}")
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    return child.returncode, "".join(lines) + err


def _interrupt_is_one_line(rc, err):
    assert rc == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("minisft: interrupted"), err


def test_ctrl_c_during_fine_tuning_is_one_line_and_resume_continues(work, capsys):
    """SIG1: SIGINT once the first checkpoint is written; then --resume equals the uninterrupted run."""
    argv = ["finetune", *COMMON, "--workdir", work, "--method", "lora", "--steps", "120", "--checkpoint-every", "2"]
    folder = work / "runs/micro-prose-steps120/lora/seed0"

    def checkpointed(line):  # progress lines come about every 10% of the steps: wait for a checkpoint after one
        while not (folder / "checkpoint.safetensors").exists():
            time.sleep(0.01)
        return True
    _interrupt_is_one_line(*_interrupted(argv, lambda line: line.startswith("ready") and checkpointed(line)))
    assert not (folder / "result.json").exists()
    assert run_cli(argv + ["--quiet", "--resume"], capsys)[0] == 0
    assert run_cli([*argv[:-2], "--checkpoint-every", "0", "--label", "whole", "--quiet"], capsys)[0] == 0
    resumed, whole = (json.loads((folder.parent.parent / label / "seed0" / "result.json").read_text())
                      for label in ("lora", "whole"))
    assert [r["loss"] for r in resumed["history"]["train"]] == [r["loss"] for r in whole["history"]["train"]]


def test_ctrl_c_during_pretraining_is_one_line_and_leaves_no_base_half_written(work):
    """SIG2: SIGINT while a base model pretrains (20,000 steps: it is still running): one line, and
    no base file or temporary file is left (the next pretrain starts it afresh, as any run without
    a cached base)."""
    before = sorted(p.name for p in (work / "pretrain").iterdir())
    argv = ["pretrain", *COMMON, "--workdir", work]
    _interrupt_is_one_line(*_interrupted(argv, lambda line: "pretraining the micro base model" in line, 20_000))
    assert sorted(p.name for p in (work / "pretrain").iterdir()) == before
