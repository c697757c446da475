"""Atomic file writes, strict JSON reads, checksummed files, safe inputs and run locks.

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
- A process killed inside a write leaves its temporary file behind (nothing runs after SIGKILL).
  The name says whose it is, ".<name>.<pid>.<random>.tmp", and `remove_stale_temps(folder)`, which
  every command calls on the folders it writes, deletes those of processes that no longer run.
- Cached artefacts that are not safetensors (tokenizers) are written with `atomic_write_checked`:
  one JSON file holding the text and its SHA-256, which `read_checked` verifies
  (CorruptFileError on a mismatch, so the caller rebuilds with a message).
- Inputs: `read_regular_file` opens without blocking and refuses anything but a regular file (a
  FIFO, a device, a socket: also behind a symbolic link) and files above a size cap, so reading
  user data never blocks or exhausts memory. `check_name` keeps run labels names, not paths.
- `RunLock(folder)` holds an exclusive `fcntl.flock` on folder/.lock for the duration of a run: a
  second process gets LockedError naming the holder's pid. The kernel drops the lock when its
  holder dies, however it dies, so a stale lock file from a killed run never blocks the next one.
"""

import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
from pathlib import Path

import numpy as np

from .errors import CorruptFileError, LockedError, MinisftError, bad_type, bad_value, positive_int


TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")  # .<name>.<pid>.<8 hex>.tmp
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


def bad_path(arg, path, expected):
    """Like `errors.bad_value`, but shows the whole path (paths are not cut short)."""
    return MinisftError(f"{arg}={str(path)!r}: expected {expected}", arg, str(path), expected)


def as_path(arg, path):
    """`path` as a Path after checking it is a non-empty str or PathLike without NUL characters."""
    if not isinstance(path, (str, os.PathLike)):
        raise bad_type(arg, path, "a path (str or PathLike)")
    text = os.fspath(path)
    if not isinstance(text, str) or text == "" or "\x00" in text:
        raise bad_path(arg, text, "a non-empty path without NUL characters")
    return Path(text)


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
    path = as_path("path", path)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise bad_type("data", data, "bytes")
    data = bytes(data)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
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
    return atomic_write_bytes(path, encoded("text", text, encoding))


def encoded(arg, text, encoding="utf-8"):
    """The bytes of the string `text` in `encoding` (a clear error for a non-string, an unknown
    codec or a character the codec cannot encode)."""
    if not isinstance(text, str):
        raise bad_type(arg, text, "a str")
    if not isinstance(encoding, str):
        raise bad_type("encoding", encoding, "a codec name (str)")
    try:
        return text.encode(encoding)
    except LookupError:
        raise bad_value("encoding", encoding, "a codec name Python knows, such as utf-8") from None
    except UnicodeEncodeError as e:
        raise bad_value(arg, text[max(e.start - 10, 0) : e.end + 10], f"text the {encoding} codec can encode "
                        f"({e.reason} at character {e.start})") from None


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
    path = as_path("path", path)
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


def ensure_writable_dir(path, arg="path"):
    """Create directory `path` (and its parents) if needed and check a file can be written in it.

    Writability is checked by creating and removing a probe file, since `os.access` is wrong for
    root and on some network filesystems. `arg` names the argument in errors. Returns a Path.
    """
    path = as_path(arg, path)  # "" would mean the current directory: refused
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe.{os.getpid()}.{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise bad_path(arg, path, f"a directory that can be created and written ({e.strerror})") from e
    return path


def _pid_alive(pid):
    """Whether process `pid` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def remove_stale_temps(folder):
    """Delete the temporary files of atomic writes whose process no longer runs (a kill inside a
    write leaves one); returns the names removed. A missing folder has none."""
    removed = []
    folder = as_path("folder", folder)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    except OSError as e:
        raise bad_path("folder", folder, f"a folder ({e.strerror})") from None
    for entry in entries:
        m = _TMP_NAME.match(entry.name)
        if m and entry.is_file(follow_symlinks=False) and not _pid_alive(int(m.group(1))):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def sha256_hex(data):
    """SHA-256 of `data` (bytes) as 64 hex digits."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise bad_type("data", data, "bytes")
    return hashlib.sha256(data).hexdigest()


def atomic_write_checked(path, text):
    """Write the string `text` atomically as one JSON file {"sha256": ..., "text": text}; return the Path."""
    return atomic_write_json(path, {"sha256": sha256_hex(encoded("text", text)), "text": text})


def read_checked(path):
    """The text stored by `atomic_write_checked` at `path`, after verifying its SHA-256
    (CorruptFileError naming the path when the file is damaged, edited or of another format)."""
    try:
        stored = read_json(path)
    except MinisftError as e:
        raise CorruptFileError(str(e)) from None
    ok = (isinstance(stored, dict) and isinstance(stored.get("text"), str)
          and stored.get("sha256") == sha256_hex(stored["text"].encode("utf-8")))
    if not ok:
        raise CorruptFileError(f"path={str(path)!r}: expected a file whose content matches its stored SHA-256 "
                               "(it was damaged or edited)")
    return stored["text"]


def check_name(arg, name):
    """`name` after checking it is a plain name for a folder (letters, digits, ".", "_", "+", "-";
    at most 100 characters, not starting with "." or "-"): never a path, "..", or empty."""
    if not isinstance(name, str):
        raise bad_type(arg, name, "a name (str)")
    if not NAME.match(name):
        raise bad_value(arg, name, "a plain name: letters, digits, '.', '_', '+', '-', at most 100 characters, "
                        "starting with a letter or digit (not a path)")
    return name


MAX_FILE_BYTES = 256 * 1024 * 1024


def read_regular_file(path, arg="path", max_bytes=MAX_FILE_BYTES):
    """The bytes of the regular file at `path` (at most `max_bytes`), opened without blocking: a FIFO,
    a device or a socket (also behind a symbolic link) is refused, never read."""
    path = as_path(arg, path)
    max_bytes = positive_int("max_bytes", max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise bad_path(arg, path, f"a readable file ({e.strerror})") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise bad_path(arg, path, "a regular file (this is a FIFO, a device or a socket)")
        if st.st_size > max_bytes:
            raise bad_path(arg, path, f"a file of at most {max_bytes:,} bytes (it has {st.st_size:,})")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while being read
        raise bad_path(arg, path, f"a file of at most {max_bytes:,} bytes")
    return data


class RunLock:
    """An exclusive lock on `folder` for the lifetime of a run (`with RunLock(folder): ...`).

    A second RunLock on the same folder, from any process, raises LockedError naming the holder's
    pid. The lock is an `fcntl.flock` on folder/.lock, released by the kernel when the holder exits or
    is killed, so a lock file left by a dead process is stale and the next run simply takes it.
    """

    def __init__(self, folder, what="run directory"):
        self.folder, self.what, self._fd = as_path("folder", folder), what, None

    def __enter__(self):
        path = ensure_writable_dir(self.folder, "folder") / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(f"{self.what}={str(self.folder)!r}: in use by another minisft process (pid {holder}); "
                              "expected a folder no other run is using: wait for it, or choose another "
                              "--label / --workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc):
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None
        return False


def default_cache_dir():
    """Where cached artefacts (trained tokenizers) live: $MINISFT_CACHE_DIR, else the user cache.

    The user cache is $XDG_CACHE_HOME/minisft, falling back to ~/.cache/minisft. Not created here.
    """
    env = os.environ.get("MINISFT_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minisft"
