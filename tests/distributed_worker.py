"""The rank side of tests/test_distributed.py, run under `mpiexec -n N` or `minisft launch`.

    python tests/distributed_worker.py serve     MPI ranks that run the cases rank 0 reads from stdin
    python tests/distributed_worker.py fail MODE [cupy]   rank 1 fails (kill | raise | exit | hang) while rank 0 all-reduces
    python tests/distributed_worker.py gpu       the NCCL checks on CuPy arrays (GPU machines)

A case is one JSON line: {"op": "allreduce" | "bucketed" | "broadcast", "specs": [[shape, dtype], ...],
"seed", "bucket_bytes", "root", "container": "list" | "dict"}. Every rank builds its own tensors with
`rank_tensors` (dyadic values, so sums over ranks are exact in any order), runs the op, and rank 0
answers one line "RESULT {json}": rank 0's arrays after the op (JSON floats round-trip exactly), the
sha256 of every rank's arrays after the op, the ReduceReport of a bucketed all-reduce, and every
rank's [backend, rank, world size, local rank]. The test
compares them with sums it computes itself.
"""

import hashlib
import json
import os
import signal
import sys
import time

import numpy as np

from minisft.distributed import from_environment

# float64 values n / 2**30 with |n| < 2**50 (sums of up to 8 ranks exact); float32 n / 2**4, |n| < 2**19
SCALES = {"float64": (50, 30), "float32": (19, 4)}


def rank_tensors(specs, seed, rank):
    """The tensors rank `rank` contributes: [(shape) array of dtype] for [[shape, dtype], ...]."""
    out = []
    for i, (shape, dtype) in enumerate(specs):
        bits, frac = SCALES[dtype]
        n = np.random.default_rng([seed, rank, i]).integers(-(2**bits) + 1, 2**bits, size=tuple(shape))
        out.append(np.asarray(n / 2.0**frac).astype(dtype))  # 0-d shapes stay arrays
    return out


def digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype.name}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def run_case(comm, case):
    arrays = rank_tensors(case["specs"], case["seed"], comm.rank)
    if case["container"] == "dict":  # built in a rank-dependent order: the communicator sorts keys
        order = np.random.default_rng([case["seed"], comm.rank]).permutation(len(arrays))
        container = {f"t{i:02d}": arrays[i] for i in order}
    else:
        container = arrays
    report = None
    if case["op"] == "allreduce":
        comm.allreduce_sum(container)
    elif case["op"] == "bucketed":
        r = comm.allreduce_sum_bucketed(container, bucket_bytes=case["bucket_bytes"])
        report = {"tensors": r.tensors, "elements": r.elements, "bytes": r.bytes, "buckets": r.buckets}
    else:
        comm.broadcast(container, root=case["root"])
    digests = comm.allgather_object(digest(arrays))
    placement = comm.allgather_object([comm.backend, comm.rank, comm.world_size, comm.local_rank])
    return {"values": [a.ravel().tolist() for a in arrays], "digests": digests, "report": report,
            "placement": placement}


def _wait_idle(comm):
    """Wait for rank 0's next case without spinning a core (a non-blocking barrier, polled)."""
    req = comm.comm.Ibarrier()
    while not req.Test():
        time.sleep(0.0005)


def serve():
    comm = from_environment(timeout=60)  # "auto": mpiexec's variables must select MPI
    while True:
        line = sys.stdin.readline() if comm.rank == 0 else None
        _wait_idle(comm)
        case = comm.bcast_object(json.loads(line) if line and line.strip() else None)
        if case is None:
            break
        result = run_case(comm, case)
        if comm.rank == 0:
            print("RESULT " + json.dumps(result), flush=True)
    comm.close()


def fail(mode, device="numpy"):
    """Rank 1 fails in `mode` while rank 0 enters an all-reduce that can then never complete:
    kill (SIGKILL), raise (an uncaught exception), exit (sys.exit(3) inside abort_on_failure),
    hang (sleeps). Rank 0 prints "all-reduce completed" only if it wrongly returns."""
    comm = from_environment(device=device)
    xp = comm.xp
    comm.barrier()  # both ranks are up
    if comm.rank == 1:
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode == "raise":
            raise RuntimeError("planted failure on rank 1")
        elif mode == "exit":
            with comm.abort_on_failure():
                sys.exit(3)
        elif mode == "hang":
            time.sleep(600)
    comm.allreduce_sum([xp.ones(4)])
    print(f"rank {comm.rank}: all-reduce completed", flush=True)


def gpu():
    """NCCL: every collective on CuPy arrays against the serial sums, on every rank."""
    import cupy as cp

    comm = from_environment(device="cupy", timeout=120)
    n, r = comm.world_size, comm.rank
    specs = [[[3, 5], "float64"], [[1000], "float64"], [[7], "float32"], [[], "float64"], [[0, 4], "float32"],
             [[257, 3], "float32"]]
    expected = [sum(rank_tensors(specs, 11, q)[i].astype(np.float64) for q in range(n)) for i in range(len(specs))]
    for op in ("allreduce", "bucketed"):
        arrays = [cp.asarray(a) for a in rank_tensors(specs, 11, r)]
        if op == "allreduce":
            comm.allreduce_sum(arrays)
        else:
            report = comm.allreduce_sum_bucketed(arrays, bucket_bytes=1000)
            assert report.bytes == sum(a.nbytes for a in arrays), report
        for a, e in zip(arrays, expected):
            assert np.array_equal(cp.asnumpy(a), e.astype(a.dtype)), f"{op}: rank {r} max diff {np.abs(cp.asnumpy(a) - e).max()}"
    root = n - 1
    arrays = {f"t{i}": cp.asarray(a) for i, a in enumerate(rank_tensors(specs, 12, r))}
    comm.broadcast(arrays, root=root)
    for i, a in enumerate(rank_tensors(specs, 12, root)):
        assert np.array_equal(cp.asnumpy(arrays[f"t{i}"]), a), f"broadcast: rank {r} tensor {i}"
    assert comm.allgather_object({"rank": r}) == [{"rank": q} for q in range(n)]
    assert comm.bcast_object("from root" if r == root else None, root=root) == "from root"
    comm.barrier()
    print(f"rank {r}/{n} on GPU {comm.local_rank}: NCCL checks passed ({comm.backend})", flush=True)
    comm.close()


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "serve":
        serve()
    elif what == "fail":
        fail(sys.argv[2], *sys.argv[3:])
    elif what == "gpu":
        gpu()
    else:
        raise SystemExit(f"unknown mode {what!r}")
