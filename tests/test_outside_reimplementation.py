"""The golden vectors are implementable from the manifest alone: tests/outside_reimplementation.py,
written from the manifest's conventions and rules with NumPy and PyTorch only, runs in a process where
importing minisft or reference_models fails, and agrees with GMT's masks, MGPP's primitives and the
GMT, MGPP and magnitude-pruning training trajectories of the kept suite, every stage of every step;
each wrong reading it can swap in is rejected by the case that discriminates it."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

TESTS = Path(__file__).resolve().parent
SCRIPT = TESTS / "outside_reimplementation.py"
KEPT = TESTS / "data" / "vectors"
BLOCKED = ("import sys, runpy; sys.modules.update(minisft=None, reference_models=None); "
           "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
CASES = ("gmt_masks", "mgpp_primitives", "train_gmt", "train_gmt_global_frozen", "train_mgpp", "train_magprune")


def run(*args, cwd):
    """The script in a fresh process from `cwd`, with minisft and reference_models unimportable."""
    return subprocess.run([sys.executable, "-c", BLOCKED, str(SCRIPT), str(KEPT), *args], cwd=cwd,
                          capture_output=True, text=True)


def test_the_script_imports_neither_minisft_nor_the_twins():
    text = SCRIPT.read_text()
    imports = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
    assert imports and all(line.split()[1].split(".")[0] in ("argparse", "hashlib", "json", "math", "sys", "fractions",
                                                             "pathlib", "numpy", "torch") for line in imports), imports


def test_a_reimplementation_from_the_manifest_agrees(tmp_path):
    done = run(cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"{name}: agrees" for name in CASES]


@pytest.mark.parametrize("reading, rejected_by", [
    ("float_count", {"gmt_masks", "mgpp_primitives"}),
    ("half_even", {"mgpp_primitives"}),
    ("global_ties_index_first", {"gmt_masks"}),
    ("prior_before_clip", {"train_mgpp"}),
    ("monotone", {"train_mgpp", "train_magprune"}),
])
def test_each_wrong_reading_is_rejected_by_its_case(reading, rejected_by, capsys):
    """In this process (the script imports neither minisft nor the twins: the two tests above), on
    every case the script checks: exactly the cases that discriminate the reading reject it."""
    import runpy

    script = runpy.run_path(str(SCRIPT), run_name="outside_reimplementation")
    assert script["main"]([str(KEPT), "--wrong", reading]) == 1
    out = capsys.readouterr().out
    differs = {line.split(":")[0] for line in out.splitlines() if ": DIFFERS: " in line}
    assert differs == rejected_by, out
