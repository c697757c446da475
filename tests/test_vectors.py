"""The golden-vector suite (minisft.testing.vectors, `minisft vectors --out DIR`): byte-identical runs, the
kept copy in tests/data/vectors/, checksums, a manifest whose every case states its rule without
pointing into minisft's source, and every case replayed on a freshly written suite by code other
than its writer: torch.nn.functional and HF GPT2LMHeadModel (layers, GPT-2), the PyTorch twins of
reference_models (SPruFT, AdaPEFT, LoRA-drop, GMT, MGPP), brute force and scipy.optimize.milp
(knapsack), rational arithmetic (counts, thresholds). The train_* trajectories are replayed in
tests/test_vector_trajectories.py; the readings each case discriminates fail it in
tests/test_vector_readings.py."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minisft as ms
import minisft.testing as mt
from minisft.core.errors import CorruptFileError

REPO = Path(__file__).resolve().parents[1]
KEPT = REPO / "tests" / "data" / "vectors"
REGENERATE = f"minisft vectors --out {KEPT.relative_to(REPO)}"
TRAJECTORY_CASES = ("train_full", "train_lora", "train_spruft", "train_loradrop", "train_adapeft", "train_gmt",
                    "train_gmt_global_frozen", "train_mgpp", "train_magprune")  # tests/test_vector_trajectories.py


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


def test_two_runs_write_identical_bytes(fresh_vectors, tmp_path):
    """A second run in another process (other hash seed, other thread count) writes the same bytes."""
    env = dict(os.environ, PYTHONHASHSEED="123", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", f"from minisft.app.cli import main; main(['vectors', '--out', {str(tmp_path)!r}])"],
                   check=True, env=env, cwd=REPO, capture_output=True)
    first, second = digests(fresh_vectors), digests(tmp_path)
    assert first == second, f"files differ between two runs: {sorted(k for k in first if first[k] != second.get(k))}"
    assert len(first) == len(mt.list_cases(fresh_vectors)) + 1


def kept_copy_differences(fresh, kept):
    """Readable lines, one per difference between a fresh suite and the kept copy ([] when the bytes match)."""
    a, b = digests(fresh), digests(kept)
    lines = [f"only in the fresh suite: {n}" for n in sorted(set(a) - set(b))]
    lines += [f"only in the kept copy: {n}" for n in sorted(set(b) - set(a))]
    for name in sorted(n for n in set(a) & set(b) if a[n] != b[n]):
        if name == mt.MANIFEST:
            lines.append(f"{name} differs (rules, documentation, tolerances, settings, checksums or the list of cases)")
            continue
        new, old = load_file(str(Path(fresh) / name)), load_file(str(Path(kept) / name))
        for key in sorted(set(new) | set(old)):
            if key not in new or key not in old or new[key].shape != old[key].shape or new[key].dtype != old[key].dtype:
                lines.append(f"{name}:{key}: present/shape/dtype differ")
            elif not np.array_equal(new[key], old[key], equal_nan=True):
                d = np.abs(new[key].astype(np.float64) - old[key].astype(np.float64))
                lines.append(f"{name}:{key}: max |new - kept| {np.nanmax(d):.3e} at {tuple(int(i) for i in np.unravel_index(np.nanargmax(d), d.shape))}")
    return lines


def test_fresh_suite_matches_the_kept_copy(fresh_vectors):
    """Any change of numerics (or of the documentation) must be a deliberate, reviewed change."""
    lines = kept_copy_differences(fresh_vectors, KEPT)
    assert not lines, ("the golden vectors differ from the kept copy in tests/data/vectors/:\n  " + "\n  ".join(lines[:30])
                       + f"\nIf the change is intended, regenerate the kept copy from the repository root with\n  "
                         f"{REGENERATE}\nreview `git diff --stat tests/data/vectors` and say why in the commit message.")


def test_a_changed_vector_is_caught(tmp_path):
    """The kept-copy comparison reports one changed entry by file, tensor and size."""
    changed = tmp_path / "kept"
    shutil.copytree(KEPT, changed)
    tensors = load_file(str(changed / "nn_gelu_float64.safetensors"))
    tensors["dx"][1, 2] += 1e-9
    save_file(tensors, str(changed / "nn_gelu_float64.safetensors"))
    lines = kept_copy_differences(KEPT, changed)
    assert len(lines) == 1 and lines[0].startswith("nn_gelu_float64.safetensors:dx: max |new - kept| 1.0") \
        and lines[0].endswith("at (1, 2)"), lines


def test_the_kept_copy_is_small():
    """Under 3.5 MB: the per-step trajectories of the train_* cases are most of it."""
    assert sum(p.stat().st_size for p in KEPT.iterdir()) < 3.5e6


# ------------------------------------------------------------------------------------ manifest
SOURCE_POINTER = re.compile(r"\bminisft[/.][a-z_]|\b[\w/]+\.py\b|\bproofs/|\breference_models\b|"
                            r"\b(?:nn|methods|model|training|testing|core|app|importance|knapsack|curvature|calibration|"
                            r"selection|schedule|prior|pruning|masks|interop|optim|gmt|mgpp|loradrop|spruft|adapeft)"
                            r"\.[a-z_]+\(?")


def source_pointers(record):
    """The substrings of a case record's texts (rule, description, equations, meanings) that point
    into minisft's source instead of defining the rule."""
    texts = [record["rule"], record["description"]]
    texts += [t.get("equation", "") for t in record["tensors"].values()]
    texts += [t["meaning"] for t in record["tensors"].values()]
    texts += [json.dumps(record["discriminates"])]
    return [m.group(0) for text in texts for m in SOURCE_POINTER.finditer(text)]


def test_every_case_states_its_rule_without_pointing_into_the_source(fresh_vectors):
    """A stranger can implement each case from the manifest: its rule is a statement of its own
    (formulas, conventions, rounding, tie order), every expected tensor has a formula, and nothing
    names a minisft module, file or function as the definition; the conventions it refers to are
    in the manifest."""
    manifest = mt.read_manifest(fresh_vectors)
    assert set(manifest["conventions"]) >= {"model", "adapters", "decimal", "adamw", "clip", "step", "tolerance"}
    for name, case in manifest["cases"].items():
        assert isinstance(case["rule"], str) and len(case["rule"]) >= 80, f"{name}: no rule of its own"
        assert case["references"], name
        assert not source_pointers(case), f"{name} points into minisft's source: {source_pointers(case)[:5]}"
        for ref in re.findall(r"conventions\.(\w+)", case["rule"]):
            assert ref in manifest["conventions"], f"{name}'s rule refers to a missing convention {ref!r}"
        for ref in re.findall(r"the (\w+) case's", case["rule"]):
            assert ref in manifest["cases"], f"{name}'s rule refers to a missing case {ref!r}"


def test_the_pointer_check_finds_pointers():
    """The check above catches the kind of field the manifest used to have."""
    record = {"rule": "x", "description": "", "discriminates": [], "tensors": {
        "m": {"meaning": "", "equation": "minisft.methods.gmt.gradient_masks"},
        "k": {"meaning": "see minisft/methods/adapeft/knapsack.py", "equation": "knapsack.pareto_front"}}}
    assert len(source_pointers(record)) >= 3


def test_every_tensor_is_documented(fresh_vectors):
    manifest = mt.read_manifest(fresh_vectors)
    assert manifest["minisft_version"] == ms.__version__
    for name, case in manifest["cases"].items():
        assert case["description"] and (fresh_vectors / case["file"]).is_file(), name
        assert case["sha256"] == hashlib.sha256((fresh_vectors / case["file"]).read_bytes()).hexdigest(), name
        loaded = mt.load_case(fresh_vectors, name)
        assert loaded.expected(), f"{name} expects nothing"
        for key, t in case["tensors"].items():
            assert t["role"] in mt.ROLES and t["meaning"] and t["axes"] and t["layout"], (name, key)
            if t["role"] == "expected":
                assert t["equation"] and t["rtol"] >= 0 and t["atol"] >= 0, (name, key)
                assert (t["rtol"], t["atol"]) == (0, 0) or loaded[key].dtype.kind == "f", (name, key)
        for reading in case["discriminates"]:
            assert reading["right"] and reading["wrong"] and set(reading["tensors"]) <= set(case["tensors"]), name


def test_weight_layouts_are_said_per_tensor(fresh_vectors):
    """HF GPT-2 case: Conv1D weights (in, out) and said so; minisft cases: (out, in) and said so."""
    hf = mt.load_case(fresh_vectors, "gpt2_tiny_float64")
    w = hf.info("params/transformer.h.0.attn.c_attn.weight")
    assert w["shape"] == [8, 24] and "(in, out)" in w["layout"]
    assert "(in, out)" in hf.info("grads/transformer.h.1.mlp.c_proj.weight")["layout"]
    assert "(in, out)" not in hf.info("params/transformer.wte.weight")["layout"]
    full = mt.load_case(fresh_vectors, "train_full")
    w = full.info("start/h.0.attn.c_attn.weight")
    assert w["shape"] == [24, 8] and "(out, in)" in w["layout"]
    assert "(out, in)" in full.info("step/param/h.0.attn.c_attn.weight")["layout"]
    assert mt.load_case(fresh_vectors, "nn_linear_float64").info("weight")["layout"].startswith("minisft (out, in)")


def test_training_cases_set_every_option_and_move(fresh_vectors):
    """Each method's case names all of its options (a changed default cannot change it silently),
    its steps moved the trainable tensors (a comparison that could not fail would be vacuous), some
    steps were clipped and some not, and the cases are the trajectories replayed elsewhere."""
    import inspect

    from minisft.methods import REGISTRY

    names = [n for n in mt.list_cases(fresh_vectors) if n.startswith("train_")]
    assert sorted(names) == sorted(TRAJECTORY_CASES)
    for name in names:
        case = mt.load_case(fresh_vectors, name)
        options = inspect.signature(REGISTRY[case.settings["method"]].__init__).parameters.values()
        named = {p.name for p in options if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        assert set(case.settings["options"]) >= named, name
        moved = max(float(np.max(np.abs(case[f"step/param/{k}"][-1] - case[f"start/{k}"])))
                    for k in case.settings["trainable"])
        assert moved > 1e-3, name
        scale = case["step/clip_scale"]
        assert (scale < 1).any() and (scale == 1).any(), f"{name}: clipping {scale} acts at every step or at none"


def test_explicit_options_are_required():
    from minisft.testing.vectors.fixtures import explicit_method

    with pytest.raises(ValueError, match=r"gmt options of a vectors case=\['freeze_masked', 'scope'\]"):
        explicit_method("gmt", drop_ratio=0.5)


# ----------------------------------------------------------------------------------- checksums
@pytest.fixture
def copy(tmp_path, fresh_vectors):
    folder = tmp_path / "copy"
    shutil.copytree(fresh_vectors, folder)
    return folder


def edit_manifest(folder, edit):
    manifest = json.loads((folder / mt.MANIFEST).read_text())
    edit(manifest)
    (folder / mt.MANIFEST).write_text(json.dumps(manifest))


def test_a_damaged_file_is_a_clear_error(copy):
    """One bit flipped inside a tensor: the file's SHA-256 no longer matches the manifest's."""
    path = copy / "nn_linear_float64.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"nn_linear_float64.safetensors: SHA-256 [0-9a-f]{64} differs from the "
                                               r"manifest's [0-9a-f]{64}: the file of case 'nn_linear_float64' is damaged"):
        mt.load_case(copy, "nn_linear_float64")
    mt.load_case(copy, "nn_gelu_float64")  # the others still load


def test_a_file_of_another_dtype_is_named(copy):
    """The float32 file under the float64 name (with its checksum in the manifest): the dtype is named."""
    shutil.copy(copy / "nn_linear_float32.safetensors", copy / "nn_linear_float64.safetensors")
    digest = hashlib.sha256((copy / "nn_linear_float64.safetensors").read_bytes()).hexdigest()
    edit_manifest(copy, lambda m: m["cases"]["nn_linear_float64"].update(sha256=digest))
    with pytest.raises(CorruptFileError, match=r"tensor '\w+' is float32 \[.*\]; the manifest says float64"):
        mt.load_case(copy, "nn_linear_float64")


def test_manifest_errors_are_clear(copy):
    edit_manifest(copy, lambda m: m["cases"]["nn_linear_float64"].update(file="../other/nn_linear_float64.safetensors"))
    with pytest.raises(ValueError, match="expected a plain file name inside the suite folder"):
        mt.load_case(copy, "nn_linear_float64")
    edit_manifest(copy, lambda m: m.pop("cases"))
    with pytest.raises(ValueError, match="expected a manifest with a 'cases' table"):
        mt.load_case(copy, "nn_linear_float64")
    edit_manifest(copy, lambda m: m.update(schema_version=1))
    with pytest.raises(ValueError, match="schema_version=1: expected 2"):
        mt.list_cases(copy)


# --------------------------------------------------------------------- other implementations
torch = pytest.importorskip("torch")
F = torch.nn.functional
twins = pytest.importorskip("tests.vector_twins")
REPLAYED = {"nn_*", "gpt2_tiny_*", "spruft_scores", "spruft_select_gpt2", "adapeft_influence", "adapeft_knapsack",
            "loradrop_select", "gmt_masks", "mgpp_primitives", *TRAJECTORY_CASES}


def test_every_case_is_replayed(fresh_vectors):
    """Each case of the suite has a replay below (or, train_*, in tests/test_vector_trajectories.py)."""
    import fnmatch

    for name in mt.list_cases(fresh_vectors):
        assert any(fnmatch.fnmatch(name, pattern) for pattern in REPLAYED), f"{name} is replayed by no oracle"


def test_layers_match_pytorch(fresh_vectors):
    """Every nn_* case (both dtypes) checked by PyTorch's own functions in float64 (autograd)."""
    for dtype in ("float64", "float32"):
        def t(case, key, grad=False):
            return torch.tensor(case[key].astype(np.float64) if case[key].dtype.kind == "f" else case[key],
                                requires_grad=grad)

        def out(tensors):
            return {k: v.detach().numpy().astype(dtype) for k, v in tensors.items()}

        c = mt.load_case(fresh_vectors, f"nn_linear_{dtype}")
        x, w, b = t(c, "x", True), t(c, "weight", True), t(c, "bias", True)
        y = F.linear(x, w, b)
        y.backward(t(c, "dy"))
        c.check(out({"y": y, "dx": x.grad, "dweight": w.grad, "dbias": b.grad}))

        c = mt.load_case(fresh_vectors, f"nn_layernorm_{dtype}")
        x, w, b = t(c, "x", True), t(c, "weight", True), t(c, "bias", True)
        y = F.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5)
        y.backward(t(c, "dy"))
        c.check(out({"y": y, "dx": x.grad, "dweight": w.grad, "dbias": b.grad}))

        c = mt.load_case(fresh_vectors, f"nn_gelu_{dtype}")
        x = t(c, "x", True)
        y = F.gelu(x, approximate="tanh")
        y.backward(t(c, "dy"))
        c.check(out({"y": y, "dx": x.grad}))

        c = mt.load_case(fresh_vectors, f"nn_attention_{dtype}")
        qkv, H = t(c, "qkv", True), c.settings["n_head"]
        B, T, C3 = qkv.shape
        q, k, v = (z.reshape(B, T, H, C3 // (3 * H)).transpose(1, 2) for z in qkv.split(C3 // 3, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C3 // 3)
        y.backward(t(c, "dy"))
        c.check(out({"y": y, "dqkv": qkv.grad}))

        c = mt.load_case(fresh_vectors, f"nn_embedding_{dtype}")
        wte, wpe = t(c, "wte", True), t(c, "wpe", True)
        x = F.embedding(t(c, "idx"), wte) + wpe[: c["idx"].shape[1]]
        x.backward(t(c, "dy"))
        c.check(out({"x": x, "dwte": wte.grad, "dwpe": wpe.grad}))

        c = mt.load_case(fresh_vectors, f"nn_cross_entropy_{dtype}")
        z = t(c, "logits", True)
        loss = F.cross_entropy(z.reshape(-1, z.shape[-1]), t(c, "targets").reshape(-1), ignore_index=-100)
        loss.backward()
        c.check(out({"loss": loss, "dlogits": z.grad}))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gpt2_case_matches_hf_gpt2_and_minisft(fresh_vectors, dtype):
    """The case's HF-layout parameters load into transformers' GPT2LMHeadModel (built from the
    case's own hf_config) as they are; HF's logits, loss and gradients meet the case (float64
    arithmetic), and so does minisft in `dtype`."""
    transformers = pytest.importorskip("transformers")
    case = mt.load_case(fresh_vectors, f"gpt2_tiny_{dtype}")
    cfg = ms.GPTConfig(**case.settings["config"])
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**case.settings["hf_config"])).double()
    params = {k: torch.tensor(v.astype(np.float64)) for k, v in case.inputs("params/").items()}
    missing, unexpected = hf.load_state_dict(params, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected  # lm_head is tied to wte
    x, y = torch.tensor(case["idx"]), torch.tensor(case["targets"])
    logits = hf(input_ids=x).logits
    loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1), ignore_index=-100)
    loss.backward()
    grads = {k: p.grad.numpy().astype(dtype) for k, p in hf.named_parameters()}
    case.check({"logits": logits.detach().numpy().astype(dtype), "loss": loss.detach().numpy().astype(dtype)})
    case.check(grads, prefix="grads/")

    model = ms.GPT.from_state_dict(ms.interop.from_hf_gpt2(case.inputs("params/")), cfg, backend="numpy", dtype=dtype)
    loss, grads = model.loss_and_grads(case["idx"], case["targets"])
    grads = ms.interop.to_hf_gpt2(grads)
    del grads["lm_head.weight"]
    case.check({"logits": model.logits(case["idx"]), "loss": np.asarray(loss, dtype=dtype)})
    case.check(grads, prefix="grads/")


def test_spruft_scores_replay(fresh_vectors):
    """Closed forms in NumPy, torch.quantile for the quantile mean, and sorting in Python for the
    selections (a stable order by (−score, index))."""
    from reference_models import importance as ref

    c = mt.load_case(fresh_vectors, "spruft_scores")
    W, G, Fi, S = (c[k] for k in ("W", "G", "F", "S"))
    Wt, Gt, Ft = (torch.tensor(a) for a in (W, G, Fi))
    levels = torch.linspace(0, 1, c.settings["n_quantiles"], dtype=torch.float64)
    c.check({k: np.asarray(v) for k, v in {
        "row_magnitude_p1": ref.row_magnitude(Wt, 1), "row_magnitude_p2": ref.row_magnitude(Wt, 2),
        "row_taylor": ref.row_taylor(Wt, Gt), "row_taylor_multivariable": ref.row_taylor(Wt, Gt, True),
        "row_obd": ref.row_obd(Wt, Ft)}.items()})
    c.check({"col_magnitude_p2": (W * W).sum(0),
             "col_taylor": np.abs(W * G).sum(0), "col_obd": (W * W * Fi).sum(0),
             "quantile_mean": torch.quantile(torch.tensor(S), levels, dim=0).mean(0).numpy()})
    s = np.abs(W * G).sum(1)
    c.check({"top_rows_taylor": np.array(sorted(sorted(range(len(s)), key=lambda i: (-s[i], i))[:c.settings["top_r"]]))})
    layers = c.settings["layer_order"]
    flat = [(v / np.mean(c[f"layer_scores/{n}"]), n, i) for n in layers for i, v in enumerate(c[f"layer_scores/{n}"])]
    ranked = sorted(range(len(flat)), key=lambda p: (-flat[p][0], p))[: c.settings["global_total_rows"]]
    c.check({f"global_rows/{n}": np.array(sorted(flat[p][2] for p in ranked if flat[p][1] == n), dtype=np.int64)
             for n in layers})


def test_spruft_select_gpt2_replay(fresh_vectors):
    """reference_models.spruft's scores (autograd G, per-sequence F) and selection on a TorchGPT."""
    from reference_models import spruft as ref

    c = mt.load_case(fresh_vectors, "spruft_select_gpt2")
    layers = c.settings["layers"]
    batches = list(zip(c["calib/x"], c["calib/y"]))
    for variant, o in c.settings["variants"].items():
        twin = twins.torch_model(c.inputs("params/"), twins.config_of(c))
        kw = {"p": o["p"], "multivariable": o["multivariable"]}
        scores = {n: s.detach() for n, s in ref.unit_scores(twin, layers, o["importance"], batches=batches, **kw)[0].items()}
        c.check({f"{variant}/scores/{n}": s.numpy() for n, s in scores.items()})
        chosen = ref.select(scores, dict.fromkeys(layers), ratio=o["ratio"], rows=o["rows"], scope=o["scope"])
        c.check({f"{variant}/rows/{n}": idx.numpy() for n, idx in chosen.items()})


def test_adapeft_influence_replay(fresh_vectors):
    """reference_models.adapeft's Twin: autograd gradient, forward-over-reverse H·d ("exact") and
    GeN's torch.linalg.lstsq fit with the centred R²."""
    from reference_models import adapeft as ref

    c = mt.load_case(fresh_vectors, "adapeft_influence")
    s = c.settings
    params = c.inputs("params/")
    groups = ref.partition(twins.config_of(c), "modules", s["lora_r"])
    lora_init = {layer: (params[f"{layer}.lora.lora_A"], params[f"{layer}.lora.lora_B"])
                 for g in groups.values() for layer in g["lora"]}
    base = {k: v for k, v in params.items() if k in twins.base_names(twins.config_of(c))}
    twin = ref.Twin(base, twins.config_of(c), groups, lora_init, s["lora_alpha"] / s["lora_r"])
    assert {g: sorted(k) for g, k in twin.members.items()} == {g: sorted(k) for g, k in s["groups"].items()}
    batch = (c["batch/x"][0], c["batch/y"][0])
    g = twin.gradient(batch)
    c.check({k: v.numpy() for k, v in g.items()}, prefix="grads/")
    d = {k: torch.tensor(v) for k, v in c.inputs("direction/").items()}
    for tag, est in (("exact", ref.estimate(twin, g, d, "exact", batch=batch)),
                     ("gen", ref.estimate(twin, g, d, "gen", fresh=(c["gen_batch/x"][0], c["gen_batch/y"][0]),
                                          eta=s["eta"]))):
        order = s["group_order"]
        got = {f"{tag}/{f}": np.array([est[k][f] for k in order], dtype=np.float64) for f in ("a", "b")}
        got[f"{tag}/influence"] = np.array([np.nan if est[k]["influence"] is None else est[k]["influence"] for k in order])
        got[f"{tag}/valid"] = np.array([est[k]["valid"] for k in order])
        if tag == "gen":
            got["gen/r2"] = np.array([est[k]["r2"] for k in order])
        c.check(got)


def test_adapeft_knapsack_replay(fresh_vectors):
    """Brute force over every subset (f in index order, the stated ties), and scipy.optimize.milp
    for the optimal value."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    c = mt.load_case(fresh_vectors, "adapeft_knapsack")
    for name, info in c.settings.items():
        v, w, capacity = c[f"{name}/values"], c[f"{name}/weights"], info["capacity"]
        solve, front, greedy = twins.brute_force_knapsack(v, w, capacity)
        got = {f"{name}/solve": solve}
        for key, points in (("front", front), ("greedy", greedy)):
            got[f"{name}/{key}_weights"] = np.array([p[0] for p in points], dtype=np.int64)
            got[f"{name}/{key}_values"] = np.array([p[1] for p in points])
            got[f"{name}/{key}_masks"] = np.array([p[2] for p in points])
        c.check(got)
        res = milp(-v, constraints=LinearConstraint(w[None, :].astype(float), -np.inf, capacity),
                   integrality=np.ones(len(v)), bounds=Bounds(0, 1), options={"mip_rel_gap": 0.0})
        assert res.success and -res.fun == pytest.approx(float(v[c[f"{name}/solve"]].sum()), rel=1e-12)


def test_loradrop_select_replay(fresh_vectors):
    """reference_models' LoRALinear on a TorchGPT and forward hooks for g; the selections in
    rational arithmetic (tests/vector_twins.exact_prefix)."""
    from reference_models.loradrop import lora_output_sq_norms

    c = mt.load_case(fresh_vectors, "loradrop_select")
    s, layers = c.settings, c.settings["layers"]
    twin = twins.torch_model(c.inputs("params/"), twins.config_of(c))
    twins.attach_loras(twin, c.inputs("params/"), s["alpha"] / s["r"])
    g = lora_output_sq_norms(twin, layers, list(zip(c["sample/x"], c["sample/y"])))
    values = np.array([g[n] for n in layers])
    c.check({"g": values, "importance": values / values.sum()})
    for key, sel in s["selections"].items():
        kept, shared = twins.per_type_selection(layers, dict(zip(layers, c["g"])), sel["threshold"], sel["selection"])
        c.check({f"{key}/kept": kept, f"{key}/shared": shared})
    for key, rule in s["rule"].items():
        c.check({f"rule/{key}/kept": np.array(twins.exact_prefix(c[f"rule/{key}/importance"], rule["threshold"]))})
    kept, shared = twins.per_type_selection(layers, dict(zip(layers, c["rule_per_type/g"])),
                                            s["rule_per_type"]["threshold"], "per_type")
    c.check({"rule_per_type/kept": kept, "rule_per_type/shared": shared})


def test_gmt_masks_replay(fresh_vectors):
    """reference_models.primitives: torch.kthvalue thresholds, ties by a cumulative count, counts in
    rational arithmetic; global masks over the tensors concatenated in the stated order."""
    from reference_models import primitives as ref

    c = mt.load_case(fresh_vectors, "gmt_masks")
    order = c.settings["tensor_order"]
    grads = [torch.tensor(c[f"grads/{n}"]) for n in order]
    for r in c.settings["ratios"]:
        c.check({f"tensor/r{r}/{n}": ref.gradient_mask(g, r).numpy() for n, g in zip(order, grads)})
        c.check({f"global/r{r}/{n}": m.numpy() for n, m in zip(order, ref.global_masks(grads, r))})
    c.check({"count/r0.29/d": ref.gradient_mask(torch.tensor(c["count/d"]), 0.29).numpy()})


def test_mgpp_primitives_replay(fresh_vectors):
    """reference_models: the prior by torch.logsumexp and its gradient by autograd; the schedule and
    the exact-count masks of the twin written from MGPP's authors' code."""
    from reference_models import mgpp as ref_mgpp
    from reference_models import primitives as ref

    c = mt.load_case(fresh_vectors, "mgpp_primitives")
    s = c.settings
    theta = torch.tensor(c["theta"])
    for key, p in s["priors"].items():
        c.check({f"{key}/neg_log_prior": ref.neg_log_prior(theta, p["lam"], p["var0"], p["var1"]).numpy(),
                 f"{key}/neg_log_prior_grad": ref.neg_log_prior_grad(theta, p["lam"], p["var0"], p["var1"]).numpy()})
    sch = s["schedule"]
    sparsity = [ref_mgpp.sparsity_and_action(t, sch["initial"], sch["final"], sch["t_start"], sch["t_end"], 1)[0]
                for t in range(len(c["schedule"]))]
    c.check({"schedule": np.array(sparsity)})
    for key, names, values in (("masks/{scope}/t{t}", s["tensor_order"], range(sch["t_start"], sch["t_end"] + 1)),
                               ("counts/{scope}/s{t}", s["count_tensor_order"], s["count_sparsities"])):
        source = "params/" if key.startswith("masks") else "count_params/"
        weights = {n: torch.tensor(c[f"{source}{n}"]) for n in names}
        for t in values:
            level = sparsity[t] if key.startswith("masks") else t
            for scope in ("global", "layer"):
                pruned = ref_mgpp.pruning_masks(weights, level, "exact", scope)
                c.check({f"{key.format(scope=scope, t=t)}/{n}": (~pruned[n]).numpy() for n in names})
