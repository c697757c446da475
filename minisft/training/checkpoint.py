"""Checkpoints: safetensors files (no pickle), written atomically, with JSON metadata and a checksum.

A checkpoint holds named arrays and one JSON object of metadata (step, RNG state, configuration
fingerprints, histories). Its header also stores `arrays_digest` of the arrays and the metadata, a
SHA-256 over every tensor's name, dtype, shape and bytes, which `load_checkpoint` recomputes: a
flipped byte, a truncation, a tensor cast or removed, an edited field are all CheckpointError naming
the path, never a silent load. The files stay plain safetensors (any safetensors reader opens them;
the checksum is one more metadata entry). Nothing is ever written in place.
"""

import hashlib
import json
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from ..core.backend import to_numpy
from ..core.errors import CheckpointError, bad_type, bad_value, str_keyed_dict
from ..core.fileio import as_path, atomic_write_bytes

META_KEY = "minisft"
DIGEST_KEY = "minisft_sha256"


def _host_arrays(arrays):
    """{name: C-order host array} after checking `arrays` maps str names to numeric or bool arrays."""
    str_keyed_dict("arrays", arrays)
    out = {}
    for name, value in arrays.items():
        a = np.array(to_numpy(value), order="C") if hasattr(value, "dtype") else np.asarray(value)
        if a.dtype.kind not in "biuf":
            raise bad_type(f"arrays[{name!r}]", value, f"a numeric or bool array (got dtype {a.dtype})")
        out[name] = a  # keeps 0-d arrays 0-d
    return out


def _json_text(meta):
    """`meta` as strict, sorted JSON (NaN and infinities are not JSON)."""
    try:
        return json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise bad_value("meta", meta, f"JSON-serialisable metadata with finite numbers ({e})") from None


def arrays_digest(arrays, meta=None):
    """SHA-256 (hex) of {name: array} (each name, dtype, shape and C-order bytes, in name order)
    and the JSON metadata `meta`."""
    arrays = _host_arrays(arrays)
    meta_text = _json_text(meta)
    h = hashlib.sha256(b"minisft-arrays-v1")
    for name in sorted(arrays):
        a = arrays[name]
        header = json.dumps([name, a.dtype.str, list(a.shape)]).encode()
        h.update(len(header).to_bytes(8, "big") + header)
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    h.update(meta_text.encode())
    return h.hexdigest()


def save_checkpoint(path, arrays, meta):
    """Write {name: array} (any backend) and `meta` (JSON-serialisable) to `path` atomically."""
    host = _host_arrays(arrays)
    meta = json.loads(_json_text(meta))  # as it will read back
    header = {META_KEY: _json_text(meta), DIGEST_KEY: arrays_digest(host, meta)}
    return atomic_write_bytes(path, safetensors_bytes(host, metadata=header))


def _read(path, tensors):
    """(header metadata, {name: array} or None) of the safetensors file at `path`, its tensors read
    when `tensors`; CheckpointError naming the file when it is missing or not a complete file."""
    path = as_path("checkpoint", path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint={str(path)!r}: expected an existing checkpoint file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            return path, f.metadata() or {}, ({k: f.get_tensor(k) for k in f.keys()} if tensors else None)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint={str(path)!r}: expected a complete safetensors file ({e})") from None


def _meta(path, header):
    """The JSON object of minisft metadata in a checkpoint's header."""
    try:
        meta = json.loads(header[META_KEY])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint={str(path)!r}: expected minisft metadata as JSON in the file header "
                              f"({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint={str(path)!r}: expected a JSON object of metadata")
    return meta


def load_checkpoint(path):
    """(arrays {name: numpy array}, meta dict) from a checkpoint written by save_checkpoint, after
    checking its checksum."""
    path, header, arrays = _read(path, tensors=True)
    if header.get(DIGEST_KEY) is None:
        raise CheckpointError(f"checkpoint={str(path)!r}: expected minisft metadata and a checksum in the file header")
    meta = _meta(path, header)
    if arrays_digest(arrays, meta) != header[DIGEST_KEY]:
        raise CheckpointError(f"checkpoint={str(path)!r}: its content does not match its checksum: expected an "
                              "unmodified file (it was damaged or edited)")
    return arrays, meta


def checkpoint_meta(path):
    """The metadata of the checkpoint at `path`, read from its header only: its arrays are neither
    read nor checked (load_checkpoint does both). CheckpointError when there is no readable header."""
    path, header, _ = _read(path, tensors=False)
    return _meta(path, header)


def check_arrays(path, what, arrays, expected):
    """Check {name: array} has exactly the names of `expected` {name: (shape, dtype)}, each with that
    shape and dtype; CheckpointError naming the file and the first difference."""
    missing, unexpected = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint={str(path)!r}: {what}: missing {missing[:3]}, unexpected {unexpected[:3]}: "
                              "expected the tensors of this run")
    for name in sorted(expected):
        shape, dtype = expected[name]
        a = arrays[name]
        if tuple(a.shape) != tuple(shape) or np.dtype(a.dtype) != np.dtype(dtype):
            raise CheckpointError(f"checkpoint={str(path)!r}: {what}: {name} is {np.dtype(a.dtype).name} "
                                  f"{tuple(a.shape)}: expected {np.dtype(dtype).name} {tuple(shape)}")
