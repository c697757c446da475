"""Helpers shared by the tests: the tiny GPT and the synthetic task most tests train, the micro
preset of the pipeline tests, the stable-argsort oracle of the exact smallest-k masks, and spies on
the fast paths."""

import contextlib

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
