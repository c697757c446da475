"""BPE training is linear in the text, whatever the text (minisft.data.tokenizer.training_pieces):
a 2 MB document of pathological content trains in at most RATIO times the time of ordinary text of
the same size. The trainer's work on one pre-tokenizer piece grows faster than the piece (each
merge rescans it), so a piece longer than MAX_RUN (a megabyte of blanks: one piece of whitespace)
made training quadratic: 160 k whitespace characters took 15 s, four times more per doubling.

Each document trains in its own process, timed there (the import excluded); a pathological one
is stopped at RATIO times the ordinary text's time (plus the start-up), so a regression fails in
seconds instead of hanging the suite."""

import subprocess
import sys
import textwrap

import pytest

SIZE = 2_000_000  # characters
RATIO = 4.0
TRAIN = """
    import sys, time
    from minisft.data.tokenizer import _train
    doc = open(sys.argv[1], encoding="utf-8").read()
    t0 = time.perf_counter()
    _train([doc], 512, 2)
    print(time.perf_counter() - t0)
"""


def _ordinary(n):
    """English prose: Python's documentation topics, repeated to n characters."""
    from pydoc_data.topics import topics

    return _repeated("".join(topics.values()))(n)


def _repeated(unit):
    return lambda n: (unit * (n // len(unit) + 1))[:n]


PATHOLOGICAL = {
    "D006 blanks, tabs and newlines": _repeated(" \n\t "),
    "one run of spaces": _repeated(" "),
    "indentation-heavy lines (1000 blanks each)": _repeated("\n" + " " * 1000 + "x"),
    "words padded by 300 blanks": _repeated("word" + " " * 300),
    "one letter": _repeated("a"),
    "digits": _repeated("7"),
    "punctuation": _repeated("="),
}


def _seconds(doc, path, timeout):
    """Training time of `doc` (written to `path`) in a child process, or None past `timeout` s."""
    path.write_text(doc, encoding="utf-8")
    try:
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(TRAIN), str(path)], capture_output=True,
                             text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    return float(out.stdout.split()[-1])


@pytest.fixture(scope="module")
def ordinary_seconds(tmp_path_factory):
    return _seconds(_ordinary(SIZE), tmp_path_factory.mktemp("ordinary") / "doc.txt", 600)


@pytest.mark.parametrize("case", sorted(PATHOLOGICAL))
def test_pathological_text_trains_within_a_constant_factor_of_ordinary_text(case, ordinary_seconds, tmp_path):
    doc = PATHOLOGICAL[case](SIZE)
    assert len(doc) == SIZE
    limit = RATIO * ordinary_seconds
    seconds = _seconds(doc, tmp_path / "doc.txt", timeout=limit + 30)  # 30 s: the child's start-up
    assert seconds is not None and seconds <= limit, (
        f"{case}: {'more than ' + format(limit + 30, '.1f') if seconds is None else format(seconds, '.2f')} s "
        f"against {ordinary_seconds:.2f} s for ordinary text of {SIZE:,} characters (bound: x{RATIO})")
