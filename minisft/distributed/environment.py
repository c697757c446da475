"""Where this process sits, read from its launcher's environment, and which backend serves it.

Launchers and the variables they set:

    mpirun / mpiexec (Open MPI)   OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
    mpiexec (MPICH / Hydra)       PMI_RANK, PMI_SIZE, MPI_LOCALRANKID
    srun --mpi=pmix, PMIx         PMIX_RANK (the size comes from MPI itself)
    torchrun, minisft launch      RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT

Backend choice (`choose_backend`, backend="auto"):
    world size 1                        "single" (no communication)
    an MPI launcher, NumPy arrays       "mpi"
    an MPI launcher, CuPy arrays        "nccl", its unique id broadcast over MPI
    RANK/WORLD_SIZE, CuPy arrays        "nccl", its unique id through a TCP rendezvous at MASTER_ADDR:MASTER_PORT
    RANK/WORLD_SIZE, NumPy arrays       an error: NumPy arrays travel over MPI, so launch with mpirun

Multi-node runs use the same variables: mpirun/srun set them on every host; for the torchrun-style
variables each host starts its processes with RANK = node_rank * nproc_per_node + LOCAL_RANK, the
same WORLD_SIZE, and MASTER_ADDR:MASTER_PORT reachable from every host (`minisft launch --nnodes
--node-rank` does that arithmetic).

Choices: Slurm's SLURM_PROCID / SLURM_NTASKS are not read (a batch script sees them while it is one
process); "MPI world size > 1" counts only when the caller has already imported mpi4py.MPI (so a
plain run never initialises MPI); inconsistent variables (RANK >= WORLD_SIZE, RANK without
WORLD_SIZE, RANK disagreeing with the MPI launcher's rank, a port outside 1..65535) are errors that
name the variable, its value and what was expected.
"""

import os
import sys
from dataclasses import dataclass

from ..core.errors import bad_value
from .communicator import DistributedError
from .watchdog import DEFAULT_TIMEOUT

BACKENDS = ("auto", "single", "mpi", "nccl")
DEVICES = ("numpy", "cupy")

# (rank, size, local rank) variables of each MPI launcher family; None: not provided
MPI_VARIABLES = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("PMIX_RANK", None, None),
)


@dataclass(frozen=True)
class Placement:
    """This process's place in the job. launcher: "none", "mpi" or "torchrun". world_size None: an
    MPI launcher that does not say it (MPI itself tells, at construction)."""

    launcher: str
    rank: int
    world_size: int
    local_rank: int = None
    master_addr: str = None
    master_port: int = None


def _int(environ, name, low=0):
    value = environ.get(name)
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        raise bad_value(name, value, f"an integer >= {low}") from None
    if n < low:
        raise bad_value(name, value, f"an integer >= {low}")
    return n


def read_placement(environ=None):
    """The Placement described by `environ` (default os.environ); errors for inconsistent variables."""
    environ = os.environ if environ is None else environ
    mpi = None
    for rank_var, size_var, local_var in MPI_VARIABLES:
        if rank_var in environ:
            rank = _int(environ, rank_var)
            size = _int(environ, size_var, low=1) if size_var else None
            if size is not None and rank >= size:
                raise bad_value(rank_var, rank, f"a rank below {size_var}={size}")
            mpi = (rank_var, rank, size, _int(environ, local_var) if local_var else None)
            break
    if mpi is None and "mpi4py.MPI" in sys.modules:  # the caller initialised MPI itself
        world = sys.modules["mpi4py.MPI"].COMM_WORLD
        if world.Get_size() > 1:
            mpi = ("MPI.COMM_WORLD", world.Get_rank(), world.Get_size(), None)

    torch_rank, torch_size = _int(environ, "RANK"), _int(environ, "WORLD_SIZE", low=1)
    if (torch_rank is None) != (torch_size is None):
        given, missing = ("RANK", "WORLD_SIZE") if torch_rank is not None else ("WORLD_SIZE", "RANK")
        raise bad_value(missing, None, f"set together with {given}={environ[given]} (torchrun-style launch)")
    if torch_rank is not None and torch_rank >= torch_size:
        raise bad_value("RANK", torch_rank, f"a rank below WORLD_SIZE={torch_size}")
    local_rank = _int(environ, "LOCAL_RANK")
    local_world = _int(environ, "LOCAL_WORLD_SIZE", low=1)
    if local_rank is not None and local_world is not None and local_rank >= local_world:
        raise bad_value("LOCAL_RANK", local_rank, f"a local rank below LOCAL_WORLD_SIZE={local_world}")
    addr = environ.get("MASTER_ADDR") or None
    port = _int(environ, "MASTER_PORT", low=1)
    if port is not None and port > 65535:
        raise bad_value("MASTER_PORT", port, "a TCP port in 1..65535")

    if mpi is not None:
        var, rank, size, mpi_local = mpi
        if torch_rank is not None and (torch_rank, torch_size) != (rank, size if size is not None else torch_size):
            raise bad_value("RANK/WORLD_SIZE", (torch_rank, torch_size),
                            f"the MPI launcher's rank and size ({var}: rank {rank}, size {size}) or unset")
        local = mpi_local if mpi_local is not None else local_rank
        return Placement("mpi", rank, size if size is not None else torch_size, local, addr, port)
    if torch_rank is not None:
        return Placement("torchrun", torch_rank, torch_size, local_rank if local_rank is not None else 0, addr, port)
    return Placement("none", 0, 1, 0, addr, port)


def device_name(device):
    """"numpy" or "cupy" from a name or an array module."""
    name = getattr(device, "__name__", device)
    if name not in DEVICES:
        raise bad_value("device", device, f"one of {DEVICES} or the numpy / cupy module")
    return name


def choose_backend(placement, device="numpy", backend="auto"):
    """(backend, bootstrap) for `placement` and the arrays' `device`: backend in single/mpi/nccl;
    bootstrap (how NCCL ranks share their unique id) "mpi", "tcp", or None (module docstring)."""
    device = device_name(device)
    if backend not in BACKENDS:
        raise bad_value("backend", backend, f"one of {BACKENDS}")
    p = placement
    single_process = p.launcher == "none" or p.world_size == 1
    if backend == "auto":
        if single_process:
            return "single", None
        backend = "mpi" if (p.launcher == "mpi" and device == "numpy") else "nccl"
        if p.launcher == "torchrun" and device == "numpy":
            raise DistributedError(
                f"RANK={p.rank} WORLD_SIZE={p.world_size} (a torchrun-style launch) with NumPy arrays: expected "
                "CuPy arrays (NCCL), or NumPy arrays under an MPI launcher (mpirun -n N / mpiexec -n N / srun)")
    if backend == "single":
        if not single_process:
            raise DistributedError(f"backend='single' in a job of world size {p.world_size} (launcher {p.launcher}): "
                                   "expected a single process, or backend='auto'")
        return "single", None
    if backend == "mpi":
        if p.launcher != "mpi":
            raise DistributedError("backend='mpi': expected a process started by an MPI launcher (mpirun, mpiexec, "
                                   "srun --mpi=...; none of OMPI_COMM_WORLD_RANK, PMI_RANK, PMIX_RANK is set)")
        if device != "numpy":
            raise DistributedError("backend='mpi' with CuPy arrays: expected NumPy arrays (GPU arrays go through "
                                   "NCCL: backend='nccl' or 'auto')")
        return "mpi", None
    if device != "cupy":
        raise DistributedError("backend='nccl' with NumPy arrays: expected CuPy arrays (NCCL reduces GPU memory)")
    if p.launcher == "mpi":
        return "nccl", "mpi"
    if p.launcher == "torchrun" and p.world_size > 1:
        missing = [v for v, x in (("MASTER_ADDR", p.master_addr), ("MASTER_PORT", p.master_port)) if x is None]
        if missing:
            raise bad_value(missing[0], None, f"the address/port of rank 0's rendezvous (set {' and '.join(missing)}, "
                                              "as torchrun and minisft launch do)")
        return "nccl", "tcp"
    return "nccl", "local"  # one rank: the unique id never leaves the process


def resolve_timeout(timeout=None, environ=None):
    """Seconds a collective may take: `timeout`, else $MINISFT_DIST_TIMEOUT, else DEFAULT_TIMEOUT."""
    environ = os.environ if environ is None else environ
    if timeout is None:
        raw = environ.get("MINISFT_DIST_TIMEOUT")
        if raw is None:
            return DEFAULT_TIMEOUT
        try:
            timeout = float(raw)
        except ValueError:
            raise bad_value("MINISFT_DIST_TIMEOUT", raw, "a positive number of seconds") from None
        name = "MINISFT_DIST_TIMEOUT"
    else:
        name = "timeout"
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise bad_value(name, timeout, "a positive, finite number of seconds")
    return float(timeout)
