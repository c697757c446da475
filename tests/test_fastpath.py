"""The switch between the reference math and the fast path (minisft.core.fastpath), on the CPU.

The fast paths themselves are CUDA kernels, checked against the reference bodies on a GPU
(tests/test_kernels.py). What a CPU can check is everything around them: which functions a fast
path stands in for, that each predicate refuses host arrays (so NumPy runs always take the
reference), that a registered path runs exactly when its predicate and the switch say so, and that
MINISFT_FUSED is read once, at import."""

import os
import subprocess
import sys
import types

import numpy as np
import pytest

import minisft  # noqa: F401  (registers the fast paths)
from minisft.core import fastpath
from minisft.core.config import GPTConfig
from minisft.model.gpt import GPT

# every function of the reference that the fast path stands in for (a new one is added here on purpose)
EXPECTED_POINTS = {
    "minisft.nn.gelu.gelu", "minisft.nn.gelu.gelu_input_grad", "minisft.nn.layernorm.layernorm",
    "minisft.nn.layernorm.layernorm_backward_x", "minisft.nn.sums.column_sums",
    "minisft.nn.cross_entropy.cross_entropy_rows", "minisft.nn.cross_entropy.cross_entropy_input_grad",
    "minisft.nn.embedding.scatter_add_rows", "minisft.nn.attention.attention_forward",
    "minisft.nn.attention.attention_backward",
    "minisft.model.adapters.lora.LoRA._forward", "minisft.model.adapters.lora.LoRA._backward",
    "minisft.model.adapters.rows.RowDelta._forward", "minisft.model.adapters.rows.RowDelta._backward",
    "minisft.model.adapters.rows.ColumnDelta._forward", "minisft.model.adapters.rows.ColumnDelta._backward",
    "minisft.training.optim.AdamW._apply", "minisft.training.optim.AdamW._update",
    "minisft.methods.select.nan_counts", "minisft.methods.select.smallest_k_keep_mask",
    "minisft.methods.select.smallest_k_keep_mask_each", "minisft.methods.select.smallest_k_keep_masks",
    "minisft.methods.select.zero_where_dropped_all",
    "minisft.distributed.buckets.pack", "minisft.distributed.buckets.unpack",
}


def _name(point):
    return f"{point.__module__}.{point.__qualname__}"


def test_every_point_has_exactly_one_fast_path_from_minisft_gpu():
    assert {_name(p) for p in fastpath.POINTS} == EXPECTED_POINTS
    for point in fastpath.POINTS:
        assert point.fast is not None, f"{_name(point)} is marked but nothing registers a fast path for it"
        implementation, applies = point.fast
        assert implementation.__module__.startswith("minisft.gpu"), _name(point)
        assert point.reference is not point and point.reference.__module__ == point.__module__


def _host_call(point):
    """Arguments of a plausible NumPy call of each point, for its predicate."""
    a, m = np.ones((4, 3), np.float32), np.ones((4, 3), bool)
    model = GPT(GPTConfig(vocab_size=16, block_size=4, n_layer=1, n_head=1, n_embd=16), backend="numpy", seed=0)
    from minisft.distributed.buckets import plan_buckets
    from minisft.model.adapters import ColumnDelta, LoRA, RowDelta
    from minisft.nn.attention import attention_forward
    from minisft.training.optim import AdamW

    layer = "h.0.mlp.c_fc"
    adapters = {"LoRA": LoRA(model, layer, r=2), "RowDelta": RowDelta(model, layer, [0, 1]),
                "ColumnDelta": ColumnDelta(model, layer, [0, 1])}
    qkv = np.ones((1, 4, 48), np.float32)
    bucket = plan_buckets([6, 6], [np.float32, np.float32], 1 << 20)[0]
    name = point.__qualname__
    calls = {
        "gelu": (a,), "gelu_input_grad": (a, a), "layernorm": (a, a[0], a[0], 1e-5),
        "layernorm_backward_x": (a, a, a[:, :1], a[0]), "column_sums": (a,),
        "cross_entropy_rows": (a, np.zeros(4, np.int64), -100), "cross_entropy_input_grad": (a, np.zeros(4, np.int64), a[:, 0], m[:, 0], 1.0),
        "scatter_add_rows": (a, np.zeros(4, np.int64), a), "attention_forward": (qkv, 1),
        "attention_backward": (qkv[..., :16], attention_forward(qkv, 1)[1]),
        "AdamW._apply": (AdamW(), {"w": a}, {"w": a}, {}, 1e-3), "AdamW._update": (AdamW(), {"step": 1}, a, a, 1e-3, None),
        "nan_counts": ([a],), "smallest_k_keep_mask": (a, 2), "smallest_k_keep_mask_each": ([a], [2]),
        "smallest_k_keep_masks": ([a], 2), "zero_where_dropped_all": ([a], [m]),
        "pack": (bucket, [a.ravel(), a.ravel()], np.empty(12, np.float32)),
        "unpack": (bucket, np.empty(12, np.float32), [a.ravel(), a.ravel()]),
    }
    if name.endswith("_forward") and name.split(".")[0] in adapters:
        return (adapters[name.split(".")[0]], np.ones((2, 16), np.float32), np.ones((2, 64), np.float32))
    if name.endswith("_backward") and name.split(".")[0] in adapters:
        return (adapters[name.split(".")[0]], np.ones((2, 64), np.float32), None, np.ones((2, 16), np.float32))
    return calls[name]


@pytest.mark.parametrize("point", fastpath.POINTS, ids=_name)
def test_every_fast_path_refuses_host_arrays(point):
    """NumPy arrays never reach a CUDA kernel: each predicate says no to a NumPy call."""
    assert point.fast[1](*_host_call(point)) is False


def test_a_registered_fast_path_runs_when_its_predicate_and_the_switch_say_so(monkeypatch):
    @fastpath.has_fast_path
    def double(x):
        return 2 * x

    monkeypatch.setattr(fastpath, "POINTS", fastpath.POINTS)  # restored: `double` leaves no trace
    fastpath.register(double, lambda x: ("fast", x), lambda x: x > 0)
    assert double(3) == ("fast", 3)                 # predicate yes, switch on
    assert double(-3) == -6                         # predicate no: the reference
    with fastpath.disabled():
        assert double(3) == 6                       # switch off: the reference
    assert double(3) == ("fast", 3)                 # the block restored the switch
    assert double.reference(3) == 6 and double.__name__ == "double"
    fastpath.POINTS.remove(double)


def test_only_marked_functions_take_a_fast_path():
    with pytest.raises(TypeError, match="not marked @has_fast_path"):
        fastpath.register(np.sum, np.sum, lambda *a: True)
    stranger = types.FunctionType((lambda: 0).__code__, {})
    stranger.reference = stranger  # looks like a point, was never marked
    with pytest.raises(TypeError, match="not marked"):
        fastpath.register(stranger, stranger, lambda *a: True)


def test_minisft_fused_is_read_once_at_import(monkeypatch):
    """fastpath.ENABLED is MINISFT_FUSED != "0" as the environment was at import; changing the
    environment later changes nothing."""
    code = "import minisft.core.fastpath as f; print(f.ENABLED)"
    for flag, expected in (("0", "False"), (None, "True")):
        env = {k: v for k, v in os.environ.items() if k != "MINISFT_FUSED"}
        if flag is not None:
            env["MINISFT_FUSED"] = flag
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert run.stdout.strip() == expected, (flag, run.stdout, run.stderr)
    monkeypatch.setenv("MINISFT_FUSED", "0" if fastpath.ENABLED else "1")  # after import: no effect
    assert fastpath.ENABLED is (os.environ.get("MINISFT_FUSED") == "0")


def test_importing_minisft_sets_no_environment_variable():
    code = "import os, json; before = dict(os.environ); import minisft; print(json.dumps(dict(os.environ) == before))"
    run = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, LOCAL_WORLD_SIZE="2"), capture_output=True,
                         text=True, check=True)
    assert run.stdout.strip() == "true", run.stderr
