"""Data parallelism is exact (minisft.distributed.data_parallel): N ranks compute what one process
computes on the same global batch.

In-process: the row shards partition the batch; `grad_scale` scales exactly the backward; the
weighted shares of N simulated ranks (a Communicator of world size N whose collectives do nothing,
summed here by hand) add up to the single process's loss and gradients; ignored targets are
refused. Under `mpiexec -n 2` (tests/data_parallel_worker.py):
every method's prepare() and 20 training steps on 2 ranks equal the single process's — the same
selections, masks, groups and rows; losses, statistics and parameters within 1e-10 — and both ranks
hold bit-identical replicas.
"""

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

import minisft.app.compare as cmp
import minisft.app.experiment as ex
from minisft.app import cli
from minisft.core.backend import rng as make_rng
from minisft.training.checkpoint import load_checkpoint
from minisft.distributed import Communicator, DistributedError
from minisft.model.adapters import LoRA
from minisft.distributed import data_parallel as dp
from minisft.distributed.overlap import make_reducer
from minisft.core.errors import MinisftError
from tests.data_parallel_worker import PREPARE_CASES, TRAIN_CASES, TRAIN_STEPS, run_spec, tiny_model, tiny_task
from tests.test_distributed import _env, _mpiexec, gpus  # noqa: F401  (gpus: the fixture)
from tests.test_train import MICRO

WORKER = Path(__file__).with_name("data_parallel_worker.py")
ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-10  # losses, parameters, statistics: 2 ranks vs 1 process, float64
FD_TOL = 1e-8  # AdaPEFT's finite-difference curvature estimates (tests/data_parallel_worker.py)


def _max_rel(a, b):
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


# ---------------------------------------------------------------------------------- the shards
@given(B=st.integers(1, 64), N=st.integers(1, 64))
@example(B=7, N=3)  # unequal shards
@example(B=4, N=4)  # one row each
def test_shard_rows_partition_the_batch_into_contiguous_near_equal_blocks(B, N):
    if B < N:
        with pytest.raises(MinisftError, match=f"batch_size={B}: expected at least one row per rank"):
            dp.shard_rows(B, 0, N)
        return
    shards = [dp.shard_rows(B, r, N) for r in range(N)]
    assert shards[0][0] == 0 and shards[-1][1] == B
    assert all(hi == lo for (_, hi), (lo, _) in zip(shards, shards[1:])), shards  # contiguous, no overlap
    sizes = [hi - lo for lo, hi in shards]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1, sizes


def test_shard_rows_rejects_bad_ranks():
    with pytest.raises(MinisftError, match=r"rank=2: expected a rank in \[0, 2\)"):
        dp.shard_rows(8, 2, 2)
    with pytest.raises(TypeError, match="world_size"):
        dp.shard_rows(8, 0, 1.5)


# --------------------------------------------------------------------------------- grad_scale
def test_grad_scale_scales_every_gradient_and_not_the_loss():
    model = tiny_model()
    model.unfreeze()
    x, y = tiny_task().sample(make_rng(1))
    loss1, g1 = model.loss_and_grads(x, y)
    loss3, g3 = model.loss_and_grads(x, y, grad_scale=0.375)
    assert loss3 == loss1
    for k in g1:
        d = _max_rel(g3[k], 0.375 * g1[k])
        assert d <= 1e-15, f"{k}: max rel diff {d:.3e}"
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(MinisftError, match="grad_scale="):
            model.loss_and_grads(x, y, grad_scale=bad)


# ------------------------------------------------------------------------ simulated ranks
@given(B=st.integers(2, 9), N=st.integers(2, 5), seed=st.integers(0, 2**16))
@example(B=7, N=3, seed=0)  # shares 2/7, 2/7, 3/7
def test_weighted_shares_of_the_ranks_sum_to_the_single_process(B, N, seed):
    """Σ_r (w_r L_r, w_r ∇L_r) over N simulated ranks = (L, ∇L) of one process on the B rows: a
    missing weight (grad_scale) or overlapping shards break it by a factor, not by rounding."""
    assume(N <= B)  # fewer rows than ranks is refused (test_shard_rows_partition_...); not a draw here
    model = tiny_model(seed=seed % 3)
    model.unfreeze()
    x, y = tiny_task(batch_size=B).sample(make_rng(seed))
    loss, grads = model.loss_and_grads(x, y)
    shares = [dp.local_loss_and_grads(model, x, y, Communicator(rank=r, world_size=N)) for r in range(N)]
    assert abs(sum(s[0] for s in shares) - loss) <= TOL
    for k in grads:
        d = _max_rel(sum(s[1][k] for s in shares), grads[k])
        assert d <= 1e-13, f"{k}: max rel diff {d:.3e}"
    forward = sum(dp.loss(model, x, y, Communicator(rank=r, world_size=N)) for r in range(N))
    assert abs(forward - loss) <= 1e-13


def test_mean_batch_loss_assigns_each_batch_to_one_rank():
    model, task = tiny_model(), tiny_task()
    batches = task.val_target + task.val_source  # 3 batches over 2 ranks: rank 0 gets 2, rank 1 gets 1
    single = dp.mean_batch_loss(model, batches)
    assert single == float(np.mean([model.loss(x, y) for x, y in batches]))
    summed = sum(dp.mean_batch_loss(model, batches, Communicator(rank=r, world_size=2)) for r in range(2))
    assert abs(summed - single) <= 1e-13
    assert dp.mean_batch_loss(model, []) is None


def test_ignored_targets_are_refused_when_ranks_share_a_batch():
    model = tiny_model()
    x, y = tiny_task().sample(make_rng(0))
    y = y.copy()
    y[0, 0] = -100
    with pytest.raises(MinisftError, match="targets=.*ignored entries.*world size 2"):
        dp.local_loss_and_grads(model, x, y, Communicator(rank=0, world_size=2))
    dp.local_loss_and_grads(model, x, y)  # one process: the mean over the valid targets, as always


# ---------------------------------------------------------- the all-reduce overlapped with the backward
def test_the_overlapped_step_equals_the_plain_one_bit_for_bit():
    """loss_and_grads_overlapped on one process is model.loss_and_grads; on a simulated rank (world
    size 2, collectives that do nothing) it is reduce_loss_and_grads after local_loss_and_grads: the
    same loss, gradients and report, bit for bit (the CPU backends reduce everything at the end)."""
    model = tiny_model()
    model.unfreeze()
    x, y = tiny_task().sample(make_rng(2))
    loss, grads = model.loss_and_grads(x, y)
    o_loss, o_grads, report = dp.loss_and_grads_overlapped(model, x, y, Communicator())
    assert o_loss == loss and report is None and set(o_grads) == set(grads)
    for k in grads:
        np.testing.assert_array_equal(o_grads[k], grads[k], err_msg=k)
    comm = Communicator(rank=1, world_size=2)
    p_loss, p_grads, p_report = dp.reduce_loss_and_grads(comm, *dp.local_loss_and_grads(model, x, y, comm))
    o_loss, o_grads, o_report = dp.loss_and_grads_overlapped(model, x, y, comm)
    assert o_loss == p_loss and o_report == p_report and set(o_grads) == set(p_grads)
    for k in p_grads:
        np.testing.assert_array_equal(o_grads[k], p_grads[k], err_msg=k)


def test_a_gradient_reported_twice_or_never_is_refused():
    grads = {"a": np.zeros(2), "b": np.zeros(3)}
    for reports in ([["a"]], [["a", "b"], ["b"]]):
        reducer = make_reducer(Communicator(rank=0, world_size=2))
        for names in reports:
            reducer.ready(grads, names)
        with pytest.raises(DistributedError, match="expected each gradient exactly once"):
            reducer.finish(grads, 0.0)


class _Stream:
    """A CUDA stream's stand-in: logs what is queued on it, and is CuPy's current stream inside `with`."""

    def __init__(self, name, log, current):
        self.name, self.log, self.current = name, log, current

    def record(self):
        self.log.append(("record", self.name, len(self.log)))
        return len(self.log) - 1  # the event: its place in the log

    def wait_event(self, event):
        self.log.append(("wait", self.name, event))

    def __enter__(self):
        self.current.append(self)

    def __exit__(self, *exc):
        self.current.pop()


class _FakeNCCL(Communicator):
    """Rank 0 of 2 whose "nccl" collectives double the array (the other rank holds the same numbers)
    and log the stream they were queued on; CuPy's streams and arrays are NumPy and `_Stream`s."""

    backend = "nccl"

    def __init__(self):
        super().__init__(rank=0, world_size=2)
        self.log, self.current = [], []
        compute, side = _Stream("compute", self.log, self.current), _Stream("side", self.log, self.current)
        self.current.append(compute)
        self.side_stream = lambda: side
        cuda = type("cuda", (), {"get_current_stream": staticmethod(lambda: self.current[-1])})
        self.cupy = type("cupy", (), {"cuda": cuda, "asarray": staticmethod(np.asarray), "empty": staticmethod(np.empty)})

    def _allreduce_one(self, a):
        a *= 2
        self.log.append(("allreduce", self.current[-1].name, a.size))

    def _wait(self):
        self.log.append(("host waits", self.current[-1].name, None))


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_the_nccl_reducer_queues_each_block_on_the_side_stream_after_its_backward(kind):
    """The NCCL reducer's host side with stand-in streams: every gradient reduced once (doubled: the
    sum over 2 equal ranks), the loss too, the same report bytes as the plain path; each group's
    collectives queued on the side stream after it waited for an event recorded on the compute
    stream once the group was reported, at most 1 KB a bucket; finish makes the compute stream wait
    for the side stream after the last collective, then waits on the host."""
    model = tiny_model()
    model.unfreeze()
    if kind == "lora":
        model.freeze()
        for layer in ("h.0.attn.c_attn", "h.1.mlp.c_fc"):
            model.add_adapter(layer, LoRA(model, layer, r=2, alpha=4))
    x, y = tiny_task().sample(make_rng(2))
    comm = _FakeNCCL()
    local_loss, local = dp.local_loss_and_grads(model, x, y, comm)
    local = {k: v.copy() for k, v in local.items()}
    reducer = make_reducer(comm, bucket_bytes=1024)
    assert type(reducer).__name__ == "StreamReducer"
    groups = []

    def ready(grads, names):
        groups.append((list(names), len(comm.log)))
        reducer.ready(grads, names)

    loss, grads = model.loss_and_grads(*[a[:4] for a in (x, y)], grad_scale=0.5, on_ready=ready)
    loss, grads, report = reducer.finish(grads, 0.5 * loss)
    assert loss == 2 * local_loss
    for k in local:
        np.testing.assert_array_equal(grads[k], 2 * local[k], err_msg=k)
    assert report.bytes == 8 * sum(a.size for a in local.values()) + 8 and report.tensors == len(local) + 1
    log = comm.log
    collectives = [e for e in log if e[0] == "allreduce"]
    assert len(collectives) == report.buckets and all(e[1] == "side" and e[2] * 8 <= 1024 for e in collectives)
    for names, start in groups:
        if not names:
            continue
        record = next(i for i in range(start, len(log)) if log[i][:2] == ("record", "compute"))
        assert log[record + 1] == ("wait", "side", record), log[start:]
        first = next(i for i in range(start, len(log)) if log[i][0] == "allreduce")
        assert record < first
    last = max(i for i, e in enumerate(log) if e[0] == "allreduce")
    assert log[last + 1][:2] == ("record", "side") and log[last + 2] == ("wait", "compute", last + 1)
    assert log[last + 3] == ("host waits", "compute", None) and len(log) == last + 4


# ------------------------------------------------------------------------- MPI, two ranks
def _worker_job(mode):
    """{case: [result of rank 0, result of rank 1]} of one `mpiexec -n 2 ... MODE` job."""
    cmd = [_mpiexec(), "-n", "2", sys.executable, str(WORKER), mode]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=_env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return _results(r.stdout)


@pytest.fixture(scope="module")
def prepared():
    return _worker_job("prepare")


@pytest.fixture(scope="module")
def trained():
    return _worker_job("train")


@pytest.mark.parametrize("case", list(PREPARE_CASES))
def test_prepare_on_two_ranks_equals_one_process(prepared, case):
    """Selections (SPruFT rows/columns/groups, LoRA-drop kept/shared layers, AdaPEFT's chosen groups),
    every score and statistic, the adapters' initial values and the generator state: the same on
    each of 2 ranks as in one process; both ranks bit-identical."""
    _check_results({case: prepared.get(case, [])}, [case], "mpi", 2)


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_training_on_two_ranks_equals_one_process(trained, case):
    """TRAIN_STEPS steps (accumulation 2 in some cases): every loss and evaluation, every parameter,
    the method's report and state (GMT's masks and kept counts, MGPP's masks, ...) the same on each of
    2 ranks as in one process; both ranks bit-identical; the work really split (half the activations
    per rank) and one all-reduce per step of exactly the trainable gradients (float64) + the loss
    (the cases without accumulation through the trainer's overlapped path, here reducing at the end)."""
    _check_trained({case: trained.get(case, [])}, [case], "mpi", 2)


def _check_trained(results, cases, backend, world):
    """The results of every case as the training tests require; on NCCL the cases without
    accumulation reduced their gradients in groups overlapped with the backward (more buckets than
    the plain path's one: the tiny float64 model's gradients and loss fit one bucket)."""
    _check_results(results, cases, backend, world)
    for case, ranks in results.items():
        overlapped = backend == "nccl" and TRAIN_CASES[case][2].get("accumulation", 1) == 1
        for res in ranks:
            d = res["distributed"]
            assert d is not None and d["world_size"] == world and d["backend"] == backend, res
            assert d["allreduce"]["bytes_per_step"] == 8 * res["trainable_elements"] + 8, d
            assert (d["allreduce"]["buckets"] > 1) == overlapped, (case, d)
            assert res["activation_bytes"]["parallel"] < res["activation_bytes"]["single"], res["activation_bytes"]
    assert TRAIN_STEPS >= 20


# -------------------------------------------------------------------- runs, resumes, failures
def _mpi_run(spec, timeout=60, **env):
    """(exit status, seconds, output, {rank: result}) of the worker's `run SPEC` under mpiexec -n 2."""
    cmd = [_mpiexec(), "-n", "2", sys.executable, str(WORKER), "run", json.dumps(spec)]
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                           env=_env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", **env))
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the 2-rank job hung for {timeout} s (stderr: {e.stderr})")
    out = r.stdout + r.stderr
    ranks = {res["rank"]: res for ranks in _results(r.stdout).values() for res in ranks}
    return r.returncode, time.monotonic() - t0, out, ranks


def _single_run(spec, wait=10.0):
    """run_spec in this process; a run directory still locked by a rank of an aborted job that the
    kernel has not reaped yet (mpiexec returns once MPI_Abort is sent) is retried for `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        res = run_spec(Communicator(), spec)
        if not (res["error"] or "").startswith("LockedError") or time.monotonic() > deadline:
            return res
        time.sleep(0.1)


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


RUN_FILES = [".lock", "log.jsonl", "model", "model/manifest.json", "model/merged.safetensors",
             "model/trained.safetensors", "result.json"]


@pytest.mark.parametrize("case", ["mgpp", "spruft-taylor"])
def test_resume_with_another_number_of_ranks_continues_the_same_run(case, tmp_path):
    """2 ranks stop after step 11 (checkpoint at 10) and one process resumes to step 20; one process
    stops and 2 ranks resume: both equal the uninterrupted run within 1e-10 (every loss, every
    parameter), with one log record per step, the run's files only (no temp file, no checkpoint
    left) and the 2-rank parts really on 2 ranks."""
    whole = _single_run({"case": case, "workdir": str(tmp_path / "whole")})
    w1, w2 = tmp_path / "two-then-one", tmp_path / "one-then-two"
    rc, _, out, ranks = _mpi_run({"case": case, "workdir": str(w1), "stop_after": 11})
    assert rc == 0 and all(r["stopped"] for r in ranks.values()), out[-3000:]
    first = _single_run({"case": case, "workdir": str(w1), "resume": True})
    assert _single_run({"case": case, "workdir": str(w2), "stop_after": 11}) == {"error": None, "stopped": True}
    rc, _, out, ranks = _mpi_run({"case": case, "workdir": str(w2), "resume": True})
    assert rc == 0 and ranks[0]["error"] is None and ranks[0]["distributed"]["world_size"] == 2, out[-3000:]
    second = ranks[0]
    reference = load_checkpoint(tmp_path / "whole" / "model" / "trained.safetensors")[0]
    for name, folder, res in (("2 ranks -> 1", w1, first), ("1 -> 2 ranks", w2, second)):
        assert len(res["losses"]) == TRAIN_STEPS
        d = max(abs(a - b) for a, b in zip(res["losses"], whole["losses"]))
        assert d <= TOL, f"{name}: max loss diff {d:.3e}"
        got = load_checkpoint(folder / "model" / "trained.safetensors")[0]
        assert set(got) == set(reference)
        d = max(_max_rel(got[k], reference[k]) for k in reference)
        assert d <= TOL, f"{name}: max parameter diff {d:.3e}"
        steps = [json.loads(line)["step"] for line in (folder / "log.jsonl").read_text().splitlines()]
        assert steps == list(range(1, TRAIN_STEPS + 1)), f"{name}: log steps {steps}"
        assert _files(folder) == RUN_FILES, f"{name}: {_files(folder)}"


@pytest.mark.parametrize("failure, message", [
    ({"kill_after": [1, 7]}, "signal 9"),  # mpiexec ends the job when a rank dies
    ({"raise_after": [1, 7]}, "RuntimeError: planted failure on rank 1 after step 7"),
    ({"kill_in_checkpoint_write": 3}, "signal 9"),  # rank 0 dies renaming its step-6 checkpoint
])
def test_a_failing_rank_ends_the_job_and_the_last_checkpoint_resumes(failure, message, tmp_path):
    """A rank killed or raising after step 7, or rank 0 killed inside its third checkpoint write:
    the job ends at once (well within the 30 s collective timeout) naming the failure; the
    checkpoint on disk is the last complete one (step 6, or 4 when the write of 6 was cut), and one
    process resumes from it to the uninterrupted run's numbers."""
    spec = {"case": "gmt-global-frozen", "workdir": str(tmp_path / "run"), "checkpoint_every": 2, **failure}
    rc, seconds, out, ranks = _mpi_run(spec, MINISFT_DIST_TIMEOUT="30")
    assert rc != 0 and seconds < 20 and not ranks, f"rc {rc} after {seconds:.1f} s\n{out[-3000:]}"
    assert message in out, out[-3000:]
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["step"] == (4 if "kill_in_checkpoint_write" in failure else 6)
    resumed = _single_run({"case": "gmt-global-frozen", "workdir": str(tmp_path / "run"), "checkpoint_every": 2,
                           "resume": True})
    whole = _single_run({"case": "gmt-global-frozen", "workdir": str(tmp_path / "whole"), "checkpoint_every": 2})
    assert resumed["error"] is None and whole["error"] is None, (resumed, whole)
    d = max(abs(a - b) for a, b in zip(resumed["losses"], whole["losses"]))
    assert len(resumed["losses"]) == TRAIN_STEPS and d <= TOL, f"max loss diff {d:.3e}"
    assert not [p for p in _files(tmp_path / "run") if p.endswith(".tmp")], _files(tmp_path / "run")


def test_a_refused_checkpoint_is_the_same_error_on_every_rank(tmp_path):
    """Resuming with another learning rate, or from a damaged file (read by rank 0 alone): both
    ranks raise the same CheckpointError (none waits in a collective the other skipped)."""
    run = tmp_path / "run"
    assert _single_run({"case": "lora", "workdir": str(run), "stop_after": 11}) == {"error": None, "stopped": True}
    rc, _, out, ranks = _mpi_run({"case": "lora", "workdir": str(run), "resume": True, "lr": 0.5})
    assert rc == 0 and set(ranks) == {0, 1}, out[-3000:]
    assert all(r["error"].startswith("CheckpointError: resume=") and "train.lr: 0.01 then, 0.5 now" in r["error"]
               for r in ranks.values()), ranks
    data = bytearray((run / "checkpoint.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (run / "checkpoint.safetensors").write_bytes(bytes(data))
    rc, _, out, ranks = _mpi_run({"case": "lora", "workdir": str(run), "resume": True})
    assert rc == 0 and set(ranks) == {0, 1}, out[-3000:]
    assert all("does not match its checksum" in r["error"] and r["error"].startswith("CheckpointError")
               for r in ranks.values()), ranks


# -------------------------------------------------------------------------- the command line
def _cli_job(args, prefix=None, timeout=120):
    """(exit status, stdout, stderr) of `minisft ARGS` (the micro preset registered) as 2 MPI ranks,
    or under `prefix` (a launcher command) when given."""
    prefix = prefix or [_mpiexec(), "-n", "2"]
    r = subprocess.run([*prefix, sys.executable, str(WORKER), "cli", *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, env=_env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"))
    return r.returncode, r.stdout, r.stderr


@pytest.fixture
def micro(monkeypatch):
    monkeypatch.setitem(ex.PRESETS, "micro", MICRO)
    return MICRO


def test_compare_on_two_ranks_writes_the_serial_compare_json(micro, tmp_path, capsys):
    """`mpiexec -n 2 minisft compare` runs the rows on the two ranks and writes the compare.json of
    one process byte for byte (same seeds, same base, same numbers); the table is printed once."""
    args = ["compare", "--preset", "micro", "--only", "full", "lora", "spruft", "--quiet"]
    assert cli.main([*args, "--workdir", str(tmp_path / "serial")]) == 0
    rc, out, err = _cli_job([*args, "--workdir", str(tmp_path / "ranks")])
    assert rc == 0, out[-2000:] + err[-3000:]
    serial, ranks = (next((tmp_path / w).glob("runs/*/compare.json")) for w in ("serial", "ranks"))
    assert serial.read_bytes() == ranks.read_bytes()
    assert out.count("results: ") == 1 and out.count("(base model)") == 1, out
    chosen = [label for label, name, *_ in cmp.compare_runs(MICRO) if name in ("full", "lora", "spruft")]
    assert [r["label"] for r in json.loads(ranks.read_text())["rows"]] == chosen


def test_finetune_on_two_ranks_through_the_cli_equals_one_process(micro, tmp_path):
    """`mpiexec -n 2 minisft finetune` in float64: the base pretrained data-parallel and the run's
    every loss within 1e-10 of one process's; rank 0 alone wrote the cache and the run; a second
    finetune on 2 ranks loads the base that rank 0 cached."""
    args = ["finetune", "--preset", "micro", "--method", "loradrop", "--set", "probe_steps=2", "--dtype", "float64",
            "--quiet"]
    assert cli.main([*args, "--workdir", str(tmp_path / "serial")]) == 0
    rc, out, err = _cli_job([*args, "--workdir", str(tmp_path / "ranks")])
    assert rc == 0, out[-2000:] + err[-3000:]
    assert out.count("run: ") == 1, out
    serial, ranks = (json.loads(next((tmp_path / w).glob("runs/*/loradrop/seed0/result.json")).read_text())
                     for w in ("serial", "ranks"))
    d = max(abs(a["loss"] - b["loss"]) for a, b in zip(serial["history"]["train"], ranks["history"]["train"]))
    assert d <= TOL and len(ranks["history"]["train"]) == MICRO.finetune_steps, f"max loss diff {d:.3e}"
    assert ranks["report"]["kept"] == serial["report"]["kept"] and ranks["report"]["shared"] == serial["report"]["shared"]
    assert ranks["distributed"]["world_size"] == 2 and "distributed" not in serial
    assert len(list((tmp_path / "ranks" / "pretrain").glob("*.safetensors"))) == 1
    rc, out, err = _cli_job([*args[:-1], "--workdir", str(tmp_path / "ranks"), "--label", "again"])
    assert rc == 0 and err.count("base model: micro, loaded from") == 1 and "pretraining" not in err, err[-3000:]


def test_numpy_ranks_under_minisft_launch_are_refused_pointing_at_mpirun(micro, tmp_path):
    rc, out, err = _cli_job(["finetune", "--preset", "micro", "--method", "lora", "--backend", "numpy", "--workdir",
                             str(tmp_path)], prefix=[sys.executable, "-m", "minisft", "launch", "--nproc", "2", "--"])
    assert rc == 2, out + err
    assert "expected CuPy arrays (NCCL), or NumPy arrays under an MPI launcher (mpirun -n N" in err, err


def test_commands_without_data_parallel_work_are_refused_on_several_ranks(micro, tmp_path):
    rc, out, err = _cli_job(["adapeft-front", "--preset", "micro", "--workdir", str(tmp_path), "--quiet"])
    assert rc == 2 and err.count("minisft: error: adapeft-front: '2 ranks': expected one process") == 2, err[-3000:]
    rc, out, err = _cli_job(["compare", "--preset", "micro", "--workdir", str(tmp_path), "--gpus", "1"])
    assert rc == 2 and "minisft: error: --gpus: 1: expected the job's world size, 2" in err, err[-3000:]


def test_compare_gpus_starts_the_ranks_without_the_option(micro, tmp_path, monkeypatch, capsys):
    """--gpus N re-runs the same command line, minus --gpus, as N ranks of `minisft launch`; without
    CuPy and a GPU it is a clear error before any work."""
    import minisft.core.backend
    import minisft.distributed.launch

    args = ["compare", "--preset", "micro", "--workdir", str(tmp_path), "--gpus", "4", "--only", "lora", "--quiet"]
    assert cli.main([*args, "--backend", "numpy"]) == 2
    assert "minisft: error: --gpus: 4: expected a machine with GPUs and CuPy" in capsys.readouterr().err
    started = []
    monkeypatch.setattr(minisft.core.backend, "resolve_backend", lambda name="auto": "cupy")
    monkeypatch.setattr(minisft.distributed.launch, "launch", lambda command, nproc: started.append((command, nproc)) or 0)
    assert cli.main([*args, "--backend", "cupy"]) == 0
    assert started == [([sys.executable, "-m", "minisft", "compare", "--preset", "micro", "--workdir", str(tmp_path),
                         "--only", "lora", "--quiet", "--backend", "cupy"], 4)]


@given(costs=st.lists(st.one_of(st.none(), st.integers(0, 9)), min_size=0, max_size=7), n=st.integers(1, 3))
@example(costs=[3, 3, 2, 2, 2], n=2)  # LPT's classic 7/6 case: 7 vs the optimum 6
def test_assign_jobs_is_longest_first_within_4_3_of_the_best_assignment(costs, n):
    """Every job on exactly one rank; the makespan at most 4/3 - 1/(3n) of the brute-force optimum
    (Graham 1969), unknown costs counted as the mean of the known ones."""
    parts = cmp.assign_jobs(costs, n)
    assert sorted(j for part in parts for j in part) == list(range(len(costs))) and len(parts) == n
    known = [c for c in costs if c is not None]
    filled = [c if c is not None else (sum(known) / len(known) if known else 1.0) for c in costs]
    makespan = max(sum(filled[j] for j in part) for part in parts)
    best = min((max(sum(filled[j] for j in range(len(costs)) if a[j] == r) for r in range(n))
                for a in itertools.product(range(n), repeat=len(costs))), default=0.0)
    assert makespan <= (4 / 3 - 1 / (3 * n)) * best + 1e-9, (parts, makespan, best)


def test_the_trainer_stops_replicas_that_differ(tmp_path):
    """One weight entry of rank 1 1e-6 off after the first update (full fine-tuning: the weight trains):
    after the first step both ranks raise the same error naming rank 1, and no result is written."""
    rc, _, out, ranks = _mpi_run({"case": "full", "workdir": str(tmp_path / "run"), "perturb_rank": 1})
    assert rc == 0 and set(ranks) == {0, 1}, out[-3000:]
    assert all(r["error"].startswith("DistributedError: the replicas after step 1: rank 1 differs from rank 0")
               for r in ranks.values()), ranks
    assert not (tmp_path / "run" / "result.json").exists()


def test_check_replicas_names_the_differing_rank():
    class TwoRanks(Communicator):  # rank 1 reports another digest
        def _allgather_bytes(self, data):
            return [data, json.dumps("0" * 64).encode()]

    with pytest.raises(DistributedError, match="rank 1 differs from rank 0"):
        dp.check_replicas(TwoRanks(rank=0, world_size=2), "1" * 64)


# ------------------------------------------------------------------------------------ GPUs
def _results(stdout, mode=None):
    """{case: [every rank's result]} of the worker's RESULT lines (of `mode` only, when given)."""
    out = {}
    for line in stdout.splitlines():
        line = line.split("] ", 1)[1] if line.startswith("[") else line  # minisft launch's rank prefix
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            if mode is None or res["mode"] == mode:
                out[res["case"]] = res["ranks"]
    return out


def _check_results(results, cases, backend, world):
    assert set(results) == set(cases), f"results for {sorted(results)}, expected {sorted(cases)}"
    for case, ranks in results.items():
        assert len(ranks) == world, case
        for res in ranks:
            where = f"{case}, rank {res['rank']} ({res['backend']}, world {res['world_size']})"
            assert res["backend"] == backend, where
            assert res["differences"] == [], f"{where}: differs beyond rounding at {res['differences']}"
            assert res["max_rel_diff"] <= TOL, f"{where}: max rel diff {res['max_rel_diff']:.3e}"
            assert res["max_rel_diff_finite_difference"] <= FD_TOL, \
                f"{where}: finite-difference estimates max rel diff {res['max_rel_diff_finite_difference']:.3e}"
            assert res["replicas_agree"], f"{where}: the ranks' replicas differ"


def _gpu_prefix(launcher, world):
    if launcher == "minisft-launch":
        return [sys.executable, "-m", "minisft.distributed.launch", "--nproc", str(world), "--"]
    return [_mpiexec(), "-n", str(world)]


@pytest.mark.gpu
@pytest.mark.parametrize("world, launcher", [(2, "mpirun"), (4, "minisft-launch")])
def test_prepare_and_training_on_gpus_with_nccl_equal_one_gpu(gpus, world, launcher):
    """Every method's prepare() and TRAIN_STEPS training steps on `world` GPUs (NCCL, float64) equal
    one GPU's: 2 GPUs started by mpirun (NCCL bootstrapped over MPI), 4 by `minisft launch` (TCP
    rendezvous). The cases without gradient accumulation train through the all-reduce overlapped
    with the backward (minisft.distributed.overlap), those with accumulation 2 through the plain one."""
    if world > gpus:
        pytest.skip(f"{world} GPUs asked, {gpus} visible")
    r = subprocess.run([*_gpu_prefix(launcher, world), sys.executable, str(WORKER), "prepare+train", "cupy"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _check_results(_results(r.stdout, "prepare"), PREPARE_CASES, "nccl", world)
    _check_trained(_results(r.stdout, "train"), TRAIN_CASES, "nccl", world)


@pytest.mark.gpu
def test_training_on_two_gpus_under_minisft_launch_equals_one_gpu(gpus):
    """TRAIN_STEPS steps of every method on 2 GPUs started by `minisft launch` (NCCL, float64) equal one
    GPU's within 1e-10: the cases without accumulation (full-overlapped, lora, spruft-obd, ...) through
    the trainer's all-reduce overlapped with the backward on NCCL's side stream
    (minisft.distributed.overlap; `_check_trained` checks that they did), the others through the plain
    one after the backward."""
    if gpus < 2:
        pytest.skip(f"2 GPUs asked, {gpus} visible")
    r = subprocess.run([*_gpu_prefix("minisft-launch", 2), sys.executable, str(WORKER), "train", "cupy"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _check_trained(_results(r.stdout, "train"), TRAIN_CASES, "nccl", 2)


@pytest.mark.gpu
def test_resume_on_one_gpu_after_two_and_on_two_after_one(gpus, tmp_path):
    """The CPU resume test on GPUs: 2 GPUs (NCCL) stop after step 11, one GPU resumes; one GPU stops,
    2 GPUs resume; both equal the uninterrupted one-GPU run within 1e-10."""
    spec = {"case": "spruft-taylor", "backend": "cupy"}

    def two(extra):
        r = subprocess.run([*_gpu_prefix("minisft-launch", 2), sys.executable, str(WORKER), "run",
                            json.dumps({**spec, **extra})], capture_output=True, text=True, timeout=300, cwd=ROOT,
                           env=_env())
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return {res["rank"]: res for ranks in _results(r.stdout).values() for res in ranks}

    whole = _single_run({**spec, "workdir": str(tmp_path / "whole")})
    assert all(r["stopped"] for r in two({"workdir": str(tmp_path / "a"), "stop_after": 11}).values())
    first = _single_run({**spec, "workdir": str(tmp_path / "a"), "resume": True})
    assert _single_run({**spec, "workdir": str(tmp_path / "b"), "stop_after": 11})["stopped"]
    second = two({"workdir": str(tmp_path / "b"), "resume": True})[0]
    assert second["distributed"]["world_size"] == 2
    for res in (first, second):
        d = max(abs(a - b) for a, b in zip(res["losses"], whole["losses"]))
        assert len(res["losses"]) == TRAIN_STEPS and d <= TOL, f"max loss diff {d:.3e}"


# ----------------------------------------------------------------------------- the benchmark
@pytest.mark.slow
def test_bench_dp_runs_on_two_cpu_ranks_and_counts_the_reduced_bytes(tmp_path):
    """reference_models.bench.data_parallel end to end on the CPU (mpiexec + gloo): one row per implementation,
    method and world size; at N = 2 minisft all-reduces exactly the LoRA factors (r·(d_in + d_out)
    floats per linear layer) plus its 8-byte loss, with and without the overlap (--no-overlap), DDP the
    same factors."""
    _mpiexec()
    out = tmp_path / "bench-dp.json"
    cmd = [sys.executable, "-m", "reference_models.bench.data_parallel", "--backend", "numpy", "--preset", "tiny",
           "--world-size", "1,2", "--steps", "2", "--warmup", "1", "--methods", "lora", "--no-overlap", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=_env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(row["impl"], row["world_size"]): row for row in result["rows"]}
    impls = ("minisft", "minisft-no-overlap", "torch-ddp")
    assert set(rows) == {(impl, n) for impl in impls for n in (1, 2)}
    C, L, r_ = 64, 2, 8  # the tiny preset, LoRA r=8
    lora_floats = L * r_ * sum(d_in + d_out for d_out, d_in in ((3 * C, C), (C, C), (4 * C, C), (C, 4 * C)))
    for impl in ("minisft", "minisft-no-overlap"):
        assert rows[(impl, 2)]["allreduce_bytes_per_step"] == 4 * lora_floats + 8
        assert rows[(impl, 1)]["allreduce_bytes_per_step"] == 0
    assert rows[("torch-ddp", 2)]["allreduce_bytes_per_step"] == 4 * lora_floats
    assert set(result["scaling_efficiency"]) == {f"{i} lora N={n}" for i in impls for n in (1, 2)}
