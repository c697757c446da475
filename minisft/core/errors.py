"""Input validation that names the argument, the value and what was expected.

Every public entry point checks its input with these helpers, so a bad call fails at the boundary
with a message a user can act on, never with a bare traceback from deep inside NumPy.
"""

import numbers

import numpy as np


class MinisftError(ValueError):
    """Base class of minisft's own errors (a ValueError, so generic handlers still catch it).

    Errors made by `bad_value` / `bad_type` also carry the argument's name, the value and the
    expectation as `arg`, `value`, `expected`, so a caller that knows the argument by another name
    (the command line: `--set r`, `--steps`) can say it in its own words.
    """

    def __init__(self, message, arg=None, value=None, expected=None):
        super().__init__(message)
        self.arg, self.value, self.expected = arg, value, expected


class InputTypeError(MinisftError, TypeError):
    """An argument of the wrong type: a TypeError, and a MinisftError so one handler catches every
    bad input."""


class NonFiniteLossError(MinisftError):
    """Training produced a NaN or infinite loss."""


class CheckpointError(MinisftError):
    """A checkpoint is missing, truncated, corrupt or from another configuration."""


class CorruptFileError(MinisftError):
    """A stored file's content does not match the checksum stored with it."""


class LockedError(MinisftError):
    """A directory is in use by another running minisft process."""


class ForeignFileError(MinisftError):
    """A stored file is intact but is not the one its place says (another key, run or base model)."""


def foreign_file(arg, path, expected):
    """A ForeignFileError naming `arg`, the file `path` and what was `expected` there."""
    return ForeignFileError(f"{arg}={str(path)!r}: expected {expected}", arg, str(path), expected)


class FileWriteError(MinisftError, OSError):
    """A file or folder could not be written (a full disk, a directory where a file is expected, no
    permission): an OSError, and a MinisftError so the command line prints it as one line."""


class BackendError(MinisftError):
    """CuPy is installed but CUDA cannot be used (a broken install or driver, not a missing GPU)."""


def _show(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bad_value(arg, value, expected):
    """A ValueError that names `arg`, shows `value` and says what was `expected`."""
    return MinisftError(f"{arg}={_show(value)}: expected {expected}", arg, value, expected)


def bad_type(arg, value, expected):
    """A TypeError (an InputTypeError) that names `arg`, the type it got and what was `expected`."""
    return InputTypeError(f"{arg} has type {type(value).__name__} ({_show(value)}): expected {expected}",
                          arg, value, expected)


def require(condition, arg, value, expected):
    """Raise `bad_value(arg, value, expected)` unless `condition` holds."""
    if not condition:
        raise bad_value(arg, value, expected)


def positive_int(arg, value):
    """Return `value` as an int after checking it is a positive integer (bool excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise bad_type(arg, value, "a positive integer")
    require(value > 0, arg, value, "a positive integer")
    return int(value)


def nonnegative_int(arg, value):
    """Return `value` as an int after checking it is a non-negative integer (bool excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise bad_type(arg, value, "a non-negative integer")
    require(value >= 0, arg, value, "a non-negative integer")
    return int(value)


def ratio_in(arg, value, low, high, low_open=True, high_open=False):
    """Check a float lies in an interval such as (0, 1]; NaN always fails. A string or a bool is not
    a number (float("0.5") would pass it silently)."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise bad_type(arg, value, "a real number")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise bad_type(arg, value, "a real number")
    lo_ok = v > low if low_open else v >= low
    hi_ok = v < high if high_open else v <= high
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    require(lo_ok and hi_ok, arg, value, f"a number in {interval}")
    return v


def real_in(arg, value, low, high, low_open, high_open):
    """`value` as a float after checking it is a real number (not a bool or a string) in the interval."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise bad_type(arg, value, "a real number")
    return ratio_in(arg, value, low, high, low_open=low_open, high_open=high_open)


def boolean(arg, value):
    """`value` as a bool after checking it is True or False (a NumPy bool too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise bad_type(arg, value, "True or False")
    return bool(value)


def numeric_array(arg, value, bools=False, finite=True):
    """`value` as a NumPy array (a NumPy/CuPy array or a nested list as given) after checking it
    holds real numbers (no strings, objects or complex numbers), and bools only with `bools`; with
    `finite` (the default) no NaN or infinities either."""
    host = value.get() if hasattr(value, "get") and not isinstance(value, (np.ndarray, dict)) else value
    what = "an array of real numbers" + (" or bools" if bools else "")
    try:
        a = np.asarray(host)
    except (TypeError, ValueError) as e:
        raise bad_type(arg, value, f"{what} ({e})") from None
    if a.dtype.kind not in ("biuf" if bools else "iuf"):
        raise bad_type(arg, value, f"{what} (got dtype {a.dtype})")
    if finite and a.dtype.kind == "f" and not np.isfinite(a).all():
        raise bad_value(arg, "an array with NaN or infinite entries", "finite values")
    return a


def str_keyed_dict(arg, value, expected="a dict of {name: array}"):
    """`value` after checking it is a mapping whose keys are all strings."""
    if not isinstance(value, dict) and not (hasattr(value, "keys") and hasattr(value, "__getitem__")):
        raise bad_type(arg, value, expected)
    for key in value.keys():
        if not isinstance(key, str):
            raise bad_type(f"{arg} key", key, f"a str name ({expected})")
    return value
