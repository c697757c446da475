"""minisft.distributed and minisft.distributed.launch: bucket plans, the launch environment, the rendezvous, the
launcher, and the MPI backend under `mpiexec -n 2` (collectives against serial sums, failures that end
the job instead of hanging). The NCCL checks are GPU tests for a machine with 2+ GPUs.

The MPI tests start one 2-rank server (tests/distributed_worker.py serve) and send it
hypothesis-drawn cases; they skip, saying why, when mpi4py or mpiexec is missing
(`pip install 'minisft[mpi]'`, part of the test extra).
"""

import importlib.util
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from minisft.distributed import launch as launcher
from minisft.distributed import (DEFAULT_BUCKET_BYTES, TIMEOUT_EXIT_CODE, Communicator, DistributedError, Placement,
    choose_backend, from_environment, plan_buckets, read_placement, resolve_timeout)
from minisft.distributed.buckets import pack, unpack
from minisft.distributed.rendezvous import rendezvous
from minisft.distributed.watchdog import Watchdog
from minisft.core.errors import MinisftError
from minisft.distributed.rank_threads import THREAD_VARIABLES, rank_share, thread_environment
from tests.distributed_worker import digest, rank_tensors

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


# ------------------------------------------------------------------------------ bucket plans
def _oracle_position(sizes, dtypes, cap_bytes):
    """{(tensor, element): (bucket index, offset)} by the closed form: within one dtype, element k of
    the concatenation sits in bucket k // cap at offset k % cap; dtypes in first-appearance order."""
    where, first = {}, 0
    for dtype in dict.fromkeys(np.dtype(d) for d in dtypes):
        cap = max(1, cap_bytes // dtype.itemsize)
        k = 0
        for i, (n, d) in enumerate(zip(sizes, dtypes)):
            if np.dtype(d) != dtype:
                continue
            for e in range(n):
                where[(i, e)] = (first + k // cap, k % cap)
                k += 1
        first += -(-k // cap)
    return where


specs_st = st.lists(st.tuples(st.integers(0, 40), st.sampled_from(["float64", "float32", "float16", "int64"])),
                    min_size=1, max_size=10)


@given(specs=specs_st, bucket_bytes=st.integers(1, 200))
@example(specs=[(0, "float64"), (5, "float64")], bucket_bytes=8)  # an empty tensor, one element per bucket
@example(specs=[(3, "float64")], bucket_bytes=1)  # a bucket smaller than one item still holds one
@example(specs=[(10, "float32"), (1, "float64"), (7, "float32")], bucket_bytes=12)
def test_plan_buckets_places_every_element_once_by_the_closed_form(specs, bucket_bytes):
    sizes, dtypes = [n for n, _ in specs], [d for _, d in specs]
    buckets = plan_buckets(sizes, dtypes, bucket_bytes)
    oracle = _oracle_position(sizes, dtypes, bucket_bytes)
    seen = {}
    for b, bucket in enumerate(buckets):
        assert bucket.size * bucket.dtype.itemsize <= max(bucket_bytes, bucket.dtype.itemsize)
        assert bucket.size == sum(s.size for s in bucket.segments) > 0
        filled = 0
        for s in bucket.segments:
            assert np.dtype(dtypes[s.tensor]) == bucket.dtype and s.size > 0 and s.offset == filled
            filled += s.size
            for j in range(s.size):
                key = (s.tensor, s.start + j)
                assert key not in seen, f"element {key} placed twice"
                seen[key] = (b, s.offset + j)
    assert seen == oracle


def test_plan_buckets_rejects_bad_input():
    with pytest.raises(MinisftError, match="bucket_bytes=0"):
        plan_buckets([3], ["float64"], 0)
    with pytest.raises(MinisftError, match="one dtype per tensor"):
        plan_buckets([3, 4], ["float64"])
    with pytest.raises(MinisftError, match="non-negative"):
        plan_buckets([-1], ["float64"])


def _pack_then_unpack(xp, specs, bucket_bytes, seed):
    """A stand-in collective (buffer <- 2 * buffer + bucket index mod 40) must land on exactly the
    elements the plan puts in that bucket: a wrong offset or a skipped copy-back changes some element.
    Entries in [-40, 40), so every result fits an int8."""
    rng = np.random.default_rng(seed)
    tensors = [rng.integers(-40, 40, size=n).astype(d) for n, d in specs]
    flats = [xp.asarray(t.copy()) for t in tensors]
    buckets = plan_buckets([t.size for t in tensors], [t.dtype for t in tensors], bucket_bytes)
    for b, bucket in enumerate(buckets):
        buffer = xp.full(bucket.size + 3, 99, dtype=bucket.dtype)  # longer than the bucket, as reused buffers are
        pack(bucket, flats, buffer)
        buffer[: bucket.size] = 2 * buffer[: bucket.size] + b % 40
        unpack(bucket, buffer, flats)
    where = _oracle_position([t.size for t in tensors], [t.dtype for t in tensors], bucket_bytes)
    for i, t in enumerate(tensors):
        got = flats[i] if xp is np else flats[i].get()
        expected = np.array([2 * t[e] + where[(i, e)][0] % 40 for e in range(t.size)], dtype=t.dtype)
        assert np.array_equal(got, expected), f"tensor {i}: max diff {np.abs(got - expected).max()}"


@given(specs=specs_st, bucket_bytes=st.integers(1, 200), seed=st.integers(0, 2**31))
def test_pack_then_unpack_moves_each_bucket_through_its_buffer(specs, bucket_bytes, seed):
    _pack_then_unpack(np, specs, bucket_bytes, seed)


@pytest.mark.gpu
@given(specs=st.lists(st.tuples(st.integers(0, 40), st.sampled_from(["float64", "float32", "float16", "int8"])),
                      min_size=1, max_size=10),
       bucket_bytes=st.integers(1, 200), seed=st.integers(0, 2**31))
@example(specs=[(40, "float32"), (3, "float32"), (40, "float32")], bucket_bytes=200, seed=0)  # pieces across chunks
def test_pack_then_unpack_on_the_gpu_moves_each_bucket_in_one_launch(specs, bucket_bytes, seed):
    """As the NumPy test, on CuPy arrays with the fast paths on: every bucket of several segments
    goes through kernels.copy_many (one launch for the pack, one for the unpack), with 16-element
    chunks so segments span several blocks; 1-, 2-, 4- and 8-byte items."""
    from minisft.core import fastpath
    from minisft.core.backend import gpu_available
    from minisft.gpu import kernels

    if not gpu_available():
        pytest.skip("needs CuPy and a GPU")
    import cupy

    calls = []
    real = kernels.copy_many
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastpath, "ENABLED", True)
        mp.setattr(kernels, "CHUNK", 16)
        mp.setattr(kernels, "copy_many", lambda *a: calls.append(len(a[2])) or real(*a))
        kernels._chunks.cache_clear()
        try:
            _pack_then_unpack(cupy, specs, bucket_bytes, seed)
        finally:
            kernels._chunks.cache_clear()
    several = [b for b in plan_buckets([n for n, _ in specs], [d for _, d in specs], bucket_bytes) if len(b.segments) > 1]
    assert calls == [len(b.segments) for b in several for _ in "pu"], "one copy_many launch per pack and per unpack"


# ------------------------------------------------------------------- the single-process backend
def test_single_communicator_is_the_identity_and_reports_bytes():
    comm = from_environment(environ={})
    assert (comm.backend, comm.rank, comm.world_size, comm.local_rank) == ("single", 0, 1, 0)
    arrays = {"b": np.arange(5.0), "a": np.ones((2, 3), dtype=np.float32)}
    before = {k: v.copy() for k, v in arrays.items()}
    assert comm.allreduce_sum(arrays) is arrays
    report = comm.allreduce_sum_bucketed(arrays, bucket_bytes=8)
    assert (report.tensors, report.elements, report.bytes, report.buckets) == (2, 11, 5 * 8 + 6 * 4, 5 + 3)
    assert comm.totals == {"collectives": 8, "bytes": 64}
    comm.broadcast(arrays)
    assert all(np.array_equal(arrays[k], before[k]) for k in arrays)
    assert comm.allgather_object({"x": (1, 2), "n": np.int64(3)}) == [{"x": [1, 2], "n": 3}]
    assert comm.bcast_object("s") == "s"
    comm.barrier()


def test_communicator_names_bad_arrays_and_objects():
    comm = Communicator()
    with pytest.raises(TypeError, match=r"arrays\[1\] has type list"):
        comm.allreduce_sum([np.ones(2), [1.0]])
    with pytest.raises(MinisftError, match=r"arrays\['m'\].*dtype bool"):
        comm.allreduce_sum({"m": np.ones(2, dtype=bool)})
    with pytest.raises(MinisftError, match=r"arrays\[0\].*C-contiguous"):
        comm.allreduce_sum_bucketed([np.ones((3, 4))[:, ::2]])
    a = np.ones(3)
    with pytest.raises(MinisftError, match="the same array twice"):
        comm.allreduce_sum([a, a])
    with pytest.raises(TypeError, match="a list, tuple or dict of arrays"):
        comm.broadcast(np.ones(3))
    with pytest.raises(MinisftError, match=r"root=1: expected a rank in \[0, 1\)"):
        comm.broadcast([a], root=1)
    with pytest.raises(TypeError, match="JSON-able"):
        comm.allgather_object({"w": np.ones(2)})


def test_abort_on_failure_leaves_a_single_process_alone():
    comm = Communicator()
    with pytest.raises(ValueError, match="boom"):
        with comm.abort_on_failure():
            raise ValueError("boom")
    with pytest.raises(SystemExit):
        with comm.abort_on_failure():
            sys.exit(4)


# ------------------------------------------------------------------------- the launch environment
@pytest.mark.parametrize("env, expected", [
    ({}, Placement("none", 0, 1, 0)),
    ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"},
     Placement("torchrun", 1, 4, 1, "h", 29500)),
    ({"RANK": "2", "WORLD_SIZE": "3"}, Placement("torchrun", 2, 3, 0)),
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1"},
     Placement("mpi", 1, 2, 1)),
    ({"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0"}, Placement("mpi", 3, 4, 0)),
    ({"PMIX_RANK": "0"}, Placement("mpi", 0, None, None)),
    ({"PMI_RANK": "1", "PMI_SIZE": "2", "RANK": "1", "WORLD_SIZE": "2"}, Placement("mpi", 1, 2, None)),
])
def test_read_placement(env, expected):
    assert read_placement(env) == expected


@pytest.mark.parametrize("env, message", [
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2: expected a rank below WORLD_SIZE=2"),
    ({"RANK": "0"}, "WORLD_SIZE=None: expected set together with RANK=0"),
    ({"WORLD_SIZE": "2"}, "RANK=None: expected set together with WORLD_SIZE=2"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x': expected an integer >= 0"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE='0': expected an integer >= 1"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK=2: expected a local rank below"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "70000"}, "MASTER_PORT=70000: expected a TCP port"),
    ({"PMI_RANK": "2", "PMI_SIZE": "2"}, "PMI_RANK=2: expected a rank below PMI_SIZE=2"),
    ({"PMI_RANK": "0", "PMI_SIZE": "2", "RANK": "1", "WORLD_SIZE": "2"}, "expected the MPI launcher's rank and size"),
])
def test_read_placement_names_inconsistent_variables(env, message):
    with pytest.raises(MinisftError) as info:
        read_placement(env)
    assert message in str(info.value)


def test_choose_backend():
    alone, mpi, torch = Placement("none", 0, 1, 0), Placement("mpi", 0, 2, 0), Placement("torchrun", 0, 2, 0, "h", 1)
    assert choose_backend(alone, "numpy") == ("single", None)
    assert choose_backend(alone, "cupy") == ("single", None)
    assert choose_backend(Placement("mpi", 0, 1, 0), "numpy") == ("single", None)  # mpiexec -n 1
    assert choose_backend(mpi, "numpy") == ("mpi", None)
    assert choose_backend(mpi, "cupy") == ("nccl", "mpi")
    assert choose_backend(torch, "cupy") == ("nccl", "tcp")
    assert choose_backend(mpi, np) == ("mpi", None)  # the array module names the device too
    with pytest.raises(DistributedError, match="NumPy arrays under an MPI launcher"):
        choose_backend(torch, "numpy")
    with pytest.raises(DistributedError, match="backend='single' in a job of world size 2"):
        choose_backend(mpi, "numpy", "single")
    with pytest.raises(DistributedError, match="backend='mpi': expected a process started by an MPI launcher"):
        choose_backend(torch, "numpy", "mpi")
    with pytest.raises(DistributedError, match="backend='mpi' with CuPy arrays"):
        choose_backend(mpi, "cupy", "mpi")
    with pytest.raises(DistributedError, match="backend='nccl' with NumPy arrays"):
        choose_backend(mpi, "numpy", "nccl")
    with pytest.raises(MinisftError, match="MASTER_ADDR=None"):
        choose_backend(Placement("torchrun", 0, 2, 0), "cupy")
    with pytest.raises(MinisftError, match="MASTER_PORT=None"):
        choose_backend(Placement("torchrun", 0, 2, 0, "h"), "cupy")
    with pytest.raises(MinisftError, match="backend='gloo'"):
        choose_backend(alone, "numpy", "gloo")
    with pytest.raises(MinisftError, match="device='torch'"):
        choose_backend(alone, "torch")


def test_from_environment_explains_a_backend_it_cannot_start():
    with pytest.raises(DistributedError, match="backend='mpi': expected a process started by an MPI launcher"):
        from_environment(backend="mpi", environ={})
    if importlib.util.find_spec("cupy") is None:
        with pytest.raises(DistributedError, match="the NCCL backend needs cupy"):
            from_environment(backend="nccl", device="cupy", environ={})


def test_resolve_timeout():
    assert resolve_timeout(None, {}) == 300.0
    assert resolve_timeout(None, {"MINISFT_DIST_TIMEOUT": "2.5"}) == 2.5
    assert resolve_timeout(7, {"MINISFT_DIST_TIMEOUT": "2.5"}) == 7.0
    for bad in ("0", "-1", "inf", "soon"):
        with pytest.raises(MinisftError, match="MINISFT_DIST_TIMEOUT"):
            resolve_timeout(None, {"MINISFT_DIST_TIMEOUT": bad})


def test_watchdog_fires_only_for_a_collective_past_its_deadline():
    fired = []
    dog = Watchdog(0.5, lambda op, t: fired.append((op, t)))
    with dog.watch("quick"):
        pass
    time.sleep(0.8)  # longer than the timeout, but nothing is in flight: nothing fires
    assert fired == []
    t0 = time.monotonic()
    with dog.watch("stuck"):
        while not fired and time.monotonic() - t0 < 10:
            time.sleep(0.01)
    assert fired == [("stuck", 0.5)] and 0.5 <= time.monotonic() - t0 < 5
    dog.close()


# ------------------------------------------------------------------------------- TCP rendezvous
def _free_port():
    return launcher.free_port()


def _rendezvous_threads(args_by_rank, timeout=5.0):
    results = {}

    def run(rank, args):
        try:
            results[rank] = rendezvous(*args, timeout=timeout)
        except Exception as e:  # collected for the assertions
            results[rank] = e

    threads = [threading.Thread(target=run, args=(r, a)) for r, a in args_by_rank.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_rendezvous_hands_rank_0s_payload_to_every_rank():
    port, payload = _free_port(), bytes(range(256)) * 2
    got = _rendezvous_threads({r: (r, 3, "127.0.0.1", port, payload if r == 0 else b"") for r in range(3)})
    assert got == {0: payload, 1: payload, 2: payload}


def test_rendezvous_reports_a_world_size_mismatch_and_a_missing_rank():
    port = _free_port()
    got = _rendezvous_threads({0: (0, 2, "127.0.0.1", port, b"id"), 1: (1, 3, "127.0.0.1", port, b"")})
    assert isinstance(got[0], DistributedError) and "WORLD_SIZE=3, expected 2" in str(got[0])
    assert isinstance(got[1], DistributedError) and "refused rank 1" in str(got[1])
    t0 = time.monotonic()
    got = _rendezvous_threads({0: (0, 3, "127.0.0.1", _free_port(), b"id")}, timeout=0.5)
    assert isinstance(got[0], DistributedError) and "ranks [1, 2] did not reach rank 0" in str(got[0])
    assert time.monotonic() - t0 < 5


# ------------------------------------------------------------------------------------ launcher
def test_rank_environments():
    envs = launcher.rank_environments(2, nnodes=2, node_rank=1, master_addr="h0", master_port=29500, base={"A": "1"})
    assert [(e["RANK"], e["WORLD_SIZE"], e["LOCAL_RANK"], e["LOCAL_WORLD_SIZE"]) for e in envs] == [
        ("2", "4", "0", "2"), ("3", "4", "1", "2")]
    assert all(e["MASTER_ADDR"] == "h0" and e["MASTER_PORT"] == "29500" and e["A"] == "1" for e in envs)
    assert [read_placement(e) for e in envs] == [Placement("torchrun", 2, 4, 0, "h0", 29500),
                                                 Placement("torchrun", 3, 4, 1, "h0", 29500)]
    with pytest.raises(MinisftError, match="master_port=None"):
        launcher.rank_environments(2, nnodes=2, node_rank=0)
    with pytest.raises(MinisftError, match="node_rank=2"):
        launcher.rank_environments(2, nnodes=2, node_rank=2, master_port=1)
    for grace in (float("nan"), -1.0, float("inf"), "5"):
        with pytest.raises(MinisftError, match="grace"):
            launcher.launch(["true"], 1, grace=grace)


class _Sink:
    def __init__(self):
        self.data = b""

    def write(self, b):
        self.data += b

    def flush(self):
        pass

    def lines(self):
        return self.data.decode().splitlines()


def test_launch_runs_the_ranks_with_prefixed_output():
    out, err = _Sink(), _Sink()
    code = launcher.launch([sys.executable, "-c", "import os, sys; print(os.environ['RANK'], os.environ['WORLD_SIZE'], "
                            "os.environ['LOCAL_RANK']); print('e' + os.environ['RANK'], file=sys.stderr)"],
                           nproc=2, stdout=out, stderr=err)
    assert code == 0
    assert sorted(out.lines()) == ["[0] 0 2 0", "[1] 1 2 1"]
    assert sorted(err.lines()) == ["[0] e0", "[1] e1"]


def test_launch_stops_the_other_ranks_and_returns_the_failing_code(tmp_path):
    """Rank 1 exits 7 while rank 0 (and a child of rank 0) would run for a minute: the launcher must
    return 7 at once and leave no process of rank 0's group behind."""
    script = ("import os, subprocess, sys, time\n"
              "if os.environ['RANK'] == '1':\n    time.sleep(0.3); sys.exit(7)\n"
              f"child = subprocess.Popen(['sleep', '60']); open(r'{tmp_path / 'child'}', 'w').write(str(child.pid))\n"
              "time.sleep(60); print('rank 0 finished')\n")
    out, err = _Sink(), _Sink()
    t0 = time.monotonic()
    code = launcher.launch([sys.executable, "-c", script], nproc=2, stdout=out, stderr=err, grace=2.0)
    assert code == 7 and time.monotonic() - t0 < 10
    assert "rank 0 finished" not in out.data.decode()
    assert "minisft launch: rank 1 exited with code 7; stopping ranks 0" in err.data.decode()
    child = int((tmp_path / "child").read_text())
    status = Path(f"/proc/{child}/status")
    assert not status.exists() or "\nState:\tZ" in status.read_text(), "rank 0's child survived the launcher"


def test_launch_cli_splits_at_double_dash_and_reports_a_killed_rank():
    cmd = [sys.executable, "-m", "minisft.distributed.launch", "--nproc", "2", "--", sys.executable, "-c",
           "import os, signal; os.environ['RANK'] == '0' and os.kill(os.getpid(), signal.SIGKILL)"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 128 + 9, r.stderr
    assert "rank 0 exited with code 137" in r.stderr


# --------------------------------------------------------------------------- MPI, two ranks
def _mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'minisft[mpi]')")
    local = Path(sys.executable).with_name("mpiexec")
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec next to the interpreter or on PATH (pip install 'minisft[mpi]' brings MPICH's)")
    return found


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


class _Server:
    """The 2-rank worker (tests/distributed_worker.py serve): one JSON case in, one RESULT line out."""

    def __init__(self, mpiexec):
        self.proc = subprocess.Popen([mpiexec, "-n", str(WORLD), sys.executable, str(WORKER), "serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=_env(), cwd=ROOT)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                self.lines.put(json.loads(line[len("RESULT "):]))
        self.lines.put(None)

    def run(self, case):
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        try:
            result = self.lines.get(timeout=60)
        except queue.Empty:
            result = None
        if result is None:
            self.proc.kill()
            pytest.fail(f"the MPI worker gave no result for {case}; stderr:\n{self.proc.stderr.read()[-3000:]}")
        return result

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


@pytest.fixture(scope="module")
def mpi_server():
    server = _Server(_mpiexec())
    yield server
    server.close()


shape_st = st.lists(st.integers(0, 7), max_size=3)
case_specs_st = st.lists(st.tuples(shape_st, st.sampled_from(["float64", "float64", "float32"])), min_size=1, max_size=12)
case_bucket_st = st.one_of(st.integers(1, 300), st.just(DEFAULT_BUCKET_BYTES))


def _check(server, op, specs, seed, bucket_bytes=DEFAULT_BUCKET_BYTES, root=0, container="list"):
    specs = [[list(shape), dtype] for shape, dtype in specs]
    result = server.run({"op": op, "specs": specs, "seed": seed, "bucket_bytes": bucket_bytes, "root": root,
                         "container": container})
    ranks = [rank_tensors(specs, seed, r) for r in range(WORLD)]
    if op == "broadcast":
        expected = ranks[root]
    else:  # the serial sum; dyadic values, so exact whatever the order
        expected = [sum(r[i].astype(np.float64) for r in ranks).astype(ranks[0][i].dtype) for i in range(len(specs))]
    for i, (got, want) in enumerate(zip(result["values"], expected)):
        got = np.array(got, dtype=want.dtype).reshape(want.shape)
        diff = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
        assert np.array_equal(got, want), f"{op}: tensor {i} {want.shape} on rank 0 differs, max diff {diff}"
    assert result["digests"] == [digest(expected)] * WORLD, f"{op}: some rank's arrays differ from the serial result"
    assert result["placement"] == [["mpi", r, WORLD, r] for r in range(WORLD)]  # one host: local rank = rank
    return result


@given(specs=case_specs_st, seed=st.integers(0, 2**32 - 1), container=st.sampled_from(["list", "dict"]))
@example(specs=[([], "float64"), ([0, 3], "float64"), ([7, 7, 7], "float32")], seed=1, container="dict")
def test_mpi_allreduce_sum_equals_the_serial_sum(mpi_server, specs, seed, container):
    _check(mpi_server, "allreduce", specs, seed, container=container)


@given(specs=case_specs_st, seed=st.integers(0, 2**32 - 1), bucket_bytes=case_bucket_st,
       container=st.sampled_from(["list", "dict"]))
@example(specs=[([5], "float64"), ([3, 3], "float64"), ([1], "float64")], seed=3, bucket_bytes=24, container="list")
@example(specs=[([7, 7], "float64"), ([5], "float32"), ([0], "float64"), ([6], "float64")], seed=4, bucket_bytes=1,
         container="dict")  # one element per bucket, mixed dtypes
@example(specs=[([6, 7], "float32"), ([2], "float64")], seed=5, bucket_bytes=64, container="list")  # a tensor across buckets
def test_mpi_bucketed_allreduce_equals_the_serial_sum(mpi_server, specs, seed, bucket_bytes, container):
    result = _check(mpi_server, "bucketed", specs, seed, bucket_bytes=bucket_bytes, container=container)
    sizes = [int(np.prod(shape)) for shape, _ in specs]
    nbytes = sum(n * np.dtype(d).itemsize for n, (_, d) in zip(sizes, specs))
    buckets = len(plan_buckets(sizes, [d for _, d in specs], bucket_bytes))
    assert result["report"] == {"tensors": len(specs), "elements": sum(sizes), "bytes": nbytes, "buckets": buckets}


@given(specs=case_specs_st, seed=st.integers(0, 2**32 - 1), root=st.integers(0, WORLD - 1),
       container=st.sampled_from(["list", "dict"]))
def test_mpi_broadcast_gives_every_rank_roots_arrays(mpi_server, specs, seed, root, container):
    _check(mpi_server, "broadcast", specs, seed, root=root, container=container)


def _run_failing_job(mode, timeout_s):
    cmd = [_mpiexec(), "-n", str(WORLD), sys.executable, str(WORKER), "fail", mode]
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT,
                           env=_env(MINISFT_DIST_TIMEOUT=str(timeout_s)))
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mode {mode}: the job hung for 60 s (stderr: {e.stderr})")
    return r, time.monotonic() - t0


@pytest.mark.parametrize("mode, message", [
    ("kill", "signal 9"),  # mpiexec ends the job when a rank dies
    ("raise", "minisft.distributed: rank 1/2: uncaught RuntimeError; aborting (exit code 1)"),
    ("exit", "minisft.distributed: rank 1/2: exited with 3; aborting (exit code 3)"),
])
def test_mpi_a_failed_rank_ends_the_job_at_once(mode, message):
    """With a 30 s collective timeout, the job must end in well under 30 s: by the launcher (kill) or
    by the failing rank's MPI_Abort (raise, exit), not by the survivor's watchdog."""
    r, seconds = _run_failing_job(mode, timeout_s=30)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and seconds < 15, f"mode {mode}: rc {r.returncode} after {seconds:.1f} s\n{out[-2000:]}"
    assert "all-reduce completed" not in out
    assert message in out, out[-2000:]


def test_mpi_a_hung_rank_makes_the_other_exit_within_the_timeout():
    r, seconds = _run_failing_job("hang", timeout_s=2)
    out = r.stdout + r.stderr
    assert r.returncode == TIMEOUT_EXIT_CODE and seconds < 2 + 10, f"rc {r.returncode} after {seconds:.1f} s\n{out[-2000:]}"
    assert "rank 0/2: allreduce_sum did not complete within 2 s (a peer died or hangs)" in out
    assert "all-reduce completed" not in out


# ------------------------------------------------------------------------------- NCCL (GPU)
def _gpu_count():
    from minisft.core.backend import gpu_available

    if not gpu_available():
        return 0
    import cupy

    return cupy.cuda.runtime.getDeviceCount()


@pytest.fixture
def gpus():
    n = _gpu_count()
    if n < 2:
        pytest.skip(f"the NCCL tests need CuPy and at least 2 GPUs ({n} visible)")
    return n


def _launch(nproc, *worker_args, timeout=300, env=None):
    """`minisft launch` of the worker; past `timeout` the launcher and its ranks (its session) are
    killed and the test fails with what they printed (no orphaned rank keeps a GPU busy)."""
    cmd = [sys.executable, "-m", "minisft.distributed.launch", "--nproc", str(nproc), "--", sys.executable, str(WORKER), *worker_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env or _env(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*_children(proc.pid), proc.pid]:  # each rank leads its own session (minisft.distributed.launch)
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass
        out, err = proc.communicate()
        pytest.fail(f"minisft launch still running after {timeout} s\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _children(pid):
    """Process ids whose parent is `pid` (Linux /proc), for the ranks' own process groups."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.gpu
def test_nccl_collectives_equal_the_serial_sums_via_minisft_launch(gpus):
    r = _launch(gpus, "gpu")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("NCCL checks passed (nccl)") == gpus


@pytest.mark.gpu
def test_nccl_collectives_equal_the_serial_sums_via_mpirun(gpus):
    cmd = [_mpiexec(), "-n", str(gpus), sys.executable, str(WORKER), "gpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("NCCL checks passed (nccl)") == gpus


@pytest.mark.gpu
def test_nccl_a_hung_rank_makes_the_other_abort_within_the_timeout(gpus):
    t0 = time.monotonic()
    r = _launch(2, "fail", "hang", "cupy", timeout=120, env=_env(MINISFT_DIST_TIMEOUT="5"))
    seconds = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == TIMEOUT_EXIT_CODE and seconds < 5 + 60, f"rc {r.returncode} after {seconds:.1f} s\n{out[-3000:]}"
    assert "allreduce_sum did not complete within 5 s" in out
    assert "all-reduce completed" not in out


# ------------------------------------------------------------------ CPU threads of co-located ranks
@pytest.mark.parametrize("variables, cores, expected", [
    ({"LOCAL_WORLD_SIZE": "2"}, 2, 1),                   # minisft launch / torchrun
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, 16, 4),        # Open MPI
    ({"MPI_LOCALNRANKS": "3"}, 16, 5),                   # MPICH's Hydra: 16 // 3
    ({"MPI_LOCALNRANKS": "8"}, 2, 1),                    # more ranks than cores: one thread each, not 0
])
def test_ranks_sharing_a_host_get_their_share_of_the_cores(variables, cores, expected):
    assert rank_share(variables, cores=cores) == expected
    env = thread_environment(variables, cores=cores)
    assert {k: env[k] for k in THREAD_VARIABLES} == dict.fromkeys(THREAD_VARIABLES, str(expected))
    assert variables == {k: v for k, v in env.items() if k not in THREAD_VARIABLES}  # the input is not changed


@pytest.mark.parametrize("variables", [
    {},                                                    # not a multi-rank launch
    {"LOCAL_WORLD_SIZE": "1"},                             # one rank on this host
    {"LOCAL_WORLD_SIZE": "2", "OPENBLAS_NUM_THREADS": "7"},  # the user's choice wins
    {"LOCAL_WORLD_SIZE": "two"},                           # not a count: nothing guessed
])
def test_thread_variables_are_left_alone_unless_ranks_share_a_host_and_none_is_set(variables):
    assert rank_share(variables, cores=16) is None
    assert thread_environment(variables, cores=16) == variables


def test_minisft_launch_gives_each_rank_its_share_of_the_cores():
    envs = launcher.rank_environments(2, master_port=29500, base={"PATH": "/bin"})
    share = str(max(1, (os.cpu_count() or 1) // 2))
    assert [{k: e[k] for k in THREAD_VARIABLES} for e in envs] == [dict.fromkeys(THREAD_VARIABLES, share)] * 2
    kept = launcher.rank_environments(2, master_port=29500, base={"OMP_NUM_THREADS": "3"})
    assert all(e["OMP_NUM_THREADS"] == "3" and "OPENBLAS_NUM_THREADS" not in e for e in kept)


def test_mpiexec_ranks_limit_their_blas_threads_when_the_command_starts_not_when_minisft_is_imported(tmp_path):
    """Under `mpiexec -n 2` (MPICH's Hydra sets MPI_LOCALNRANKS): importing minisft sets no thread
    variable and leaves NumPy's BLAS pool alone; share_cores, which the `minisft` command calls first,
    limits the pool to half the cores; a user's OPENBLAS_NUM_THREADS is kept. (Each rank writes its own
    file: the ranks' stdout lines can interleave.)"""
    code = ("import os, sys, threadpoolctl, minisft; from minisft.distributed.rank_threads import share_cores; "
            "before = [os.environ.get(v) for v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS')]; "
            "pool = threadpoolctl.threadpool_info()[0]['num_threads']; n = share_cores(); "
            "after = threadpoolctl.threadpool_info()[0]['num_threads']; "
            "open(os.path.join(sys.argv[1], os.environ['PMI_RANK']), 'w').write(f'{before} {pool} {n} {after}')")
    env = {k: v for k, v in _env().items() if k not in THREAD_VARIABLES}
    cores = os.cpu_count()
    share = max(1, cores // 2)
    for extra, expected in (({}, f"[None, None] {cores} {share} {share}"),
                            ({"OPENBLAS_NUM_THREADS": "1"}, "[None, '1'] 1 None 1")):
        out = tmp_path / str(len(extra))
        out.mkdir()
        r = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-c", code, str(out)], capture_output=True,
                           text=True, timeout=120, cwd=ROOT, env=dict(env, **extra))
        assert r.returncode == 0, r.stdout + r.stderr[-2000:]
        assert {f.name: f.read_text() for f in out.iterdir()} == {"0": expected, "1": expected}, extra


def test_the_minisft_command_shares_the_cores_before_it_runs(monkeypatch):
    from minisft.app import cli

    calls = []
    monkeypatch.setattr(cli, "share_cores", lambda: calls.append("share"))
    monkeypatch.setattr(cli, "_command", lambda *a: calls.append("run") or 0)
    assert cli.main(["methods"]) == 0
    assert calls == ["share", "run"]
