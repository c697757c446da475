"""Helpers shared by the tests."""

import contextlib

from minisft.core import fastpath


def spy_fast_paths(monkeypatch, points=None):
    """Record every call of the registered fast paths of `points` (default: all): returns the list
    that each call appends its point's name to."""
    calls = []
    for point in fastpath.POINTS if points is None else points:
        if point.fast is None:
            continue
        implementation, applies = point.fast

        def spy(*args, _impl=implementation, _name=point.__qualname__, **kwargs):
            calls.append(_name)
            return _impl(*args, **kwargs)

        monkeypatch.setattr(point, "fast", (spy, applies))
    return calls


@contextlib.contextmanager
def fast_paths(on):
    """fastpath.ENABLED = on inside the block (for hypothesis tests, where monkeypatch cannot be used),
    as MINISFT_FUSED at import would set it."""
    old = fastpath.ENABLED
    fastpath.ENABLED = bool(on)
    try:
        yield
    finally:
        fastpath.ENABLED = old


# ------------------------------------------------------------------------------ the command line
def run_cli(argv, capsys):
    """(exit status, stdout, stderr) of `minisft ARGV` run in this process."""
    from minisft.app.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc, err, *fragments, status=2):
    """The command failed with `status` and one line `minisft: error: ...` (the last line; phase
    lines and notes may come first), no traceback, naming every one of `fragments`."""
    assert rc == status, (rc, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("minisft: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in: {errors[0]}"
    return errors[0]


@contextlib.contextmanager
def with_preset(name, preset):
    """experiment.PRESETS[name] = preset inside the block (also where monkeypatch cannot reach)."""
    from minisft.app import experiment

    old = experiment.PRESETS.get(name)
    experiment.PRESETS[name] = preset
    try:
        yield preset
    finally:
        if old is None:
            del experiment.PRESETS[name]
        else:
            experiment.PRESETS[name] = old


_BUILT = {}


def micro_workdir(tmp_path_factory, preset, capsys=None):
    """A workdir of `preset` (named "micro") holding its tokenizer, its base model and a finished
    4-step LoRA run (runs/micro-docs-steps4/lora/seed0, checkpoint every 2 steps), built once per
    session: copy it (copy_workdir) before changing anything in it."""
    if "micro" not in _BUILT:
        from minisft.app.cli import main

        work = tmp_path_factory.mktemp("micro-work")
        with with_preset("micro", preset):
            rc = main(["finetune", "--preset", "micro", "--backend", "numpy", "--workdir", str(work), "--quiet",
                       "--method", "lora", "--steps", "4", "--checkpoint-every", "2"])
        assert rc == 0
        _BUILT["micro"] = work
    return _BUILT["micro"]


def copy_workdir(src, dst):
    """A copy of the workdir `src` at `dst` (links kept as links); returns dst."""
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


def tree(folder):
    """{relative path: bytes} of every regular file under `folder` but run locks."""
    from pathlib import Path

    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".lock"}
