"""The `minisft` command: pretrain, finetune, compare.

    minisft compare                      # the main job: every method side by side (preset small)
    minisft pretrain --preset tiny       # the cached base model
    minisft finetune --method lora --set r=4 --set alpha=8
    minisft bench --preset gpt2          # from a source checkout, with the test extra installed

`minisft bench` times minisft against PyTorch. The benchmark imports torch, so it lives in the
source checkout (reference_models/bench.py) and is not part of the installed package; minisft never
imports it. The command looks for it in the current directory (then on sys.path) and runs
`python -m reference_models.bench ARGS` in a child process; without torch, or outside a checkout,
it prints one line saying what to do.
"""

import argparse
import ast
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from .errors import MinisftError, bad_value

DEFAULT_WORKDIR = "minisft-work"


def _common(p):
    p.add_argument("--preset", default="small", help="tiny (CPU tests), small (default), gpt2 (124M shapes, GPU)")
    p.add_argument("--backend", default="auto", choices=["numpy", "cupy", "auto"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help=f"where caches, runs and results go (default ./{DEFAULT_WORKDIR})")
    p.add_argument("--data", nargs="+", metavar="PATH", help="your own text files/folders as the target domain (default: the stdlib docs)")
    p.add_argument("--steps", type=int, help="fine-tuning steps (default: the preset's)")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate (default: the preset's finetune_lr for "
                   "methods that train base tensors, peft_lr for adapter methods)")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def parser():
    ap = argparse.ArgumentParser(prog="minisft", description="Exact sparse / parameter-efficient fine-tuning on an explicit-backward GPT-2.")
    sub = ap.add_subparsers(dest="command", required=True)
    _common(sub.add_parser("pretrain", help="pretrain (or load the cached) base model on the stdlib source code"))
    ft = sub.add_parser("finetune", help="fine-tune the base model on the target domain with one method")
    _common(ft)
    ft.add_argument("--method", required=True, help="full, lora, ... (see `minisft methods`)")
    ft.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="a method option, e.g. r=4")
    ft.add_argument("--label", help="run name (default: the method name)")
    ft.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    ft.add_argument("--checkpoint-every", type=int, default=0, help="write a checkpoint every N steps")
    ft.add_argument("--init", metavar="DIR", help="start from a local HF GPT-2 folder (config.json + model.safetensors; "
                    "its tokenizer.json if present) instead of the pretrained base")
    cmp_ = sub.add_parser("compare", help="the main job: every method on the same base, one table")
    _common(cmp_)
    cmp_.add_argument("--only", nargs="+", metavar="METHOD", help="run only these methods")
    af = sub.add_parser("adapeft-front", help="AdaPEFT's Pareto front of influence vs parameters (JSON + PNG)")
    _common(af)
    af.add_argument("--budget", type=float, help="parameters (int) or a fraction of the base (< 1); default: LoRA's count")
    af.add_argument("--groups", default="modules", choices=["modules", "tensors"])
    af.add_argument("--estimator", default="exact", choices=["exact", "gen"])
    af.add_argument("--direction", default="adam", choices=["adam", "sgd"])
    af.add_argument("--probe-steps", type=int, default=8)
    af.add_argument("--every", type=int, default=4)
    af.add_argument("--train-front", action="store_true", help="also fine-tune every front point and report its loss")
    sub.add_parser("methods", help="list the methods and their options")
    sub.add_parser("vectors", help="write the golden-vector suite to check another implementation against "
                                   "(minisft.testing reads it)").add_argument("--out", required=True, metavar="DIR")
    sub.add_parser("bench", help="time a training step against PyTorch: runs `python -m reference_models.bench` "
                                 "from a source checkout (its root is the current directory) with the test extra "
                                 "installed; `minisft bench --help` lists its options", add_help=False)
    return ap


def parse_options(pairs):
    """["r=4", "targets=('attn.c_attn',)"] -> {"r": 4, "targets": ("attn.c_attn",)} (Python literals;
    anything that is not a literal stays a string)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise bad_value("--set", pair, "OPTION=VALUE")
        k, v = pair.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return bench(argv[1:])
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except MinisftError as e:
        print(f"minisft: error: {e}", file=sys.stderr)
        return 2


def bench(argv):
    """Run the torch benchmark of a source checkout in a child process (module docstring); returns
    its exit status, or 2 after a one-line message when torch or the checkout is missing."""
    if importlib.util.find_spec("torch") is None:
        print("minisft bench: needs PyTorch; install the test extra: pip install '.[test]' (from the checkout)",
              file=sys.stderr)
        return 2
    if importlib.machinery.PathFinder.find_spec("reference_models", [os.getcwd(), *sys.path]) is None:
        print("minisft bench: the benchmark is reference_models/bench.py of the minisft source checkout, not part "
              "of the installed package: run `minisft bench` (or `python -m reference_models.bench`) from the "
              "checkout's root", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "reference_models.bench", *argv])


def _run(args):
    from . import experiment as ex
    from .methods import REGISTRY, method_options
    from .report import format_table, plot_curves

    if args.command == "methods":
        for name in sorted(REGISTRY):
            print(f"{name}: {method_options(name)}")
        return 0
    if args.command == "vectors":
        from .vectors import write_suite_command
        return write_suite_command(args.out)
    preset = ex.get_preset(args.preset, args.steps)
    progress = False if args.quiet else None
    workdir = Path(args.workdir)
    data = ex.build_data(preset, workdir, args.data)
    if args.command == "pretrain":
        model, result = ex.pretrained(preset, workdir, data, args.backend, args.dtype, args.seed, progress)
        task = ex.make_task(data.code[0], data.code[1], None, preset)
        h = ex.unigram_entropy(data.code[0], data.tokenizer.vocab_size)
        loss = ex.evaluate(model, task.val_target)
        print(f"pretrained {preset.name} base: code validation loss {loss:.4f} nats/token; "
              f"unigram entropy of the code corpus {h:.4f} nats/token"
              + ("" if result else " (loaded from cache)"))
        return 0
    if args.command == "adapeft-front":
        from .adapeft_front import adapeft_front

        budget = args.budget
        if budget is not None and budget >= 1:
            budget = int(budget)
        result, png, why = adapeft_front(preset, workdir, data, args.backend, args.dtype, args.seed, args.train_front,
                                         budget, args.groups, args.estimator, args.direction, args.probe_steps,
                                         args.every, progress)
        print(f"front of {len(result['report']['front'])} points written to {workdir / 'adapeft-front.json'}"
              + (f", plot: {png}" if png else f" ({why})"))
        return 0
    if args.command == "finetune":
        method = ex.build_method(args.method, parse_options(args.set), preset)
        label = args.label or args.method
        _, r = ex.finetune(preset, workdir, data, method, label, args.backend, args.dtype, args.seed,
                           resume=args.resume, progress=progress, checkpoint_every=args.checkpoint_every, lr=args.lr,
                           init=args.init)
        print(format_table([r], {label: r["ms_per_step"]}, base=r["base"]))
        print(f"\nrun written to {workdir / 'runs' / label}")
        return 0
    rows, timings = ex.compare(preset, workdir, data, args.backend, args.dtype, args.seed, progress, args.only)
    print(format_table(rows, timings, base=rows[0]["base"] if rows else None))
    path, why = plot_curves(rows, workdir / "compare.png")
    print(f"\nresults: {workdir / 'compare.json'}" + (f", plot: {path}" if path else f" ({why})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
