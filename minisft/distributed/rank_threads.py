"""CPU threads of ranks that share a host: each gets its share of the cores, not all of them.

NumPy's BLAS (OpenBLAS, MKL) starts one thread per core in every process. Under `mpirun -n N` on
one host, N ranks then run N × cores BLAS threads on the cores, and while one rank waits in an
MPI collective (MPICH and Open MPI poll, busy) it takes a core from the rank still computing: on a
2-core machine a 2-rank LoRA step of the `tiny` preset took 90 ms against 15 ms for one process,
and 22 ms with one BLAS thread per rank (a measurement: docs/scale-out.md). torchrun sets
OMP_NUM_THREADS=1 for the same reason.

A rank's share is max(1, cores // local ranks), the local ranks read from the launcher's variables
(LOCAL_WORLD_SIZE of torchrun and `minisft launch`, OMPI_COMM_WORLD_LOCAL_SIZE of Open MPI,
MPI_LOCALNRANKS of MPICH's Hydra). Nothing happens when minisft is imported: the `minisft` command
limits its own thread pools when it starts as one of several ranks on a host (`share_cores`, through
threadpoolctl, since NumPy is loaded by then), and `minisft launch` puts the variables in its ranks'
environments (`thread_environment`). A thread variable the user set wins in both cases.
"""

import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
LOCAL_SIZE_VARIABLES = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")


def local_ranks(environ):
    """Ranks on this host by the launcher's variables (the first one set that is a positive integer), 1 if none."""
    for name in LOCAL_SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def rank_share(environ, cores=None):
    """This rank's share of the cores, or None when it needs none (one rank on the host, or a thread
    variable set by the user)."""
    n = local_ranks(environ)
    if n == 1 or any(name in environ for name in THREAD_VARIABLES):
        return None
    return max(1, (os.cpu_count() or 1 if cores is None else cores) // n)


def thread_environment(environ, cores=None):
    """`environ` with the thread variables set to the rank's share (for a process about to start:
    its BLAS reads them when it loads); unchanged when rank_share is None."""
    share = rank_share(environ, cores)
    return dict(environ) if share is None else {**environ, **dict.fromkeys(THREAD_VARIABLES, str(share))}


def share_cores(environ=None, cores=None):
    """Limit this process's BLAS and OpenMP thread pools to its share of the cores (threadpoolctl);
    returns the share, or None when nothing was limited."""
    share = rank_share(os.environ if environ is None else environ, cores)
    if share is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(share)
    return share
