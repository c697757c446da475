"""Atomic file writes, strict JSON reads and writable-directory checks.

Every file minisft writes (tokenizers, checkpoints, results) goes through `atomic_write_bytes`:
the bytes go to a temporary file in the destination's own directory, are flushed and fsync'ed, and
the temporary file is then renamed over the destination with `os.replace` (atomic on POSIX and on
Windows). A reader therefore sees either the old file or the complete new one, never a torn write;
when anything fails before the rename, the temporary file is removed and the old file is untouched.

Choices:
- The temporary file is created with `os.open(..., O_CREAT | O_EXCL, 0o666)`, so the final file gets
  the usual umask-derived permissions (not the 0600 of `tempfile.mkstemp`), and two writers never
  share a temporary name.
- After the rename the directory is fsync'ed too (where the OS allows opening a directory), so the
  rename itself survives a crash.
- JSON is written strictly: NaN and infinities are refused (they are not JSON), NumPy scalars and
  arrays are converted to Python numbers and lists, keys are sorted so equal objects give equal
  files.
"""

import json
import os
import secrets
from pathlib import Path

import numpy as np

from .errors import MinisftError, bad_value


def bad_path(arg, path, expected):
    """Like `errors.bad_value`, but shows the whole path (paths are not cut short)."""
    return MinisftError(f"{arg}={str(path)!r}: expected {expected}")


def _fsync_dir(directory):
    """Make a rename inside `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data):
    """Write `data` (bytes) to `path` atomically; return `path` as a Path.

    The parent directory must exist (see `ensure_writable_dir`). On any failure, including an
    interrupt, the temporary file is removed and an existing file at `path` keeps its old content.
    """
    path = Path(path)
    data = bytes(data)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise bad_path("path", path, f"a file in an existing, writable directory ({e.strerror})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path, text, encoding="utf-8"):
    """Write the string `text` to `path` atomically (encoded with `encoding`); return the Path."""
    return atomic_write_bytes(path, text.encode(encoding))


def _json_default(obj):
    """Convert NumPy scalars and arrays, which `json` does not know, to Python numbers and lists."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"type {type(obj).__name__} is not JSON serialisable")


def atomic_write_json(path, obj, indent=2):
    """Write `obj` as strict JSON (sorted keys, no NaN/inf) to `path` atomically; return the Path."""
    try:
        text = json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise bad_value("obj", obj, f"a JSON-serialisable object of finite numbers to write to {path} ({e})") from e
    return atomic_write_text(path, text + "\n")


def read_json(path):
    """Parse the JSON file at `path`; a missing, unreadable or corrupt file names `path` in the error."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise bad_path("path", path, f"a readable JSON file ({e.strerror})") from e
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise bad_path("path", path, f"a UTF-8 JSON file (corrupt: {e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise bad_path("path", path, f"a valid JSON file (corrupt: {e.msg} at line {e.lineno} column {e.colno})") from e


def ensure_writable_dir(path):
    """Create directory `path` (and its parents) if needed and check a file can be written in it.

    Writability is checked by creating and removing a probe file, since `os.access` is wrong for
    root and on some network filesystems. Returns `path` as a Path.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe.{os.getpid()}.{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise bad_path("path", path, f"a directory that can be created and written ({e.strerror})") from e
    return path


def default_cache_dir():
    """Where cached artefacts (trained tokenizers) live: $MINISFT_CACHE_DIR, else the user cache.

    The user cache is $XDG_CACHE_HOME/minisft, falling back to ~/.cache/minisft. Not created here.
    """
    env = os.environ.get("MINISFT_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minisft"
