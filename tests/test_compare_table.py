"""`minisft compare`'s table and compare.json recomputed cell by cell, from what each run left on disk
rather than from what compare recorded: the losses by evaluating the run's saved weights
(model/merged.safetensors) and the pretrained base in the PyTorch twin on the test batches (and the
final validation loss that chose the row's learning rate on the validation batches),
the trainable counts and the frozen / trainable / gradient / optimizer bytes by counting the saved
tensors, the activation bytes from the memory meter of a one-step rerun of the row, the sparsity from
the saved weights. Every row of compare is run twice, and the two compare.json are byte-identical.

The table is read by its header names and the rows by compare.json's run records, so columns and
fields added to compare later leave these checks standing (and unchecked until a check is added)."""

import contextlib
import io
import json
import re
from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import load_file

import minisft.app.experiment as ex
from minisft.app.cli import main
from minisft.methods import make_method
from tests.test_train import MICRO

torch = pytest.importorskip("torch")
MB = 1024 * 1024
LINEAR = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """(workdir, compare.json as a dict, the Markdown table as {label: {column: cell}}, data): compare
    on the micro preset, every row, run twice (the second run must write the same bytes)."""
    workdir = tmp_path_factory.mktemp("compare-table")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ex.PRESETS, "micro", MICRO)
        args = ["compare", "--preset", "micro", "--backend", "numpy", "--workdir", str(workdir), "--quiet", "--markdown"]
        outputs = []
        for again in ([], ["--overwrite"]):  # compare reads finished runs back: --overwrite trains every row again
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                assert main(args + again) == 0
            path = next((workdir / "runs").glob("*/compare.json"))
            outputs.append((path.read_bytes(), buffer.getvalue()))
    assert outputs[0][0] == outputs[1][0], "compare.json differs between two runs of every row"
    data = ex.build_data(MICRO, workdir)
    return workdir, json.loads(outputs[1][0]), parse_markdown_table(outputs[1][1]), data, path.parent


def parse_markdown_table(text):
    """{first cell: {header: cell}} of the first Markdown table in `text` (the claims follow it)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("| "):
            lines.append(line)
        elif lines:
            break
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    header, body = cells[0], [row for row in cells[1:] if not set("".join(row)) <= set("-: ")]
    assert all(len(row) == len(header) for row in body)
    return {row[0]: dict(zip(header, row)) for row in body}


def twin_loss(state_dict, config, batches):
    """Mean over the batches of the mean next-token cross-entropy of the PyTorch twin (float64)."""
    from reference_models.torch_gpt import TorchGPT

    twin = TorchGPT.from_minisft({k: v.astype(np.float64) for k, v in state_dict.items()}, config)
    with torch.no_grad():
        return float(np.mean([twin(torch.as_tensor(x), torch.as_tensor(y))[1].item() for x, y in batches]))


def stat(values):
    """(mean, sample sd or None) by numpy."""
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def shown(cell, mean, sd, digits=4, tol=5e-5):
    """A table cell 'mean' or 'mean ± sd' shows (mean, sd) to `digits` places, within `tol` of rounding."""
    parts = cell.split(" ± ")
    assert (len(parts) == 2) == (sd is not None), cell
    assert abs(float(parts[0]) - mean) <= 0.5 * 10**-digits + tol, (cell, mean)
    if sd is not None:
        assert abs(float(parts[1]) - sd) <= 0.5 * 10**-digits + tol, (cell, sd)


def close(recorded, recomputed, what, tol=2e-5):
    assert abs(recorded - recomputed) <= tol * max(1.0, abs(recomputed)), f"{what}: recorded {recorded}, recomputed {recomputed}"


def test_every_cell_of_the_compare_table_and_of_compare_json_is_recomputed(compared):
    workdir, out, table, data, folder = compared
    config = data.config
    task = ex.make_task(data.target, MICRO, data.code)
    splits = {"target": task.test_target, "source": task.test_source}
    columns = {split: f"{out['domains'][split]} test" for split in splits}

    # the base model: the pretrained weights of the experiment's base seed
    base_state = load_file(str(workdir / ex.pretrained_file(MICRO, data, out["dtype"], out["seeds"][0])))
    base = {split: twin_loss(base_state, config, batches) for split, batches in splits.items()}
    for split in splits:
        close(out["base"]["test"][split], base[split], f"compare.json base {split}")
        shown(table["(base model)"][columns[split]], base[split], None)
    assert table["(base model)"]["trainable"] == "0"

    timings = json.loads((folder / "compare-timings.json").read_text())["ms_per_step"]
    assert [row["label"] for row in out["rows"]] == [label for label in table if label != "(base model)"]
    for row in out["rows"]:
        label, cells = row["label"], table[row["label"]]
        finals = {split: [] for split in splits}
        sparsities = []
        for run in row["runs"]:
            lr = row["lr"]["chosen"]
            run_dir = ex.run_dir(workdir, MICRO, data, label, run["seed"], out["seeds"][0], lr, out["dtype"])
            merged = load_file(str(run_dir / "model" / "merged.safetensors"))
            trained = load_file(str(run_dir / "model" / "trained.safetensors"))
            for split, batches in splits.items():
                loss = twin_loss(merged, config, batches)
                close(run["test"][split], loss, f"{label} seed {run['seed']} test {split}")
                close(run["base"]["test"][split], base[split], f"{label} seed {run['seed']} base {split}")
                finals[split].append(loss)
            close(run["final"]["target"], twin_loss(merged, config, task.val_target), f"{label} final validation")
            assert cells["lr"] == f"{lr:g}", label
            weights = [w for name, w in merged.items() if LINEAR.fullmatch(name)]
            sparsity = sum(int(np.count_nonzero(w == 0)) for w in weights) / sum(w.size for w in weights)
            assert run["sparsity"] == sparsity, f"{label}: sparsity {run['sparsity']}, the weights' {sparsity}"
            sparsities.append(sparsity)

        # losses: compare.json's mean ± sd and the table's cells
        for split in splits:
            mean, sd = stat(finals[split])
            close(row[split]["mean"], mean, f"{label} {split} mean")
            assert (row[split]["sd"] is None) == (sd is None)
            if sd is not None:
                close(row[split]["sd"], sd, f"{label} {split} sd")
            shown(cells[columns[split]], mean, sd)
        mean, _ = stat(sparsities)
        assert row["sparsity"]["mean"] == pytest.approx(mean, abs=1e-15)
        assert abs(float(cells["sparsity"]) - mean) <= 0.0005

        # counts: the entries of the trained tensors (adapters and trained base tensors) and of the base
        n_trained = sum(a.size for a in trained.values())
        n_base = sum(a.size for a in merged.values())
        adapters = sum(a.size for name, a in trained.items() if name not in merged)
        assert row["counts"] == {"trainable": n_trained, "base": n_base, "total": n_base + adapters,
                                 "trainable_pct": pytest.approx(100 * n_trained / n_base, rel=1e-12)}, label
        assert cells["trainable"] == f"{n_trained:,}" and float(cells["%"]) == pytest.approx(100 * n_trained / n_base, abs=0.005)

        # memory: the bytes of the saved tensors; AdamW keeps two moments of each trained tensor
        trained_bytes = sum(a.nbytes for a in trained.values())
        frozen_bytes = sum(a.nbytes for name, a in merged.items() if name not in trained)
        optimizer = json.loads((run_dir / "result.json").read_text())["train"]["optimizer"]
        moments = {"adamw": 2}[optimizer]
        expected = {"frozen": frozen_bytes, "trainable": trained_bytes, "grads": trained_bytes,
                    "optimizer": moments * trained_bytes}
        for key, value in expected.items():
            assert row["memory"][key] == value, f"{label}: memory {key} {row['memory'][key]}, counted {value}"
        # the activations: the meter of a one-step rerun of the row (the meter reads the first step)
        record = json.loads((run_dir / "result.json").read_text())
        method = make_method(row["method"], **row["options"])
        _, rerun = ex.finetune(replace(MICRO, finetune_steps=1), workdir / "one-step", data, method, label, "numpy",
                               out["dtype"], row["runs"][0]["seed"], base_seed=out["seeds"][0],
                               train_overrides=record["train_overrides"], base=base_state)
        expected["activations"] = rerun["memory"]["activations"]
        assert row["memory"]["activations"] == expected["activations"], label
        assert row["memory"]["total"] == sum(expected.values())
        for column, key in (("frozen MB", "frozen"), ("train MB", "trainable"), ("grads MB", "grads"),
                            ("optim MB", "optimizer"), ("act MB", "activations")):
            assert cells[column] == f"{expected[key] / MB:.2f}", (label, column)

        # ms/step: the median over the row's seeds in compare-timings.json
        ms = [v for k, v in timings.items() if re.fullmatch(rf"{re.escape(label)}:lr{lr!r}:seed\d+", k)]
        assert cells["ms/step"] == f"{float(np.median(ms)):.1f}", label
