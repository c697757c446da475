"""The "nccl" backend: CuPy arrays reduced by NCCL (`cupy.cuda.nccl.NcclCommunicator`), one process per GPU.

Each process uses GPU LOCAL_RANK (made current here, before NCCL starts: create the model after the
communicator). Rank 0 creates NCCL's unique id and the others receive it by MPI (`mpirun`: one
`Bcast` of its 128 bytes) or by the TCP rendezvous at MASTER_ADDR:MASTER_PORT (torchrun-style
variables, `minisft launch`; minisft.distributed.rendezvous). NVLink multicast (NVLS) is switched
off unless the environment already says otherwise: NCCL_NVLS_ENABLE=0 is set before NCCL starts.

Collectives are queued on CuPy's current stream (all-reduce and broadcast in place, the bucket copies
of `allreduce_sum_bucketed` on the same stream, so one bucket buffer serves every bucket) and each
public call ends by waiting for that stream, under the watchdog (the gradient all-reduces overlapped
with the backward, minisft.distributed.overlap, run on the communicator's `side_stream` instead).
The wait polls an event recorded after the collective, sleeping WAIT_POLL_SECONDS between polls,
rather than calling cudaStreamSynchronize: a thread blocked in a CUDA call may keep Python's GIL,
and the watchdog, a Python thread, needs it to fire.

Failure handling (what is guaranteed), for a job of more than one rank: a collective, or NCCL's
start-up, still running `timeout` seconds after it began makes the watchdog print which rank gave up
in which call and end the process at once with exit code 124 (os._exit: the driver ends the
process's NCCL kernels with it); under mpirun it calls MPI_Abort first, bounded by a timer of
ABORT_GRACE_SECONDS. ncclCommAbort is not called: on 2 H100s (2026-11-27) it ended the kernels but
the rank then never exited (the launcher waited past 120 s), while ending the process needs nothing
from NCCL. An uncaught exception, or a failure inside `abort_on_failure()`, aborts the same way at
once. The launcher (mpirun, minisft launch, torchrun) then ends the other ranks when one exits non-zero.
"""

import os
import threading
import time

import numpy as np

from .communicator import Communicator, DistributedError, require_module
from .rendezvous import rendezvous
from .watchdog import Watchdog

UNIQUE_ID_BYTES = 128
ABORT_GRACE_SECONDS = 10.0
WAIT_POLL_SECONDS = 1e-4


def import_nccl():
    """(cupy, cupy.cuda.nccl), or a DistributedError naming what is missing."""
    install = "`pip install 'minisft[gpu]'` (a CuPy build that loads NCCL) on a machine with NVIDIA GPUs"
    cupy = require_module("cupy", "the NCCL backend", install)
    nccl = require_module("cupy.cuda.nccl", "the NCCL backend", install)
    if not getattr(nccl, "available", False):
        raise DistributedError(f"cupy.cuda.nccl is not available: expected {install}")
    return cupy, nccl


class NCCLCommunicator(Communicator):
    backend = "nccl"

    def __init__(self, placement, bootstrap, timeout):
        cupy, nccl = import_nccl()
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # read by NCCL at communicator creation
        self.cupy, self.nccl = cupy, nccl
        self.types = {np.dtype(k): getattr(nccl, v) for k, v in (
            ("float16", "NCCL_FLOAT16"), ("float32", "NCCL_FLOAT32"), ("float64", "NCCL_FLOAT64"),
            ("int32", "NCCL_INT32"), ("int64", "NCCL_INT64"), ("uint8", "NCCL_UINT8"))}
        self.MPI, self.nccl_comm = None, None
        self._side_stream = None  # side_stream(), made on first use
        rank, size, local_rank = placement.rank, placement.world_size, placement.local_rank or 0
        if bootstrap == "mpi":
            from .mpi import mpi_world

            self.MPI, rank, size, local_rank = mpi_world(placement)
        devices = cupy.cuda.runtime.getDeviceCount()
        if local_rank >= devices:
            raise DistributedError(f"LOCAL_RANK={local_rank}: expected a GPU index below the {devices} GPUs this "
                                   "process sees (one process per GPU; check CUDA_VISIBLE_DEVICES and --nproc)")
        cupy.cuda.Device(local_rank).use()
        super().__init__(rank, size, local_rank, cupy, Watchdog(timeout, self._timed_out) if size > 1 else None)
        uid = _unique_id_bytes(nccl.get_unique_id()) if rank == 0 else bytes(UNIQUE_ID_BYTES)
        if bootstrap == "tcp":  # bounded by its own timeout, with an error naming the missing ranks
            uid = rendezvous(rank, size, placement.master_addr, placement.master_port, uid, timeout)
        with self._watch("NCCL start-up (unique id, ncclCommInitRank)"):
            if bootstrap == "mpi":
                buf = np.frombuffer(uid, dtype=np.uint8).copy()
                self.MPI.COMM_WORLD.Bcast([buf, self.MPI.BYTE], root=0)
                uid = buf.tobytes()
            self.nccl_comm = _nccl_communicator(nccl, size, uid, rank)
        if size > 1:
            self._abort_on_uncaught()

    def _stream(self):
        return self.cupy.cuda.get_current_stream().ptr

    def side_stream(self):
        """The CUDA stream that gradient all-reduces overlapped with the backward run on
        (minisft.distributed.overlap), made on first use; non-blocking: it never waits implicitly for
        the legacy default stream, only for the events it is told to."""
        if self._side_stream is None:
            self._side_stream = self.cupy.cuda.Stream(non_blocking=True)
        return self._side_stream

    def _type(self, a):
        return self.types[np.dtype(a.dtype)]

    def _allreduce_one(self, a):
        self.nccl_comm.allReduce(a.data.ptr, a.data.ptr, a.size, self._type(a), self.nccl.NCCL_SUM, self._stream())

    def _broadcast_one(self, a, root):
        self.nccl_comm.bcast(a.data.ptr, a.size, self._type(a), root, self._stream())

    def _wait(self):
        done = self.cupy.cuda.get_current_stream().record()  # an event after the queued collectives
        while not done.done:  # cudaEventQuery; sleeping frees the GIL for the watchdog (module docstring)
            time.sleep(WAIT_POLL_SECONDS)

    def _allgather_bytes(self, data):
        cp, n = self.cupy, self.world_size
        counts = cp.empty(n, dtype=cp.int64)
        self.nccl_comm.allGather(cp.asarray([len(data)], dtype=cp.int64).data.ptr, counts.data.ptr, 1,
                                 self.nccl.NCCL_INT64, self._stream())
        counts = counts.get()
        width = max(1, int(counts.max()))
        send = cp.zeros(width, dtype=cp.uint8)
        send[: len(data)] = cp.asarray(np.frombuffer(data, dtype=np.uint8).copy())
        recv = cp.empty(n * width, dtype=cp.uint8)
        self.nccl_comm.allGather(send.data.ptr, recv.data.ptr, width, self.nccl.NCCL_UINT8, self._stream())
        host = recv.get()
        return [host[r * width : r * width + int(c)].tobytes() for r, c in enumerate(counts)]

    def _bcast_bytes(self, data, root):
        cp = self.cupy
        n = cp.asarray([len(data)], dtype=cp.int64)
        self._broadcast_one(n, root)
        size = int(n.get()[0])
        buf = cp.asarray(np.frombuffer(data, dtype=np.uint8).copy()) if self.rank == root else cp.empty(size, dtype=cp.uint8)
        if size:
            self._broadcast_one(buf, root)
        return buf.get().tobytes()

    def barrier(self):
        if self.world_size > 1:
            with self._watch("barrier"):
                self._allreduce_one(self.cupy.zeros(1, dtype=self.cupy.int32))
                self._wait()

    def _abort(self, code):
        if self.MPI is not None:
            from .mpi import mpi_abort

            threading.Timer(ABORT_GRACE_SECONDS, os._exit, (code,)).start()  # should MPI_Abort not return
            mpi_abort(self.MPI, code)
        os._exit(code)

    def close(self):
        self._side_stream = None
        if self.nccl_comm is not None:
            self.nccl_comm.destroy()
            self.nccl_comm = None
        super().close()


def _unique_id_bytes(uid):
    """ncclUniqueId as UNIQUE_ID_BYTES bytes: CuPy 14 returns bytes, older CuPy a tuple of int8 values."""
    raw = bytes(uid) if isinstance(uid, (bytes, bytearray)) else np.array(uid, dtype=np.int8).tobytes()
    if len(raw) != UNIQUE_ID_BYTES:
        raise DistributedError(f"nccl.get_unique_id() gave {len(raw)} bytes: expected {UNIQUE_ID_BYTES} (ncclUniqueId)")
    return raw


def _nccl_communicator(nccl, size, uid, rank):
    """NcclCommunicator from the id's bytes, in the form this CuPy takes (bytes in CuPy 14, a tuple of
    int8 values before); a failure of NCCL itself (NcclError) is not retried."""
    try:
        return nccl.NcclCommunicator(size, uid, rank)
    except (TypeError, ValueError):
        return nccl.NcclCommunicator(size, tuple(np.frombuffer(uid, dtype=np.int8).tolist()), rank)
