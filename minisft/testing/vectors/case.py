"""One golden-vector case being written: named tensors with their manifest entries, turned into a
safetensors file and a manifest record (the format: minisft.testing's docstring).

A case states its rule (`rule`: formulas and precise sentences, conventions, rounding, tie order,
what is included) so that it can be implemented from the manifest alone: no field points into
minisft's source as the definition (tests/test_vectors.py checks every case). `discriminates`
names the readings of the rule that the case's tensors tell apart.

Tolerances. A float tensor's entry carries rtol and atol = rtol · max|finite expected| (its scale):
- "float64": 1e-10, the bound minisft's own float64 parity tests meet against PyTorch;
- "float32": 1e-5. A float32 case's expected values are computed in float64 from its float32
  inputs and rounded to float32, so they are the correctly rounded answer and the tolerance
  measures the float32 implementation's own rounding (minisft's float32 code meets it: tested);
- a number: a documented looser bound where minisft's value is itself approximate (AdaPEFT's
  finite-difference Hessian product);
- "exact": integers and bools (ids, rows, masks, counts) must be equal.
"""

import numpy as np
from safetensors.numpy import save

from ...core.errors import bad_value

RTOL = {"float64": 1e-10, "float32": 1e-5}
WEIGHT_OUT_IN = "minisft (out, in): y = x Wᵀ + b, like torch.nn.Linear"
WEIGHT_IN_OUT = "HF GPT-2 Conv1D (in, out): y = x W + b; transpose for (out, in)"
PLAIN = "C order, axes as listed"


class CaseWriter:
    """Collects the tensors of one case; `record()` is its manifest entry, `to_bytes()` its file."""

    def __init__(self, name, description, rule, references, settings=None):
        self.name, self.description, self.rule, self.references = name, description, rule, references
        self.settings = dict(settings or {})
        self.tensors, self.entries, self.readings = {}, {}, []

    def _add(self, key, array, entry):
        if key in self.tensors:
            raise bad_value(f"{self.name} tensor", key, "a key not used yet in this case")
        a = np.array(array, order="C")  # a copy, 0-d arrays kept 0-d
        if a.dtype.kind not in "biuf":
            raise bad_value(f"{self.name}:{key} dtype", a.dtype, "a bool, integer or float array")
        self.tensors[key] = a
        self.entries[key] = dict(entry, dtype=str(a.dtype), shape=list(a.shape))

    def input(self, key, array, meaning, axes, layout=PLAIN):
        """An input the implementation under test is given."""
        self._add(key, array, {"role": "input", "meaning": meaning, "axes": axes, "layout": layout})

    def expected(self, key, array, meaning, axes, equation, tol, layout=PLAIN):
        """What the implementation must produce; `tol` "float64", "float32", "exact" or an rtol."""
        a = np.asarray(array)
        if tol == "exact" or a.dtype.kind in "biu":
            rtol = atol = 0.0
        else:
            rtol = RTOL[tol] if isinstance(tol, str) else float(tol)
            finite = np.abs(a[np.isfinite(a)])
            atol = rtol * float(finite.max()) if finite.size else 0.0
        self._add(key, a, {"role": "expected", "meaning": meaning, "axes": axes, "layout": layout,
                           "equation": equation, "rtol": rtol, "atol": atol})

    def discriminates(self, reading_id, tensors, right, wrong):
        """Name a close reading of the rule this case tells apart: on `tensors` (keys of this case)
        the `right` reading and the `wrong` one give different answers."""
        unknown = [k for k in tensors if k not in self.entries]
        if unknown:
            raise bad_value(f"{self.name} discriminating tensors", unknown, "keys of tensors added to the case")
        self.readings.append({"id": reading_id, "tensors": list(tensors), "right": right, "wrong": wrong})

    def record(self):
        return {"file": f"{self.name}.safetensors", "description": self.description, "rule": self.rule,
                "references": self.references, "discriminates": self.readings, "settings": self.settings,
                "tensors": self.entries}

    def to_bytes(self):
        """The safetensors bytes: tensors in the format's fixed order, no metadata (deterministic)."""
        return save(self.tensors)


def float32_case(values):
    """{key: array} with every float array rounded to float32 (the inputs of a float32 case)."""
    return {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in values.items()}


def widened(values):
    """{key: array} with every float array as float64 (to compute a float32 case's answer exactly)."""
    return {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in values.items()}
