"""CPU threads of ranks that share a host: each gets its share of the cores, not all of them.

NumPy's BLAS (OpenBLAS, MKL) starts one thread per core in every process. Under `mpirun -n N` on
one host, N ranks then run N × cores BLAS threads on the cores, and while one rank waits in an
MPI collective (MPICH and Open MPI poll, busy) it takes a core from the rank still computing:
on this project's 2-core machine type a 2-rank LoRA step took 90 ms against 15 ms for one process
(2026-11-27, `python -m reference_models.bench_dp --preset tiny --backend numpy --world-size 1,2
--methods lora --phases`), and 22 ms with one BLAS thread per rank. torchrun sets OMP_NUM_THREADS=1
for the same reason.

`share_cores()` runs when minisft is imported, before NumPy is: if this process is one of several
ranks on its host (LOCAL_WORLD_SIZE of torchrun and `minisft launch`, OMPI_COMM_WORLD_LOCAL_SIZE of
Open MPI, MPI_LOCALNRANKS of MPICH's Hydra) and the user has set none of the thread variables, it
sets OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS to max(1, cores // local ranks).
A variable the user set wins, and a program that imported NumPy before minisft keeps NumPy's
threads (the BLAS read them when it loaded); set them on the launcher's command line there.
"""

import os
import sys

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
LOCAL_SIZE_VARIABLES = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")


def local_ranks(environ=None):
    """Ranks on this host by the launcher's variables (the first one set that is a positive integer), 1 if none."""
    env = os.environ if environ is None else environ
    for name in LOCAL_SIZE_VARIABLES:
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def share_cores(environ=None, cores=None):
    """Set the thread variables to this rank's share of the cores (module docstring) and return the
    number set, or None when nothing was set (one rank per host, a variable already set, or NumPy
    already loaded in this process)."""
    env = os.environ if environ is None else environ
    n = local_ranks(env)
    if n == 1 or any(name in env for name in THREAD_VARIABLES) or (environ is None and "numpy" in sys.modules):
        return None
    threads = max(1, (os.cpu_count() if cores is None else cores) // n)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    return threads
