"""Every bad input is a clear error before any work (issue 18).

- The command line: every option of every subcommand, found by walking the argparse parser (an
  option without a row in BAD_VALUES fails `test_every_cli_option_has_bad_values`), and every
  option of every registered method through `--set` (bad values chosen by the option's type
  annotation), each run as `main(argv)`: exit status 2, one line `minisft: error: <option>: ...`
  naming the option, no traceback, and no data read (nor model trained, for --data) before it.
- The Python API: every public function and class of the pipeline's modules (found by walking the
  modules: a new public function without a row in API fails `test_every_public_api_function_has_bad_values`)
  and the algorithm primitives DESIGN.md names, each with a table of bad values (wrong type, NaN,
  ±inf, 0, negative, huge, empty, path tricks): a MinisftError (ValueError or TypeError) naming the
  argument.
- A process killed with SIGKILL inside an atomic write leaves the old file intact and the next run
  removes its temporary file; a training process killed inside a checkpoint write resumes bit for bit.
- Two runs on one directory: the second gets a clear error naming the first's pid; a lock left by a
  killed process does not block.
"""

import argparse
import inspect
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import numpy as np
import pytest

import minisft as ms
import minisft.app.claims as claims
import minisft.app.compare as cmp
import minisft.app.experiment as ex
from minisft.data import batches, corpus, tokenizer
from minisft.training import checkpoint, optim, train
from minisft.methods import select as select_module
import minisft.testing as mtesting
from minisft.app import cli, experiment
from minisft.core import config, fileio
from minisft.model import interop
from minisft.core.errors import LockedError, MinisftError
from minisft.methods import REGISTRY, option_specs
from tests.helpers import MICRO

REPO = Path(__file__).resolve().parents[1]
HUGE_INT = "9" * 30
NAN, INF = math.nan, math.inf
CASES = {"cli": 0, "set": 0, "api": 0}  # counted as they run (test_count_of_cases prints them)


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------
def _data_fixtures(root):
    """Bad --data inputs made on disk: name -> path."""
    root.mkdir(exist_ok=True)
    out = {}
    (root / "empty").mkdir(exist_ok=True)
    out["empty folder"] = root / "empty"
    out["missing"] = root / "missing.txt"
    out["binary"] = root / "prog.txt"
    out["binary"].write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 40)
    out["latin-1"] = root / "latin.txt"
    out["latin-1"].write_bytes(b"caf\xe9 au lait, cr\xe8me br\xfbl\xe9e\n" * 3000)
    out["few words"] = root / "few.txt"
    out["few words"].write_text("just a few words")
    fifo = root / "pipe.txt"
    if not fifo.exists():
        os.mkfifo(fifo)
    out["fifo"] = fifo
    link = root / "zero.txt"
    if not link.exists():
        link.symlink_to("/dev/zero")
    out["/dev/zero link"] = link
    huge = root / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(fileio.MAX_FILE_BYTES + 1)  # sparse: nothing is written
    out["huge"] = huge
    folder = root / "folder-with-fifo"
    folder.mkdir(exist_ok=True)
    (folder / "a.txt").write_text("words " * 5000)
    if not (folder / "b.txt").exists():
        os.mkfifo(folder / "b.txt")
    out["folder holding a fifo"] = folder
    return out


FILE = "<a file>"  # replaced by the path of an existing regular file
UNDER_FILE = "<a path under a file>"

# option -> bad values (strings as typed on the command line; None: the flag given a value)
BAD_VALUES = {
    "--preset": ["huge", "", "small/../tiny", "SMALL"],
    "--backend": ["torch", "", "numpy "],
    "--dtype": ["float16", "int8", ""],
    "--seed": ["-1", "abc", "1.5", "nan", "", HUGE_INT],
    "--workdir": ["", FILE, UNDER_FILE, "a\x00b"],
    "--data": ["", "\x00", "empty folder", "missing", "binary", "latin-1", "few words", "fifo", "/dev/zero link",
               "huge", "folder holding a fifo"],
    "--encoding": ["bogus-codec", "", "zlib_codec", "rot13", "hex", "base64"],  # the last four: bytes-to-bytes
    "--steps": ["0", "-1", "abc", "1.5", "nan", "inf", "", HUGE_INT],
    "--lr": ["0", "-1", "nan", "inf", "-inf", "abc", "", "1e400"],
    "--quiet": None,
    "--tf32": None,
    "--lr-grid": ["full", "peft=", "full=0", "full=-1", "full=nan", "adam=1e-3", "full=1e-3,x", ""],
    "--method": ["nope", "", "../lora", "LORA"],
    "--set": ["r", "=4", "bogus=1", "r=1=2", " =1"],
    "--label": ["../x", "/abs", "", ".", "..", "a/b", ".hidden", "x" * 101, "a b"],
    "--resume": None,
    "--overwrite": None,
    "--checkpoint-every": ["-1", "abc", "1.5", "", "nan", HUGE_INT],
    "--only": ["bogus", "", "lora-r99", "full/.."],
    "--seeds": ["0", "-1", "abc", "", "1.5", HUGE_INT],
    "--markdown": None,
    "--gpus": ["0", "-1", "abc", "", "1.5", HUGE_INT],
    "--budget": ["0", "-5", "1.5", "nan", "inf", "abc", "", "1e400"],
    "--groups": ["layers", "", "{}"],
    "--estimator": ["hessian", ""],
    "--direction": ["lion", ""],
    "--probe-steps": ["0", "-1", "abc", "", "2.5"],
    "--every": ["0", "-1", "abc", "", "2.5"],
    "--train-front": None,
    "--init": ["", "/no/such/folder", FILE, "<a folder without config.json>"],
    "--out": ["", FILE, UNDER_FILE],
    "--hf": ["", FILE, UNDER_FILE, "a\x00b"],
    "--peft": ["", FILE, UNDER_FILE, "a\x00b"],
}
BASE_ARGS = {"pretrain": [], "finetune": ["--method", "lora"], "compare": [], "adapeft-front": [], "methods": [],
             "vectors": [], "bench": [], "launch": [], "export": ["no-such-run"], "claims": []}
NO_COMMON = ("vectors", "methods", "bench", "launch", "export", "claims")  # subcommands without the common options


def subcommands():
    """{name: [option strings]} of every subcommand, from the parser itself."""
    ap = cli.parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return {name: [a.option_strings[-1] for a in p._actions
                   if a.option_strings and not isinstance(a, argparse._HelpAction)]
            for name, p in sub.choices.items()}


def test_every_cli_option_has_bad_values():
    options = {o for opts in subcommands().values() for o in opts}
    missing = sorted(options - set(BAD_VALUES))
    assert not missing, f"options without bad-value rows in tests/test_bad_inputs.py: {missing}"
    assert set(BASE_ARGS) == set(subcommands())


def cli_cases():
    for command, opts in subcommands().items():
        for opt in opts:
            values = BAD_VALUES[opt]
            for value in [None] if values is None else values:
                yield pytest.param(command, opt, value, id=f"{command} {opt} {value!r}"[:80])


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    return _data_fixtures(tmp_path_factory.mktemp("bad-data"))


@pytest.fixture()
def no_work(monkeypatch):
    """Fail the test if a command reads data (or, with allow_data, trains) before refusing its input."""
    monkeypatch.setitem(ex.PRESETS, "micro", MICRO)

    def forbid(what):
        def stop(*a, **k):
            raise AssertionError(f"{what} was reached before the bad input was refused")
        return stop

    def apply(allow_data=False):
        if not allow_data:
            monkeypatch.setattr(ex, "build_data", forbid("reading data"))
        for name in ("pretrained", "finetune"):
            monkeypatch.setattr(ex, name, forbid(f"experiment.{name}"))
        monkeypatch.setattr(cmp, "compare", forbid("compare.compare"))
    return apply


def run_cli(argv, capsys):
    """(exit status, stderr) of `minisft ARGV` run in this process."""
    capsys.readouterr()
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.err


def assert_clear_error(rc, err, option):
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("minisft: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err  # phase lines may come first
    assert option in errors[0], f"the message does not name {option}: {err}"
    assert "expected" in errors[0] or "required" in errors[0] or "ignored explicit" in errors[0], err


@pytest.mark.parametrize("command,opt,value", list(cli_cases()))
def test_cli_bad_value_is_one_clear_line_before_any_work(command, opt, value, tmp_path, bad_data, capsys, no_work):
    work = tmp_path / "w"
    if value == FILE:
        value = str(bad_data["binary"])
    elif value == UNDER_FILE:
        value = str(bad_data["binary"] / "sub")
    elif opt == "--data" and value in bad_data:
        value = str(bad_data[value])
    elif value == "<a folder without config.json>":
        value = str(bad_data["empty folder"])
    no_work(allow_data=opt in ("--data", "--encoding"))
    base = ["--preset", "micro", "--backend", "numpy"] if opt != "--preset" else ["--backend", "numpy"]
    base = [] if command in NO_COMMON else base
    given = [f"{opt}={value}"] if BAD_VALUES[opt] is None else [opt, value]
    if BAD_VALUES[opt] is None:
        given = [f"{opt}=yes"]
    if opt == "--encoding":
        given += ["--data", str(bad_data["latin-1"])]
    workdir = [] if opt == "--workdir" or command in NO_COMMON else ["--workdir", str(work)]
    rc, err = run_cli([command, *BASE_ARGS[command], *base, *workdir, *given], capsys)
    CASES["cli"] += 1
    assert_clear_error(rc, err, opt)


def set_values(annotation):
    """Bad --set values for an option of this type annotation (invalid for every option of it)."""
    from minisft.methods.config import members

    members = set(members(annotation))
    names = {"choice" if typing.get_origin(t) is typing.Literal else getattr(t, "__name__", str(t)) for t in members}
    out = {"abc"} if not names & {"str", "dict"} else {""}
    if names & {"str", "dict", "choice"}:
        out |= {"bogus-choice"}
    if "int" in names and "float" not in names:
        out |= {"4.5", "nan", "-1", HUGE_INT}
    if "float" in names:
        out |= {"nan", "inf", "-inf", "-1"}
    if "bool" in names:
        out |= {"maybe", "2"}
    if any(str(t).startswith("tuple") for t in members):
        out |= {"", "bogus-name"}
    return sorted(out)


def set_cases():
    for method in sorted(REGISTRY):
        for spec in option_specs(method):
            for value in set_values(spec.annotation):
                yield pytest.param(method, spec.name, value, id=f"{method} {spec.name}={value}"[:80])


@pytest.mark.parametrize("method,option,value", list(set_cases()))
def test_every_method_option_bad_value_is_refused_by_name(method, option, value, tmp_path, capsys, no_work):
    """`--set OPTION=VALUE` with a value of the wrong type, NaN, ±inf, negative or huge: one line
    naming `--set OPTION`, before any data is read (the method and its model-shape checks run first)."""
    no_work()
    rc, err = run_cli(["finetune", "--preset", "micro", "--workdir", str(tmp_path / "w"), "--method", method,
                       "--set", f"{option}={value}"], capsys)
    CASES["set"] += 1
    assert_clear_error(rc, err, f"--set {option}" if option not in ("ratio", "rows") else "--set ")


def test_set_values_are_typed_never_evaluated(tmp_path, capsys, no_work):
    """A --set value is parsed as a literal of the option's type: code is never run."""
    no_work()
    marker = tmp_path / "ran"
    for value in (f"__import__('pathlib').Path({str(marker)!r}).touch()", f"(open({str(marker)!r}, 'w'),)"):
        rc, err = run_cli(["finetune", "--preset", "micro", "--workdir", str(tmp_path / "w"), "--method", "lora",
                           "--set", f"targets={value}"], capsys)
        assert_clear_error(rc, err, "--set targets")
    assert not marker.exists()


def test_a_traceback_never_reaches_the_terminal(tmp_path, bad_data):
    """The same, as a real process (the module entry point): a bad value and a binary --data file."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (["finetune", "--method", "lora", "--set", "r=abc"], ["compare", "--only", "bogus"],
                 ["pretrain", "--preset", "tiny", "--data", str(bad_data["binary"])]):
        out = subprocess.run([sys.executable, "-m", "minisft", *args, "--workdir", str(tmp_path / "w")],
                             capture_output=True, text=True, env=env, timeout=120)
        CASES["cli"] += 1
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode == 2 and "Traceback" not in out.stderr and last.startswith("minisft: error: "), out


# --------------------------------------------------------------------------------------------
# the Python API
# --------------------------------------------------------------------------------------------
def _model():
    return ms.GPT(ms.GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=8), backend="numpy",
                  dtype="float64", seed=0)


def _task():
    ids = batches.TokenStream((np.arange(800) % 40).astype(np.int32), "s", 40)
    val = batches.validation_batches(ids, 2, 8, 1)
    return train.Task(ids, val, val, 2, 8)


def _model300():
    """A model with MICRO's vocabulary (300 >= 257: minisft's BPE can be trained for it)."""
    return ms.GPT(MICRO.model, backend="numpy", dtype="float64", seed=0)


def _lora_model():
    model = _model()
    ms.methods.LoRAMethod(r=2, alpha=4).prepare(model, None, np.random.default_rng(0))
    return model


def _corpus():
    return corpus.Corpus("c", ["some words " * 20], ["more words " * 5])


def _hf_sd():
    return interop.to_hf_gpt2(_model().state_dict())


def _file(tmp):
    path = tmp / "f.txt"
    path.write_text("hello world, " * 200)
    return path


def _tok(tmp):
    return tokenizer.build_tokenizer(_corpus(), vocab_size=260, cache_dir=tmp / "tok")


def _saved(tmp, save, name, *args):
    path = tmp / name
    save(path, *args)
    return path


class Bad:
    """A bad value whose error names `named` (a regex) instead of the argument itself."""

    def __init__(self, value, named):
        self.value, self.named = value, named


NEG_POS_INT = ["3", 2.5, True, None, 0, -1, NAN]  # bad values of a positive integer
NEG_NONNEG_INT = ["3", 2.5, True, None, -1, NAN]
NEG_OPT_POS_INT = ["3", 2.5, True, 0, -1, NAN]  # of an optional positive integer (None is valid)
NEG_POS_REAL = ["1", None, True, 0, -1.0, NAN, INF, -INF]
HF_CONFIG = {"vocab_size": 40, "n_positions": 8, "n_layer": 1, "n_head": 2, "n_embd": 8}
SD = lambda: _model().state_dict()  # noqa: E731
TINY = ex.PRESETS["tiny"]


class _FakeData:
    key = "docs"


# name -> (function, good keyword arguments (tmp) -> dict, {argument: bad values}); a value may be
# FILE / UNDER_FILE (paths made per test) or Bad(value, what its error must name)
API = {
    "config.GPTConfig": (ms.GPTConfig, lambda t: {},
                         {"vocab_size": NEG_POS_INT, "block_size": NEG_POS_INT, "n_layer": NEG_POS_INT,
                          "n_head": NEG_POS_INT + [Bad(3, "n_embd")], "n_embd": NEG_POS_INT}),
    "model.GPT": (ms.GPT, lambda t: {"config": _model().config, "backend": "numpy"},
                  {"config": [None, {"vocab_size": 4}, "cfg",  # P25, P26: refused before allocating
                              ms.GPTConfig(vocab_size=10**12, block_size=8, n_layer=1, n_head=2, n_embd=8),
                              ms.GPTConfig(vocab_size=40, block_size=8, n_layer=10**6, n_head=2, n_embd=64)],
                   "backend": ["torch", 3, ""],
                   "dtype": ["float16", "int8", 3], "seed": [-1, "0", 1.5, None]}),
    "model.GPT.from_state_dict": (ms.GPT.from_state_dict,
                                  lambda t: {"state_dict": SD(), "config": _model().config, "backend": "numpy"},
                                  {"state_dict": [None, [], "sd", {"wte.weight": np.zeros(3)},
                                                  {**SD(), "wte.weight": "x"}, {**SD(), "wte.weight": None},
                                                  {**SD(), "wte.weight": np.full((40, 8), NAN)},
                                                  {**SD(), "wpe.weight": np.full((8, 8), -INF)},
                                                  {**SD(), "extra": np.zeros(2)}, {**SD(), 3: np.zeros(2)},
                                                  {**SD(), "wte.weight": np.full((40, 8), 1e39)}],  # P29: inf in float32
                                   "config": [None, "cfg", HF_CONFIG]}),
    "model.GPT.loss_and_grads": (lambda **k: _model().loss_and_grads(**k),
                                 lambda t: {"idx": np.zeros((1, 2), int), "targets": np.zeros((1, 2), int)},
                                 {"on_ready": ["x", 3]}),  # P18
    "interop.from_hf_gpt2": (interop.from_hf_gpt2, lambda t: {"hf_state_dict": interop.to_hf_gpt2(SD())},
                             {"hf_state_dict": [None, [], "sd", {"wte.weight": np.zeros(3)}, {3: np.zeros(2)},
                                                {"transformer.wte.weight": "text"},
                                                {"transformer.wte.weight": np.array(["a", "b"])},
                                                {**interop.to_hf_gpt2(SD()), "lm_head.weight": np.ones((40, 8))}]}),
    "interop.to_hf_gpt2": (interop.to_hf_gpt2, lambda t: {"state_dict": SD()},
                           {"state_dict": [None, [], "sd", {3: np.zeros(2)}, {"h.0.attn.c_attn.weight": "x"},
                                           {"no_wte": np.zeros(2)}]}),
    "interop.config_from_hf": (interop.config_from_hf, lambda t: {"hf_config": dict(HF_CONFIG)},
                               {"hf_config": [None, "cfg", 3, {}, {**HF_CONFIG, "n_layer": "2"},
                                              Bad({**HF_CONFIG, "activation_function": "relu"}, "activation_function"),
                                              Bad({**HF_CONFIG, "layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
                                              Bad({**HF_CONFIG, "n_head": 3}, "n_embd")]}),
    "interop.hf_gpt2_config": (interop.hf_gpt2_config, lambda t: {"config": _model().config},
                               {"config": [None, "cfg", HF_CONFIG], "dtype": ["float16", 3]}),
    "interop.save_hf_gpt2": (interop.save_hf_gpt2, lambda t: {"state_dict": SD(), "config": _model().config,
                                                              "out_dir": t / "hf"},
                             {"state_dict": [None, "sd", {**SD(), "wte.weight": np.zeros(3)},
                                             {**SD(), "wte.weight": np.full((40, 8), NAN)}],
                              "config": [None, HF_CONFIG], "out_dir": ["", UNDER_FILE, None]}),
    "interop.load_hf_gpt2": (interop.load_hf_gpt2,
                             lambda t: {"folder": interop.save_hf_gpt2(SD(), _model().config, t / "hf")},
                             {"folder": ["", None, "/no/such/folder", FILE, Bad(UNDER_FILE, "folder")]}),
    "interop.save_peft_adapter": (interop.save_peft_adapter, lambda t: {"model": _lora_model(), "out_dir": t / "peft"},
                                  {"model": [None, "m", _model()], "out_dir": ["", UNDER_FILE]}),
    "interop.write_peft_lora": (interop.write_peft_lora,
                                lambda t: {"factors": {"h.0.attn.c_attn": (np.ones((2, 8)), np.zeros((24, 2)), 1.0)},
                                           "out_dir": t / "peft"},
                                {"factors": [None, {}, "f", {"h.0.attn.c_attn": (np.ones((2, 8)), np.zeros((24, 3)), 1.0)},
                                             {"h.0.attn.c_attn": (np.full((2, 8), NAN), np.zeros((24, 2)), 1.0)},
                                             {"nope": (np.ones((2, 8)), np.zeros((24, 2)), 1.0)}],
                                 "out_dir": ["", UNDER_FILE]}),
    "checkpoint.save_checkpoint": (checkpoint.save_checkpoint,
                                   lambda t: {"path": t / "c.safetensors", "arrays": {"a": np.zeros(2)}, "meta": {}},
                                   {"path": ["", UNDER_FILE], "arrays": [None, {"a": "x"}, {3: np.zeros(2)}],
                                    "meta": [{"x": NAN}, {"x": object()}]}),
    "checkpoint.load_checkpoint": (checkpoint.load_checkpoint,
                                   lambda t: {"path": _saved(t, checkpoint.save_checkpoint, "c", {"a": np.zeros(1)}, {})},
                                   {"path": [Bad("", "checkpoint"), Bad(UNDER_FILE, "checkpoint"),
                                             Bad("/dev/zero", "checkpoint"), Bad(FILE, "checkpoint")]}),
    "checkpoint.arrays_digest": (checkpoint.arrays_digest, lambda t: {"arrays": {"a": np.zeros(2)}},
                                 {"arrays": [None, "arrays", {"a": "x"}, {3: np.zeros(2)}],
                                  "meta": [{"x": NAN}, {"x": object()}]}),
    "checkpoint.check_arrays": (checkpoint.check_arrays,
                                lambda t: {"path": "p", "what": "w", "arrays": {"a": np.zeros(2)},
                                           "expected": {"a": ((2,), np.float64)}},
                                {"arrays": [Bad({}, "missing"), Bad({"a": np.zeros(3)}, "a is"),
                                            Bad({"a": np.zeros(2, np.float32)}, "a is float32"),
                                            Bad({"a": np.zeros(2), "b": np.zeros(1)}, "unexpected")]}),
    "corpus.load_corpus": (corpus.load_corpus, lambda t: {"source": _file(t)},
                           {"source": ["", None, 3, [], ["", "x"], UNDER_FILE, "/dev/zero", "/dev/null",
                                       "/no/such/file"],
                            "max_chars": NEG_OPT_POS_INT, "val_fraction": [0, 1, NAN, -0.1, "0.1", None],
                            "suffixes": ["txt", [], [".txt", 3]], "encoding": ["bogus", 3, None],
                            "max_file_bytes": NEG_POS_INT + [Bad(3, "at most 3 bytes")]}),
    "corpus.Corpus": (corpus.Corpus, lambda t: {"name": "c", "train_docs": ["a"], "val_docs": ["b"]},
                      {"train_docs": ["one string", [3], None], "val_docs": ["one string", [None]]}),
    "tokenizer.build_tokenizer": (tokenizer.build_tokenizer,
                                  lambda t: {"corpora": _corpus(), "vocab_size": 260, "cache_dir": t / "cache"},
                                  {"corpora": [None, [], "code", [3]], "vocab_size": NEG_POS_INT + [256, 100],
                                   "min_frequency": NEG_POS_INT, "cache_dir": ["", UNDER_FILE, 3]}),
    "tokenizer.BPETokenizer": (tokenizer.BPETokenizer, lambda t: {"hf_tokenizer": _tok(t)._tok},
                               {"hf_tokenizer": [None, "json", 3]}),
    "tokenizer.training_pieces": (lambda doc: list(tokenizer.training_pieces(doc)), lambda t: {"doc": "x"},
                                  {"doc": [None, 3, b"bytes"]}),
    "tokenizer.cache_key": (tokenizer.cache_key, lambda t: {"corpora": [_corpus()], "vocab_size": 260,
                                                             "min_frequency": 2},
                            {"corpora": [None, "code", [3]], "vocab_size": NEG_POS_INT, "min_frequency": NEG_POS_INT}),
    "tokenizer.save_hf_tokenizer": (tokenizer.save_hf_tokenizer,
                                    lambda t: {"tokenizer": _tok(t), "out_dir": t / "hf", "model_max_length": 16},
                                    {"tokenizer": [None, "json"], "out_dir": ["", UNDER_FILE, 3],
                                     "model_max_length": NEG_POS_INT}),
    "batches.TokenStream": (batches.TokenStream, lambda t: {"ids": np.arange(5), "vocab_size": 10},
                            {"ids": [np.zeros(3), np.zeros((2, 2), int), "ids", None, np.array([-1, 2])],
                             "vocab_size": [Bad(3, "ids"), 0, -1, "10", 2.5]}),
    "batches.random_windows": (batches.random_windows,
                               lambda t: {"ids": np.arange(50), "batch_size": 2, "block_size": 4,
                                          "rng": np.random.default_rng(0)},
                               {"ids": [Bad(np.arange(3), "len"), "x", None], "batch_size": NEG_POS_INT,
                                "block_size": NEG_POS_INT + [Bad(100, "len")], "rng": [0, None, "rng"]}),
    "batches.validation_batches": (batches.validation_batches,
                                   lambda t: {"ids": np.arange(50), "batch_size": 2, "block_size": 4},
                                   {"batch_size": NEG_POS_INT + [Bad(100, "len")], "block_size": NEG_POS_INT,
                                    "n_batches": NEG_OPT_POS_INT + [99]}),
    "batches.disjoint_windows": (batches.disjoint_windows, lambda t: {"ids": np.arange(50), "block_size": 4},
                                 {"ids": [Bad(np.arange(3), "len"), None], "block_size": NEG_POS_INT + [Bad(100, "len")]}),
    "batches.windows_at": (batches.windows_at, lambda t: {"ids": np.arange(50), "starts": [0, 5], "block_size": 4},
                           {"starts": [[-1], [46], "0", [0.5], None], "block_size": NEG_POS_INT + [Bad(60, "starts")],
                            "ids": [None, "x", np.zeros((5, 5), int)]}),
    "batches.as_stream": (batches.as_stream, lambda t: {"ids": np.arange(5)}, {"ids": [np.zeros(3), "ids", None]}),
    "batches.corpus_streams": (batches.corpus_streams, lambda t: {"corpus": _corpus(), "tokenizer": _tok(t)},
                               {"corpus": [None, "c"], "tokenizer": [None, "tok"]}),
    "train.TrainConfig": (train.TrainConfig, lambda t: {},
                          {"steps": NEG_POS_INT, "lr": NEG_POS_REAL, "optimizer": ["adam", "", None],
                           "weight_decay": [-0.1, NAN, INF, "0", None], "schedule": ["linear", None],
                           "warmup": NEG_NONNEG_INT, "gamma": [0, -0.5, 1.5, NAN, INF, "0.5"],
                           "step_every": NEG_POS_INT, "grad_clip": [0, -1.0, NAN, INF, "1"],
                           "accumulation": NEG_POS_INT, "eval_every": NEG_POS_INT,
                           "checkpoint_every": ["3", 2.5, True, -1, NAN], "seed": NEG_NONNEG_INT}),
    "train.train": (train.train,
                    lambda t: {"model": _model(), "method": ms.methods.FullFineTune(), "task": _task(),
                               "cfg": train.TrainConfig(steps=2), "workdir": t / "run", "progress": False},
                    {"model": [None, "model"], "method": [None, "full"], "task": [None, "task"],
                     "cfg": [None, {"steps": 2}], "workdir": ["", UNDER_FILE, 3], "resume": [Bad(3, "resume")],
                     "progress": ["loud", 3], "provenance": ["p", {"x": NAN}], "record": ["r", {"x": INF}]}),
    "train.evaluate": (train.evaluate, lambda t: {"model": _model(), "batches": _task().val_target},
                       {"model": [None], "batches": [None, Bad([(np.zeros((2, 8), int), np.full((2, 8), 99))], "targets"),
                                                     Bad([(np.zeros((2, 8)), np.zeros((2, 8), int))], "idx")]}),
    "train.Task": (lambda **k: train.Task(**k).digest(), lambda t: {"train_ids": np.arange(50), "val_target": []},
                   {"train_ids": [None, "ids"], "val_target": [None, "v"], "batch_size": NEG_POS_INT,
                    "block_size": NEG_POS_INT}),
    "train.weight_sparsity": (train.weight_sparsity, lambda t: {"model": _model()}, {"model": [None, "m"]}),
    "train.merged_state_dict": (train.merged_state_dict, lambda t: {"model": _model()}, {"model": [None, "m"]}),
    "train.save_model": (train.save_model, lambda t: {"folder": t / "m", "model": _model(), "manifest": {}},
                         {"folder": ["", UNDER_FILE, "/proc"], "model": [None], "manifest": [{"x": NAN}, "m"]}),
    "train.check_run_dir": (train.check_run_dir, lambda t: {"workdir": t / "run"},
                            {"workdir": ["", None, FILE, "x" * 300], "resume": ["yes", 1], "overwrite": [None, 1]}),
    "train.earlier_run": (train.earlier_run, lambda t: {"workdir": t / "run"}, {"workdir": ["", None, 3]}),
    "train.run_identity": (train.run_identity, lambda t: {"fingerprint": {"a": 1}},
                           {"fingerprint": [Bad({"x": NAN}, "meta"), Bad({"x": object()}, "meta")]}),
    "checkpoint.checkpoint_meta": (checkpoint.checkpoint_meta,
                                   lambda t: {"path": _saved(t, checkpoint.save_checkpoint, "c", {}, {"step": 1})},
                                   {"path": [Bad(v, "checkpoint") for v in ("", None, FILE, UNDER_FILE, "/dev/zero")]}),
    "compare.compare_files": (cmp.compare_files, lambda t: {"seeds": 2}, {"seeds": NEG_POS_INT}),
    "fileio.atomic_write_bytes": (fileio.atomic_write_bytes, lambda t: {"path": t / "b", "data": b"x"},
                                  {"path": ["", UNDER_FILE, None], "data": [None, 3.5, "text"]}),
    "fileio.atomic_write_text": (fileio.atomic_write_text, lambda t: {"path": t / "t", "text": "x"},
                                 {"path": [UNDER_FILE], "text": ["\ud800", None], "encoding": ["bogus"]}),
    "fileio.atomic_write_json": (fileio.atomic_write_json, lambda t: {"path": t / "j", "obj": {}},
                                 {"path": [UNDER_FILE], "obj": [{"x": NAN}, {"x": INF}, {"x": object()}, {1j: 2}]}),
    "fileio.atomic_write_checked": (fileio.atomic_write_checked, lambda t: {"path": t / "c", "text": "x", "key": "k"},
                                    {"path": [UNDER_FILE], "text": [None, 3, "\ud800"], "key": [None, 3]}),
    "fileio.read_checked": (fileio.read_checked,
                            lambda t: {"path": _saved(t, fileio.atomic_write_checked, "c", "x", "k"), "key": "k"},
                            {"path": ["", UNDER_FILE, FILE, "/dev/null"], "key": [3, Bad("other", "path")]}),
    "fileio.append_line": (fileio.append_line, lambda t: {"path": t / "log", "line": "x"},
                           {"path": ["", UNDER_FILE, "/dev/null", "/tmp", "x" * 300], "line": [None, 3]}),
    "fileio.check_output_file": (fileio.check_output_file, lambda t: {"path": t / "out"},
                                 {"path": ["", None, "/tmp", "/dev/null", "x" * 300, "/" + "d/" * 2100]}),
    "fileio.replaced_folder": (lambda **k: fileio.replaced_folder(**k).__enter__(),
                               lambda t: {"path": t / "out", "marker": "m.json"},
                               {"path": ["", UNDER_FILE, FILE, "/proc"], "marker": [None, 3, "", "a/b"]}),
    "fileio.owned_folder": (fileio.owned_folder, lambda t: {"path": t / "new", "marker": "m.json"},
                            {"path": ["", None, FILE, "/proc"], "marker": [None, 3]}),
    "fileio.read_json": (fileio.read_json, lambda t: {"path": _saved(t, fileio.atomic_write_json, "j", {})},
                         {"path": ["", UNDER_FILE, FILE, None]}),
    "fileio.ensure_writable_dir": (fileio.ensure_writable_dir, lambda t: {"path": t / "d"},
                                   {"path": ["", None, 3, UNDER_FILE, FILE]}),
    "fileio.check_name": (fileio.check_name, lambda t: {"arg": "label", "name": "ok"},
                          {"name": [Bad(v, "label") for v in ("", "..", "../x", "/abs", "a/b", None, 3, "x" * 101,
                                                             ".h", "a\x00")]}),
    "fileio.read_regular_file": (fileio.read_regular_file, lambda t: {"path": _file(t)},
                                 {"path": ["", "/dev/zero", "/dev/null", UNDER_FILE, "/no/such", None],
                                  "max_bytes": [Bad(1, "at most 1 bytes"), 0, -1, "9", NAN]}),
    "fileio.remove_stale_temps": (fileio.remove_stale_temps, lambda t: {"folder": t},
                                  {"folder": [FILE, None, ""]}),
    "fileio.RunLock": (lambda **k: fileio.RunLock(**k).__enter__().__exit__(None, None, None),
                       lambda t: {"folder": t / "l"},
                       {"folder": ["", UNDER_FILE, 3]}),
    "fileio.as_path": (fileio.as_path, lambda t: {"arg": "path", "path": "p"},
                       {"path": [Bad(v, "path") for v in ("", None, 3, "a\x00b", b"bytes")]}),
    "fileio.encoded": (fileio.encoded, lambda t: {"arg": "text", "text": "x"},
                       {"text": [None, 3, b"x", "\ud800"], "encoding": ["bogus", Bad(3, "encoding|text")]}),
    "fileio.sha256_hex": (fileio.sha256_hex, lambda t: {"data": b"x"}, {"data": ["text", None, 3]}),
    "fileio.text_codec": (fileio.text_codec, lambda t: {"arg": "--encoding", "name": "utf-8"},
                          {"name": [Bad(v, "--encoding") for v in ("bogus", "zlib", "base64", "hex", "rot13", "",
                                                                  None, 3, b"utf-8")]}),
    "experiment.get_preset": (ex.get_preset, lambda t: {"name": "tiny"},
                              {"name": [Bad(v, "preset") for v in ("huge", "", None, 3, "../tiny")],
                               "steps": NEG_OPT_POS_INT}),
    "compare.check_only": (cmp.check_only, lambda t: {"preset": TINY, "only": ["full"]},
                              {"only": ["full", [], ["bogus"], [""], ["lora-r99"], 3]}),
    "experiment.run_dir": (ex.run_dir, lambda t: {"workdir": t, "preset": TINY, "data": _FakeData(), "label": "x"},
                           {"label": ["", "..", "../x", "/abs", "a/b", None, 3], "seed": NEG_NONNEG_INT}),
    "compare.build_method": (cmp.build_method, lambda t: {"name": "lora", "options": {}, "preset": TINY},
                                {"name": [Bad(n, "method") for n in ("nope", "", None, 3)],
                                 "options": [Bad({"r": "4"}, "r"), Bad({"r": 4.5}, "r"), Bad({"r": NAN}, "r"),
                                             Bad({"bogus": 1}, "bogus"), Bad({"r": 0}, "r"),
                                             Bad({"alpha": INF}, "alpha"), Bad({"targets": "attn.c_attn"}, "targets")]}),
    "experiment.finetune_config": (ex.finetune_config, lambda t: {"preset": TINY, "method": ms.methods.FullFineTune()},
                                   {"seed": NEG_NONNEG_INT, "lr": [0, -1.0, NAN, INF, "1e-3"],
                                    "checkpoint_every": [-1, 2.5, "3"]}),
    "experiment.apply_train_overrides": (ex.apply_train_overrides,
                                         lambda t: {"cfg": train.TrainConfig(steps=5), "task": None, "overrides": {}},
                                         {"overrides": [Bad(None, "train_overrides"),
                                                        Bad([("accumulation", 2)], "train_overrides"),
                                                        Bad({"micro_batches": 4}, "train_overrides"),
                                                        Bad({"accumulation": 0}, "accumulation"),
                                                        Bad({"grad_clip": -1.0}, "grad_clip"),
                                                        Bad({"batch_size": 0}, "batch_size"),
                                                        Bad({"batch_size": 2.5}, "batch_size")]}),
    "compare.assign_jobs": (cmp.assign_jobs, lambda t: {"costs": [1.0, None, 2.5], "n": 2},
                               {"costs": [None, 3, [-1.0], [NAN], ["x"], [math.inf]], "n": NEG_POS_INT}),
    "compare.mean_sd": (cmp.mean_sd, lambda t: {"values": [1.0]}, {"values": [[], None, ["x"], [NAN]]}),
    "compare.lr_grid": (cmp.lr_grid, lambda t: {"preset": TINY, "grid": {"full": [1e-3], "peft": [1e-2]}},
                        {"grid": [{}, {"full": [1e-3]}, {"full": [], "peft": [1e-2]}, {"full": [0.0], "peft": [1e-2]},
                                  {"full": [NAN], "peft": [1e-2]}, {"full": "1e-3", "peft": [1e-2]}, [1e-3]]}),
    "claims.verdict": (claims.verdict, lambda t: {"kind": "better", "measured": {"low": -1.0, "high": -0.5}},
                       {"kind": ["worse", None, 3]}),
    "experiment.build_data": (ex.build_data, lambda t: {"preset": MICRO, "workdir": t / "w"},
                              {"workdir": ["", UNDER_FILE, 3], "data": [Bad(v, "source") for v in
                                                                      ("", "/dev/zero", UNDER_FILE, [""])] + [3, []],
                               "encoding": ["bogus", 3]}),
    "experiment.init_model": (ex.init_model,
                              lambda t: {"folder": interop.save_hf_gpt2(_model300().state_dict(), _model300().config,
                                                                        t / "hf"),
                                         "workdir": t / "w", "data": ex.build_data(MICRO, t / "w"), "backend": "numpy"},
                              {"folder": [Bad(v, "folder|path") for v in ("", None, "/no/such", FILE, UNDER_FILE)]}),
    "experiment.init_key": (ex.init_key, lambda t: {"folder": interop.save_hf_gpt2(SD(), _model().config, t / "hf")},
                            {"folder": [Bad(v, "init|path|folder") for v in ("", None, "/no/such", FILE)]}),
    "experiment.data_name": (ex.data_name, lambda t: {"paths": ["a"]}, {"paths": [[], None, 3, [""]]}),
    "methods.make_method": (ms.methods.make_method, lambda t: {"name": "lora"},
                            {"name": [Bad(n, "method") for n in ("nope", "", None, 3)]}),
    "importance.row_magnitude": (ms.importance.row_magnitude, lambda t: {"W": np.ones((3, 2))},
                                 {"W": [None, [[1.0]], np.ones(3), np.array([[1.0, NAN]]), np.array([[INF, 1.0]]),
                                        np.ones((2, 2), int), np.full((2, 3), 1e200)],  # IM09: scores of inf
                                  "p": [0, 3, 1.5, True, NAN]}),
    "importance.row_taylor": (ms.importance.row_taylor, lambda t: {"W": np.ones((3, 2)), "G": np.ones((3, 2))},
                              {"W": [np.array([[NAN, 1], [1, 1], [1, 1]])],
                               "G": [np.ones((2, 2)), None, np.full((3, 2), INF)], "multivariable": ["yes", None, 1]}),
    "importance.top_rows": (ms.importance.top_rows, lambda t: {"scores": np.array([1.0, 2.0]), "r": 1},
                            {"scores": [np.array([NAN, 1.0]), np.array([INF, 1.0]), np.array([-INF, 1.0]), None,
                                        np.ones((2, 2))], "r": NEG_POS_INT + [3]}),
    "importance.quantile_mean": (ms.importance.quantile_mean, lambda t: {"S": np.ones((3, 2))},
                                 {"S": [np.ones(3), np.full((3, 2), NAN), np.array([[INF, 1.0]]), None],
                                  "n_quantiles": NEG_POS_INT + [1]}),
    "knapsack.solve": (ms.knapsack.solve,
                       lambda t: {"values": np.array([1.0, 2.0]), "weights": np.array([1, 2]), "capacity": 2},
                       {"values": [np.array([NAN, 1.0]), np.array([INF, 1.0]), np.array([1.0]), None],
                        "weights": [np.array([-1, 2]), np.array([1.5, 2.0])],
                        "capacity": [-1, 1.5, NAN, "2", None]}),
    "knapsack.pareto_front": (ms.knapsack.pareto_front,
                              lambda t: {"values": np.array([1.0, 2.0]), "weights": np.array([1, 2])},
                              {"values": [np.array([NAN, 1.0]), np.array([-INF, 1.0]), None],
                               "weights": [np.array([-1, 2]), np.array([1])]}),
    "gmt.gradient_mask": (ms.gmt.gradient_mask, lambda t: {"grad": np.ones((3, 3)), "drop_ratio": 0.5},
                          {"grad": [None, np.full((3, 3), NAN), [[1.0]]], "drop_ratio": [-0.1, 1.0, NAN, INF, "0.5", None]}),
    "loradrop.select_layers": (ms.loradrop.select_layers,
                               lambda t: {"importance": np.array([0.5, 0.5]), "threshold": 0.7},
                               {"importance": [np.array([NAN, 1.0]), np.array([-0.5, 1.5]), np.array([INF, 0.0]),
                                               None, np.array([])],
                                "threshold": [0, -0.1, 1.5, NAN, INF, "0.5", None]}),
}
# the lower-level public functions of the adversarial review of 2026-12-07 (its ids in comments): the
# checks the pipeline's functions have
G3 = {"a": np.array([3.0, 4.0])}
API.update({
    "optim.AdamW": (optim.AdamW, lambda t: {},  # O02 eps=0: a zero gradient gave NaN parameters; O03, O19
                    {"lr": NEG_POS_REAL, "eps": [0.0, -1e-8, NAN, INF, "1e-8"], "weight_decay": [-1.0, NAN, INF],
                     "betas": [(0.9,), 0.9, (0.9, 1.0), (NAN, 0.9)]}),
    "optim.SGD": (optim.SGD, lambda t: {"lr": 0.1},  # O18
                  {"lr": NEG_POS_REAL, "momentum": [1.0, -0.1, NAN], "weight_decay": [-1.0, NAN, INF]}),
    "optim.Optimizer.step": (lambda **k: optim.AdamW().step(**k),  # O04 O05 O07 O08 O09
                             lambda t: {"params": {"a": np.ones(3)}, "grads": {"a": np.ones(3)}},
                             {"grads": [Bad({"b": np.ones(3)}, "grads"), Bad({"a": np.ones(4)}, "grads"),
                                        Bad({"a": np.array([NAN, 1.0, 1.0])}, "grads"), Bad({"a": np.ones(3, int)}, "grads"),
                                        None],
                              "params": [Bad({"a": np.ones(3, int)}, "params"), None],
                              "masks": [Bad({"a": np.ones(3)}, "masks"), Bad({"b": np.ones(3, bool)}, "masks")],
                              "lr": [-1.0, 0, NAN, INF, "1"], "check_finite": [None, "yes"]}),
    "optim.clip_grad_norm": (optim.clip_grad_norm, lambda t: {"grads": dict(G3), "max_norm": 1.0},  # O11: -1 flipped
                             {"max_norm": [-1.0, 0.0, NAN, INF, "1"], "grads": [None, [3.0]]}),  # signs; O11c
    "optim.lr_at": (optim.lr_at, lambda t: {"step": 0, "base_lr": 1e-3},  # O13
                    {"step": [-1, 1.5, None], "base_lr": [0, -1.0, NAN]}),
    "nn.embedding_forward": (ms.nn.embedding_forward,  # N11, N12: -1 read the last row
                             lambda t: {"idx": np.array([[0, 1]]), "wte": np.ones((5, 3)), "wpe": np.ones((4, 3))},
                             {"idx": [np.array([[-1]]), np.array([[9]]), np.array([[0.5]]), np.zeros(2, int),
                                      np.zeros((1, 5), int)], "wte": [Bad(np.ones(5), "wte")]}),
    "nn.cross_entropy_forward": (ms.nn.cross_entropy_forward,  # N08, N09: -3 read as class 2
                                 lambda t: {"logits": np.zeros((1, 2, 5)), "targets": np.array([[0, 1]])},
                                 {"targets": [np.array([[-3, 1]]), np.array([[7, 1]]), np.array([[0]]),
                                              np.array([[0.0, 1.0]])], "logits": [np.zeros((1, 2, 5), int), None]}),
    "nn.linear_forward": (ms.nn.linear_forward, lambda t: {"x": np.ones((2, 3)), "weight": np.ones((5, 3))},  # N01
                          {"x": [Bad(np.ones((2, 3, 4)), "x")], "weight": [Bad(np.ones(3), "weight")],
                           "bias": [Bad(np.ones(4), "bias")]}),
    "nn.layernorm_forward": (ms.nn.layernorm_forward,  # N05
                             lambda t: {"x": np.ones((2, 4)), "weight": np.ones(4), "bias": np.zeros(4)},
                             {"weight": [Bad(np.ones(3), "weight")], "bias": [Bad(np.zeros(5), "bias")]}),
    "nn.attention_forward": (ms.nn.attention_forward, lambda t: {"qkv": np.ones((1, 3, 12)), "n_head": 2},  # N06, N07
                             {"n_head": [5, 0, -1, 1.5, True, None]}),
    "importance.row_obd": (ms.importance.row_obd, lambda t: {"W": np.ones((4, 3)), "F": np.ones((4, 3))},  # IM01
                           {"F": [-np.ones((4, 3))], "W": [Bad(np.full((4, 3), 1e200), "W")]}),
    "importance.row_wanda": (ms.importance.row_wanda, lambda t: {"W": np.ones((2, 3)), "act_norm": np.ones(3)},  # IM04
                             {"act_norm": [np.array([-5.0, 1.0, 1.0])]}),
    "mgpp.annealed_lambda": (ms.mgpp.annealed_lambda,  # M07 NaN lam, M09 a string step
                             lambda t: {"step": 5, "lam": 0.5, "lam_final": 0.1, "t_start": 0, "t_end": 10},
                             {"step": ["x", -1, None], "lam": [NAN, 0, 1.5], "lam_final": [NAN, -1.0],
                              "t_start": [-1, 1.5], "t_end": [None]}),
    "loradrop.keep_and_share": (ms.loradrop.keep_and_share,  # LD05, LD06
                                lambda t: {"layers": ["h.0.attn.c_attn", "h.1.attn.c_attn"],
                                           "scores": {"h.0.attn.c_attn": 1.0, "h.1.attn.c_attn": 2.0}, "threshold": 0.9},
                                {"scores": [np.array([1.0, 2.0]), {"h.0.attn.c_attn": 1.0}],
                                 "threshold": [NAN, 0, 1.5], "layers": [None, "h.0.attn.c_attn"]}),
    "select.smallest_k_keep_mask": (select_module.smallest_k_keep_mask, lambda t: {"x": np.arange(4.0), "k": 1},
                                    {"k": [-1, 10, 1.5, True]}),  # SE01 (-1 gave a mask), SE02, SE03
    "select.decimal_fraction": (select_module.decimal_fraction, lambda t: {"value": 0.5},
                                {"value": [NAN, INF, "0.5", None]}),  # SE05
    "select.zero_where_dropped": (select_module.zero_where_dropped, lambda t: {"g": np.ones(3), "keep": np.ones(3, bool)},
                                  {"keep": [np.ones(4, bool), np.array([1, 0, 2])]}),  # SE06, SE07
    "adapters.LoRA": (ms.adapters.LoRA, lambda t: {"model": _model(), "layer": "h.0.attn.c_attn", "r": 2},
                      {"layer": ["h.9.attn.c_attn", None, "wte"], "alpha": [NAN, 0, INF]}),  # AD02, AD03
    "methods.LoRAMethod.prepare": (lambda **k: ms.methods.LoRAMethod(r=2, alpha=4).prepare(k["model"], None, 0),
                                   lambda t: {"model": _model()},
                                   {"model": [Bad(_lora_model(), "model")]}),  # AD06: prepared twice
    "memory.memory_report": (ms.memory.memory_report, lambda t: {"model": _model()}, {"model": [None, "m"]}),  # AD20
    "testing.assert_close": (mtesting.assert_close,  # T13, T14 (a complex actual passed), T16
                             lambda t: {"actual": np.ones(2), "expected": np.ones(2), "rtol": 0.0, "atol": 0.0},
                             {"actual": [["a", "b"], np.array([1 + 1j, 1.0]), None], "expected": [{"x": 1}],
                              "rtol": ["1e-3", None, True], "atol": ["0", None]}),
    "testing.read_manifest": (mtesting.read_manifest, lambda t: {"directory": REPO / "tests" / "data" / "vectors"},
                              {"directory": [Bad(None, "directory"), Bad(3, "directory"), Bad("", "directory")]}),  # T15
})


# public names of the walked modules that take no input to check, with the reason
NO_INPUT = {
    "fileio.default_cache_dir": "takes no argument (reads the environment)",
    "fileio.bad_path": "builds an error; it is what the other rows raise",
}


def _api_names():
    """Every public function or class of the pipeline's modules (defined there, no leading "_"), the
    experiment functions a user calls, and DESIGN.md's public API (model, interop, primitives)."""
    names = set()
    for mod in (config, interop, checkpoint, corpus, tokenizer, batches, train, fileio):
        short = mod.__name__.split(".")[-1]
        for name, obj in vars(mod).items():
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) \
                    and obj.__module__ == mod.__name__:
                names.add(f"{short}.{name}")
    internal = ("pretrained", "finetune", "compare", "pretrain_key", "pretrained_file", "pretrain_config",
                "experiment_name", "experiment_dir", "provenance", "summarize", "first_base", "ms_per_step", "make_task",
                "unigram_entropy", "method_lr", "spruft_label", "compare_runs", "is_lead", "corpus_sizes", "compare_dir",
                "family", "choose_lr", "pruned_masks", "claims_for", "evaluate_claims", "format_claims", "paired",
                "peak_bytes", "prior_reach")  # called by the pipeline with its own, already checked objects
    for mod in (experiment, cmp, claims):
        for name, obj in vars(mod).items():
            if inspect.isfunction(obj) and obj.__module__ == mod.__name__ and not name.startswith("_") \
                    and name not in internal:
                names.add(f"{mod.__name__.split('.')[-1]}.{name}")
    names |= {"model.GPT", "model.GPT.from_state_dict", "methods.make_method", "importance.row_magnitude",
              "importance.row_taylor", "importance.quantile_mean", "importance.top_rows", "knapsack.solve", "knapsack.pareto_front",
              "gmt.gradient_mask", "loradrop.select_layers"}
    return names


@pytest.mark.parametrize("name", sorted(API))
def test_api_good_calls_succeed(name, tmp_path):
    """The rows' good arguments work, so each bad value is the only thing wrong in its call."""
    function, good, _ = API[name]
    function(**good(tmp_path))


def test_every_public_api_function_has_bad_values():
    missing = sorted(_api_names() - set(API) - set(NO_INPUT))
    assert not missing, f"public API functions without bad-value rows in tests/test_bad_inputs.py: {missing}"


def api_cases():
    for name, (_, _, table) in API.items():
        for arg, values in table.items():
            for i in range(len(values)):
                yield pytest.param(name, arg, i, id=f"{name} {arg}[{i}]")


@pytest.mark.parametrize("name,arg,index", list(api_cases()))
def test_api_bad_value_is_a_clear_error_naming_the_argument(name, arg, index, tmp_path):
    function, good, table = API[name]
    bad = table[arg][index]
    value, named = (bad.value, bad.named) if isinstance(bad, Bad) else (bad, re.escape(arg))
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"\x00\x01 not json")
    value = {FILE: a_file, UNDER_FILE: a_file / "sub"}.get(value, value) if isinstance(value, str) else value
    CASES["api"] += 1
    with pytest.raises(MinisftError) as info:
        function(**{**good(tmp_path), arg: value})
    message = str(info.value)
    assert isinstance(info.value, (ValueError, TypeError))
    assert re.search(named, message), f"the error does not name {named!r}: {message}"
    assert "expected" in message, message


# --------------------------------------------------------------------------------------------
# kills and concurrent runs
# --------------------------------------------------------------------------------------------
def _child(script, *args):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


KILL_IN_WRITE = """
    import os, sys, time
    from minisft.core import fileio
    real = fileio.os.fsync
    def hang(fd):
        print("inside the write", flush=True)
        time.sleep(120)
    fileio.os.fsync = hang
    fileio.atomic_write_json(sys.argv[1], {"version": 2, "pad": "x" * 100000})
"""


def test_sigkill_inside_an_atomic_write_keeps_the_old_file_and_the_next_run_cleans_up(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    target = run_dir / "result.json"
    fileio.atomic_write_json(target, {"version": 1})
    child = _child(KILL_IN_WRITE, target)
    assert child.stdout.readline().strip() == "inside the write"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert fileio.read_json(target) == {"version": 1}
    (tmp,) = [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert str(child.pid) in tmp.name
    with pytest.raises(MinisftError, match="--overwrite"):  # result.json: an earlier run, refused, temporaries cleaned
        train.train(_model(), ms.methods.FullFineTune(), _task(), train.TrainConfig(steps=1), workdir=run_dir,
                    progress=False)
    assert not tmp.exists() and not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


KILL_IN_CHECKPOINT = """
    import os, signal, sys
    import numpy as np
    from minisft import fileio
    sys.path.insert(0, sys.argv[2])
    from tests.test_bad_inputs import _model, _task
    from minisft import train, methods
    calls = [0]
    real = fileio.os.replace
    def replace(src, dst):
        if str(dst).endswith("checkpoint.safetensors"):
            calls[0] += 1
            if calls[0] == 3:  # the third checkpoint (step 6): its bytes are in the temporary file
                os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
    fileio.os.replace = replace
    train.train(_model(), methods.LoRAMethod(r=2, alpha=4), _task(), train.TrainConfig(steps=9, lr=1e-2, checkpoint_every=2),
                workdir=sys.argv[1], progress=False)
"""


def test_a_training_process_killed_inside_a_checkpoint_write_resumes_bit_for_bit(tmp_path):
    """SIGKILL while the checkpoint of step 6 is being written: the checkpoint of step 4 is intact,
    its temporary file is cleaned by the resumed run, and the resumed run equals an uninterrupted one."""
    from minisft.methods import LoRAMethod

    cfg = train.TrainConfig(steps=9, lr=1e-2, checkpoint_every=2)
    full_model = _model()
    full = train.train(full_model, LoRAMethod(r=2, alpha=4), _task(), cfg, progress=False)
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_IN_CHECKPOINT), str(tmp_path), str(REPO)],
                           env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert child.returncode == -signal.SIGKILL
    assert checkpoint.load_checkpoint(tmp_path / "checkpoint.safetensors")[1]["step"] == 4
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    model = _model()
    resumed = train.train(model, LoRAMethod(r=2, alpha=4), _task(), cfg, workdir=tmp_path, resume=True, progress=False)
    assert [h["loss"] for h in resumed["history"]["train"]] == [h["loss"] for h in full["history"]["train"]]
    for k, v in full_model.trainable_params().items():
        assert np.array_equal(v, model.trainable_params()[k]), k
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


HOLD_LOCK = """
    import sys, time
    from minisft.core.fileio import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
"""


def test_a_second_run_on_a_directory_in_use_is_a_clear_error_and_a_dead_holder_frees_it(tmp_path, capsys,
                                                                                           monkeypatch):
    """Another process holds the run directory: train() refuses naming its pid; the CLI's compare on
    an experiment directory in use refuses with one line; once the holder is killed, both proceed."""
    run_dir = tmp_path / "run"
    holder = _child(HOLD_LOCK, run_dir)
    assert holder.stdout.readline().strip() == "locked"
    try:
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            train.train(_model(), ms.methods.FullFineTune(), _task(), train.TrainConfig(steps=1), workdir=run_dir,
                        progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    train.train(_model(), ms.methods.FullFineTune(), _task(), train.TrainConfig(steps=1), workdir=run_dir,
                progress=False)
    monkeypatch.setitem(ex.PRESETS, "micro", MICRO)
    work = tmp_path / "w"
    holder = _child(HOLD_LOCK, work / "runs" / "micro-prose")
    assert holder.stdout.readline().strip() == "locked"
    monkeypatch.setattr(ex, "pretrained", lambda *a, **k: pytest.fail("pretrained a locked experiment"))
    try:
        rc, err = run_cli(["compare", "--preset", "micro", "--backend", "numpy", "--workdir", str(work), "--quiet"],
                          capsys)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    CASES["cli"] += 1
    assert rc == 2 and f"in use by another minisft process (pid {holder.pid})" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------
# the review's cases fixed by a value or a bound, not an error
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scores,expected", [([1e308] * 3, [1 / 3] * 3), ([1e308, 1e308, 0.0], [0.5, 0.5, 0.0]),
                                             ([1.0, 3.0], [0.25, 0.75])])
def test_normalized_importance_of_huge_finite_scores_is_their_share(scores, expected):
    """LD01: scores whose sum overflows were normalised to zeros; their shares (exact rationals,
    fractions.Fraction) to the last bit."""
    from fractions import Fraction

    got = ms.loradrop.normalize_importance(np.array(scores))
    exact = [Fraction(v) / sum(map(Fraction, scores)) for v in scores]
    assert all(abs(Fraction(float(g)) - e) <= Fraction(1, 2**53) for g, e in zip(got, exact)), got
    assert np.allclose(got, expected, rtol=0, atol=2**-53)


def test_knapsack_searches_and_fronts_are_bounded_by_clear_errors(monkeypatch):
    """KN02 (a subset-sum instance: branch-and-bound ran for minutes) and KN03 (2^n front points: a
    MemoryError): each stops at its bound with an error naming the instance, here with the bounds
    lowered so the test takes milliseconds; ordinary instances stay exact (tests/test_knapsack.py)."""
    monkeypatch.setattr(ms.knapsack, "MAX_NODES", 1_000)
    monkeypatch.setattr(ms.knapsack, "MAX_FRONT", 1_024)
    w = np.random.default_rng(1).integers(10**9, 2 * 10**9, 16)  # the review's instance had 45 items
    with pytest.raises(MinisftError, match="values=.*16 items.*MAX_NODES = 1,000"):
        ms.knapsack.solve(w.astype(float), w, int(w.sum() // 2))
    with pytest.raises(MinisftError, match="values=.*12 items.*MAX_FRONT = 1,024"):
        ms.knapsack.pareto_front(2.0 ** np.arange(12), 2 ** np.arange(12))
    assert len(ms.knapsack.pareto_front(2.0 ** np.arange(10), 2 ** np.arange(10))) == 1_024  # at the bound


def test_ranks_of_other_settings_are_stopped_before_the_first_collective():
    """MPI10b: ranks started with other methods reached the all-reduce with other sizes (an MPICH
    dump); every rank now compares a digest of its run's fingerprint first (one all-gather) and
    raises naming the rank that differs, before the method prepares anything."""
    from minisft.distributed import Communicator, DistributedError

    class OtherRank(Communicator):  # rank 1 reports another fingerprint
        def _allgather_bytes(self, data):
            return [data, b'"0000"']

    ids = batches.TokenStream((np.arange(800) % 40).astype(np.int32), "s", 40)
    val = batches.validation_batches(ids, 2, 8, 1)
    task = train.Task(ids, val, val, 2, 8, comm=OtherRank(rank=0, world_size=2))
    method = ms.methods.LoRAMethod(r=2, alpha=4)
    method.prepare = lambda *a: pytest.fail("the method prepared before the ranks were compared")
    with pytest.raises(DistributedError, match="the run's settings.*rank 1 differs from rank 0"):
        train.train(_model(), method, task, train.TrainConfig(steps=2), progress=False)


def test_a_file_that_reads_otherwise_as_utf8_gets_a_note(tmp_path, capsys):
    """D009: an ASCII file decoded as UTF-16 (CJK ideographs) gets a note; a Latin-1 file with
    accents (not UTF-8) and a UTF-16 file (NUL bytes) do not."""
    cases = {"ascii.txt": (b"The quick brown fox jumps over the lazy dog.\n" * 200, "utf-16", True),
             "latin.txt": ("caf\xe9 cr\xe8me \n".encode("latin-1") * 300, "latin-1", False),
             "wide.txt": ("real UTF-16 text\n" * 200).encode("utf-16"), }
    cases["wide.txt"] = (cases["wide.txt"], "utf-16", False)
    for name, (data, encoding, noted) in cases.items():
        (tmp_path / name).write_bytes(data[: len(data) // 2 * 2])
        capsys.readouterr()
        corpus.load_corpus(tmp_path / name, encoding=encoding)
        err = capsys.readouterr().err
        assert ("clean UTF-8 text" in err) == noted, (name, err)


@pytest.mark.parametrize("argv,option", [
    (["--method", "mgpp", "--steps", "1"], "--steps"),  # Q01: total_steps was filled from --steps
    (["--method", "mgpp", "--steps", "10", "--set", "total_steps=1000"], "--set total_steps"),  # Q07
    (["--method", "magprune", "--set", "total_steps=99"], "--set total_steps"),
])
def test_a_schedule_that_does_not_fit_the_run_names_the_option_that_set_it(argv, option, tmp_path, capsys, no_work):
    no_work()
    rc, err = run_cli(["finetune", "--preset", "micro", "--workdir", str(tmp_path / "w"), *argv], capsys)
    assert_clear_error(rc, err, option)
    assert err.strip().splitlines()[-1].startswith(f"minisft: error: {option}:"), err


def test_count_of_cases(request, capsys):
    """docs/reliability.md's "over 1,000 cases": the bad-input cases of the three parametrized tests
    are distinct (no case counted twice) and each is a test item of this session (collected, so it
    runs and must raise its clear error), more than 1,000 together. Prints the numbers."""
    cases = {"cli": list(cli_cases()), "set": list(set_cases()), "api": list(api_cases())}
    tests = {"cli": test_cli_bad_value_is_one_clear_line_before_any_work.__name__,
             "set": test_every_method_option_bad_value_is_refused_by_name.__name__,
             "api": test_api_bad_value_is_a_clear_error_naming_the_argument.__name__}
    for kind, params in cases.items():
        values = [repr(p.values) for p in params]
        assert len(set(values)) == len(values), f"{kind}: {len(values) - len(set(values))} cases listed twice"
    if request.config.getoption("keyword") or any("::" in arg for arg in request.config.args):
        pytest.skip("a selection of tests: the case tests may not all be collected")
    here = request.node.module.__name__
    collected = {kind: sum(1 for item in request.session.items
                           if item.module.__name__ == here and item.originalname == name) for kind, name in tests.items()}
    total = {kind: len(params) for kind, params in cases.items()}
    with capsys.disabled():
        print(f"\nbad-input cases: {total} = {sum(total.values())}")
    assert collected == total, f"collected {collected}, listed {total}"
    assert sum(total.values()) > 1000


def test_from_state_dict_copies_the_callers_arrays():
    """Training the model built from a state dict never writes into the caller's arrays."""
    sd = _model().state_dict()
    kept = {k: v.copy() for k, v in sd.items()}
    model = ms.GPT.from_state_dict(sd, _model().config, backend="numpy", dtype="float64")
    train.train(model, ms.methods.FullFineTune(), _task(), train.TrainConfig(steps=2, lr=1e-1), progress=False)
    assert any(not np.array_equal(model.params[k], kept[k]) for k in kept)
    assert all(np.array_equal(sd[k], kept[k]) for k in kept)


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`minisft methods | head -1`: stdout is a pipe whose reader is gone (made so before the command
    runs, so the failure is certain); no traceback on stderr, not even at interpreter exit."""
    script = ("import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1); from minisft.app.cli import main; "
              "sys.exit(main(['methods']))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    CASES["cli"] += 1
    assert out.returncode == 1 and "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr
