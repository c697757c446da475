"""Comparing an implementation's tensors with golden vectors: `assert_close` (one tensor) and
`check_trajectory` (an outside trainer's per-step dump against a `train_*` case, naming the first
step, stage and tensor that differ).

A float tensor `actual` passes when |actual − expected| ≤ atol + rtol·|expected| elementwise (numpy's
`allclose` rule; NaN only where expected is NaN); integer and bool tensors must be equal. Every
message shows both values: for floats the largest absolute and relative error with their index and
the two values there; for integers and masks the differing entries, and for a short 1-D integer
array (a selection: rows, layers, a subset) both index lists in full, also when the lengths differ.
"""

import numbers

import numpy as np

from ..core.errors import bad_type, bad_value, numeric_array

SHOWN = 64  # a 1-D integer array up to this length is printed whole in a message


class VectorMismatch(AssertionError):
    """An implementation's tensor differs from a golden vector beyond the tolerance."""


def _index(flat, shape):
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def _as_list(a):
    """A short 1-D array as a Python list for a message ([i for True] for a bool mask), else None."""
    if a.ndim != 1 or a.size > SHOWN or a.dtype.kind not in "biu":
        return None
    return np.flatnonzero(a).tolist() if a.dtype.kind == "b" else a.tolist()


def _both(a, e):
    """': actual [..], expected [..]' for short 1-D integer arrays (True indices of masks), else ''."""
    shown_a, shown_e = _as_list(a), _as_list(e)
    if shown_a is None or shown_e is None:
        return ""
    what = "True at " if a.dtype.kind == "b" and e.dtype.kind == "b" else ""
    return f": actual {what}{shown_a}, expected {what}{shown_e}"


def assert_close(actual, expected, rtol, atol, name="tensor"):
    """Raise VectorMismatch unless `actual` matches `expected`: same shape; floats within
    |a − e| ≤ atol + rtol·|e| everywhere (NaN only where expected is NaN); integers and bools equal.

    The message names the tensor, the shapes, the largest absolute and relative error with the
    index where each occurs (and both values there), and how many entries fail; for integer
    arrays and masks, the differing entries with both values (short 1-D ones in full)."""
    a, e = (numeric_array(arg, v, bools=True, finite=False) for arg, v in (("actual", actual), ("expected", expected)))
    for arg, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, numbers.Real):
            raise bad_type(arg, tol, "a real number")
    if a.shape != e.shape:
        hint = ""
        if a.ndim == 2 and a.shape == e.shape[::-1]:
            hint = (" — the transpose of the expected shape: a weight in the other layout? minisft weights "
                    "are (out, in), HF GPT-2 Conv1D weights (in, out)")
        raise VectorMismatch(f"{name}: shape {a.shape}, expected {e.shape}{hint}{_both(a, e)}")
    if e.dtype.kind in "biu" and a.dtype.kind in "biu":
        bad = np.flatnonzero(a.ravel() != e.ravel())
        if bad.size:
            where = [_index(i, e.shape) for i in bad[:5]]
            shown = ", ".join(f"{w}: {a[w].item()!r} vs {e[w].item()!r}" for w in where)
            raise VectorMismatch(f"{name}: {bad.size} of {e.size} entries differ (exact match expected; "
                                 f"dtype {a.dtype} vs {e.dtype}); first at {shown}{_both(a, e)}")
        return
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    same = (np.isnan(a64) & np.isnan(e64)) | (a64 == e64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(same, 0.0, np.abs(a64 - e64))
        err = np.where(np.isnan(err), np.inf, err)  # NaN against a number, or inf against another value
        bad = (err > 0) & ~(err <= atol + rtol * np.abs(e64))  # a NaN bound (0 · inf) accepts only equality
    if not bad.any():
        return
    worst = np.unravel_index(int(np.argmax(err)), e.shape) if e.ndim else ()
    lines = [f"{name}: {int(bad.sum())} of {e.size} entries outside |actual - expected| <= atol + rtol*|expected| "
             f"(rtol={rtol:.1e}, atol={atol:.1e}); shape {e.shape}",
             f"  max abs error {float(err[worst]):.3e} at index {_index_text(worst)}: actual {float(a64[worst])!r}, "
             f"expected {float(e64[worst])!r}"]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(np.abs(e64) > 0, err / np.abs(e64), 0.0)  # over the entries whose expected value is not 0
    at = np.unravel_index(int(np.argmax(rel)), e.shape) if e.ndim else ()
    if rel[at] > 0:
        lines.append(f"  max rel error {float(rel[at]):.3e} at index {_index_text(at)}: actual {float(a64[at])!r}, "
                     f"expected {float(e64[at])!r}")
    raise VectorMismatch("\n".join(lines))


def _index_text(index):
    return str(tuple(int(i) for i in index))


def check_trajectory(case, dump):
    """Compare an outside trainer's per-step dump with a `train_*` case; raise VectorMismatch at the
    first step, stage and tensor that differ.

    dump: {step: {key: array}}, step 0-based, key as the case's per-step tensors without "step/",
    e.g. {0: {"loss": 3.1, "grad/h.0.attn.c_attn.weight": ..., "param/h.0.attn.c_attn.weight": ...}}.
    Any subset of the steps and keys may be given. They are compared in the order a step computes
    them (steps ascending; within a step the case's `settings["stages"]` order; within a stage the
    case's `settings["trainable"]` order), so the first mismatch is where the implementations part:
    a wrong gradient shows at "grad", a wrong mask at "keep", a wrong AdamW at "exp_avg" with the
    gradients before it equal. The message names that step, stage and tensor, says what the stage
    holds, and counts the later tensors that differ too."""
    if not isinstance(dump, dict) or not dump:
        raise bad_type("dump", dump, "a non-empty dict {step: {key: array}}")
    stages = case.settings.get("stages")
    if not stages:
        raise bad_value("case", case.name, "a train_* case (one with per-step tensors, settings['stages'])")
    steps = case.settings["train"]["steps"]
    order = {stage: i for i, stage in enumerate(stages)}
    tensors = {name: i for i, name in enumerate(case.settings["trainable"])}
    items = []
    for step, values in dump.items():
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < steps:
            raise bad_value("dump step", step, f"an integer step in [0, {steps})")
        if not isinstance(values, dict):
            raise bad_type(f"dump[{step}]", values, "a dict {key: array}")
        for key, value in values.items():
            stage, _, tensor = key.partition("/")
            if stage not in order or f"step/{key}" not in case:
                raise bad_value(f"dump[{step}] key", key, f"a per-step tensor of {case.name} without 'step/': "
                                f"a stage of {list(stages)}, then '/<tensor>' where the stage has one")
            items.append(((int(step), order[stage], tensors.get(tensor, -1)), step, key, value))
    items.sort(key=lambda item: item[0])
    failures = []
    for _, step, key, value in items:
        full = f"step/{key}"
        try:
            assert_close(value, case[full][step], **case.tolerance(full), name=f"{case.name}:{full}[{step}]")
        except VectorMismatch as e:
            failures.append((step, key, str(e)))
    if failures:
        step, key, message = failures[0]
        stage = key.partition("/")[0]
        raise VectorMismatch(
            f"{case.name}: first difference at step {step} (0-based), stage {stage!r} "
            f"({case.settings['stage_meaning'][stage]}), tensor {key.partition('/')[2] or key!r}; every value "
            f"compared before it agrees ({len(failures) - 1} later values differ too)\n{message}")
