"""minisft.testing, the kit for checking another implementation: every code block of
docs/cross-validation.md runs after a plain install (no reference_models, no tests package) and the
example fails readably on a planted bug; assert_close's rule and messages; load_case's errors; the
hypothesis strategies, which are the ones minisft's own tests draw from (optional dependency,
imported lazily)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import find, given, settings

import minisft.app.experiment as ex
import minisft.testing as mt
from minisft.app.cli import main
from tests.test_train import MICRO

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "cross-validation.md"
RUNNER = '''import importlib.util, sys
for package in ("reference_models", "tests"):  # a plain install: only minisft is importable
    assert importlib.util.find_spec(package) is None, f"{package} is importable: not a plain install"
exec(open(sys.argv[2]).read())  # the prelude (a planted bug), if any
try:
    exec(compile(open(sys.argv[1]).read(), "docs/cross-validation.md", "exec"), {"__name__": "__main__"})
except Exception as e:
    print(f"{type(e).__module__}.{type(e).__name__}: {e}")
    sys.exit(3)
'''


def page_blocks(kinds=("python", "sh")):
    """[(language, body)] of the page's fenced code blocks of those languages, in order (an untagged
    block is output, not code)."""
    return [(lang, body) for lang, body in re.findall(r"```(\w*)\n(.*?)```", PAGE.read_text(), re.S) if lang in kinds]


def output_block(after):
    """The body of the first untagged fenced block after the line containing `after`."""
    rest = PAGE.read_text()[PAGE.read_text().index(after):]
    return re.search(r"```\n(.*?)```", rest, re.S).group(1)


def run_block(lang, body, folder, env, prelude=""):
    """Run one block in `folder` as a user would after `pip install minisft` (a fresh process whose
    working folder is not the repository); returns the CompletedProcess."""
    if lang == "sh":
        return subprocess.run(["bash", "-euc", body], cwd=folder, env=env, capture_output=True, text=True)
    (folder / "block.py").write_text(body)
    (folder / "prelude.py").write_text(prelude)
    (folder / "runner.py").write_text(RUNNER)
    return subprocess.run([sys.executable, "runner.py", "block.py", "prelude.py"], cwd=folder, env=env,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """(a user's folder, environment): `minisft` on PATH, PYTHONPATH unset, RUN = a finished float64
    LoRA run of the micro preset."""
    work = tmp_path_factory.mktemp("work")
    mp = pytest.MonkeyPatch()
    mp.setitem(ex.PRESETS, "micro", MICRO)
    try:
        assert main(["finetune", "--preset", "micro", "--backend", "numpy", "--dtype", "float64", "--workdir", str(work),
                     "--quiet", "--steps", "2", "--method", "lora", "--set", "r=2"]) == 0
    finally:
        mp.undo()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RUN"] = str(next((work / "runs").glob("*/lora/seed0")))
    folder = tmp_path_factory.mktemp("user")
    assert main(["vectors", "--out", str(folder / "vectors")]) == 0  # what the page's first block does
    return folder, env


def test_every_code_block_of_the_page_runs(user):
    """Every python and sh block of docs/cross-validation.md, in order, in one folder: the vectors
    written by the first, the examples against them, the round trips and the exports of a run."""
    folder, env = user
    blocks = page_blocks()
    assert [lang for lang, _ in blocks].count("python") >= 2 and blocks[0][0] == "sh"
    for i, (lang, body) in enumerate(blocks):
        done = run_block(lang, body, folder, env)
        assert done.returncode == 0, f"block {i} ({lang}) failed:\n{body}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert (folder / "exported" / "tokenizer.json").is_file() and (folder / "adapter-of-run" / "base").is_dir()


ERF_GELU = '''import transformers
_Config = transformers.GPT2Config
class ErfGeluConfig(_Config):  # the planted bug: the erf GELU instead of GPT-2's tanh approximation
    def __init__(self, **kw):
        super().__init__(**dict(kw, activation_function="gelu"))
transformers.GPT2Config = ErfGeluConfig
'''


def test_the_example_fails_readably_on_an_erf_gelu(user):
    """Plant the erf GELU in the example's HF model: it raises VectorMismatch whose message names the
    case, the tensor, the largest error and its index — the message the page shows."""
    folder, env = user
    example = next(body for lang, body in page_blocks(("python",)) if "gpt2_tiny_float64" in body)
    done = run_block("python", example, folder, env, prelude=ERF_GELU)
    assert done.returncode == 3, done.stderr
    message = done.stdout.strip()
    for part in ("gpt2_tiny_float64:logits", "max abs error", "at index (", "max rel error", "expected"):
        assert part in message, message

    def shape_of(text):  # the values printed with 17 digits may differ in the last bits elsewhere
        return re.sub(r"(actual|expected) -?[0-9.e+-]+", r"\1 …", text).strip()

    assert shape_of(message) == shape_of(output_block("fails like this")), "update the message quoted in the page"


@pytest.fixture(scope="module")
def vectors(fresh_vectors):
    return fresh_vectors


def test_a_transposed_weight_is_named_as_such(vectors):
    """A Conv1D gradient handed over in minisft's (out, in) layout: the message says so (as the page quotes)."""
    case = mt.load_case(vectors, "gpt2_tiny_float64")
    key = "grads/transformer.h.0.attn.c_attn.weight"
    with pytest.raises(mt.VectorMismatch) as e:
        case.check({key[len("grads/"):]: case[key].T}, prefix="grads/")
    said = ": shape (24, 8), expected (8, 24) — the transpose of the expected shape: a weight in the other layout?"
    assert str(e.value) == f"gpt2_tiny_float64:{key}{said} minisft weights are (out, in), HF GPT-2 Conv1D weights (in, out)"
    assert f"gpt2_tiny_float64:grads/...{said}" in " ".join(PAGE.read_text().split())


def test_a_selection_mismatch_shows_both_index_lists(vectors):
    """Kept layers of another length: both index lists (as the page quotes); of the same length, the
    differing entries and both lists; masks: the True positions of both."""
    case = mt.load_case(vectors, "loradrop_select")
    with pytest.raises(mt.VectorMismatch) as e:
        case.check({"rule/ties/kept": np.array([0, 1, 2])})
    assert str(e.value) == "loradrop_select:rule/ties/kept: shape (3,), expected (2,): actual [0, 1, 2], expected [0, 1]"
    assert str(e.value) in " ".join(PAGE.read_text().split())
    with pytest.raises(mt.VectorMismatch, match=r"first at \(1,\): 3 vs 1: actual \[0, 3\], expected \[0, 1\]$"):
        case.check({"rule/ties/kept": np.array([0, 3])})
    want = case["joint_0.9/kept"]
    got = np.roll(want, 1)
    with pytest.raises(mt.VectorMismatch) as e:
        case.check({"joint_0.9/kept": got})
    assert str(e.value).endswith(f": actual True at {np.flatnonzero(got).tolist()}, expected True at "
                                 f"{np.flatnonzero(want).tolist()}")


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
    with pytest.raises(mt.VectorMismatch, match=r"rows: 1 of 3 entries differ .*first at \(1,\): 5 vs 2: "
                                                r"actual \[1, 5, 3\], expected \[1, 2, 3\]$"):
        mt.assert_close(np.array([1, 5, 3]), np.array([1, 2, 3]), 0.0, 0.0, name="rows")
    with pytest.raises(mt.VectorMismatch, match=r"mask: 1 of 4 entries differ .*\(0, 1\): False vs True$"):
        mt.assert_close(np.array([[True, False], [True, True]]), np.ones((2, 2), bool), 0.0, 0.0, name="mask")
    with pytest.raises(mt.VectorMismatch, match=r"shape \(3,\), expected \(4,\)$"):
        mt.assert_close(np.zeros(3), np.zeros(4), 0.0, 0.0)
    with pytest.raises(mt.VectorMismatch, match=r"shape \(65,\), expected \(64,\)$"):  # long lists are not printed
        mt.assert_close(np.arange(65), np.arange(64), 0.0, 0.0)


def test_case_accessors(vectors):
    case = mt.load_case(vectors, "nn_linear_float32")
    assert set(case.inputs()) == {"x", "weight", "bias", "dy"} and set(case.expected()) == {"y", "dx", "dweight", "dbias"}
    assert case["x"].dtype == np.float32 and case.tolerance("y")["rtol"] == 1e-5
    assert case.tolerance("y")["atol"] == pytest.approx(1e-5 * np.abs(case["y"]).max(), rel=1e-6)
    assert case.rule.startswith("y = x W^T + b")
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
        mt.load_case(vectors, "nn_nope")
    copy = tmp_path / "copy"
    shutil.copytree(vectors, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "nn_gelu_float64.safetensors").write_bytes((copy / "nn_linear_float64.safetensors").read_bytes())
    with pytest.raises(ValueError, match="SHA-256 .* the file of case 'nn_gelu_float64' is damaged or from another suite"):
        mt.load_case(copy, "nn_gelu_float64")
    manifest["cases"]["nn_gelu_float64"]["sha256"] = manifest["cases"]["nn_linear_float64"]["sha256"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="differ from the manifest's list"):
        mt.load_case(copy, "nn_gelu_float64")
    (copy / "nn_gelu_float64.safetensors").unlink()
    with pytest.raises(ValueError, match="expected the case file of 'nn_gelu_float64'"):
        mt.load_case(copy, "nn_gelu_float64")
    manifest["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="schema_version=99: expected 2"):
        mt.load_case(copy, "nn_linear_float64")


# --------------------------------------------------------------------------------- strategies
torch = pytest.importorskip("torch")
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
    """float32 on request; attention draws the shapes minisft's attention tests draw (T > 32, hd > 16 reachable)."""
    @settings(max_examples=5)
    @given(inputs=mt.layer_inputs("attention", dtype=np.float32))
    def check(inputs):
        assert inputs["qkv"].dtype == np.float32 and inputs["qkv"].shape[-1] % (3 * inputs["n_head"]) == 0

    check()
    big = find(mt.layer_inputs("attention"), lambda d: d["qkv"].shape[1] > 32 and d["qkv"].shape[2] > 3 * 16 * d["n_head"],
               settings=settings(max_examples=2000, database=None))
    assert big["qkv"].shape[1] <= 64
    with pytest.raises(ValueError, match="layer='conv'"):
        mt.layer_inputs("conv")
    with pytest.raises(ValueError, match=r"names=\['q'\]"):
        mt.layer_shapes("attention", "q")


def test_every_strategy_is_drawn_by_minisfts_own_tests():
    """Each strategy the kit offers is drawn by a test outside the kit's own tests, and every layer's
    finite-difference test draws its shapes from mt.layer_shapes; layer_inputs is those shapes with
    seeded values (it draws layer_shapes itself: checked by a spy)."""
    sources = {p.name: p.read_text() for p in (REPO / "tests").glob("test_*.py")
               if p.name not in ("test_testing_kit.py", "test_vectors.py")}
    for name in set(mt.STRATEGIES) - {"layer_inputs"}:
        users = [f for f, text in sources.items() if re.search(rf"\bmt\.{name}\b", text)]
        assert users, f"minisft.testing.{name} is drawn by none of minisft's tests"
    for layer in mt.LAYERS:
        assert f'mt.layer_shapes("{layer}"' in sources["test_nn_grad.py"], layer
    import minisft.testing.strategies as strategies

    asked = []
    real = strategies.layer_shapes
    try:
        strategies.layer_shapes = lambda layer, *names: asked.append(layer) or real(layer, *names)
        for layer in mt.LAYERS:
            mt.layer_inputs(layer)
    finally:
        strategies.layer_shapes = real
    assert asked == list(mt.LAYERS)


def test_strategies_need_hypothesis_only_when_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    monkeypatch.setitem(sys.modules, "hypothesis.extra.numpy", None)
    with pytest.raises(ImportError, match=r"pip install hypothesis"):
        mt.seeds()
    mt.assert_close(np.ones(2), np.ones(2), 0.0, 0.0)  # the rest of the kit works without it
