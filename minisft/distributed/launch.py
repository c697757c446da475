"""`minisft launch --nproc N -- <command>`: N local processes in the torchrun-style environment.

    minisft launch --nproc 4 -- minisft finetune --method lora      # one process per GPU of this host
    minisft launch --nproc 2 --nnodes 2 --node-rank 0 --master-addr HOST0 --master-port 29500 -- ...

Each process gets RANK = node_rank * nproc + local_rank, WORLD_SIZE = nnodes * nproc, LOCAL_RANK,
LOCAL_WORLD_SIZE = nproc, MASTER_ADDR, MASTER_PORT (a free port of this host when not given, single
node only), PYTHONUNBUFFERED=1 (unless set) and each rank's share of the cores in the BLAS/OpenMP
thread variables (unless one is set; minisft.distributed.rank_threads), so `minisft.distributed.from_environment` in each
finds its place, and the NCCL ranks meet at MASTER_ADDR:MASTER_PORT. Their stdout and stderr lines
come out on the launcher's stdout and stderr, each line prefixed with "[rank] ".

If a process exits with a non-zero code, the launcher says so on stderr, sends SIGTERM to the others
(to their whole process groups, so a shell wrapper's children go too), SIGKILL after `grace`
seconds, and returns that first failing code (128 + n for a process killed by signal n, as a shell
reports it). Ctrl-C or SIGTERM to the launcher stops every process the same way (exit 130 / 143).
It returns 0 when every process exits 0. If the launcher itself dies without stopping them (SIGKILL,
a crash), the ranks end too: each runs under a guard (minisft.distributed.rank_guard) that watches
a pipe only the launcher holds open and ends the rank's process group when it closes.

NumPy (MPI) jobs are started by mpirun/mpiexec instead: this launcher sets no MPI variables.
"""

import argparse
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from ..core.errors import MinisftError, bad_value, positive_int, real_in
from .rank_threads import thread_environment

POLL_SECONDS = 0.05
GUARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rank_guard.py")


def free_port(host="127.0.0.1"):
    """A TCP port free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rank_environments(nproc, nnodes=1, node_rank=0, master_addr="127.0.0.1", master_port=None, base=None):
    """[{variable: value}] of the nproc processes of node `node_rank`: `base` (default os.environ) plus
    the torchrun-style variables (module docstring) and each rank's share of the cores
    (minisft.distributed.rank_threads)."""
    nproc, nnodes = positive_int("nproc", nproc), positive_int("nnodes", nnodes)
    if isinstance(node_rank, bool) or not isinstance(node_rank, int) or not 0 <= node_rank < nnodes:
        raise bad_value("node_rank", node_rank, f"an integer in [0, nnodes={nnodes})")
    if master_port is None:
        if nnodes > 1:
            raise bad_value("master_port", None, "a port every node agrees on when nnodes > 1")
        master_port = free_port()
    if isinstance(master_port, bool) or not isinstance(master_port, int) or not 1 <= master_port <= 65535:
        raise bad_value("master_port", master_port, "a TCP port in 1..65535")
    base = dict(os.environ if base is None else base)
    base.setdefault("PYTHONUNBUFFERED", "1")
    return [thread_environment(dict(base, RANK=str(node_rank * nproc + i), WORLD_SIZE=str(nnodes * nproc),
                                    LOCAL_RANK=str(i), LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR=str(master_addr),
                                    MASTER_PORT=str(master_port)))
            for i in range(nproc)]


def _pump(stream, out, prefix, lock):
    """Copy lines from a child's pipe to `out` (a binary stream), each prefixed, whole lines at a time."""
    for line in iter(stream.readline, b""):
        with lock:
            out.write(prefix + (line if line.endswith(b"\n") else line + b"\n"))
            out.flush()
    stream.close()


def _exit_code(returncode):
    return 128 - returncode if returncode < 0 else returncode


def launch(command, nproc, nnodes=1, node_rank=0, master_addr="127.0.0.1", master_port=None, grace=5.0,
           stdout=None, stderr=None):
    """Run `command` (a list of strings) as nproc ranks; return 0, or the first failing rank's exit code."""
    if isinstance(command, str) or not command or not all(isinstance(c, str) for c in command):
        raise bad_value("command", command, "a non-empty list of strings (the program and its arguments)")
    grace = real_in("grace", grace, 0.0, math.inf, low_open=False, high_open=True)
    if shutil.which(command[0]) is None:
        raise bad_value("command", command, "a program that can be started (not found, or not executable)")
    envs = rank_environments(nproc, nnodes, node_rank, master_addr, master_port)
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr.buffer
    lock, procs, pumps = threading.Lock(), [], []
    watch, alive = os.pipe()  # the guards read `watch`; only this process holds `alive` (module docstring)
    try:
        for env in envs:
            try:
                p = subprocess.Popen([sys.executable, GUARD, str(watch), "--", *command], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     start_new_session=True, pass_fds=(watch,))
            except OSError as e:
                raise bad_value("command", command, f"a program that can be started ({e.strerror})") from None
            procs.append(p)
            prefix = f"[{env['RANK']}] ".encode()
            for stream, sink in ((p.stdout, out), (p.stderr, err)):
                t = threading.Thread(target=_pump, args=(stream, sink, prefix, lock), daemon=True)
                t.start()
                pumps.append(t)
        os.close(watch)
        watch = None
        code = _wait(procs, envs, err, lock)
    except KeyboardInterrupt:
        code = 130
    finally:
        _stop(procs, grace)
        for fd in (watch, alive):
            if fd is not None:
                os.close(fd)
    for t in pumps:
        t.join(timeout=grace)
    return code


def _wait(procs, envs, err, lock):
    """0 when every process exits 0; else the first non-zero exit code (the others still running)."""
    while True:
        running = False
        for p, env in zip(procs, envs):
            rc = p.poll()
            if rc is None:
                running = True
            elif rc != 0:
                others = [e["RANK"] for q, e in zip(procs, envs) if q.poll() is None]
                with lock:
                    err.write(f"minisft launch: rank {env['RANK']} exited with code {_exit_code(rc)}"
                              f"{'; stopping ranks ' + ', '.join(others) if others else ''}\n".encode())
                    err.flush()
                return _exit_code(rc)
        if not running:
            return 0
        time.sleep(POLL_SECONDS)


def _signal_group(p, sig):
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(procs, grace):
    """SIGTERM every process group still running, SIGKILL what is left after `grace` seconds."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()


def parser():
    ap = argparse.ArgumentParser(prog="minisft launch", description="Start N local ranks of a command "
                                 "(torchrun-style RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT).")
    ap.add_argument("--nproc", type=int, required=True, help="processes on this host (one per GPU)")
    ap.add_argument("--nnodes", type=int, default=1, help="hosts in the job (default 1)")
    ap.add_argument("--node-rank", type=int, default=0, help="this host's index in [0, nnodes)")
    ap.add_argument("--master-addr", default="127.0.0.1", help="rank 0's host (default 127.0.0.1)")
    ap.add_argument("--master-port", type=int, help="rank 0's rendezvous port (default: a free port; required if nnodes > 1)")
    ap.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL when stopping ranks")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command each rank runs")
    return ap


def main(argv=None):
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return launch(command, args.nproc, args.nnodes, args.node_rank, args.master_addr, args.master_port, args.grace)
    except MinisftError as e:
        print(f"minisft launch: error: {e}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signal.SIGTERM)  # launch() stops the ranks on its way out


if __name__ == "__main__":
    sys.exit(main())
