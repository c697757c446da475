"""Data-parallel communication: one process per device, NCCL between GPUs, MPI between CPU processes.

    comm = from_environment(device="numpy")     # or "cupy"; reads the launcher's variables
    comm.allreduce_sum_bucketed(grads)           # gradients summed over the ranks, few fused calls
    comm.broadcast(params, root=0)               # every rank starts from rank 0's values

`from_environment` reads where the process sits (minisft.distributed.environment: mpirun/mpiexec,
srun, torchrun-style RANK/WORLD_SIZE, or nothing) and returns a Communicator
(minisft.distributed.communicator) of one of three backends:

    "single"   world size 1: every collective is the identity, nothing is imported or started
    "mpi"      NumPy arrays through mpi4py's buffer calls (minisft.distributed.mpi)
    "nccl"     CuPy arrays through cupy.cuda.nccl (minisft.distributed.nccl)

On top of the collectives: `minisft.distributed.data_parallel` (exact data parallelism: each rank its
rows of the global batch, weighted inside the backward; one bucketed all-reduce per step; the
trainer, the methods and the CLI use it through `Task.comm`), `minisft.distributed.overlap` (that
all-reduce overlapped with the backward on NCCL's side stream) and `minisft.distributed.rank0`
(rank 0 reads a file, every rank gets its content).

Start several processes with `mpirun -n N python -m ...`, `mpiexec -n N`, `srun`, torchrun, or
`minisft launch --nproc N -- <command>` (minisft.distributed.launch). A rank that fails aborts the job; a rank
whose collective waits longer than `timeout` seconds (default 300, $MINISFT_DIST_TIMEOUT) aborts it
too (minisft.distributed.watchdog): a lost peer never hangs the others.
"""

from .buckets import DEFAULT_BUCKET_BYTES, Bucket, Segment, plan_buckets
from .communicator import Communicator, DistributedError, ReduceReport
from .environment import Placement, choose_backend, read_placement, resolve_timeout
from .watchdog import DEFAULT_TIMEOUT, TIMEOUT_EXIT_CODE


def from_environment(backend="auto", device="numpy", timeout=None, environ=None):
    """The Communicator for this process. backend: "auto" (chosen from the launcher's variables and
    the device), "single", "mpi" or "nccl"; device: "numpy" / "cupy" (or the module) the arrays live
    on; timeout: seconds a collective may wait for its peers (None: $MINISFT_DIST_TIMEOUT or 300);
    environ: the variables to read (default os.environ)."""
    placement = read_placement(environ)
    name, bootstrap = choose_backend(placement, device, backend)
    timeout = resolve_timeout(timeout, environ)
    if name == "single":
        return Communicator()
    if name == "mpi":
        from .mpi import MPICommunicator

        return MPICommunicator(placement, timeout)
    from .nccl import NCCLCommunicator

    return NCCLCommunicator(placement, bootstrap, timeout)


__all__ = ["DEFAULT_BUCKET_BYTES", "DEFAULT_TIMEOUT", "TIMEOUT_EXIT_CODE", "Bucket", "Communicator",
           "DistributedError", "Placement", "ReduceReport", "Segment", "choose_backend", "from_environment",
           "plan_buckets", "read_placement", "resolve_timeout"]
