"""The guard `minisft launch` puts around each rank: the rank's processes end when the launcher ends,
however it ends (SIGKILL included).

    python rank_guard.py FD -- COMMAND...

Run as a file (it imports nothing from minisft, so it starts in milliseconds), as the leader of the
rank's own process group. It starts COMMAND in that group and watches the file descriptor FD, the
read end of a pipe whose only write end the launcher holds: when the launcher dies, the kernel
closes that end and FD reads end-of-file, and the guard sends SIGTERM to the whole group (COMMAND
and anything it started), SIGKILL after GRACE seconds. Otherwise it waits for COMMAND and ends the
way COMMAND ended: its exit code, or the same signal. SIGTERM and SIGINT sent to the group reach
COMMAND directly; the guard itself outlives them to report how COMMAND ended. Where Linux's
PR_SET_PDEATHSIG exists, COMMAND is also killed if the guard itself is killed.
"""

import ctypes
import os
import select
import signal
import subprocess
import sys
import time

GRACE = 5.0
POLL = 0.2
PR_SET_PDEATHSIG = 1


def _die_with_the_guard():
    """In COMMAND's process, before it starts: SIGKILL when the guard dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _end_like(returncode):
    """Exit as a process that ended with `returncode` (negative: killed by that signal)."""
    if returncode < 0:
        if -returncode not in (signal.SIGKILL, signal.SIGSTOP):  # the two that keep their default anyway
            signal.signal(-returncode, signal.SIG_DFL)
        os.kill(os.getpid(), -returncode)
        time.sleep(1.0)  # the signal arrives meanwhile
    sys.exit(returncode if returncode >= 0 else 128 - returncode)


def _stop_group(child):
    """The launcher is gone: SIGTERM the group, SIGKILL it after GRACE seconds."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)  # the guard included


def main(argv):
    fd, command = int(argv[0]), argv[2:]
    for sig in (signal.SIGTERM, signal.SIGINT):  # the group's signal reaches COMMAND; the guard reports its end
        signal.signal(sig, lambda *_: None)
    try:
        child = subprocess.Popen(command, preexec_fn=_die_with_the_guard)
    except OSError as e:
        print(f"minisft launch: cannot start {command[0]!r}: {e.strerror}", file=sys.stderr, flush=True)
        sys.exit(127)
    while True:
        ready, _, _ = select.select([fd], [], [], POLL)
        if ready and not os.read(fd, 1):  # end-of-file: the launcher's write end closed
            _stop_group(child)
        if child.poll() is not None:
            _end_like(child.returncode)


if __name__ == "__main__":
    main(sys.argv[1:])
