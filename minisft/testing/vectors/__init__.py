"""Golden vectors: a versioned, documented suite of minisft's answers that another implementation
(PyTorch, JAX, C++, a new PEFT tuner) is checked against — `minisft vectors --out DIR`.

    nn_<layer>_<dtype>        every layer's forward and backward (linear, attention, layernorm, gelu,
                              embedding, cross_entropy), float64 and float32      vectors/layers.py
    gpt2_tiny_<dtype>         a tiny GPT-2 with HF names and layout: ids, logits, loss, every gradient
                                                                                  vectors/gpt2.py
    spruft_scores, spruft_select_gpt2                  SPruFT's selection step   vectors/spruft.py
    adapeft_influence, adapeft_knapsack                AdaPEFT's selection step  vectors/adapeft.py
    loradrop_select                                    LoRA-drop's selection     vectors/loradrop.py
    gmt_masks                                          GMT's masks               vectors/gmt.py
    mgpp_primitives                                    MGPP's prior, schedule, masks   vectors/mgpp.py
    train_<run>               each method's selection and first training steps, every intermediate of
                              every step (float64)                               vectors/training.py

Format (one safetensors file per case plus manifest.json; reader and schema: minisft.testing): the
manifest's "conventions" (vectors/conventions.py) define the model, the adapters, AdamW, clipping,
a training step and the decimal reading of ratios; every case states its rule in those terms and
names the readings it discriminates; every tensor is documented — role (input / expected), meaning,
axes, dtype, shape, layout (minisft weights are (out, in); the gpt2_tiny case keeps HF GPT-2's
Conv1D (in, out)), the formula it checks, and for expected tensors the rtol / atol an
implementation must meet — and every file's SHA-256 is recorded. No pickle anywhere.

Determinism: the inputs come from seeded numpy Generators, the answers from minisft's float64
NumPy code, the files have no timestamps and a fixed tensor order, and the manifest is written
with sorted keys, so two runs write identical bytes (tested, also across thread counts and hash
seeds), and the copy kept in tests/data/vectors/ makes any change of numerics a reviewed change
(another NumPy or BLAS may round differently in the last bits: the test's message then shows
differences of ~1e-16, and the copy is regenerated there on purpose).
"""

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ...core.fileio import atomic_write_bytes, atomic_write_json, ensure_writable_dir
from ..suite import MANIFEST, SCHEMA_VERSION
from .adapeft import adapeft_cases
from .conventions import CONVENTIONS
from .gmt import gmt_cases
from .gpt2 import gpt2_cases
from .layers import nn_cases
from .loradrop import loradrop_cases
from .mgpp import mgpp_cases
from .spruft import spruft_cases
from .training import training_cases


def build_cases():
    """Every case of the suite, in manifest order (CaseWriter list)."""
    return [*nn_cases(), *gpt2_cases(), *spruft_cases(), *adapeft_cases(), *loradrop_cases(), *gmt_cases(),
            *mgpp_cases(), *training_cases()]


def _version():
    """minisft's installed version (the package root cannot be imported from here: tests/test_layers.py)."""
    try:
        return version("minisft")
    except PackageNotFoundError:
        return "unknown (minisft not installed)"


def write_suite(out_dir):
    """Write every case and manifest.json into `out_dir` (created if needed; files of the same names
    are replaced atomically). Returns the manifest (a dict)."""
    out = ensure_writable_dir(out_dir)
    cases = build_cases()
    records = {}
    for c in cases:
        data = c.to_bytes()
        atomic_write_bytes(out / f"{c.name}.safetensors", data)
        records[c.name] = dict(c.record(), sha256=hashlib.sha256(data).hexdigest())
    manifest = {"schema_version": SCHEMA_VERSION, "minisft_version": _version(),
                "generator": "minisft vectors --out DIR", "reader": "minisft.testing.load_case",
                "conventions": CONVENTIONS, "cases": records}
    atomic_write_json(Path(out) / MANIFEST, manifest)
    return manifest


def write_suite_command(out_dir):
    """`minisft vectors --out DIR`: write the suite and say what was written; returns 0."""
    manifest = write_suite(out_dir)
    print(f"{len(manifest['cases'])} cases written to {out_dir} ({MANIFEST} states every case's rule and documents "
          "every tensor; minisft.testing.load_case reads them)")
    return 0
