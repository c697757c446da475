"""What a run prints while it works, on stderr: phase lines, progress, and notes.

Three modes (`mode_of(progress)`; commands pass `progress=None` unless told `--quiet`):
    "live"   stderr is a terminal: one status line rewritten in place (step, loss, tokens/s, ETA);
    "lines"  stderr is a pipe or a file (nohup, CI, `2> log`): a line when a phase starts, one about
             every 10% of its steps, and one when it ends, so a user tailing the log sees it move;
    "off"    `--quiet` (progress=False): nothing but notes.
`phase(message, mode)` prints one line in "live" and "lines" modes. `note(message)` is always
printed: it says that something was rebuilt or skipped (a damaged cache, a finished run).
"""

import sys
import time

from .errors import bad_value

MODES = ("live", "lines", "off")


def mode_of(progress):
    """None: "live" on a terminal, else "lines"; False: "off"; True: "live"; or a mode by name."""
    if progress is None:
        return "live" if sys.stderr.isatty() else "lines"
    if isinstance(progress, bool):
        return "live" if progress else "off"
    if progress not in MODES:
        raise bad_value("progress", progress, f"None, True, False or one of {MODES}")
    return progress


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def phase(message, progress=None):
    """One line saying what starts now (unless quiet)."""
    if mode_of(progress) != "off":
        print(f"minisft: {message}", file=sys.stderr, flush=True)


def note(message):
    """One line that must be seen even with --quiet (something was rebuilt, skipped or refused)."""
    print(f"minisft: {message}", file=sys.stderr, flush=True)


class Progress:
    """Steps `start`+1 .. `total` of a phase named `label` (see the module docstring for the modes)."""

    def __init__(self, total, label, progress=None, start=0):
        self.total, self.label, self.start = total, label, start
        self.mode = mode_of(progress)
        self.t0 = time.perf_counter()
        self._next_tenth = start * 10 // total + 1  # the next tenth of the phase to report
        if self.mode == "lines":
            resumed = f", resuming after step {start}" if start else ""
            print(f"minisft: {label}: {total} steps{resumed}", file=sys.stderr, flush=True)

    def _status(self, step, loss, tokens):
        elapsed = time.perf_counter() - self.t0
        done = step - self.start
        rate = tokens / elapsed if elapsed > 0 else 0.0
        eta = elapsed / max(done, 1) * (self.total - step)
        return (f"{self.label} {step}/{self.total} ({100 * step // self.total}%) loss {loss:.4f} "
                f"{rate:,.0f} tok/s ETA {_duration(eta)}")

    def update(self, step, loss, tokens):
        """After step `step` (1-based, of `total`), with the mean training loss and tokens seen since start."""
        if self.mode == "live":
            sys.stderr.write("\r" + self._status(step, loss, tokens) + " ")
            sys.stderr.flush()
        elif self.mode == "lines" and step * 10 >= self._next_tenth * self.total:
            while step * 10 >= self._next_tenth * self.total:
                self._next_tenth += 1
            print("minisft: " + self._status(step, loss, tokens), file=sys.stderr, flush=True)

    def close(self):
        elapsed = _duration(time.perf_counter() - self.t0)
        if self.mode == "live":
            sys.stderr.write("\n")
        if self.mode != "off":
            print(f"minisft: {self.label}: done in {elapsed}", file=sys.stderr, flush=True)
