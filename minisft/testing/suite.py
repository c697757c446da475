"""Reading a golden-vector suite: the manifest, one case's tensors (checked against the manifest's
SHA-256, dtypes and shapes) and the `Case` object that compares an implementation with them."""

import hashlib
import json
from pathlib import Path

from ..core.errors import CorruptFileError, MinisftError, bad_type, bad_value
from ..core.fileio import as_path
from .compare import VectorMismatch, assert_close

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
ROLES = ("input", "expected")


def read_manifest(directory):
    """The manifest.json of a suite folder as a dict; a clear error for a missing, foreign or older one."""
    path = as_path("directory", directory) / MANIFEST
    if not path.is_file():
        raise MinisftError(f"directory={str(directory)!r}: expected a vector suite folder with {MANIFEST} "
                           "(write one with `minisft vectors --out DIR`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MinisftError(f"{path}: expected a JSON manifest ({e})") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise bad_value(f"{path} schema_version", version,
                        f"{SCHEMA_VERSION} (this minisft.testing reads schema {SCHEMA_VERSION}; "
                        "regenerate the suite with `minisft vectors --out DIR`)")
    if not isinstance(manifest.get("cases"), dict):
        raise MinisftError(f"{path}: expected a manifest with a 'cases' table (a damaged manifest: regenerate it)")
    return manifest


def list_cases(directory):
    """Names of every case in a suite folder, in manifest order."""
    return list(read_manifest(directory)["cases"])


def _case_file(directory, name, entry):
    """The case's file: a plain file name inside `directory` (never a path elsewhere)."""
    file = entry.get("file")
    if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
        raise MinisftError(f"{Path(directory) / MANIFEST}: case {name!r} names the file {file!r}; expected a plain "
                           "file name inside the suite folder")
    return Path(directory) / file


def load_case(directory, name):
    """The case `name` of the suite in `directory`: a Case (tensors as NumPy arrays + their manifest
    entries). The file's SHA-256 must equal the manifest's and every tensor's name, dtype and shape
    the manifest's: a damaged or mixed-up suite is a CorruptFileError naming the file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    cases = read_manifest(directory)["cases"]
    if not isinstance(name, str) or name not in cases:
        raise bad_value("name", name, f"a case of {directory}: {sorted(cases)[:8]}{' ...' if len(cases) > 8 else ''}")
    entry = cases[name]
    path = _case_file(directory, name, entry)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorruptFileError(f"{path}: expected the case file of {name!r} ({e})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.get("sha256"):
        raise CorruptFileError(f"{path}: SHA-256 {digest} differs from the manifest's {entry.get('sha256')}: the file "
                               f"of case {name!r} is damaged or from another suite (regenerate the suite)")
    try:
        tensors = load(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptFileError(f"{path}: expected the case file of {name!r} ({e})") from None
    if set(tensors) != set(entry["tensors"]):
        raise CorruptFileError(f"{path}: tensors {sorted(set(tensors) ^ set(entry['tensors']))[:5]} differ from the "
                               "manifest's list: a mixed-up suite folder (regenerate it)")
    for key, info in entry["tensors"].items():
        got = (str(tensors[key].dtype), list(tensors[key].shape))
        if got != (info["dtype"], info["shape"]):
            raise CorruptFileError(f"{path}: tensor {key!r} is {got[0]} {got[1]}; the manifest says {info['dtype']} "
                                   f"{info['shape']}: a mixed-up suite folder (regenerate it)")
    return Case(name, entry, tensors)


class Case:
    """One golden-vector case: `case[key]` is a tensor, `case.info(key)` its manifest entry,
    `case.rule` the rule it pins (a self-contained statement), `case.settings` its constants."""

    def __init__(self, name, entry, tensors):
        self.name, self.entry, self.tensors = name, entry, tensors
        self.description, self.rule = entry["description"], entry["rule"]
        self.settings = entry.get("settings", {})

    def __getitem__(self, key):
        if key not in self.tensors:
            raise KeyError(f"{self.name}: no tensor {key!r}; it has {sorted(self.tensors)[:10]}")
        return self.tensors[key]

    def __contains__(self, key):
        return key in self.tensors

    def keys(self):
        return list(self.entry["tensors"])

    def info(self, key):
        self[key]
        return self.entry["tensors"][key]

    def inputs(self, prefix=""):
        """{key: array} of the inputs (keys starting with `prefix`, which is stripped)."""
        return self._role("input", prefix)

    def expected(self, prefix=""):
        """{key: array} of the expected tensors (keys starting with `prefix`, which is stripped)."""
        return self._role("expected", prefix)

    def _role(self, role, prefix):
        return {k[len(prefix):]: self.tensors[k] for k, e in self.entry["tensors"].items()
                if e["role"] == role and k.startswith(prefix)}

    def tolerance(self, key):
        """{"rtol": r, "atol": a} of an expected tensor (0, 0 for integer and bool tensors)."""
        e = self.info(key)
        if e["role"] != "expected":
            raise bad_value("key", key, f"an expected tensor of {self.name} ({key!r} is an input)")
        return {"rtol": e["rtol"], "atol": e["atol"]}

    def check(self, actual, prefix=""):
        """assert_close every tensor of `actual` ({key: array}; keys are `prefix` + key in the case)
        against its expected tensor and tolerance; raises VectorMismatch listing every failure."""
        if not isinstance(actual, dict) or not actual:
            raise bad_type("actual", actual, "a non-empty dict {tensor key: array}")
        failures = []
        for key, value in actual.items():
            full = prefix + key
            try:
                assert_close(value, self[full], **self.tolerance(full), name=f"{self.name}:{full}")
            except VectorMismatch as e:
                failures.append(str(e))
        if failures:
            raise VectorMismatch("\n".join(failures))
