"""The `minisft` command: pretrain, finetune, compare, adapeft-front, methods, vectors, export, bench, launch.

    minisft compare                      # the main job: every method side by side (preset small)
    minisft compare --seeds 3 --markdown # mean ± sd over 3 seeds, as the README's table
    minisft pretrain --preset tiny       # the cached base model
    minisft finetune --method lora --set r=4 --set alpha=8
    minisft methods                      # every method, its options (type, default, meaning), its paper
    minisft export RUN --hf OUT          # a finished run as an HF GPT-2 folder (--peft OUT: a PEFT adapter)
    minisft bench --preset gpt2          # from a source checkout, with the test extra installed
    minisft compare --gpus 4             # the comparison's rows spread over 4 GPUs (same compare.json)
    mpirun -n 4 minisft finetune ...     # data parallel over 4 processes (NumPy: MPI; CuPy: NCCL)
    minisft launch --nproc 4 -- minisft finetune ...   # the same on one host, torchrun-style variables

Every option is checked, with its type, before any data is read or any model trained: the method
object and the training configuration are built first, from typed values. A bad value is one line,
`minisft: error: <option>: <value>: expected ...`, and exit status 2, never a traceback. `--set`
values are parsed by the option's type annotation (int, float including nan/inf, which the method
then refuses where they are invalid, bool, none, comma-separated tuples), never evaluated.

Under a launcher (mpirun / mpiexec / srun, torchrun-style RANK and WORLD_SIZE, `minisft launch`),
pretrain and finetune run data-parallel (minisft.training.train) and compare runs its rows in parallel
(minisft.app.experiment.compare); rank 0 prints and writes, and an error on any rank ends every rank
(minisft.distributed). `compare --gpus N` starts the N ranks itself (`minisft launch`).

`minisft bench` times minisft against PyTorch. The benchmark imports torch, so it lives in the
source checkout (reference_models/bench/step.py) and is not part of the installed package; minisft never
imports it. The command looks for it in the current directory (then on sys.path) and runs
`python -m reference_models.bench.step ARGS --out WORKDIR/bench.json` in a child process; without
torch, or outside a checkout, it prints one line saying what to do.
"""

import argparse
import contextlib
import importlib.machinery
import importlib.util
import math
import os
import re
import stat
import subprocess
import sys
import typing
from pathlib import Path

from ..core.errors import MinisftError
from ..distributed.rank_threads import share_cores

DEFAULT_WORKDIR = "minisft-work"
PRESET_HELP = ("tiny: 2 layers, width 64 (CPU tests, seconds); small: 4 layers, width 128 (the main job, "
               "minutes on a CPU); study: 6 layers, width 384, T 256, learning-rate grids (the study, a GPU); "
               "gpt2: GPT-2 124M shapes (a GPU)")
INT64_MAX = 2**63 - 1


class CliError(MinisftError):
    """A bad command line: `<option>: <value>: expected ...` (printed after "minisft: error: ")."""

    def __init__(self, option, value, expected):
        super().__init__(f"{option}: {value!r}: expected {expected}", option, value, expected)


class UsageError(MinisftError):
    """What argparse itself refuses (an unknown option, a missing value)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors raised (main prints them as one line) instead of exiting."""

    def error(self, message):
        raise UsageError(re.sub(r"^argument ([^:]+): ", r"\1: ", message))


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    pass


# ----------------------------------------------------------------------------------- value types
def _int_in(low, what):
    def parse(text):
        if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
        value = int(text)
        if not low <= value <= INT64_MAX:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
        return value

    parse.__name__ = what
    return parse


positive_int = _int_in(1, "a positive integer")
nonnegative_int = _int_in(0, "a non-negative integer")


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive finite number")
    return value


def choice(*values):
    def parse(text):
        if text not in values:
            raise argparse.ArgumentTypeError(f"{text!r}: expected one of {', '.join(values)}")
        return text

    parse.__name__ = "choice"
    return parse


def path_text(text):
    if text == "":
        raise argparse.ArgumentTypeError("'': expected a path (an empty string is none)")
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a path without NUL characters")
    return text


def name_text(text):
    from ..core.fileio import check_name

    try:
        return check_name("label", text)
    except MinisftError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {e.expected}") from None


def encoding_text(text):
    from ..core.fileio import text_codec

    try:
        return text_codec("--encoding", text)
    except MinisftError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {e.expected}") from None


def grid_entry(text):
    """compare's --lr-grid entry FAMILY=LR,LR,...: (family, rates)."""
    family, sep, rates = text.partition("=")
    if family not in ("full", "peft") or not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected full=LR,... or peft=LR,...")
    values = [positive_float(v) for v in rates.split(",")]
    return family, values


def budget_value(text):
    """adapeft-front's --budget: an integer count or a fraction (AdaPEFT checks the range)."""
    from ..methods.config import from_text

    try:
        return from_text("--budget", text, int | float)
    except MinisftError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {e.expected}") from None


# ---------------------------------------------------------------------------------------- parser
def _common(p, fine_tuning=True):
    from .experiment import PRESETS

    p.add_argument("--preset", default="small", type=choice(*PRESETS), metavar="{" + ",".join(PRESETS) + "}",
                   help=PRESET_HELP)
    p.add_argument("--backend", default="auto", type=choice("numpy", "cupy", "auto"), metavar="{numpy,cupy,auto}",
                   help="auto: CuPy when it sees a GPU, else NumPy")
    p.add_argument("--dtype", default="float32", type=choice("float32", "float64"), metavar="{float32,float64}",
                   help="the model's floating-point type (float64: for exactness checks)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the base model's pretraining and "
                   "of fine-tuning (batches, selection, initialisation)")
    p.add_argument("--workdir", type=path_text, default=DEFAULT_WORKDIR, help="where caches, runs and results go")
    p.add_argument("--data", nargs="+", type=path_text, metavar="PATH",
                   help="your own text files or folders (*.txt, *.md, *.py, *.rst) as the target domain instead of "
                        "the standard library's prose; they also train the tokenizer, so a new base model is "
                        "pretrained (once, then cached); tables name the column after the first path")
    p.add_argument("--encoding", type=encoding_text, default="utf-8",
                   help="the text encoding of --data files (decoded strictly: a byte that is not valid is an error)")
    if fine_tuning:
        p.add_argument("--steps", type=positive_int, help="fine-tuning steps (default: the preset's)")
        p.add_argument("--lr", type=positive_float, help="fine-tuning learning rate (default: the preset's "
                       "finetune_lr for methods that train base tensors, peft_lr for adapter methods; compare: "
                       "one rate for every row instead of the preset's grids)")
    p.add_argument("--tf32", action="store_true", help="float32 products on TF32 tensor cores (a GPU of compute "
                   "capability >= 8.0): CuPy's matrix products and minisft's attention tiles (sets CUPY_TF32=1)")
    p.add_argument("--quiet", action="store_true", help="no progress lines (notes still print)")


def parser():
    ap = _Parser(prog="minisft", description="Exact sparse / parameter-efficient fine-tuning on an explicit-backward "
                                             "GPT-2. `minisft COMMAND --help` lists a command's options.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    pre = sub.add_parser("pretrain", formatter_class=_Help,
                         help="pretrain (or load the cached) base model on the standard library's source code",
                         description="Pretrain the preset's base model on the standard library's source code (once: "
                                     "it is cached in WORKDIR/pretrain) and print its code validation loss next to "
                                     "the code corpus's unigram entropy.")
    _common(pre, fine_tuning=False)
    ft = sub.add_parser("finetune", formatter_class=_Help, help="fine-tune the base model with one method",
                        description="Fine-tune the cached base model on the target domain with one method; the run "
                                    "(log, checkpoints, model/trained.safetensors, model/merged.safetensors, "
                                    "model/manifest.json, result.json) goes to WORKDIR/runs/<experiment>/<label>/seed<s>.")
    _common(ft)
    ft.add_argument("--method", required=True, help="full, lora, spruft, ... (`minisft methods` lists them)")
    ft.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                    help="a method option, typed by the method (`minisft methods`): e.g. r=4, alpha=8.0, "
                         "use_rslora=true, targets=attn.c_attn,mlp.c_fc, ratio=none")
    ft.add_argument("--label", type=name_text, help="run name, a plain name (default: the method's name)")
    rerun = ft.add_mutually_exclusive_group()
    rerun.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint "
                       "(a finished run is reported and left unchanged)")
    rerun.add_argument("--overwrite", action="store_true", help="delete an earlier run in the run's folder and start "
                       "afresh (without --resume or --overwrite, an earlier run there is an error)")
    ft.add_argument("--checkpoint-every", type=nonnegative_int, metavar="N",
                    help="write a checkpoint every N steps; 0: none (default: whenever it costs at most 1%% "
                         "of the training time since the last one)")
    ft.add_argument("--init", type=path_text, metavar="DIR", help="start from a local HF GPT-2 folder (config.json + "
                    "model.safetensors; its tokenizer.json if present) instead of the pretrained base")
    cmp_ = sub.add_parser("compare", formatter_class=_Help, help="the main job: every method on the same base, one table",
                          description="Fine-tune the cached base model with every method of the comparison (or "
                                      "those --only names) for --seeds seeds; print one table and write compare.json, "
                                      "compare-timings.json and compare.png into WORKDIR/runs/<experiment>/.")
    _common(cmp_)
    cmp_.add_argument("--only", nargs="+", metavar="METHOD_OR_LABEL", help="run only these rows (by method or label); "
                      "the other rows of an earlier compare.json of the same experiment are kept")
    cmp_.add_argument("--seeds", type=positive_int, default=1, metavar="K",
                      help="fine-tune every row with seeds SEED..SEED+K-1 on one base model (pretrained with SEED); "
                           "the table shows mean ± sd")
    cmp_.add_argument("--markdown", action="store_true", help="print the table as Markdown (the README's results table)")
    cmp_.add_argument("--overwrite", action="store_true", help="train the rows again (by default a finished row of the "
                      "same settings is reused and an unfinished one resumed)")
    cmp_.add_argument("--gpus", type=positive_int, metavar="N", help="run the rows in parallel, one process per GPU "
                      "(started here by `minisft launch`); the same compare.json as one process")
    cmp_.add_argument("--lr-grid", nargs="+", type=grid_entry, metavar="FAMILY=LR,LR,...",
                      help="the learning rates each row chooses from on validation, per family: full (methods "
                           "that train base tensors) and peft (adapter methods), e.g. full=1e-4,3e-4,1e-3 "
                           "peft=1e-3,3e-3,1e-2; a family not named keeps the preset's grid (--lr: one rate for all)")
    cl = sub.add_parser("claims", formatter_class=_Help, help="each paper's headline claim, measured on a comparison",
                        description="Print each paper's headline claim, the paired measurement on a comparison's "
                                    "test split and the verdict of the rule in minisft.app.claims, from a "
                                    "compare.json (or the folder holding it).")
    cl.add_argument("path", type=path_text, metavar="PATH", help="compare.json (compare-seeds<K>.json for K seeds), or "
                    "the folder `minisft compare` printed when it holds one table")
    cl.add_argument("--markdown", action="store_true", help="print the claims as a Markdown table")
    from ..methods import config
    from ..methods.adapeft import AdaPEFTConfig

    specs = {spec.name: spec for spec in config.specs(AdaPEFTConfig)}
    af = sub.add_parser("adapeft-front", formatter_class=_Help,
                        help="AdaPEFT's Pareto front of influence vs parameters (JSON + PNG)",
                        description="Measure AdaPEFT's group influences on the base model and write the exact Pareto "
                                    "front, the greedy chain and the knapsack's choice (adapeft-front.json, .png) into "
                                    "WORKDIR/runs/<experiment>/.")
    _common(af)
    af.add_argument("--budget", type=budget_value, help="trainable parameters (an integer) or a fraction of the "
                    "base model (a number in (0, 1]); default: LoRA's count at the preset's rank")
    for name in ("groups", "estimator", "direction"):  # AdaPEFT's options: its choices and defaults
        spec = specs[name]
        values = typing.get_args(config.members(spec.annotation)[0])
        af.add_argument(f"--{name}", default=spec.default, type=choice(*values), metavar="{" + ",".join(values) + "}",
                        help=spec.help)
    af.add_argument("--probe-steps", type=positive_int, default=specs["probe_steps"].default, metavar="N",
                    help=specs["probe_steps"].help)
    af.add_argument("--every", type=positive_int, default=specs["every"].default, metavar="N",
                    help=specs["every"].help)
    af.add_argument("--train-front", action="store_true", help="also fine-tune every front point and report its loss")
    sub.add_parser("methods", help="list the methods, their options (type, default, meaning) and papers",
                   description="List every method: its paper and its options with types, defaults and meanings.")
    vec = sub.add_parser("vectors", help="write the golden-vector suite to check another implementation against "
                                         "(minisft.testing reads it)")
    vec.add_argument("--out", required=True, type=path_text, metavar="DIR", help="the folder to write the suite into")
    exp = sub.add_parser("export", help="a finished run as an HF GPT-2 folder (--hf) or a PEFT adapter (--peft)",
                         description="Export a finished `minisft finetune` run folder (RUN, as `finetune` prints it): "
                                     "--hf OUT writes the model with its adapters merged as an HF GPT-2 folder; "
                                     "--peft OUT writes a LoRA / LoRA-drop run's adapter as a PEFT folder and the "
                                     "base model it applies to in OUT/base (minisft.app.export).")
    exp.add_argument("run", type=path_text, metavar="RUN", help="the run folder (WORKDIR/runs/<experiment>/<label>/seed<s>)")
    fmt = exp.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--hf", type=path_text, metavar="OUT", help="write the merged model as an HF GPT-2 folder")
    fmt.add_argument("--peft", type=path_text, metavar="OUT", help="write the LoRA adapter as a PEFT folder (+ OUT/base)")
    sub.add_parser("launch", help="start N local ranks of a command in the torchrun-style environment: "
                                  "`minisft launch --nproc N -- minisft finetune ...` (`minisft launch --help`)",
                   add_help=False)
    sub.add_parser("bench", help="time a training step against PyTorch: runs `python -m reference_models.bench.step` "
                                 "from a source checkout (its root is the current directory) with the test extra "
                                 "installed; `minisft bench --help` lists its options", add_help=False)
    return ap


# ------------------------------------------------------------------------------- --set values
def parse_options(pairs):
    """["r=4", "alpha=8"] -> {"r": "4", "alpha": "8"}: each OPTION=VALUE once (values stay text)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError("--set", pair, "OPTION=VALUE")
        key = key.strip()
        if key in out:
            raise CliError(f"--set {key}", pair, "each option once")
        out[key] = value
    return out


def typed_options(method, pairs):
    """The --set pairs as typed values for `method`, parsed by its config's annotations
    (minisft.methods.config.from_text); an unknown option is named with the valid ones."""
    from ..methods import option_specs
    from ..methods.config import from_text

    specs = {spec.name: spec for spec in option_specs(method)}
    out = {}
    for key, text in parse_options(pairs).items():
        if key not in specs:
            raise CliError(f"--set {key}", text, f"an option of {method}: one of {', '.join(specs) or '(none)'}")
        with option(f"--set {key}", text):
            out[key] = from_text(key, text, specs[key].annotation)
    return out


# ----------------------------------------------------------------------------------- validation
@contextlib.contextmanager
def option(name, value=None, about=None):
    """Report a MinisftError raised inside as a CliError about the command-line option `name` and
    `value` (None: the value the error names). `about`: the API argument names that stand for the
    option; an error about another argument (a cached file in the workdir, say) passes unchanged."""
    try:
        yield
    except CliError:
        raise
    except MinisftError as e:
        if about is not None and e.arg not in about:
            raise
        raise CliError(name, e.value if value is None else value, e.expected or str(e)) from None


def check_workdir(path):
    """The workdir is a folder or can be one (nothing is created here)."""
    from ..core.fileio import as_path

    with option("--workdir", path):
        p = as_path("workdir", path)
    try:
        if p.exists():
            if not p.is_dir():
                raise CliError("--workdir", path, "a folder (this is a file)")
            return
        parent = next((q for q in p.absolute().parents if q.exists()), None)
    except OSError as e:
        raise CliError("--workdir", path, f"a folder path ({e.strerror})") from None
    if parent is not None and not parent.is_dir():
        raise CliError("--workdir", path, f"a folder path ({parent} is a file)")


def check_data(paths):
    """Every --data path exists and is a regular file or a folder (never opened here: a FIFO would block)."""
    for path in paths or ():
        try:
            st = os.stat(path)
        except OSError as e:
            raise CliError("--data", path, f"an existing text file or folder ({e.strerror})") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise CliError("--data", path, "a regular file or a folder (this is a FIFO, a device or a socket)")


def _method_errors(method, build, given=None):
    """Run `build`, naming a failing option as `--set OPTION` (the method's errors name the option),
    or as --steps for `total_steps`, which the run's steps fill unless `given` (the --set options) has it."""
    try:
        return build()
    except MinisftError as e:
        arg = str(e.arg or "").split("[")[0].split(".")[0]
        if arg == "total_steps" and "total_steps" not in (given or {}):
            raise CliError("--steps", e.value, f"a run long enough for {method}'s schedule: {e.expected}") from None
        shown = f"--set {arg}" if arg else f"--method {method}"
        raise CliError(shown, e.value, e.expected or str(e)) from None


def validate(args):
    """Everything that can be checked before data is read: returns what the command needs
    (preset, method objects, training configuration)."""
    from . import compare as cmp
    from . import experiment as ex
    from ..methods import REGISTRY
    from ..model.budgets import lora_trainable

    check_workdir(args.workdir)
    check_data(args.data)
    preset = ex.get_preset(args.preset, getattr(args, "steps", None))
    plan = {"preset": preset}
    if args.command == "finetune":
        if args.method not in REGISTRY:
            raise CliError("--method", args.method, f"one of {', '.join(sorted(REGISTRY))}")
        options = typed_options(args.method, args.set)
        method = _method_errors(args.method, lambda: cmp.build_method(args.method, options, preset), options)
        total = method.options().get("total_steps")
        if total is not None and total > preset.finetune_steps:
            raise CliError("--set total_steps", total, f"at most the run's --steps ({preset.finetune_steps}): the "
                           "schedule is a fraction of total_steps")
        _method_errors(args.method, lambda: method.check_config(preset.model))
        with option("--label", args.label or args.method):
            plan["label"] = name_text(args.label or args.method)
        if args.init is not None:
            from ..model.interop import load_hf_gpt2

            with option("--init"):
                load_hf_gpt2(args.init)
        with option("--lr", args.lr):
            plan["train"] = ex.finetune_config(preset, method, args.seed, args.lr, args.checkpoint_every)
        plan["method"] = method
    elif args.command == "compare":
        with option("--only", args.only):
            cmp.check_only(preset, args.only)
        if args.lr is not None and args.lr_grid:
            raise CliError("--lr", args.lr, "either --lr (one rate for every row) or --lr-grid, not both")
        grid = preset.lr_grid_dict()
        if args.lr is not None:
            grid = {family: (args.lr,) for family in grid}
        for family, rates in args.lr_grid or ():
            grid[family] = tuple(rates)
        with option("--lr-grid", args.lr_grid):
            plan["grid"] = cmp.lr_grid(preset, grid)
        if args.gpus is not None and args.gpus > 1:
            from ..core.backend import resolve_backend

            with option("--backend", args.backend):
                backend = resolve_backend(args.backend)
            if backend != "cupy":
                raise CliError("--gpus", args.gpus, "a machine with GPUs and CuPy (--backend cupy or auto); CPU "
                               "processes: mpirun -n N minisft compare")
        for label, name, options, *_ in cmp.compare_runs(preset):  # a 4th element: per-row training settings
            method = cmp.build_method(name, options, preset)
            method.check_config(preset.model)
            for lr in plan["grid"][cmp.family(method)]:
                with option("--lr", lr):
                    ex.finetune_config(preset, method, args.seed, lr)
    elif args.command == "adapeft-front":
        from ..methods import AdaPEFT

        budget = lora_trainable(preset.model, preset.lora_r) if args.budget is None else args.budget
        with option("--budget", args.budget):
            method = AdaPEFT(budget=budget, groups=args.groups, estimator=args.estimator, direction=args.direction,
                             probe_steps=args.probe_steps, every=args.every, lora_r=preset.lora_r,
                             lora_alpha=preset.lora_r)
            method.check_config(preset.model)
    return plan


# ------------------------------------------------------------------------------------------ main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return bench(argv[1:])
    if argv[:1] == ["launch"]:
        from ..distributed.launch import main as launch_main

        return launch_main(argv[1:])
    share_cores()  # one of several ranks on this host: its share of the cores (minisft.distributed.rank_threads)
    try:
        args = parser().parse_args(argv)
        if getattr(args, "gpus", None) is not None and args.gpus > 1 and _launcher() == "none":
            validate(args)  # a bad command line fails here, before N processes start
            return _relaunch(argv, args.gpus)
        return _run(args)
    except MinisftError as e:
        print(f"minisft: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `minisft methods | head`: the reader left; no traceback (Python's documented recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:  # every file is written atomically: what is on disk is whole, the last checkpoint too
        print("minisft: interrupted; every file written is complete (finetune: --resume continues from the last "
              "checkpoint; compare: run it again, finished rows are kept)", file=sys.stderr)
        return 130
    except OSError as e:  # what the checks before the work cannot foresee (a disk filling up, a file vanishing)
        where = f" ({e.filename})" if e.filename else ""
        print(f"minisft: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except MemoryError:
        print("minisft: error: out of memory (a smaller --preset, or fewer --seeds at once)", file=sys.stderr)
        return 1


def bench(argv):
    """Run the torch benchmark of a source checkout in a child process (module docstring), its JSON
    into --workdir (default minisft-work) unless --out says where; returns its exit status, or 2
    after a one-line message when torch or the checkout is missing."""
    if importlib.util.find_spec("torch") is None:
        print("minisft bench: needs PyTorch; install the test extra: pip install '.[test]' (from the checkout)",
              file=sys.stderr)
        return 2
    if importlib.machinery.PathFinder.find_spec("reference_models", [os.getcwd(), *sys.path]) is None:
        print("minisft bench: the benchmark is reference_models/bench/step.py of the minisft source checkout, not part "
              "of the installed package: run `minisft bench` (or `python -m reference_models.bench.step`) from the "
              "checkout's root", file=sys.stderr)
        return 2
    from ..core.fileio import ensure_writable_dir

    argv = list(argv)
    workdir = DEFAULT_WORKDIR
    if "--workdir" in argv:
        i = argv.index("--workdir")
        if i + 1 >= len(argv) or not argv[i + 1]:
            print("minisft: error: --workdir: expected a folder path", file=sys.stderr)
            return 2
        workdir = argv[i + 1]
        del argv[i : i + 2]
    if "--out" not in argv and not {"-h", "--help"} & set(argv):
        try:
            argv += ["--out", str(ensure_writable_dir(workdir, "--workdir") / "bench.json")]
        except MinisftError as e:
            print(f"minisft: error: {e}", file=sys.stderr)
            return 2
    return subprocess.call([sys.executable, "-m", "reference_models.bench.step", *argv])


def claims(args):
    """`minisft claims PATH`: the claims of a compare.json (minisft.app.claims)."""
    from ..core.fileio import read_json
    from .claims import evaluate_claims, format_claims

    path = Path(args.path)
    if path.is_dir():  # the folder of one table: compare.json, or compare-seeds<K>.json (compare.compare_files)
        tables = sorted(p.name for p in path.glob("compare*.json") if not p.name.endswith("-timings.json"))
        if len(tables) != 1:
            raise CliError("PATH", args.path, f"a compare table, or a folder holding one (it holds {tables or 'none'}: "
                           "name the file)")
        path = path / tables[0]
    with option("PATH", args.path):
        compared = read_json(path)
    try:
        print(format_claims(evaluate_claims(compared), markdown=args.markdown))
    except (KeyError, TypeError) as e:
        raise CliError("PATH", args.path, f"a compare.json written by `minisft compare` (it lacks {e})") from None
    return 0


def export(args):
    """`minisft export RUN --hf OUT | --peft OUT` (minisft.app.export): the folder is checked first, then the run."""
    from .export import export_hf, export_peft
    from ..core.fileio import ensure_writable_dir

    from .export import check_out_folder

    flag, out, write = ("--hf", args.hf, export_hf) if args.hf is not None else ("--peft", args.peft, export_peft)
    with option(flag, out):
        check_out_folder(out)
        ensure_writable_dir(Path(out).parent, flag)
    with option("RUN"):
        folder = write(args.run, out)
    print(f"{'HF GPT-2 folder' if flag == '--hf' else 'PEFT adapter (base model in base/)'}: {folder}")
    return 0


def _launcher():
    from ..distributed import read_placement

    return read_placement().launcher


def _relaunch(argv, n):
    """`minisft ARGV` (without --gpus) as n ranks of `minisft launch`; their exit status."""
    from ..distributed.launch import launch

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            rest.append(a)
    return launch([sys.executable, "-m", "minisft", *rest], nproc=n)


def _communicator(args):
    """This process's Communicator (minisft.distributed): several ranks only for pretrain, finetune
    and compare; made before any array exists (the NCCL backend picks the GPU of LOCAL_RANK)."""
    from ..core.backend import resolve_backend
    from ..distributed import Communicator, from_environment

    if args.command not in ("pretrain", "finetune", "compare", "adapeft-front"):
        return Communicator()
    comm = from_environment(device=resolve_backend(args.backend))
    if comm.world_size > 1 and args.command == "adapeft-front":
        comm.close()
        raise CliError("adapeft-front", f"{comm.world_size} ranks", "one process (it runs no data-parallel work)")
    gpus = getattr(args, "gpus", None)
    if gpus is not None and gpus != comm.world_size:
        comm.close()
        raise CliError("--gpus", gpus, f"the job's world size, {comm.world_size}, or no --gpus under a launcher")
    return comm


def _run(args):
    if args.command in ("methods", "vectors", "export", "claims"):
        return _command(args, None, None)
    if args.tf32:
        os.environ["CUPY_TF32"] = "1"  # read by CuPy at its first float32 product, and by the attention tiles
    plan = validate(args)
    comm = _communicator(args)
    try:
        with comm.abort_on_failure(), _rank0_output(comm):
            try:
                return _command(args, plan, comm)
            except MinisftError as e:
                if comm.world_size == 1:
                    raise
                print(f"minisft: error: {e}", file=sys.stderr, flush=True)
                comm.abort(2, "stopped by the error above")
    finally:
        comm.close()


@contextlib.contextmanager
def _rank0_output(comm):
    """Tables and paths are printed by rank 0 only (stdout of the other ranks goes nowhere)."""
    if comm.rank == 0:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _command(args, plan, comm):
    if args.command == "claims":
        return claims(args)
    if args.command == "methods":
        from .report import methods_table

        print(methods_table())
        return 0
    if args.command == "vectors":
        from ..testing.vectors import write_suite_command

        with option("--out"):
            return write_suite_command(args.out)
    if args.command == "export":
        return export(args)
    from . import compare as cmp
    from . import experiment as ex
    from .claims import evaluate_claims, format_claims
    from .report import format_table, plot_compare
    from ..core.fileio import ensure_writable_dir

    preset = plan["preset"]
    lead = comm.rank == 0
    progress = False if args.quiet or not lead else None
    workdir = Path(args.workdir)
    with option("--workdir", args.workdir):
        ensure_writable_dir(workdir, "workdir")
    with option("--data", about=("source", "data", "paths", "encoding")):
        data = ex.build_data(preset, workdir, args.data, args.encoding, progress)
    if args.command == "pretrain":
        model, result = ex.pretrained(preset, workdir, data, args.backend, args.dtype, args.seed, progress, comm)
        task = ex.make_task(data.code, preset, comm=comm)
        h = ex.unigram_entropy(data.code[0], data.tokenizer.vocab_size)
        loss = ex.evaluate(model, task.val_target, comm)
        print(f"pretrained {preset.name} base: code validation loss {loss:.4f} nats/token; "
              f"unigram entropy of the code corpus {h:.4f} nats/token"
              + ("" if result else " (loaded from cache)"))
        return 0
    if args.command == "adapeft-front":
        from .adapeft_front import adapeft_front, front_name

        budget = args.budget
        result, folder, png, why = adapeft_front(preset, workdir, data, args.backend, args.dtype, args.seed,
                                                 args.train_front, budget, args.groups, args.estimator, args.direction,
                                                 args.probe_steps, args.every, progress, lr=args.lr)
        name = front_name(budget=args.budget, groups=args.groups, estimator=args.estimator, direction=args.direction,
                          probe_steps=args.probe_steps, every=args.every, train_front=args.train_front)
        print(f"front of {len(result['report']['front'])} points written to {folder / (name + '.json')}"
              + (f", plot: {png}" if png else f" ({why})"))
        return 0
    if args.command == "finetune":
        label = plan["label"]
        try:
            _, r = ex.finetune(preset, workdir, data, plan["method"], label, args.backend, args.dtype, args.seed,
                               resume=args.resume, progress=progress, checkpoint_every=args.checkpoint_every,
                               lr=args.lr, init=args.init, comm=comm, overwrite=args.overwrite)
        except MinisftError as e:
            if e.arg != "resume":
                raise
            raise CliError("--resume", e.value, e.expected) from None
        folder = ex.run_dir(workdir, preset, data, label, args.seed, lr=args.lr, dtype=args.dtype,
                            init=None if args.init is None else ex.init_key(args.init))
        row = cmp.summarize(label, [r], lr=args.lr)
        print(format_table({"rows": [row], "base": r["base"], "domains": data.domains}, {label: r["ms_per_step"]}))
        print(f"\nrun: {folder} (model: {folder / 'model'})")
        return 0
    out, timings, folder = cmp.compare(preset, workdir, data, args.backend, args.dtype, args.seed, progress, args.only,
                                       args.seeds, plan["grid"], comm, overwrite=args.overwrite)
    if not lead:
        return 0
    ms = {row["label"]: cmp.ms_per_step(timings, row["label"], row["lr"]["chosen"]) for row in out["rows"]}
    print(format_table(out, ms, markdown=args.markdown))
    print("\n" + format_claims(evaluate_claims(out), markdown=args.markdown))
    if args.markdown:
        seeds = out["seeds"]
        print(f"\n(`minisft compare --preset {preset.name} --seeds {len(seeds)} --markdown`: seeds {seeds[0]}..{seeds[-1]}, "
              f"{out['backend']} {out['dtype']}, minisft {out['minisft_version']}, commit {out['git_commit'] or 'unknown'})")
    result_name, _, plot_name = cmp.compare_files(args.seeds)
    png, why = plot_compare(out, folder / plot_name)
    print(f"\nresults: {folder / result_name}" + (f", plot: {png}" if png else f" ({why})"))
    return 0

