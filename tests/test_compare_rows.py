"""compare's rows (minisft.app.experiment.compare_runs) follow each method's authors as
proofs/decisions.md and the README say, and keep the tokens per optimizer step equal across rows;
finetune applies a row's training overrides to that run only."""

import numpy as np
import pytest

import minisft.app.compare as cmp
from minisft.app import experiment as ex
from minisft.app.claims import prior_reach
from minisft.methods import make_method
from minisft.methods.mgpp import MGPP, MagnitudePruning
from minisft.methods.spruft import SPruFT
from minisft.training.train import Task, TrainConfig


def rows(preset):
    return {label: (name, options, over[0] if over else {}) for label, name, options, *over in cmp.compare_runs(preset)}


@pytest.mark.parametrize("preset", sorted(ex.PRESETS))
def test_every_row_trains_on_the_same_tokens_per_step(preset):
    p = ex.PRESETS[preset]
    for label, (name, options, over) in rows(p).items():
        tokens = over.get("accumulation", 1) * over.get("batch_size", p.batch_size)
        assert tokens == p.batch_size, f"{label}: {tokens} sequences per step, the others {p.batch_size}"


def test_rows_follow_the_authors_settings():
    p = ex.PRESETS["small"]
    table = rows(p)
    for label in ("gmt-d0.2", "gmt-d0.5"):
        assert table[label][2] == {"accumulation": cmp.GMT_MICRO_BATCHES, "batch_size": 16 // 4}
        assert cmp.GMT_MICRO_BATCHES == 4
    [spruft] = [v for k, v in table.items() if v[0] == "spruft"]
    method = cmp.build_method(spruft[0], spruft[1], p)
    assert isinstance(method, SPruFT) and spruft[2] == {}
    assert (method.config.calib_batches, method.config.calib_batch_size, method.config.init) == (50, 1, "zeros")
    decay = {"grad_clip": None, "schedule": "cosine", "final_lr_fraction": 0.1}  # BayesianPruner's GPT-2 runs
    for s in (80, 90, 95):
        (mn, mo, mx), (pn, po, px) = table[f"mgpp-s{s}"], table[f"magprune-s{s}"]
        assert (mn, pn) == ("mgpp", "magprune") and mo == po and mx == px == decay
        m, b = cmp.build_method(mn, mo, p), cmp.build_method(pn, po, p)
        assert type(m) is MGPP and type(b) is MagnitudePruning
        assert b.options() == {k: v for k, v in m.options().items() if k in b.options()}
        c = m.config
        assert (c.var0, c.var1, c.lam, c.lam_final, c.initial_sparsity, c.t_start, c.t_end, c.every, c.mode,
                c.count_rule, c.total_steps) == (1e-10, 0.05, 1e-3, None, 0.3, 0.1, 0.9, None, "regrow", "exact", 150)
    (an, ao, ax) = table["mgpp-s90-anneal"]
    annealed = cmp.build_method(an, ao, p).config
    assert (annealed.lam, annealed.lam_final, ax) == (0.1, 1e-4, decay)  # PTMGP's annealing
    (rn, ro, rx) = table["mgpp-s90-reach"]
    reach = cmp.build_method(rn, ro, p).config
    assert (reach.var0, reach.var1, reach.lam, reach.final_sparsity, rx) == (1e-5, 0.05, 1e-3, 0.9, decay)
    assert ro == {**table["mgpp-s90"][1], "var0": 1e-5}  # only v0 differs from the authors' row
    assert prior_reach({"n_train": 1, "lam": reach.lam, "var0": reach.var0, "var1": reach.var1})["spike_reach"] == \
        pytest.approx(0.015, abs=5e-4)  # the reach the constant's comment states
    study = rows(ex.PRESETS["study"])
    assert {k: v[1].get("every") for k, v in study.items() if v[0] in ("mgpp", "magprune")} == \
        dict.fromkeys([k for k, v in study.items() if v[0] in ("mgpp", "magprune")], 10)


def test_train_overrides_change_this_run_only_and_name_bad_keys():
    cfg = TrainConfig(steps=5)
    task = Task(train_ids=np.arange(100), val_target=[(1, 2)], batch_size=16, block_size=8)
    new_cfg, new_task = ex.apply_train_overrides(cfg, task, {"accumulation": 4, "batch_size": 4, "grad_clip": None})
    assert (new_cfg.accumulation, new_cfg.grad_clip, new_task.batch_size) == (4, None, 4)
    assert (cfg.accumulation, cfg.grad_clip, task.batch_size) == (1, 1.0, 16)
    assert new_task.val_target is task.val_target  # evaluation batches keep the preset's
    assert ex.apply_train_overrides(cfg, task, {}) == (cfg, task)
    with pytest.raises(ValueError, match="train_overrides"):
        ex.apply_train_overrides(cfg, task, {"micro_batches": 4})
    with pytest.raises(ValueError, match="accumulation"):
        ex.apply_train_overrides(cfg, task, {"accumulation": 0})


def test_magprune_is_registered_by_name():
    assert type(make_method("magprune", total_steps=10)) is MagnitudePruning


def test_gmt_on_n_micro_batches_of_b_over_n_is_gmt_on_one_batch_of_b():
    """What compare's GMT rows compute: Γ averaged over N = 4 micro-batches of B/4 sequences is the
    mean-loss gradient of the B sequences together (a mean of equal-size means), and the sampler
    draws the same windows either way, so the masks and the run equal one batch of B up to
    rounding (float64: 1e-10 after 6 steps). N > 1 matters when memory limits the micro-batch."""
    from minisft.methods.gmt import GMT
    from minisft.training.train import train
    from tests.gradcheck import assert_trained_like
    from tests.helpers import counter_task, host_copy, tiny_gpt

    runs = []
    for accumulation, B in ((1, 8), (4, 2)):
        model = tiny_gpt(xp=np, seed=4)
        start = host_copy(model.params)
        cfg = TrainConfig(steps=6, lr=1e-2, accumulation=accumulation, eval_every=6, seed=4)
        train(model, GMT(drop_ratio=0.5), counter_task(seed=4, B=B), cfg, progress=False)
        runs.append(host_copy(model.params))
    assert_trained_like(runs[1], runs[0], start, 6)
