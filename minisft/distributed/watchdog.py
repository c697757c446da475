"""A deadline on every collective: a rank whose peer died or hangs exits instead of waiting forever.

A collective blocks until every rank has joined it. When a peer is gone (killed, crashed without
aborting the job, or stuck), the others would wait forever. Each communicator of more than one
rank therefore owns a `Watchdog`: a daemon thread that sleeps while no collective is in flight, and
while one is, calls `on_timeout(op, seconds)` if it has not finished `timeout` seconds after it
started. The backends' `on_timeout` print which rank gave up in which collective and then end the
process (MPI: `MPI_Abort`, which ends the whole job; NCCL: the process exits at once), so a lost
peer costs at most `timeout` seconds plus the abort, never a hang.

Only time spent inside a collective counts: a rank may compute, evaluate or write a checkpoint
for as long as it needs between collectives, but its peers, already waiting in the next
collective, give up `timeout` seconds after they entered it. Pick `timeout` above the longest
stretch one rank may spend alone (rank 0's checkpoint write, say).
"""

import threading
import time
from contextlib import contextmanager

from ..core.errors import bad_value

DEFAULT_TIMEOUT = 300.0  # seconds; MINISFT_DIST_TIMEOUT overrides (environment.resolve_timeout)
TIMEOUT_EXIT_CODE = 124  # the exit code of a rank whose collective timed out (as coreutils' timeout)


class Watchdog:
    """watch(op) marks a collective in flight; `on_timeout(op, timeout)` runs on the watchdog
    thread when one stays in flight longer than `timeout` seconds (it is expected not to return)."""

    def __init__(self, timeout, on_timeout):
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise bad_value("timeout", timeout, "a positive number of seconds")
        self.timeout, self.on_timeout = float(timeout), on_timeout
        self._cond = threading.Condition()
        self._op = self._deadline = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="minisft-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def watch(self, op):
        with self._cond:
            self._op, self._deadline = op, time.monotonic() + self.timeout
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._op = self._deadline = None

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self):
        with self._cond:
            while True:
                if self._closed:
                    return
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    op = self._op
                    break
                self._cond.wait(remaining)
        self.on_timeout(op, self.timeout)
