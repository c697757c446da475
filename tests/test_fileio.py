"""Atomic writes, strict JSON, checksummed files, stale temporary files, names, regular-file reads,
run locks and writable-directory checks (minisft/core/fileio.py)."""

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minisft.core import fileio
from minisft.core.errors import CorruptFileError, LockedError
from minisft.core.fileio import (RunLock, atomic_write_bytes, atomic_write_checked, atomic_write_json,
    atomic_write_text, check_name, default_cache_dir, ensure_writable_dir, read_checked, read_json, read_regular_file,
    remove_stale_temps)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


def _listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


@given(data=st.binary(max_size=2000))
def test_bytes_round_trip_and_no_temp_left(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("w")
    path = atomic_write_bytes(folder / "f.bin", data)
    assert path == folder / "f.bin"
    assert path.read_bytes() == data
    assert _listing(folder) == ["f.bin"]


@given(text=st.text())
def test_text_round_trip(tmp_path_factory, text):
    path = atomic_write_text(tmp_path_factory.mktemp("t") / "f.txt", text)
    assert path.read_bytes() == text.encode("utf-8")


@given(obj=json_values)
def test_json_round_trip(tmp_path_factory, obj):
    path = atomic_write_json(tmp_path_factory.mktemp("j") / "f.json", obj)
    assert read_json(path) == obj
    assert json.loads(path.read_text("utf-8")) == obj


def test_overwrite_replaces_content(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert _listing(tmp_path) == ["f.txt"]


def test_new_file_mode_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~0o027


@pytest.mark.parametrize("where", ["fsync", "replace"])
@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_failure_mid_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch, where, exc):
    path = tmp_path / "f.json"
    atomic_write_json(path, {"version": 1})

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(fileio.os, where, boom)
    with pytest.raises(type(exc)):
        atomic_write_json(path, {"version": 2})
    monkeypatch.undo()
    assert read_json(path) == {"version": 1}
    assert _listing(tmp_path) == ["f.json"]


def test_numpy_values_are_written_as_python_numbers(tmp_path):
    obj = {"a": np.float32(0.5), "b": np.int64(3), "c": np.arange(3.0), "d": [np.bool_(True)]}
    path = atomic_write_json(tmp_path / "f.json", obj)
    assert read_json(path) == {"a": 0.5, "b": 3, "c": [0.0, 1.0, 2.0], "d": [True]}


def test_json_is_byte_identical_for_equal_dicts_in_any_key_order(tmp_path):
    a = atomic_write_json(tmp_path / "a.json", {"x": 1, "y": [1, 2]})
    b = atomic_write_json(tmp_path / "b.json", {"y": [1, 2], "x": 1})
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("bad", [{"loss": math.nan}, {"loss": math.inf}, {"f": object()}])
def test_json_refuses_non_json_and_leaves_old_file(tmp_path, bad):
    path = tmp_path / "f.json"
    atomic_write_json(path, {"ok": True})
    with pytest.raises(ValueError, match="obj=.*f.json"):
        atomic_write_json(path, bad)
    assert read_json(path) == {"ok": True}
    assert _listing(tmp_path) == ["f.json"]


def test_write_into_missing_folder_names_path(tmp_path):
    path = tmp_path / "missing" / "f.txt"
    with pytest.raises(ValueError, match=re.escape(f"path='{path}'")):
        atomic_write_text(path, "x")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("content", [b'{"a": 1', b"", b"\xff\xfe{}", b'{"a": 1} trailing'])
def test_read_json_corrupt_names_path(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"path='{path}'") + ".*corrupt"):
        read_json(path)


def test_read_json_missing_names_path(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"path='{tmp_path / 'nope.json'}'")):
        read_json(tmp_path / "nope.json")


def test_ensure_writable_dir_creates_nested_folders(tmp_path):
    path = ensure_writable_dir(tmp_path / "a" / "b" / "c")
    assert path.is_dir() and _listing(path) == []
    assert ensure_writable_dir(path) == path


def test_ensure_writable_dir_under_a_file_names_path(tmp_path):
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "file" / "sub", tmp_path / "file"):
        with pytest.raises(ValueError, match=re.escape(f"path='{path}'") + ".*created and written"):
            ensure_writable_dir(path)


def test_default_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MINISFT_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MINISFT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "minisft"


def _dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_remove_stale_temps_deletes_only_dead_writers_temporaries(tmp_path):
    dead = tmp_path / f".f.json.{_dead_pid()}.0123abcd.tmp"
    alive = tmp_path / f".f.json.{os.getpid()}.0123abcd.tmp"
    other = tmp_path / "notes.tmp"  # not an atomic write's name: never touched
    for p in (dead, alive, other):
        p.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == [dead.name]
    assert _listing(tmp_path) == sorted([alive.name, other.name])
    assert remove_stale_temps(tmp_path / "missing") == []


@given(text=st.text(max_size=300), key=st.text(max_size=30))
def test_checked_text_round_trips(tmp_path_factory, text, key):
    path = tmp_path_factory.mktemp("c") / "t.json"
    atomic_write_checked(path, text, key)
    assert read_checked(path, key) == text


def test_checked_text_detects_any_change(tmp_path):
    path = tmp_path / "t.json"
    atomic_write_checked(path, "the tokenizer", "key-1")
    good = path.read_bytes()
    i = good.index(b"the tokenizer")
    j = good.index(b"key-1")
    for bad in (good[:i] + b"T" + good[i + 1:], good[:j] + b"K" + good[j + 1:], good[: len(good) // 2], b"{}",
                b'{"text": "x"}', b"\xff"):
        path.write_bytes(bad)
        with pytest.raises(CorruptFileError, match="t.json"):
            read_checked(path, "key-1")


@pytest.mark.parametrize("name", ["lora-r8", "a", "spruft-ratio0.05", "x_y+z", "A" * 100])
def test_names_are_accepted(name):
    assert check_name("label", name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "/abs", "a/b", "a\\b", ".hidden", "-flag", "a b", "A" * 101,
                                  "x\x00", "é"])
def test_paths_and_odd_strings_are_not_names(name):
    with pytest.raises(ValueError, match="label=.*a plain name"):
        check_name("label", name)
    with pytest.raises(TypeError, match="label"):
        check_name("label", 3)


def test_read_regular_file_refuses_fifos_devices_and_large_files(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"12345")
    assert read_regular_file(f) == b"12345"
    with pytest.raises(ValueError, match="at most 4 bytes"):
        read_regular_file(f, max_bytes=4)
    os.mkfifo(tmp_path / "fifo")  # no writer: a blocking open would hang here
    for p in (tmp_path / "fifo", "/dev/zero", "/dev/null"):
        with pytest.raises(ValueError, match="regular file"):
            read_regular_file(p, "data")
    with pytest.raises(ValueError, match="data=.*missing.*readable file"):
        read_regular_file(tmp_path / "missing", "data")


def test_run_lock_is_exclusive_names_the_holder_and_is_released(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(LockedError, match=rf"run directory=.*in use by another minisft process \(pid {os.getpid()}\)"):
            with RunLock(tmp_path / "run"):
                pass
        with RunLock(tmp_path / "other"):  # another folder is free
            pass
    with RunLock(tmp_path / "run"):  # released on exit
        pass


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path):
    """A killed run leaves .lock behind; the kernel dropped its flock, so the next run proceeds."""
    (tmp_path / ".lock").write_text(str(_dead_pid()))
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())


@pytest.mark.parametrize("bad", ["", 3, None])
def test_ensure_writable_dir_refuses_empty_and_non_paths(bad):
    with pytest.raises(ValueError, match="workdir"):
        ensure_writable_dir(bad, "workdir")


def test_read_json_refuses_special_files_without_blocking(tmp_path):
    """Every JSON file minisft reads (results, tables, configs, caches) goes through
    read_regular_file: a FIFO without a writer or /dev/zero is an error naming the path, not a
    read that blocks or never ends."""
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    for path in (tmp_path / "fifo.json", tmp_path / "zero.json", Path("/dev/null")):
        with pytest.raises(ValueError, match=re.escape(f"path='{path}'") + ".*regular file"):
            read_json(path)
