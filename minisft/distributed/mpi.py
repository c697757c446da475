"""The "mpi" backend: NumPy arrays reduced by MPI through mpi4py's buffer interface.

Arrays go through the upper-case, buffer-based calls (`Allreduce(MPI.IN_PLACE, a)`, `Bcast(a)`,
`Allgatherv` of bytes): no pickling, the numbers move as they are in memory. MPI comes from the
PyPI wheels (`pip install 'minisft[mpi]'` installs mpi4py and MPICH, whose `mpiexec` lands next to
the Python interpreter), or from the system's MPI that mpi4py was built against.

Failure handling (what is guaranteed), for a job of more than one rank:
- an uncaught exception on any rank prints its traceback and calls MPI_Abort, which ends every rank
  at once (without it, the failed rank would wait in MPI_Finalize and the others in their next
  collective, forever); `abort_on_failure()` does the same for a non-zero SystemExit in its block;
- a rank killed outright (SIGKILL, the OOM killer) is noticed by the launcher: mpiexec/mpirun end
  the job when one of its processes dies;
- a rank that hangs, or dies where the launcher does not notice, leaves the others blocked in a
  collective: their watchdog (minisft.distributed.watchdog) prints which collective timed out and
  calls MPI_Abort `timeout` seconds after the collective began (exit code 124). MPI_Abort from the
  watchdog thread needs MPI_THREAD_MULTIPLE, which mpi4py requests by default; at a lower thread
  level the process ends with os._exit instead, and the launcher ends the rest.
"""

import os
import sys
import threading
import time

import numpy as np

from .communicator import Communicator, DistributedError, require_module
from .watchdog import Watchdog

ABORT_DRAIN_SECONDS = 0.25


def import_mpi():
    """mpi4py's MPI module (initialises MPI), or a DistributedError saying how to install it."""
    return require_module("mpi4py.MPI", "the MPI backend", "`pip install 'minisft[mpi]'` (mpi4py and MPICH from PyPI)")


def mpi_abort(MPI, code):
    """MPI_Abort on COMM_WORLD where this thread may call it, else end this process (the launcher ends the rest)."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(ABORT_DRAIN_SECONDS)  # MPI_Abort ends the launcher's forwarding too: let it pass on the last lines
    if threading.current_thread() is threading.main_thread() or MPI.Query_thread() == MPI.THREAD_MULTIPLE:
        MPI.COMM_WORLD.Abort(code)
    os._exit(code)


def mpi_world(placement):
    """(MPI, rank, size, local rank) of COMM_WORLD, checked against what the launcher's variables said;
    the local rank is this process's rank among those on its host (a shared-memory split)."""
    MPI = import_mpi()
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    if placement.world_size is not None and (placement.rank, placement.world_size) != (rank, size):
        raise DistributedError(f"the launcher's environment says rank {placement.rank} of {placement.world_size}, "
                               f"MPI says rank {rank} of {size}: expected the same (is mpi4py built against "
                               "the MPI whose mpiexec started this process?)")
    local = world.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    try:
        return MPI, rank, size, local.Get_rank()
    finally:
        local.Free()


class MPICommunicator(Communicator):
    backend = "mpi"

    def __init__(self, placement, timeout):
        self.MPI, rank, size, local_rank = mpi_world(placement)
        self.comm = self.MPI.COMM_WORLD
        super().__init__(rank, size, local_rank, np, Watchdog(timeout, self._timed_out) if size > 1 else None)
        if size > 1:
            self._abort_on_uncaught()

    def _allreduce_one(self, a):
        self.comm.Allreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM)

    def _broadcast_one(self, a, root):
        self.comm.Bcast(a, root=root)

    def _allgather_bytes(self, data):
        counts = np.zeros(self.world_size, dtype=np.int64)
        self.comm.Allgather(np.array([len(data)], dtype=np.int64), counts)
        recv = np.empty(int(counts.sum()), dtype=np.uint8)
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.comm.Allgatherv([np.frombuffer(data, dtype=np.uint8), self.MPI.BYTE],
                             [recv, (counts.tolist(), displs.tolist()), self.MPI.BYTE])
        return [recv[d : d + c].tobytes() for d, c in zip(displs, counts)]

    def _bcast_bytes(self, data, root):
        n = np.array([len(data)], dtype=np.int64)
        self.comm.Bcast(n, root=root)
        buf = np.frombuffer(data, dtype=np.uint8).copy() if self.rank == root else np.empty(int(n[0]), dtype=np.uint8)
        self.comm.Bcast([buf, self.MPI.BYTE], root=root)
        return buf.tobytes()

    def barrier(self):
        if self.world_size > 1:
            with self._watch("barrier"):
                self.comm.Barrier()

    def _abort(self, code):
        mpi_abort(self.MPI, code)
