"""Checkpoints: safetensors files (no pickle), written atomically, with JSON metadata.

A checkpoint holds named arrays and one JSON object of metadata (step, RNG state, configuration
fingerprints, histories). Reading a truncated or corrupt file, or one whose metadata is missing,
raises CheckpointError naming the path; nothing is ever written in place.
"""

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from .backend import to_numpy
from .errors import CheckpointError
from .fileio import atomic_write_bytes

META_KEY = "minisft"


def save_checkpoint(path, arrays, meta):
    """Write {name: array} (any backend) and `meta` (JSON-serialisable) to `path` atomically."""
    host = {k: np.array(to_numpy(v), order="C") for k, v in arrays.items()}  # keeps 0-d arrays 0-d
    data = safetensors_bytes(host, metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    return atomic_write_bytes(path, data)


def load_checkpoint(path):
    """(arrays {name: numpy array}, meta dict) from a checkpoint written by save_checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint={str(path)!r}: expected an existing checkpoint file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta_raw = (f.metadata() or {}).get(META_KEY)
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint={str(path)!r}: expected a complete safetensors file ({e})") from None
    if meta_raw is None:
        raise CheckpointError(f"checkpoint={str(path)!r}: expected minisft metadata in the file header")
    try:
        meta = json.loads(meta_raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint={str(path)!r}: metadata is not valid JSON ({e})") from None
    return arrays, meta
