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
- A write that fails (a full disk, a directory or a special file where the file should go, a name
  too long) raises FileWriteError naming the path: an OSError and a MinisftError, one line on the
  command line. `check_output_file` checks such a destination before any work starts.
- Folders whose files belong together (an export, a run's model/) are written with
  `replaced_folder`: the files go into a temporary sibling folder, which then takes the folder's
  place in one step (`renameat2(RENAME_EXCHANGE)` where the kernel has it, a rename into an absent
  or empty folder's place otherwise). A process killed at any moment leaves the old folder or the
  new one, never a mix. Only a folder that is absent, empty or holds the writer's marker file is
  replaced, so a user's own folder is never swept away.
- Cached artefacts that are not safetensors (tokenizers) are written with `atomic_write_checked`:
  one JSON file holding the text, its SHA-256 and the key it was made for, which `read_checked`
  verifies: CorruptFileError when the content does not match the checksum (the caller rebuilds
  with a message), ForeignFileError when an intact file was made for another key (the caller
  stops: the file is not minisft's to overwrite).
- Inputs: `read_regular_file` opens without blocking and refuses anything but a regular file (a
  FIFO, a device, a socket: also behind a symbolic link) and files above a size cap, so reading
  user data never blocks or exhausts memory; `read_json` reads through it. `check_name` keeps run
  labels names, not paths; `as_path` refuses a name longer than NAME_MAX bytes or a path longer
  than PATH_MAX bytes before the OS sees it.
- `RunLock(folder)` holds an exclusive `fcntl.flock` on folder/.lock for the duration of a run: a
  second process gets LockedError naming the holder's pid. The kernel drops the lock when its
  holder dies, however it dies, so a stale lock file from a killed run never blocks the next one.
  The lock file is opened without following a symbolic link and must be a regular file: it is
  never a way to truncate another file.
"""

import codecs
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from pathlib import Path

import numpy as np

from .errors import (CorruptFileError, FileWriteError, LockedError, MinisftError, bad_type, bad_value, foreign_file,
    positive_int)


TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")  # .<name>.<pid>.<8 hex>.tmp
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
MAX_FILE_BYTES = 256 * 1024 * 1024  # the largest file minisft reads
NAME_MAX = 255  # bytes of one file name (Linux, macOS)
PATH_MAX = 4095  # bytes of a whole path (Linux's 4096 with its terminating NUL)


def bad_path(arg, path, expected):
    """Like `errors.bad_value`, but shows the whole path (paths are not cut short)."""
    return MinisftError(f"{arg}={str(path)!r}: expected {expected}", arg, str(path), expected)


def as_path(arg, path):
    """`path` as a Path after checking it is a non-empty str or PathLike without NUL characters,
    whose names are at most NAME_MAX bytes and whose whole is at most PATH_MAX bytes."""
    if not isinstance(path, (str, os.PathLike)):
        raise bad_type(arg, path, "a path (str or PathLike)")
    text = os.fspath(path)
    if not isinstance(text, str) or text == "" or "\x00" in text:
        raise bad_path(arg, text, "a non-empty path without NUL characters")
    raw = os.fsencode(text)
    longest = max(len(part) for part in raw.split(b"/"))
    if longest > NAME_MAX:
        raise bad_path(arg, text, f"a path whose every name is at most {NAME_MAX} bytes (one has {longest})")
    if len(raw) > PATH_MAX:
        raise bad_path(arg, text, f"a path of at most {PATH_MAX} bytes (it has {len(raw)})")
    return Path(text)


def _write_error(arg, path, e, expected="a file that can be written"):
    """A FileWriteError for the OSError `e` met writing `path`."""
    return FileWriteError(f"{arg}={str(path)!r}: expected {expected} ({e.strerror or e})", arg, str(path),
                          f"{expected} ({e.strerror or e})")


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
    tmp = _temporary_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise _write_error("path", path, e, "a file in an existing, writable directory") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_error("path", path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _temporary_name(path):
    """A fresh temporary sibling of `path`: .<name>.<pid>.<8 hex>.tmp (`remove_stale_temps` knows it)."""
    name = path.name[: NAME_MAX - 32]  # room for the pid, the random part and the suffixes
    return path.parent / f".{name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"


def append_line(path, line):
    """Append `line` (a str without a newline) and a newline to the regular file `path`, creating
    it; a FIFO, a device or a directory there is refused, never written to or waited on."""
    path = as_path("path", path)
    if not isinstance(line, str):
        raise bad_type("line", line, "a str (one line, without its newline)")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        raise _write_error("path", path, e, "a regular file that can be appended to") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise bad_path("path", path, "a regular file (this is a FIFO, a device or a socket)")
        os.write(fd, (line + "\n").encode("utf-8"))
    except OSError as e:
        raise _write_error("path", path, e) from None
    finally:
        os.close(fd)


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


def text_codec(arg, name):
    """The canonical name of the text encoding `name` (codecs.lookup); an error naming `arg` for an
    unknown codec or a bytes-to-bytes one (zlib, base64, hex, rot13), which decodes no text."""
    if not isinstance(name, str):
        raise bad_type(arg, name, 'a codec name such as "utf-8" or "latin-1"')
    try:
        canonical = codecs.lookup(name).name
        b"\0\0\0\0".decode(canonical)  # a bytes-to-bytes codec or rot13: LookupError
    except UnicodeError:
        pass  # a text encoding (these bytes need not be valid in it)
    except LookupError:
        raise bad_value(arg, name, 'a text encoding Python knows, such as "utf-8" or "latin-1" (not a '
                        'bytes-to-bytes codec such as zlib or base64)') from None
    return canonical


def atomic_write_json(path, obj, indent=2):
    """Write `obj` as strict JSON (sorted keys, no NaN/inf) to `path` atomically; return the Path."""
    try:
        text = json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise bad_value("obj", obj, f"a JSON-serialisable object of finite numbers to write to {path} ({e})") from e
    return atomic_write_text(path, text + "\n")


def read_json(path, max_bytes=MAX_FILE_BYTES):
    """Parse the JSON file at `path` (a regular file of at most `max_bytes`, read without blocking);
    a missing, unreadable, special or corrupt file names `path` in the error."""
    path = as_path("path", path)
    try:
        raw = read_regular_file(path, "path", max_bytes)
    except MinisftError as e:
        raise bad_path("path", path, f"a readable JSON file: {e.expected}") from None
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
        raise _write_error(arg, path, e, "a directory that can be created and written") from None
    return path


def check_output_file(path, arg="path"):
    """Check, before any work, that a file can later be written at `path`: nothing is there, or a
    regular file (or a link, which the atomic rename replaces); never a directory, a FIFO or a
    device; names within NAME_MAX and the path within PATH_MAX. Returns `path` as a Path."""
    path = as_path(arg, path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as e:
        raise _write_error(arg, path, e, "a path where a file can be written") from None
    if stat.S_ISDIR(mode):
        raise bad_path(arg, path, "a file, not a directory (move the directory away)")
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise bad_path(arg, path, "a regular file (this is a FIFO, a device or a socket)")
    return path


RENAME_EXCHANGE = 2  # renameat2's flag (Linux 3.15+): swap two paths atomically
AT_FDCWD = -100


def _exchange(a, b):
    """Swap the paths `a` and `b` (both existing) in one step; False where the OS cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):  # an old kernel, or a filesystem without the exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def replaced_folder(path, marker, arg="path"):
    """`with replaced_folder(path, marker) as tmp:` write every file into `tmp`; when the block ends
    without an error, `tmp` takes `path`'s place in one step (module docstring) and the old folder is
    deleted. `path` must be absent, an empty folder, or a folder holding the file `marker` (written
    by the same writer, which must also write `marker` into `tmp`). On an error the temporary
    folder is removed and `path` is untouched."""
    path = as_path(arg, path)
    owned_folder(path, marker, arg)
    parent = ensure_writable_dir(path.parent, arg)
    remove_stale_temps(parent, path.name)  # what a killed write of this folder left
    tmp = _temporary_name(parent / path.name)
    try:
        os.mkdir(tmp)
    except OSError as e:
        raise _write_error(arg, path, e, "a folder whose parent can be written") from None
    try:
        yield tmp
        if not (tmp / marker).is_file():
            raise bad_value("marker", marker, f"a file the writer puts into the folder {path}")
        _put_in_place(tmp, path, marker, arg)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # after the exchange: the old folder
    _fsync_dir(parent)


def owned_folder(path, marker, arg="path"):
    """Check `path` is absent, an empty folder, or a folder holding `marker` (replaced_folder's
    rule): a folder with other files is the user's, not a writer's to replace."""
    path = as_path(arg, path)
    if not isinstance(marker, str) or not NAME.match(marker):
        raise bad_type("marker", marker, "the plain name of the file the writer puts into the folder")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise _write_error(arg, path, e, "a folder path that can be written") from None
    if not stat.S_ISDIR(mode):
        raise bad_path(arg, path, "a folder (this is a file, a link or a special file)")
    try:
        entries = os.listdir(path)
    except OSError as e:
        raise _write_error(arg, path, e, "a folder that can be read") from None
    if entries and not (path / marker).is_file():
        raise bad_path(arg, path, f"a new folder, an empty one or one minisft wrote (holding {marker}); it holds "
                       f"other files, such as {sorted(entries)[:3]}: choose another folder")


def _put_in_place(tmp, path, marker, arg):
    """Move the finished folder `tmp` to `path` in one step (replaced_folder)."""
    try:
        os.rename(tmp, path)  # path absent, or an empty folder (a rename may replace one)
        return
    except OSError as e:
        if not path.is_dir():
            raise _write_error(arg, path, e, "a folder that can be replaced") from None
    owned_folder(path, marker, arg)  # checked again: it may have changed since
    try:
        exchanged = _exchange(tmp, path)
    except OSError as e:
        raise _write_error(arg, path, e, "a folder that can be replaced") from None
    if not exchanged:  # no atomic exchange here: move the old folder aside, then the new one in
        aside = _temporary_name(path)
        try:
            os.rename(path, aside)
            os.rename(tmp, path)
        except OSError as e:
            raise _write_error(arg, path, e, "a folder that can be replaced") from None
        os.rename(aside, tmp)  # deleted by the caller with the temporary folder


def _pid_alive(pid):
    """Whether process `pid` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def remove_stale_temps(folder, name=None):
    """Delete the temporary files (and replaced_folder's folders) of writes whose process no longer
    runs (a kill inside a write leaves one), of every name or of `name` only; returns the names
    removed. A missing folder has none."""
    removed = []
    folder = as_path("folder", folder)
    if name is not None and not isinstance(name, str):
        raise bad_type("name", name, "None or a file name")
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    except OSError as e:
        raise bad_path("folder", folder, f"a folder ({e.strerror})") from None
    for entry in entries:
        m = _TMP_NAME.match(entry.name)
        if name is not None and not entry.name.startswith(f".{name[: NAME_MAX - 32]}."):
            continue
        if m and not _pid_alive(int(m.group(1))):
            if entry.is_dir(follow_symlinks=False):  # a folder of replaced_folder
                shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
            else:
                continue
            removed.append(entry.name)
    return removed


def sha256_hex(data):
    """SHA-256 of `data` (bytes) as 64 hex digits."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise bad_type("data", data, "bytes")
    return hashlib.sha256(data).hexdigest()


def atomic_write_checked(path, text, key):
    """Write the string `text`, made for `key` (a str: what the file's name stands for), atomically
    as one JSON file {"key": key, "sha256": ..., "text": text}; return the Path. The checksum covers
    the key and the text."""
    if not isinstance(key, str):
        raise bad_type("key", key, "a str (what the file was made for)")
    return atomic_write_json(path, {"key": key, "sha256": _checked_digest(key, encoded("text", text)), "text": text})


def _checked_digest(key, data):
    return sha256_hex(json.dumps(key).encode("utf-8") + b"\n" + data)


def read_checked(path, key=None):
    """The text stored by `atomic_write_checked` at `path` for `key`, after verifying its SHA-256
    (CorruptFileError naming the path when the file is damaged, edited or of another format) and its
    key (ForeignFileError when it is an intact file made for another key; key None: any key, for a
    caller that checks the text's identity itself, by its fingerprint)."""
    if key is not None and not isinstance(key, str):
        raise bad_type("key", key, "None or a str (what the file was made for)")
    path = as_path("path", path)
    if path.is_dir():
        raise bad_path("path", path, "a file, not a directory (move the directory away)")
    try:
        stored = read_json(path)
    except MinisftError as e:
        raise CorruptFileError(str(e)) from None
    ok = (isinstance(stored, dict) and isinstance(stored.get("text"), str) and isinstance(stored.get("key"), str)
          and stored.get("sha256") == _checked_digest(stored["key"], stored["text"].encode("utf-8")))
    if not ok:
        raise CorruptFileError(f"path={str(path)!r}: expected a file whose content matches its stored SHA-256 "
                               "(it was damaged or edited)")
    if key is not None and stored["key"] != key:
        raise foreign_file("path", path, f"the file made for key {key[:24]}, its name's key; it holds the one made "
                           f"for key {stored['key'][:24]} (it was put there by hand?): move it away and run again")
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
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as e:
            raise _write_error("lock", path, e, "a regular lock file, not a link or a directory (remove it)") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise bad_path("lock", path, "a regular lock file (this is a FIFO, a device or a socket: remove it)")
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
