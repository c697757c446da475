"""minisft.testing, the kit for checking another implementation: the README's worked example runs
and fails readably on a planted bug, assert_close's rule and messages, load_case's errors, and the
hypothesis strategies (optional dependency, imported lazily)."""

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

import minisft.testing as mt
from minisft.app.cli import main

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "docs" / "cross-validation.md").read_text()


def readme_block(after):
    """The first fenced block after the line containing `after` (its body, without the fences)."""
    rest = README[README.index(after):]
    return re.search(r"```[a-z]*\n(.*?)```", rest, re.S).group(1)


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kit")
    assert main(["vectors", "--out", str(folder / "vectors")]) == 0
    return folder


torch = pytest.importorskip("torch")


def run_readme_example(folder, monkeypatch):
    monkeypatch.chdir(folder)
    exec(compile(readme_block("<!-- run by tests/test_testing_kit.py"), "README.md", "exec"), {})


def test_readme_example_passes(vectors, monkeypatch):
    run_readme_example(vectors, monkeypatch)


def test_readme_example_fails_readably_on_an_erf_gelu(vectors, monkeypatch):
    """Plant the erf GELU in the twin: the README code raises VectorMismatch whose message names the
    case, the tensor, the largest error and its index — the message the README shows."""
    import reference_models.torch_gpt as twin

    real = twin.F

    class ErfGelu:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def gelu(x, approximate="none"):
            return real.gelu(x)  # the erf GELU, whatever was asked

    monkeypatch.setattr(twin, "F", ErfGelu())
    with pytest.raises(mt.VectorMismatch) as e:
        run_readme_example(vectors, monkeypatch)
    message = f"{type(e.value).__module__}.{type(e.value).__name__}: {e.value}"
    for part in ("gpt2_tiny_float64:logits", "max abs error", "at index (", "max rel error", "expected"):
        assert part in message, message

    def shape_of(text):  # the values printed with 17 digits may differ in the last bits elsewhere
        return re.sub(r"(actual|expected) -?[0-9.e+-]+", r"\1 …", text).strip()

    assert shape_of(message) == shape_of(readme_block("fails like this")), "update the message quoted in README.md"


def test_a_transposed_weight_is_named_as_such(vectors):
    """A Conv1D gradient handed over in minisft's (out, in) layout: the message says so (as README quotes)."""
    case = mt.load_case(vectors / "vectors", "gpt2_tiny_float64")
    key = "grads/transformer.h.0.attn.c_attn.weight"
    with pytest.raises(mt.VectorMismatch) as e:
        case.check({key[len("grads/"):]: case[key].T}, prefix="grads/")
    said = ": shape (24, 8), expected (8, 24) — the transpose of the expected shape: a weight in the other layout?"
    assert str(e.value) == f"gpt2_tiny_float64:{key}{said} minisft weights are (out, in), HF GPT-2 Conv1D weights (in, out)"
    assert f"gpt2_tiny_float64:grads/...{said}" in " ".join(README.split())


# ------------------------------------------------------------------------------ assert_close
def test_assert_close_rule_is_allclose():
    e = np.array([1.0, -2.0, 0.0])
    mt.assert_close(e + np.array([1e-6, -2e-6, 1e-7]), e, rtol=1e-6, atol=1e-7)  # exactly on the bound
    with pytest.raises(mt.VectorMismatch, match=r"(?s)t: 1 of 3 entries outside.*max abs error 2\.000e-06 at index \(2,\): actual 2e-06, expected 0.0$"):
        mt.assert_close(e + np.array([0.0, 0.0, 2e-6]), e, rtol=1e-6, atol=1e-7, name="t")
    mt.assert_close(np.array([np.nan, np.inf]), np.array([np.nan, np.inf]), 0.0, 0.0)
    with pytest.raises(mt.VectorMismatch, match="max abs error inf"):
        mt.assert_close(np.array([np.nan, 1.0]), np.array([0.5, 1.0]), 1e-3, 0.0)
    with pytest.raises(mt.VectorMismatch, match="max abs error inf"):
        mt.assert_close(np.array([np.inf]), np.array([1.0]), 1e-3, 0.0)
    with pytest.raises(mt.VectorMismatch, match="max abs error inf"):
        mt.assert_close(np.array([1.0]), np.array([np.inf]), 0.0, 0.0)


def test_assert_close_on_integers_and_masks_is_exact():
    mt.assert_close(np.array([1, 2, 3]), np.array([1, 2, 3], dtype=np.int32), 0.0, 0.0)
    with pytest.raises(mt.VectorMismatch, match=r"rows: 1 of 3 entries differ .*first at \(1,\): 5 vs 2"):
        mt.assert_close(np.array([1, 5, 3]), np.array([1, 2, 3]), 0.0, 0.0, name="rows")
    with pytest.raises(mt.VectorMismatch, match=r"mask: 1 of 4 entries differ"):
        mt.assert_close(np.array([[True, False], [True, True]]), np.ones((2, 2), bool), 0.0, 0.0, name="mask")
    with pytest.raises(mt.VectorMismatch, match=r"shape \(3,\), expected \(4,\)$"):
        mt.assert_close(np.zeros(3), np.zeros(4), 0.0, 0.0)


def test_case_accessors(vectors):
    case = mt.load_case(vectors / "vectors", "nn_linear_float32")
    assert set(case.inputs()) == {"x", "weight", "bias", "dy"} and set(case.expected()) == {"y", "dx", "dweight", "dbias"}
    assert case["x"].dtype == np.float32 and case.tolerance("y")["rtol"] == 1e-5
    assert case.tolerance("y")["atol"] == pytest.approx(1e-5 * np.abs(case["y"]).max(), rel=1e-6)
    with pytest.raises(ValueError, match="an expected tensor"):
        case.tolerance("x")
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        case["nope"]
    with pytest.raises(TypeError, match="non-empty dict"):
        case.check({})


# ---------------------------------------------------------------------------------- load_case
def test_load_case_errors(vectors, tmp_path):
    with pytest.raises(ValueError, match="expected a vector suite folder with manifest.json"):
        mt.load_case(tmp_path, "nn_linear_float64")
    with pytest.raises(ValueError, match="name='nn_nope': expected a case of"):
        mt.load_case(vectors / "vectors", "nn_nope")
    copy = tmp_path / "copy"
    shutil.copytree(vectors / "vectors", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "nn_gelu_float64.safetensors").write_bytes((copy / "nn_linear_float64.safetensors").read_bytes())
    with pytest.raises(ValueError, match="differ from the manifest's list"):
        mt.load_case(copy, "nn_gelu_float64")
    (copy / "nn_gelu_float64.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="expected the case file of 'nn_gelu_float64'"):
        mt.load_case(copy, "nn_gelu_float64")
    manifest["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="schema_version=99: expected 1"):
        mt.load_case(copy, "nn_linear_float64")


# --------------------------------------------------------------------------------- strategies
F = torch.nn.functional
TORCH = {
    "linear": lambda x, weight, bias=None: F.linear(x, weight, bias),
    "layernorm": lambda x, weight, bias: F.layer_norm(x, (x.shape[-1],), weight, bias, eps=1e-5),
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "embedding": lambda idx, wte, wpe: F.embedding(idx, wte) + wpe[: idx.shape[1]],
    "cross_entropy": lambda logits, targets: F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)),
}


@pytest.mark.parametrize("layer", sorted(TORCH))
def test_layer_inputs_drive_a_property_test_against_minisft(layer):
    """What a user writes: minisft's forward as the oracle of their own code (here torch.nn.functional)
    on inputs drawn by mt.layer_inputs."""
    import minisft.nn as nn

    forward = getattr(nn, f"{layer}_forward")

    @settings(max_examples=10)
    @given(inputs=mt.layer_inputs(layer))
    def check(inputs):
        ours = np.asarray(forward(**inputs)[0])
        theirs = TORCH[layer](**{k: torch.tensor(v) for k, v in inputs.items()}).numpy()
        mt.assert_close(theirs, ours, rtol=1e-12, atol=1e-12 * (np.abs(ours).max() + 1e-300), name=layer)

    check()


def test_layer_inputs_dtype_and_attention():
    @settings(max_examples=5)
    @given(inputs=mt.layer_inputs("attention", dtype=np.float32))
    def check(inputs):
        assert inputs["qkv"].dtype == np.float32 and inputs["qkv"].shape[-1] % (3 * inputs["n_head"]) == 0

    check()
    with pytest.raises(ValueError, match="layer='conv'"):
        mt.layer_inputs("conv")


def test_strategies_need_hypothesis_only_when_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    monkeypatch.setitem(sys.modules, "hypothesis.extra.numpy", None)
    with pytest.raises(ImportError, match=r"pip install hypothesis"):
        mt.seeds()
    mt.assert_close(np.ones(2), np.ones(2), 0.0, 0.0)  # the rest of the kit works without it
