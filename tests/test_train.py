"""Trainer, checkpoints, run directories, experiment pipeline and CLI: resume bit-identity whatever
the checkpoint cadence, finished runs left alone, fingerprints naming what differs, checksums,
non-finite values, saved models, progress lines, cached bases keyed by content, compare with seeds,
tables and plots."""

import contextlib
import importlib.util
import inspect
import io
import json
import re
import sys
from dataclasses import MISSING, replace
from pathlib import Path

import numpy as np
import pytest

import minisft.app.compare as cmp
import minisft.app.experiment as ex
import minisft.training.train as train_mod
from minisft.model.budgets import count_params
from minisft.training.checkpoint import load_checkpoint, save_checkpoint
from minisft.app.cli import main, parse_options, typed_options
from minisft.core.config import GPTConfig
from minisft.core.errors import CheckpointError, LockedError, NonFiniteLossError, bad_value
from minisft.core.fileio import RunLock
from minisft.methods import REGISTRY, LoRAMethod, Method, SPruFT, make_method, option_specs
from minisft.methods.spruft import rows_matching_lora, spruft_trainable
from minisft.model.gpt import GPT
from minisft.app.report import methods_table, plot_compare
from minisft.training.train import TrainConfig, train
from tests.helpers import MICRO, counter_task, tiny_gpt

REPO = Path(__file__).resolve().parents[1]

def run(tmp_path, steps, resume=False, ckpt_every=3, method=None, lr=1e-2, task=None, progress=False):
    model = tiny_gpt(dtype="float32")
    cfg = TrainConfig(steps=steps, lr=lr, eval_every=4, checkpoint_every=ckpt_every, seed=5, accumulation=2)
    r = train(model, method or LoRAMethod(r=2, alpha=4), task or counter_task(), cfg, workdir=tmp_path,
              resume=resume, progress=progress)
    return model, r


class Killed(Exception):
    pass


def killed_after(method, k):
    """The same method, but the process 'dies' right after step k (its checkpoint written)."""
    def after_step(model, step):
        if step + 1 == k:
            raise Killed
    method.after_step = after_step
    return method


def files(folder):
    """{relative path: bytes} of every file under `folder` but the run lock."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_is_bit_identical(tmp_path, method):
    full_model, full = run(tmp_path / "a", 9, method=make_method(method))
    with pytest.raises(Killed):
        run(tmp_path / "b", 9, method=killed_after(make_method(method), 7))  # checkpoint at 6, log to 7
    resumed_model, resumed = run(tmp_path / "b", 9, resume=True, method=make_method(method))
    assert [h["loss"] for h in resumed["history"]["train"]] == [h["loss"] for h in full["history"]["train"]]
    for k, v in full_model.trainable_params().items():
        assert np.array_equal(v, resumed_model.trainable_params()[k]), k
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 10))
    assert not (tmp_path / "b" / "checkpoint.safetensors").exists()  # a finished run keeps its model, not a checkpoint


@pytest.mark.parametrize("first,then,saved", [(2, 5, 6), (4, 0, 4), (4, None, 4), (None, 3, 1)])
def test_resume_works_whatever_checkpoint_every_the_first_run_used(tmp_path, monkeypatch, first, then, saved):
    """The checkpoint cadence is not part of what a resumed run must match: a run killed after
    step 7 resumes from its last checkpoint under any other cadence, bit for bit. The killed run's
    last checkpoint is the one its cadence puts last before step 7: every 2 -> 6, every 4 -> 4; the
    default (None) writes its first at step max(1, 9 // 20) = 1 and, with the write-time rule made
    never due (CHECKPOINT_COST = 0), no other."""
    monkeypatch.setattr(train_mod, "CHECKPOINT_COST", 0.0)
    full_model, full = run(tmp_path / "a", 9, ckpt_every=first)
    with pytest.raises(Killed):
        run(tmp_path / "b", 9, ckpt_every=first, method=killed_after(LoRAMethod(r=2, alpha=4), 7))
    saved_step = load_checkpoint(tmp_path / "b" / "checkpoint.safetensors")[1]["step"]
    assert saved_step == saved, f"last checkpoint at step {saved_step}, expected {saved} (checkpoint_every={first})"
    model, resumed = run(tmp_path / "b", 9, ckpt_every=then, resume=True)
    assert [h["loss"] for h in resumed["history"]["train"]] == [h["loss"] for h in full["history"]["train"]]
    for k, v in full_model.trainable_params().items():
        assert np.array_equal(v, model.trainable_params()[k]), k


def test_a_torn_log_line_from_a_kill_is_dropped_on_resume(tmp_path):
    with pytest.raises(Killed):
        run(tmp_path, 9, method=killed_after(LoRAMethod(r=2, alpha=4), 7))
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 8, "loss": 4.1')  # a kill inside an append
    run(tmp_path, 9, resume=True)
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == list(range(1, 10))


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys):
    _, first = run(tmp_path, 6)
    before = files(tmp_path)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}
    _, again = run(tmp_path, 6, resume=True)
    assert "finished (6 steps); nothing to do" in capsys.readouterr().err
    assert files(tmp_path) == before and {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert again == json.loads((tmp_path / "result.json").read_text())
    assert again["memory"] == first["memory"] and again["memory"]["activations"] > 0  # not zeroed


def test_resume_without_a_checkpoint_starts_from_step_zero(tmp_path, capsys):
    _, fresh = run(tmp_path / "a", 6)
    _, resumed = run(tmp_path / "b", 6, resume=True)
    assert "no checkpoint" in capsys.readouterr().err
    assert resumed["history"] == fresh["history"]


def test_resume_refuses_another_run_naming_only_the_fields_that_differ(tmp_path):
    """The checkpoint's fingerprint covers the base model, the data, the method and its options and
    the configuration; a mismatch names exactly the differing fields (not two whole configurations)."""
    with pytest.raises(Killed):
        run(tmp_path, 9, method=killed_after(LoRAMethod(r=2, alpha=4), 7))
    cases = [
        (dict(lr=2e-2), ["train.lr: 0.01 then, 0.02 now"]),
        (dict(method=LoRAMethod(r=3, alpha=4)), ["method_options.r: 2 then, 3 now"]),
        (dict(task=counter_task(seed=1)), ["task: "]),  # other data
        (dict(lr=2e-2, method=LoRAMethod(r=2, alpha=5)), ["method_options.alpha: 4.0 then, 5.0 now", "train.lr: "]),
    ]
    for kwargs, named in cases:
        with pytest.raises(CheckpointError) as info:
            run(tmp_path, 9, resume=True, **kwargs)
        message = str(info.value)
        differences = message.split("it differs: ")[1].split(" (start afresh")[0].split("; ")
        assert len(differences) == len(named) and all(any(d.startswith(n) for d in differences) for n in named), message
        assert len(message) < 400, message
    model = tiny_gpt(dtype="float32")
    model.params["wte.weight"][0, 0] += 1.0  # another base model
    with pytest.raises(CheckpointError, match=r"differs: base_model: "):
        train(model, LoRAMethod(r=2, alpha=4), counter_task(),
              TrainConfig(steps=9, lr=1e-2, eval_every=4, checkpoint_every=3, seed=5, accumulation=2),
              workdir=tmp_path, resume=True, progress=False)


def test_non_finite_loss_stops_naming_the_step_and_writes_no_result(tmp_path):
    class Explode(LoRAMethod):
        def after_step(self, model, step):
            if step == 4:
                model.params["ln_f.weight"][...] = np.nan

    with pytest.raises(NonFiniteLossError, match=r"loss=nan at step 6: .*checkpoint.*--resume.* No result was written"):
        run(tmp_path, 9, method=Explode(r=2, alpha=4))
    assert not (tmp_path / "result.json").exists() and not (tmp_path / "model").exists()
    arrays, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["step"] == 3 and all(np.all(np.isfinite(a)) for a in arrays.values())
    for line in (tmp_path / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in the log"))


def test_a_non_finite_evaluation_or_gradient_stops_the_run(tmp_path):
    """A NaN that reaches only the validation loss (after the last step), or an infinite gradient
    norm, stops the run: train() never returns non-finite finals."""
    class PoisonLast(LoRAMethod):
        def after_step(self, model, step):
            if step + 1 == 4:
                model.params["ln_f.weight"][...] = np.nan

    with pytest.raises(NonFiniteLossError, match="target validation loss=nan at step 4"):
        run(tmp_path / "a", 4, method=PoisonLast(r=2, alpha=4))
    assert not (tmp_path / "a" / "result.json").exists()

    class InfGrad(LoRAMethod):
        def transform_grads(self, model, grads, step):
            if step == 1:
                next(iter(grads.values()))[...] = np.inf
            return grads

    with pytest.raises(NonFiniteLossError, match="gradient norm=inf at step 2"):
        run(tmp_path / "b", 4, method=InfGrad(r=2, alpha=4))


def _resave(path, edit):
    arrays, meta = load_checkpoint(path)
    arrays, meta = edit(dict(arrays), dict(meta))
    save_checkpoint(path, arrays, meta)


def test_damaged_or_edited_checkpoints_are_refused(tmp_path):
    """Bytes changed on disk fail the checksum; a checkpoint edited and re-saved with a valid checksum
    fails the checks of its tensors (names, shapes, dtypes, optimizer state) and its fields."""
    with pytest.raises(Killed):
        run(tmp_path, 9, method=killed_after(LoRAMethod(r=2, alpha=4), 7))
    ck = tmp_path / "checkpoint.safetensors"
    good = ck.read_bytes()

    def expect(match):
        with pytest.raises(CheckpointError, match=match):
            run(tmp_path, 9, resume=True)
        ck.write_bytes(good)

    ck.write_bytes(good[: len(good) // 2])
    expect("complete safetensors")
    ck.write_bytes(good[:-9] + bytes([good[-9] ^ 1]) + good[-8:])  # one flipped bit in a tensor
    expect("does not match its checksum")
    ck.write_bytes(b"\x00" * 64)
    expect("checkpoint")
    first = next(k for k in load_checkpoint(ck)[0] if k.startswith("param/"))
    opt = next(k for k in load_checkpoint(ck)[0] if k.startswith("opt/") and not k.endswith(".step"))
    edits = [
        (lambda a, m: ({**a, first: a[first].astype(np.float16)}, m), r"is float16 .*: expected float32"),
        (lambda a, m: ({**a, first: a[first][:1]}, m), r"expected float32 \("),
        (lambda a, m: ({k: v for k, v in a.items() if not k.startswith("opt/")}, m), "optimizer state: missing"),
        (lambda a, m: ({k: v for k, v in a.items() if k != opt}, m), "optimizer state: expected the same entries"),
        (lambda a, m: ({**a, "param/extra": np.zeros(3, np.float32)}, m), r"unexpected \['extra'\]"),
        (lambda a, m: (a, {**m, "step": 8}), "history: expected one training record per step"),
        (lambda a, m: (a, {**m, "step": 99}), r"step=99: expected an integer in \[1, 9\]"),
        (lambda a, m: (a, {**m, "step": "6"}), "step='6'"),
        (lambda a, m: (a, {k: v for k, v in m.items() if k != "rng"}), "rng: expected"),
    ]
    for edit, match in edits:
        _resave(ck, edit)
        expect(match)
    run(tmp_path, 9, resume=True)  # the untouched checkpoint still resumes


def test_every_run_saves_its_trained_tensors_a_merged_model_and_a_manifest(tmp_path):
    """model/trained.safetensors holds every trainable tensor; model/merged.safetensors is a plain
    state dict that GPT.from_state_dict loads into a model computing what the adapted one computes;
    the manifest says what produced them."""
    model = tiny_gpt()
    task = counter_task()
    cfg = TrainConfig(steps=5, lr=1e-2, eval_every=5, seed=1)
    train(model, LoRAMethod(r=2, alpha=4), task, cfg, workdir=tmp_path, progress=False,
          provenance={"preset": "test", "tokenizer": "abc"})
    trained, _ = load_checkpoint(tmp_path / "model" / "trained.safetensors")
    assert set(trained) == set(model.trainable_params()) and all("lora" in k for k in trained)
    for k, v in model.trainable_params().items():
        assert np.array_equal(trained[k], v), k
    merged, _ = load_checkpoint(tmp_path / "model" / "merged.safetensors")
    plain = GPT.from_state_dict(merged, model.config, backend="numpy", dtype="float64")
    x, _ = task.val_target[0]
    diff = float(np.max(np.abs(plain.logits(x) - model.logits(x))))
    assert diff < 1e-10, f"merged model's logits differ by {diff:.3g}"
    assert not np.array_equal(merged["h.0.attn.c_attn.weight"], model.params["h.0.attn.c_attn.weight"])
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["method"] == "lora" and manifest["options"]["r"] == 2 and manifest["preset"] == "test"
    assert manifest["tokenizer"] == "abc" and manifest["seed"] == 1 and manifest["train"]["steps"] == 5
    assert manifest["minisft_version"] and "git_commit" in manifest and manifest["model"]["n_layer"] == 2


def test_git_commit_is_the_head_of_the_checkout_holding_the_package():
    """Every manifest and compare.json records the commit of the code that ran (None outside a checkout)."""
    import subprocess
    import minisft
    from minisft.core.version import git_commit
    checkout = Path(minisft.__file__).resolve().parents[1]
    if not (checkout / ".git").exists():
        pytest.skip("minisft is not imported from a git checkout here")
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert git_commit() is not None and git_commit().removesuffix("-dirty") == head


def test_default_checkpoints_cost_at_most_one_percent_of_the_training_time():
    """The default policy, driven by synthetic timings (steps of 0.1 s; writes of 1 s, then 0.2 s):
    after the first checkpoint (at 5% of the steps) the time spent writing is at most 1% of the
    time spent training, and checkpoints keep coming (a kill loses a bounded amount of work)."""
    for write in (1.0, 0.2):
        clock = train_mod._CheckpointClock(None, 5000)
        written, train_time = [], 0.0
        for step in range(1, 5001):
            train_time += 0.1
            if clock.due(step, 0.1):
                written.append(step)
                clock.written(write)
        assert written[0] == 250
        after_first = (len(written) - 1) * write / (0.1 * (5000 - written[0]))
        assert after_first <= train_mod.CHECKPOINT_COST + 1e-12, (write, after_first)
        gaps = np.diff(written)
        assert gaps.max() <= round(write / (0.1 * train_mod.CHECKPOINT_COST)) + 1, gaps  # +1: float sums of 0.1
    every = train_mod._CheckpointClock(3, 10)
    assert [s for s in range(1, 11) if every.due(s, 0.1)] == [3, 6, 9]
    never = train_mod._CheckpointClock(0, 10)
    assert not any(never.due(s, 0.1) for s in range(1, 11))


def test_a_second_run_on_the_same_directory_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(LockedError, match="in use by another minisft process"):
            run(tmp_path, 3)
    assert not (tmp_path / "log.jsonl").exists()
    run(tmp_path, 3)


def test_progress_on_a_pipe_is_a_line_per_phase_and_every_tenth(tmp_path):
    """On a pipe or file: a start line, about one line per 10% of the steps (step, loss, tokens/s,
    ETA), a done line; on a terminal one rewritten line; quiet: nothing."""
    for mode in ("lines", "live", False):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            run(tmp_path / str(mode), 20, progress=mode)
        lines = err.getvalue().splitlines()
        if mode == "lines":
            assert lines[0] == "minisft: train: 20 steps" and lines[-1].startswith("minisft: train: done in ")
            ticks = lines[1:-1]
            assert len(ticks) == 10 and all(re.fullmatch(r"minisft: train \d+/20 \(\d+%\) loss \d+\.\d{4} "
                                                         r"[\d,]+ tok/s ETA \d+s", t) for t in ticks), ticks
            assert [int(t.split()[2].split("/")[0]) for t in ticks] == list(range(2, 21, 2))
        elif mode == "live":
            assert err.getvalue().count("\r") == 20 and "ETA" in err.getvalue()
        else:
            assert err.getvalue() == ""


class DuckFullFineTune:
    """Full fine-tuning as a plain object (no minisft.methods.Method base): every hook of the protocol
    written out; `calls` records the hooks called, in order."""

    name = "duck"

    def __init__(self, drop=(), max_width=None):
        self.calls, self.max_width = [], max_width
        for hook in drop:
            setattr(self, hook, None)

    def check_config(self, config):
        self.calls.append("check_config")
        if self.max_width is not None and config.n_embd > self.max_width:
            raise bad_value("max_width", self.max_width, f"at least the model's width {config.n_embd}")

    def prepare(self, model, task, rng):
        self.calls.append("prepare")
        model.unfreeze()

    def transform_grads(self, model, grads, step):
        return grads

    def transform_grads_after_clip(self, model, grads, step):
        self.calls.append("transform_grads_after_clip")
        return grads

    def optimizer_masks(self, model):
        return {}

    def after_step(self, model, step):
        pass

    def report(self):
        return {}

    def options(self):
        return {}

    def state_arrays(self):
        return {}

    def load_state_arrays(self, arrays):
        pass


PROTOCOL = sorted(n for n, v in vars(Method).items() if inspect.isfunction(v) and not n.startswith("_"))  # the hooks


@pytest.mark.parametrize("hook", PROTOCOL)
def test_a_method_lacking_a_hook_is_refused_before_any_work(hook):
    """A method object without one hook of the protocol (transform_grads_after_clip and check_config
    included) is a clear error naming the hook, before prepare or any step."""
    method = DuckFullFineTune(drop=[hook])
    with pytest.raises(TypeError, match=f"lacks.*'{hook}'"):
        train(tiny_gpt(dtype="float32"), method, counter_task(), TrainConfig(steps=2), progress=False)
    assert method.calls == []


def test_a_method_without_the_method_base_class_trains_and_check_config_runs_first():
    """The trainer drives any object with the protocol's hooks: check_config against the model's
    GPTConfig before prepare (a refusal there stops the run before prepare), then every hook per step."""
    method = DuckFullFineTune()
    model, reference = tiny_gpt(dtype="float32"), tiny_gpt(dtype="float32")
    cfg = TrainConfig(steps=2, lr=1e-2, seed=3)
    r = train(model, method, counter_task(), cfg, progress=False)
    assert method.calls == ["check_config", "prepare", "transform_grads_after_clip", "transform_grads_after_clip"]
    full = train(reference, make_method("full"), counter_task(), cfg, progress=False)
    assert r["history"] == full["history"]
    narrow = DuckFullFineTune(max_width=8)
    with pytest.raises(ValueError, match="max_width"):
        train(tiny_gpt(dtype="float32"), narrow, counter_task(), cfg, progress=False)
    assert narrow.calls == ["check_config"]


def test_bad_method_and_options():
    with pytest.raises(ValueError, match="method"):
        make_method("nope")
    with pytest.raises(ValueError, match="bogus"):
        make_method("lora", bogus=1)
    with pytest.raises(ValueError, match="targets"):
        LoRAMethod(targets=("attn.q",))
    assert typed_options("lora", ["r=4", "targets=('mlp.c_fc',)", "use_rslora=true", "alpha=8"]) == \
        {"r": 4, "targets": ("mlp.c_fc",), "use_rslora": True, "alpha": 8.0}
    assert typed_options("spruft", ["ratio=none", "rows=8", "targets=attn.c_attn, mlp.c_fc"]) == \
        {"ratio": None, "rows": 8, "targets": ("attn.c_attn", "mlp.c_fc")}
    assert typed_options("adapeft", ["budget=5000", "eta=0.5"]) == {"budget": 5000, "eta": 0.5}
    assert typed_options("adapeft", ["budget=0.5"]) == {"budget": 0.5}
    assert parse_options(["init=zeros"]) == {"init": "zeros"}
    with pytest.raises(ValueError, match="--set"):
        parse_options(["r"])
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_has_complete_option_metadata_and_the_table_shows_it(name):
    """Each registered method names its paper, and each option of its config has a type
    annotation, a default and a one-line meaning; `minisft methods` prints them as a table, not
    Python dicts."""
    table, cls = methods_table(), REGISTRY[name]
    assert cls.paper.strip(), name
    for spec in option_specs(name):
        assert spec.annotation is not None, f"{name}.{spec.name} has no type annotation"
        assert spec.help.strip(), f"{name}.{spec.name} has no help (minisft.methods.config.option)"
        assert spec.default is not MISSING, f"{name}.{spec.name} has no default"
    block = table.split(f"\n{name}: ")[1].split("\n\n")[0]
    for spec in option_specs(name):
        assert re.search(rf"^    {spec.name} +\S", block, re.M), (name, spec.name)
    assert "inspect._empty" not in block and "{'" not in block and "<class" not in block and "args" not in block.split()
    assert option_specs(name) or "(no options)" in block


@pytest.fixture(scope="module")
def micro_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


@pytest.fixture()
def micro(monkeypatch):
    monkeypatch.setitem(ex.PRESETS, "micro", MICRO)
    return MICRO


def test_pretrain_beats_unigram_entropy_and_finetune_helps(micro_workdir):
    data = ex.build_data(MICRO, micro_workdir)
    model, result = ex.pretrained(MICRO, micro_workdir, data, backend="numpy")
    h = ex.unigram_entropy(data.code[0], data.tokenizer.vocab_size)
    task = ex.make_task(data.code, MICRO)
    loss = ex.evaluate(model, task.val_target)
    print(f"micro pretrain: code val loss {loss:.4f} vs unigram entropy {h:.4f}")
    assert loss < h - 0.3
    again, cached = ex.pretrained(MICRO, micro_workdir, data, backend="numpy")
    assert cached is None and all(np.array_equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    _, r = ex.finetune(MICRO, micro_workdir, data, make_method("full"), "full", backend="numpy")
    assert r["final"]["target"] < r["base"]["val"]["target"] and r["test"]["target"] < r["base"]["test"]["target"]


def test_the_cached_base_is_keyed_by_content_and_verified(micro_workdir, tmp_path, monkeypatch, capsys):
    """Another spelling or a copy of the workdir, or other fine-tuning steps, reuse the cached base
    (no pretraining); its key changes with the seed; a damaged cached base is pretrained again with a
    message."""
    import shutil

    data = ex.build_data(MICRO, micro_workdir)
    ex.pretrained(MICRO, micro_workdir, data, backend="numpy")
    copy = tmp_path / "copy"
    shutil.copytree(micro_workdir / "pretrain", copy / "pretrain")
    real_train = ex.train
    monkeypatch.setattr(ex, "train", lambda *a, **k: pytest.fail("pretrained again"))
    spelled = Path(str(micro_workdir) + "/../" + micro_workdir.name)
    for workdir, preset in ((spelled, MICRO), (copy, MICRO), (micro_workdir, replace(MICRO, finetune_steps=3))):
        assert ex.pretrained(preset, workdir, data, backend="numpy")[1] is None
    assert ex.pretrain_key(MICRO, data, "float32", 1) != ex.pretrain_key(MICRO, data, "float32", 0)
    monkeypatch.setattr(ex, "train", real_train)
    (path,) = (copy / "pretrain").glob("micro-*.safetensors")
    raw = path.read_bytes()
    path.write_bytes(raw[:-5] + bytes([raw[-5] ^ 1]) + raw[-4:])
    capsys.readouterr()
    model, result = ex.pretrained(MICRO, copy, data, backend="numpy")
    assert result is not None and "damaged" in capsys.readouterr().err
    rebuilt, original = load_checkpoint(path)[0], load_checkpoint(micro_workdir / "pretrain" / path.name)[0]
    assert all(np.array_equal(rebuilt[k], original[k]) for k in original)


def test_runs_of_other_presets_data_or_settings_never_share_a_directory(micro_workdir, micro):
    data = ex.build_data(MICRO, micro_workdir)
    other = replace(MICRO, name="micro2")
    dirs = {ex.run_dir(micro_workdir, MICRO, data, "full"), ex.run_dir(micro_workdir, other, data, "full"),
            ex.run_dir(micro_workdir, MICRO, replace(data, key="data-0123456789"), "full"),
            ex.run_dir(micro_workdir, replace(MICRO, finetune_steps=3), data, "full"),
            ex.run_dir(micro_workdir, MICRO, data, "full", lr=1e-3),
            ex.run_dir(micro_workdir, MICRO, data, "full", dtype="float64"),
            ex.run_dir(micro_workdir, MICRO, data, "full", seed=1),
            ex.run_dir(micro_workdir, MICRO, data, "full", seed=1, base_seed=0)}
    assert len(dirs) == 8
    assert ex.run_dir(micro_workdir, MICRO, data, "full") == micro_workdir / "runs" / "micro-prose" / "full" / "seed0"
    assert ex.run_dir(micro_workdir, MICRO, data, "full", lr=1e-3) == (micro_workdir / "runs" / "micro-prose" / "full"
                                                                        / "lr0.001" / "seed0")
    for label in ("../x", "/abs", "a/b", "", ".."):
        with pytest.raises(ValueError, match="label"):
            ex.run_dir(micro_workdir, MICRO, data, label)


def test_compare_is_deterministic_records_its_origin_and_cli_works(micro_workdir, micro, capsys):
    """`compare` twice gives byte-identical compare.json; it and result.json record the preset, data,
    seeds, minisft version and commit; `finetune` through the CLI; `--only` keeps the other rows of
    an earlier table; a bad method is an error."""
    args = ["compare", "--preset", "micro", "--backend", "numpy", "--workdir", str(micro_workdir), "--quiet"]
    assert main(args) == 0  # every row
    folder = micro_workdir / "runs" / "micro-prose"
    first = (folder / "compare.json").read_bytes()
    out = capsys.readouterr().out
    assert "lora-r2" in out and "prose test" in out and "code test" in out
    compared = json.loads(first)
    assert [r["label"] for r in compared["rows"]] == [label for label, *_ in cmp.compare_runs(MICRO)]
    assert compared["seeds"] == [0] and compared["provenance"]["preset"] == "micro"
    assert compared["minisft_version"] and "git_commit" in compared and compared["domains"]["target"] == "prose"
    result = json.loads((folder / "lora-r2" / f"lr{MICRO.peft_lr!r}" / "seed0" / "result.json").read_text())
    prov = result["provenance"]
    assert prov["preset"] == "micro" and prov["seed"] == 0 and prov["data"]["target"] == ex.build_data(
        MICRO, micro_workdir).fingerprints["target"] and "minisft_version" in prov and "git_commit" in prov
    assert main(args + ["--only", "lora-r2", "full"]) == 0
    assert (folder / "compare.json").read_bytes() == first  # the rows it reran come out identical, the others kept
    assert main(["finetune", "--preset", "micro", "--backend", "numpy", "--workdir", str(micro_workdir),
                 "--quiet", "--method", "lora", "--set", "r=2"]) == 0
    assert (folder / "lora" / "seed0" / "model" / "merged.safetensors").exists()
    assert main(["finetune", "--preset", "micro", "--workdir", str(micro_workdir), "--method", "nope"]) == 2
    assert "--method: 'nope'" in capsys.readouterr().err


def test_compare_with_seeds_keeps_every_seed_and_prints_mean_and_sd(micro_workdir, micro, capsys):
    args = ["compare", "--preset", "micro", "--backend", "numpy", "--workdir", str(micro_workdir), "--quiet",
            "--seed", "1", "--seeds", "2", "--only", "lora-r2", "gmt-d0.5"]
    assert main(args + ["--markdown"]) == 0
    out = capsys.readouterr().out
    folder = micro_workdir / "runs" / "micro-prose-seed1"
    compared = json.loads((folder / "compare-seeds2.json").read_text())  # a table of 2 seeds has its own file
    assert not (folder / "compare.json").exists()
    assert compared["seeds"] == [1, 2] and [r["label"] for r in compared["rows"]] == ["lora-r2", "gmt-d0.5"]
    for row in compared["rows"]:
        tests = [run["test"]["target"] for run in row["runs"]]
        assert [run["seed"] for run in row["runs"]] == [1, 2] and tests[0] != tests[1]
        assert row["target"]["mean"] == pytest.approx(np.mean(tests), abs=1e-12)
        assert row["target"]["sd"] == pytest.approx(np.std(tests, ddof=1), abs=1e-12)
        assert (folder / row["label"] / f"lr{row['lr']['chosen']!r}" / "seed2" / "result.json").exists()
    lines = out.splitlines()
    assert lines[0].startswith("| method | trainable |") and lines[1].startswith("| --- | ---: |")
    assert re.search(r"`minisft compare --preset micro --seeds 2 --markdown`: seeds 1\.\.2, numpy float32, "
                     r"minisft \S+, commit \S+\)", out)
    lora = next(line for line in lines if line.startswith("| lora-r2 |"))
    assert re.search(r"\| \d\.\d{4} ± \d\.\d{4} \| \d\.\d{4} ± \d\.\d{4} \|", lora), lora
    assert "| paper | claim |" in out  # the claims follow the table
    png = folder / "compare-seeds2.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_the_plot_is_written_with_every_panel(tmp_path):
    """plot_compare draws three panels (forgetting, parameters on a log axis, curves) with one
    legend outside them that names the base model and every row, in distinct colour/marker pairs."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    def row(label, trainable, t, s, seeds=2):
        runs = [{"seed": k, "base": {"val": {"target": 5.0, "source": 4.0}, "test": {"target": 5.0, "source": 4.0}},
                 "sparsity": 0.0, "report": {}, "final": None,
                 "history": {"eval": [{"step": 5, "target": t + 0.1 * k}, {"step": 10, "target": t + 0.01 * k}]}}
                for k in range(seeds)]
        return {"label": label, "counts": {"trainable": trainable}, "target": {"mean": t, "sd": 0.01},
                "source": {"mean": s, "sd": 0.02}, "runs": runs}

    labels = [label for label, *_ in cmp.compare_runs(ex.PRESETS["small"])]
    compared = {"rows": [row(label, 1000 * (i + 1), 4.0 + 0.01 * i, 4.5) for i, label in enumerate(labels)],
                "base": {"val": {"target": 5.0, "source": 4.0}, "test": {"target": 5.0, "source": 4.0}},
                "domains": {"target": "notes", "source": "code"},
                "seeds": [0, 1]}
    captured = {}
    real_close = plt.close
    plt.close = lambda fig: captured.setdefault("fig", fig)
    try:
        path, why = plot_compare(compared, tmp_path / "compare.png")
    finally:
        plt.close = real_close
    assert why is None and path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 20_000
    fig = captured["fig"]
    ax1, ax2, ax3 = fig.axes
    assert ax2.get_xscale() == "log" and "notes" in ax1.get_ylabel() and "code" in ax1.get_xlabel()
    (legend,) = fig.legends
    names = [t.get_text() for t in legend.get_texts()]
    assert names == ["base model"] + labels
    box = legend.get_window_extent(fig.canvas.get_renderer())
    assert all(box.x0 >= ax.get_window_extent().x1 for ax in (ax1, ax2, ax3))  # outside every axes
    points = [c.lines[0] for c in ax1.containers]  # one errorbar container per row
    styles = {(p.get_color(), p.get_marker(), p.get_markerfacecolor()) for p in points}
    assert len(points) == len(styles) == len(labels)
    assert len(ax3.get_lines()) >= len(labels) and len(ax3.collections) >= len(labels)  # curves and sd bands
    real_close(fig)


def test_data_columns_are_named_after_the_data_and_errors_name_real_paths(tmp_path, micro, capsys):
    """--data: the target column is named after the first path, the experiment directory after the
    data's fingerprint; too little text is an error naming the --data path, not a stream."""
    notes = tmp_path / "notes"
    notes.mkdir()
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]
    for i in range(12):
        (notes / f"n{i}.txt").write_text(" ".join(rng.choice(words, 3000)))
    work = str(tmp_path / "w")
    assert main(["finetune", "--preset", "micro", "--backend", "numpy", "--workdir", work, "--quiet",
                 "--method", "lora", "--data", str(notes)]) == 0
    out = capsys.readouterr().out
    assert "notes test" in out and "code test" in out and "prose test" not in out
    (exp,) = (tmp_path / "w" / "runs").iterdir()
    assert re.fullmatch(r"micro-data-[0-9a-f]{10}", exp.name)
    tiny_file = tmp_path / "tiny.txt"
    tiny_file.write_text("just a few words")
    assert main(["finetune", "--preset", "micro", "--workdir", work, "--method", "full", "--data", str(tiny_file)]) == 2
    err = capsys.readouterr().err
    assert str(tiny_file) in err and "tokens" in err and "/train" not in err and "Traceback" not in err


def test_cli_bad_data_paths(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (tmp_path / "missing.txt", empty):
        assert main(["compare", "--preset", "tiny", "--workdir", str(tmp_path / "w"), "--data", str(path)]) == 2
        assert str(path) in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_preset_end_to_end(tmp_path, capsys):
    """The issue's CI run (slow; its default-run smoke test is the micro compare above):
    `minisft pretrain --preset tiny` beats the unigram entropy by a wide margin, and `minisft
    compare --preset tiny` runs every method and fine-tuning lowers the prose test loss below
    the base model's."""
    work = str(tmp_path / "work")
    assert main(["pretrain", "--preset", "tiny", "--backend", "numpy", "--workdir", work, "--quiet"]) == 0
    out = capsys.readouterr().out
    loss = float(out.split("code validation loss ")[1].split()[0])
    entropy = float(out.split("unigram entropy of the code corpus ")[1].split()[0])
    print(out)
    assert loss < entropy - 0.5
    assert main(["compare", "--preset", "tiny", "--backend", "numpy", "--workdir", work, "--quiet"]) == 0
    result = json.loads((tmp_path / "work" / "runs" / "tiny-prose" / "compare.json").read_text())
    assert {r["method"] for r in result["rows"]} == set(n for _, n, *_ in cmp.compare_runs(ex.PRESETS["tiny"]))
    for r in result["rows"]:
        assert r["target"]["mean"] < result["base"]["test"]["target"], r["label"]
    assert (tmp_path / "work" / "runs" / "tiny-prose" / "compare.png").exists() or "matplotlib" in capsys.readouterr().out


# widths with their head counts: n_embd a multiple of n_head, 8..128
WIDTHS = [(8, 2), (16, 4), (24, 3), (48, 4), (128, 4)]


@pytest.mark.parametrize("n_layer", [1, 2, 3, 4])
@pytest.mark.parametrize("n_embd,n_head", WIDTHS)
def test_compare_rows_build_and_the_spruft_label_says_the_exact_budget(n_layer, n_embd, n_head):
    """Every row of `compare` builds its method over a grid of small models and LoRA ranks 1..16,
    whether rows_matching_lora picks a row count or a ratio (it picks a ratio for many of them; the
    label once read options['rows'] and raised KeyError), and the SPruFT row trains exactly the count
    its label names: a model prepared with the row's options (magnitude scores: scope "layer" counts
    do not depend on the scores) has spruft_trainable(config, **label's budget) trainable parameters,
    which is rows_matching_lora's count. Ranks above n_embd are refused, naming r."""
    cfg = GPTConfig(vocab_size=32, block_size=8, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    kinds = set()
    for r in range(1, 17):
        preset = replace(ex.PRESETS["tiny"], model=cfg, lora_r=r)
        if r > n_embd:
            with pytest.raises(ValueError, match=f"r={r}"):
                cmp.compare_runs(preset)
            continue
        runs = cmp.compare_runs(preset)
        for label, name, options, *_ in runs:
            cmp.build_method(name, options, preset)
        [(label, options)] = [(label, options) for label, name, options, *_ in runs if name == "spruft"]
        kind, value = re.fullmatch(r"spruft-(rows|ratio)(.+)", label).groups()
        budget = {kind: int(value) if kind == "rows" else float(value)}
        kinds.add(kind)
        assert {k: options.get(k) for k in ("rows", "ratio") if k in options} == budget, label
        model = GPT(cfg, backend="numpy", dtype="float64", seed=r)
        SPruFT(**{**options, "importance": "magnitude"}).prepare(model, None, np.random.default_rng(0))
        exact = spruft_trainable(cfg, **budget)
        assert count_params(model)["trainable"] == exact == rows_matching_lora(cfg, r)["spruft_trainable"], label
    if n_embd > 8:
        assert kinds == {"rows", "ratio"}, kinds  # the grid exercises both kinds of budget


def test_bench_without_torch_says_what_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert main(["bench", "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install '.[test]'" in err and "Traceback" not in err


def test_bench_outside_a_checkout_says_where_the_benchmark_is(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p or ".") / "reference_models").is_dir()])
    assert main(["bench"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python -m reference_models.bench.step" in err and "checkout" in err


def test_bench_runs_the_checkouts_benchmark_in_a_child_process(monkeypatch, capfd):
    monkeypatch.chdir(REPO)
    assert main(["bench", "--help"]) == 0
    assert "usage: minisft bench" in capfd.readouterr().out
    assert "reference_models.bench.step" not in sys.modules  # it ran in the child, not in this process


def test_bench_writes_its_json_into_the_workdir(monkeypatch, tmp_path):
    """Without --out, the benchmark's JSON goes to WORKDIR/bench.json (default ./minisft-work), not
    the current directory."""
    import minisft.app.cli as cli

    calls = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(cli.importlib.machinery.PathFinder, "find_spec", lambda *a: object())
    monkeypatch.setattr(cli.subprocess, "call", lambda argv: calls.append(argv) or 0)
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--preset", "tiny"]) == 0
    assert calls[-1][-2:] == ["--out", str(Path("minisft-work") / "bench.json")] and (tmp_path / "minisft-work").is_dir()
    assert main(["bench", "--workdir", str(tmp_path / "w"), "--steps", "2"]) == 0
    assert calls[-1][3:] == ["--steps", "2", "--out", str(tmp_path / "w" / "bench.json")]
    assert main(["bench", "--out", "x.json"]) == 0 and calls[-1][3:] == ["--out", "x.json"]


def test_compare_chooses_each_row_s_rate_on_validation_and_reports_test_losses(micro_workdir, micro, monkeypatch):
    """With a grid of two rates per family: the first seed runs every rate, the row keeps the one of
    the lowest final target validation loss, the second seed runs only that one; the row's losses
    are the test losses of the chosen rate's runs; a second compare trains nothing (every run is
    read back from its result) and writes the same compare.json."""
    grid = {"full": (1e-3, 3e-3), "peft": (3e-3, 1e-2)}
    data = ex.build_data(MICRO, micro_workdir)
    out, _, folder = cmp.compare(MICRO, micro_workdir, data, "numpy", only=["full", "lora-r2"], seeds=2, grid=grid)
    for row in out["rows"]:
        fam = "full" if row["method"] == "full" else "peft"
        vals = {lr: json.loads((ex.run_dir(micro_workdir, MICRO, data, row["label"], 0, 0, lr) / "result.json")
                               .read_text())["final"]["target"] for lr in grid[fam]}
        chosen = min(vals, key=lambda lr: (vals[lr], lr))
        assert row["lr"] == {"grid": list(grid[fam]), "chosen": chosen, "chosen_on_seed": 0,
                             "val_target": {repr(lr): v for lr, v in vals.items()}}
        other = [lr for lr in grid[fam] if lr != chosen][0]
        assert not ex.run_dir(micro_workdir, MICRO, data, row["label"], 1, 0, other).exists()
        tests = [json.loads((ex.run_dir(micro_workdir, MICRO, data, row["label"], s, 0, chosen) / "result.json")
                            .read_text())["test"]["target"] for s in (0, 1)]
        assert row["target"]["mean"] == pytest.approx(np.mean(tests), abs=1e-12) and row["seeds"] == [0, 1]
    monkeypatch.setattr(train_mod, "make_optimizer", lambda *a, **k: pytest.fail("a finished run was prepared again"))
    again, _, _ = cmp.compare(MICRO, micro_workdir, data, "numpy", only=["full", "lora-r2"], seeds=2, grid=grid)
    assert json.dumps(again, sort_keys=True) == json.dumps(out, sort_keys=True)
    assert folder.name.startswith("compare-grid")  # another grid than the preset's: its own folder
