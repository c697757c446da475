"""Helpers shared by the tests: the tiny GPT and the synthetic task most tests train, the micro
preset of the pipeline tests, the stable-argsort oracle of the exact smallest-k masks, and spies on
the fast paths."""

import contextlib
import math

import numpy as np

from minisft.app.experiment import Preset
from minisft.core import fastpath
from minisft.core.backend import to_numpy
from minisft.core.config import GPTConfig
from minisft.data.batches import TokenStream, validation_batches
from minisft.model.gpt import GPT
from minisft.training.train import Task

TINY = GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=16)
# a preset small enough that pretraining, compare and the CLI run in seconds
MICRO = Preset("micro", GPTConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16),
               max_chars=60_000, batch_size=8, pretrain_steps=400, pretrain_lr=1e-2,
               finetune_steps=12, finetune_lr=3e-3, peft_lr=1e-2, eval_batches=2, lora_r=2)


def tiny_gpt(cfg=TINY, xp=np, dtype="float64", seed=0, perturbed=False):
    """A GPT of `cfg` on xp's backend (xp: NumPy or CuPy, or the backend's name). perturbed: its
    biases and LayerNorms moved off their symmetric initial values by 0.1·N(0, 1) from
    Generator(seed + 100), so that no score or gradient is zero by symmetry."""
    backend = xp if isinstance(xp, str) else "numpy" if xp is np else "cupy"
    model = GPT(cfg, backend=backend, dtype=dtype, seed=seed)
    if perturbed:
        rng = np.random.default_rng(seed + 100)
        for name, p in model.params.items():
            if name.endswith(".bias") or ".ln_" in name or name.startswith("ln_f"):
                p += model.xp.asarray(0.1 * rng.standard_normal(p.shape), dtype=p.dtype)
    return model


def counter_task(V=TINY.vocab_size, T=TINY.block_size, B=4, n=3000, seed=0, steps=(1, 2), val_batches=2,
                 source_batches=None, comm=None, xp=np):
    """A task a tiny GPT can learn: n token ids counting mod V by steps drawn from `steps`
    (Generator(seed)); `val_batches` validation batches of B windows, the target's and the source's
    the same (the source keeps the first `source_batches` of them when given)."""
    rng = np.random.default_rng(seed)
    ids = TokenStream(xp.asarray((np.cumsum(rng.choice(steps, n)) % V).astype(np.int32)), "synthetic", V)
    val = validation_batches(ids, B, T, val_batches)
    return Task(ids, val, val[:source_batches], B, T, comm)


def host_copy(arrays):
    """{name: array} -> {name: a NumPy copy} (a snapshot that later in-place updates leave alone)."""
    return {name: to_numpy(a).copy() for name, a in arrays.items()}


def stable_argsort_keep(arrays, k):
    """The exact smallest-k oracle: keep masks (True = kept) of the NumPy `arrays` dropping the first
    k positions of a stable argsort of |x| (as float64) over the arrays concatenated in order (ties:
    the earlier array, then the lower flat index, dropped first)."""
    flat = np.concatenate([np.abs(a).astype(np.float64).ravel() for a in arrays] + [np.zeros(0)])
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[:k]] = False
    return [m.reshape(a.shape) for m, a in zip(np.split(keep, np.cumsum([a.size for a in arrays])), arrays)]


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


def micro_workdir(tmp_path_factory, preset):
    """A workdir of `preset` (named "micro") holding its tokenizer, its base model and a finished
    4-step LoRA run (runs/micro-prose-steps4/lora/seed0, checkpoint every 2 steps), built once per
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
def to_device_bits(a, xp):
    """Host array `a` on backend xp with its exact bits. CuPy's asarray uploads a 0-d array with
    ndarray.fill, which memsets the array when the value == 0, so a 0-d -0.0 arrives as +0.0
    (cupy/_core/core.pyx: _array_default, ndarray.fill; CuPy 13 and 14). A one-entry 1-d array is
    copied byte for byte, and its 0-d view keeps them."""
    return xp.asarray(a.reshape(1)).reshape(()) if a.ndim == 0 else xp.asarray(a)


# ------------------------------------------------------------------------- cross-entropy oracle
def exact_cross_entropy(z, y, ignore_index=-100):
    """The exact (mean loss, dL/dz) of logits z (N, V) (the floats as given) and targets y (N,), in
    mpmath at 60 digits, from the definitions: row n's loss is log Σ_v e^{z_nv − z_ny} (0 for a single
    logit, exactly), P_nv = e^{z_nv} / Σ_v' e^{z_nv'}, dL/dz_nv = (P_nv − [v = y_n]) / n over the n valid
    rows. Returns (mpf, list of rows of mpf)."""
    import mpmath

    with mpmath.workdps(60):
        rows = [[mpmath.mpf(float(v)) for v in row] for row in np.asarray(z)]
        valid = [n for n, t in enumerate(y) if t != ignore_index]
        loss = mpmath.fsum(mpmath.log(mpmath.fsum(mpmath.exp(v - rows[n][y[n]]) for v in rows[n])) for n in valid)
        grad = [[mpmath.mpf(0)] * len(row) for row in rows]
        for n in valid:
            total = mpmath.fsum(mpmath.exp(v - rows[n][y[n]]) for v in rows[n])
            grad[n] = [(mpmath.exp(v - rows[n][y[n]]) / total - (v_i == y[n])) / len(valid)
                       for v_i, v in enumerate(rows[n])]
        return loss / len(valid), grad


def relative_errors(got, exact, floor):
    """|got − exact| / |exact| elementwise as floats (got: an array, exact: mpf or nested lists of
    mpf of its shape); where |exact| < floor the error is divided by floor instead (results that are
    subnormal, or zero)."""
    import mpmath

    got = np.asarray(got, dtype=np.float64)
    flat_exact = np.array(exact, dtype=object).reshape(-1)
    with mpmath.workdps(60):
        return np.array([float(abs(mpmath.mpf(float(g)) - e) / max(abs(e), mpmath.mpf(float(floor))))
                         for g, e in zip(got.reshape(-1), flat_exact)]).reshape(got.shape)


def cross_entropy_cases():
    """Hypothesis strategy of (logits (N, V) float64, targets (N,) int64) in the regimes where a
    log-sum-exp cross-entropy loses precision: tiny vocabularies (V from 1), rows where the target is
    the largest logit by a margin up to 15 (the loss is then about Σ e^{−margin}), a common offset of
    the logits up to 1e4 in magnitude, a spread of the logits from 0.1 to 8; the first target ignored
    (−100) in some draws."""
    from hypothesis import strategies as st

    @st.composite
    def cases(draw):
        N, V = draw(st.integers(1, 6)), draw(st.one_of(st.integers(1, 4), st.integers(5, 64)))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        z = rng.standard_normal((N, V)) * draw(st.floats(0.1, 8.0))
        y = rng.integers(0, V, N)
        if draw(st.booleans()):  # confident rows: the target leads by `margin`
            margin = draw(st.floats(0.0, 15.0))
            for n in range(N):
                others = np.delete(z[n], y[n])
                z[n, y[n]] = (others.max() if others.size else 0.0) + margin
        z = z + draw(st.one_of(st.just(0.0), st.floats(-1e4, 1e4)))
        if N > 1 and draw(st.booleans()):
            y[0] = -100
        return z, y

    return cases()


def cross_entropy_error_bounds(z, y, kernel=False):
    """(loss, gradient entries) relative error bounds of proofs/cross_entropy.md, in units of the
    rounding unit u: (D + L + K + 7) and (2D + L + 7), D the largest spread max − min of a valid row,
    L = ⌈log2 V⌉, K = ⌈log2 N⌉; the fused kernel's joins add 4⌈V/256⌉ + 42 to both."""
    valid = y != -100
    D = float(max(z[n].max() - z[n].min() for n in np.flatnonzero(valid)))
    L, K = math.ceil(math.log2(z.shape[1])), math.ceil(math.log2(z.shape[0]))
    extra = 4 * math.ceil(z.shape[1] / 256) + 42 if kernel else 0
    return D + L + K + 7 + extra, 2 * D + L + 7 + extra


def check_cross_entropy_exact(z, y, xp=np, kernel=False):
    """minisft's mean loss and dL/dz of float logits z (N, V) on backend xp against the exact values
    of those floats (mpmath): within cross_entropy_error_bounds, and within 1e-13 in float64."""
    from minisft.core.backend import to_numpy
    from minisft.nn import cross_entropy_backward, cross_entropy_forward

    loss, c = cross_entropy_forward(xp.asarray(z)[None], xp.asarray(y)[None])
    dz = to_numpy(cross_entropy_backward(1.0, c)["x"])[0]
    exact_loss, exact_grad = exact_cross_entropy(z, y)
    u = np.finfo(z.dtype).eps / 2
    loss_bound, grad_bound = (b * u for b in cross_entropy_error_bounds(z, y, kernel))
    if z.dtype == np.float64:
        loss_bound, grad_bound = min(loss_bound, 1e-13), min(grad_bound, 1e-13)
    err = relative_errors(to_numpy(loss), exact_loss, np.finfo(z.dtype).smallest_subnormal)
    assert err <= loss_bound, f"loss: relative error {err:.3e} > {loss_bound:.3e}"
    err = relative_errors(dz, exact_grad, np.finfo(z.dtype).smallest_subnormal)
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err[worst] <= grad_bound, f"dz{worst}: relative error {err[worst]:.3e} > {grad_bound:.3e}"


def check_gelu_exact(x, y, dydx, flush_to_zero=False):
    """GELU values y and derivatives dydx at x (host arrays of x's float dtype) against mpmath: within
    (8|u| + 8)·u_r of |y| and (8|u| + 12)·u_r of the sum of the derivative's two terms' magnitudes (u_r
    the rounding unit, u = √(2/π)(x + 0.044715x³)), plus 8|x| times the smallest normal number where the
    exponential overflows and one subnormal step; `flush_to_zero` (float32 arithmetic that reads and
    writes subnormals as zero, as CuPy compiles its kernels) adds the smallest normal number
    (proofs/gelu.md)."""
    import mpmath

    um, tiny = np.finfo(x.dtype).eps / 2, float(np.finfo(x.dtype).tiny)
    sub = float(np.finfo(x.dtype).smallest_subnormal) + (tiny if flush_to_zero and x.dtype == np.float32 else 0.0)
    with mpmath.workdps(50):
        k, a = mpmath.sqrt(2 / mpmath.pi), mpmath.mpf(0.044715)
        for xi, yi, gi in zip(x.reshape(-1), y.reshape(-1), dydx.reshape(-1)):
            X = mpmath.mpf(float(xi))
            u = k * (X + a * X**3)
            s, t = 1 / (1 + mpmath.exp(-2 * u)), X / 2 * mpmath.sech(u) ** 2 * k * (1 + 3 * a * X**2)
            bound = (8 * abs(u) + 8) * um * abs(X * s) + 8 * abs(X) * tiny + sub
            assert abs(mpmath.mpf(float(yi)) - X * s) <= bound, f"GELU({xi}) = {yi}, exact {X * s}"
            bound = (8 * abs(u) + 12) * um * (abs(s) + abs(t)) + 8 * (1 + abs(X)) * tiny + sub
            assert abs(mpmath.mpf(float(gi)) - (s + t)) <= bound, f"GELU'({xi}) = {gi}, exact {s + t}"
