"""The claims table (minisft.app.claims) against compare.json, cell by cell, with an independent
oracle: scipy's paired t-test (`scipy.stats.ttest_rel(...).confidence_interval`) for the interval,
the rule as the module docstring words it, recomputed here, and the per-seed losses read from the
runs. The synthetic comparisons are built so that each verdict occurs."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from minisft.app import claims as cl
from minisft.app.claims import HOLDS, NO_DIFF, NOT, ONE_SEED, UNDECIDED


def run(seed, target, report=None):
    return {"seed": seed, "test": {"target": target, "source": 4.0}, "report": report or {}}


def row(label, method, losses, trainable=1000, memory=None, report=None, sparsity=None):
    runs = [run(s, t, report) for s, t in enumerate(losses)]
    mean = float(np.mean(losses))
    return {"label": label, "method": method, "counts": {"trainable": trainable},
            "memory": memory or {"frozen": 10, "trainable": 1, "grads": 1, "optimizer": 2, "activations": 50},
            "target": {"mean": mean}, "runs": runs, "options": {"final_sparsity": sparsity}}


def oracle(kind, a, b, baseline_mean):
    """The rule, recomputed: scipy's paired-t 95% interval of a - b, then the verdict as worded."""
    if len(a) == 1:
        return ONE_SEED, None
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    low, high = float(ci.low), float(ci.high)
    if kind == "better":
        return (HOLDS if high < 0 else NOT if low > 0 else NO_DIFF), (low, high)
    margin = 0.01 * baseline_mean
    return (HOLDS if high <= margin else NOT if low > margin else UNDECIDED), (low, high)


PRUNE_REPORT = {"regrown": 7, "n_train": 1000, "lam": 1e-3, "var0": 1e-10, "var1": 0.05}
ADAPEFT_REPORT = {"chosen": {"groups": ["a", "b"]}}


def comparison(shift):
    """A compare.json with every claim's rows; `shift` moves each method's losses (per row) against
    its baseline's: {label: per-seed shift}."""
    base = [3.00, 3.02, 2.98]

    def losses(label):
        return [b + d for b, d in zip(base, shift.get(label, [0.0, 0.0, 0.0]))]

    rows = [row("full", "full", losses("full"), 10_000), row("lora-r8", "lora", losses("lora-r8"), 800),
            row("lora-r4", "lora", losses("lora-r4"), 400),
            row("spruft-rows18", "spruft", losses("spruft-rows18"), 790,
                memory={"frozen": 10, "trainable": 1, "grads": 1, "optimizer": 2, "activations": 40}),
            row("loradrop-r8", "loradrop", losses("loradrop-r8"), 420),
            row("adapeft-r8", "adapeft", losses("adapeft-r8"), report=ADAPEFT_REPORT),
            row("adapeft-r8-probe32", "adapeft", losses("adapeft-r8-probe32"), report={"chosen": {"groups": ["b", "c"]}}),
            row("gmt-d0.2", "gmt", losses("gmt-d0.2")), row("gmt-d0.5", "gmt", losses("gmt-d0.5")),
            *[row(f"mgpp-s{s}{x}", "mgpp", losses(f"mgpp-s{s}{x}"), report=PRUNE_REPORT, sparsity=s / 100)
              for s, x in ((80, ""), (90, ""), (95, ""), (90, "-anneal"), (90, "-reach"))],
            *[row(f"magprune-s{s}", "magprune", losses(f"magprune-s{s}"), report={"regrown": 3}, sparsity=s / 100)
              for s in (80, 90, 95)]]
    return {"preset": {"lora_r": 8}, "rows": rows}


SHIFTS = {
    "spruft-rows18": [0.001, 0.002, 0.0],      # close: well within 1%
    "adapeft-r8": [-0.05, -0.06, -0.04],       # better: the interval below 0
    "adapeft-r8-probe32": [0.0, 0.0, 0.0],
    "loradrop-r8": [0.2, 0.21, 0.19],          # close to lora-r8: far beyond 1% -> does not hold
    "gmt-d0.2": [0.05, -0.04, 0.01],           # better: straddles 0 -> no difference
    "gmt-d0.5": [0.05, 0.06, 0.04],            # better: above 0 -> does not hold
    "mgpp-s90": [-0.02, -0.021, -0.019],
}


def test_every_claim_cell_equals_the_oracle():
    compared = comparison(SHIFTS)
    rows = {r["label"]: r for r in compared["rows"]}
    got = cl.evaluate_claims(compared)
    assert len(got) == len(cl.claims_for(8)) == 12
    seen = set()
    for claim in got:
        a = [run["test"]["target"] for run in rows[claim["row"]]["runs"]]
        b = [run["test"]["target"] for run in rows[claim["baseline"]]["runs"]]
        verdict, (low, high) = oracle(claim["kind"], a, b, rows[claim["baseline"]]["target"]["mean"])
        m = claim["measured"]
        assert m["diffs"] == pytest.approx([x - y for x, y in zip(a, b)], abs=1e-15)
        assert m["mean"] == pytest.approx(np.mean(np.subtract(a, b)), abs=1e-15)
        assert m["sd"] == pytest.approx(np.std(np.subtract(a, b), ddof=1), abs=1e-15)
        assert (m["low"], m["high"]) == pytest.approx((low, high), abs=1e-12)
        if claim["row"].startswith("spruft"):  # a second condition: the peak memory is lower
            assert claim["facts"]["peak_bytes"] == [54, 64] and claim["facts"]["memory_lower"]
        assert claim["verdict"] == verdict, claim["row"]
        seen.add(verdict)
    assert seen >= {HOLDS, NOT, NO_DIFF}


def test_verdicts_for_each_rule_and_the_one_seed_case():
    compared = comparison(SHIFTS)
    by_row = {(c["row"], c["baseline"]): c["verdict"] for c in cl.evaluate_claims(compared)}
    assert by_row[("adapeft-r8", "lora-r8")] == HOLDS
    assert by_row[("spruft-rows18", "lora-r8")] == HOLDS
    assert by_row[("loradrop-r8", "lora-r8")] == NOT
    assert by_row[("gmt-d0.2", "full")] == NO_DIFF and by_row[("gmt-d0.5", "full")] == NOT
    assert by_row[("mgpp-s90", "magprune-s90")] == HOLDS and by_row[("mgpp-s80", "magprune-s80")] == NO_DIFF
    one = comparison(SHIFTS)
    for r in one["rows"]:
        r["runs"] = r["runs"][:1]
    assert {c["verdict"] for c in cl.evaluate_claims(one)} == {ONE_SEED}


def test_a_higher_peak_memory_makes_spruft_s_claim_fail_whatever_the_loss():
    compared = comparison(SHIFTS)
    spruft = next(r for r in compared["rows"] if r["method"] == "spruft")
    spruft["memory"]["activations"] = 500
    claim = next(c for c in cl.evaluate_claims(compared) if c["row"].startswith("spruft"))
    assert claim["facts"]["memory_lower"] is False and claim["verdict"] == NOT


def test_a_missing_row_is_not_measured():
    compared = comparison(SHIFTS)
    compared["rows"] = [r for r in compared["rows"] if r["label"] != "lora-r4"]
    claim = next(c for c in cl.evaluate_claims(compared) if c["baseline"] == "lora-r4")
    assert claim["verdict"] == cl.MISSING and "measured" not in claim


@given(diffs=st.lists(st.floats(-0.5, 0.5), min_size=2, max_size=6), margin=st.floats(0.0, 0.2))
def test_the_rule_on_drawn_differences(diffs, margin):
    """Against scipy's paired interval on any differences (b = 0): the interval and both rules."""
    a, b = np.asarray(diffs), np.zeros(len(diffs))
    measured = cl.paired(row("x", "full", list(a)), row("y", "full", list(b)))
    if np.std(a, ddof=1) == 0:
        assert measured["low"] == measured["high"] == pytest.approx(float(np.mean(a)))
        return
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (measured["low"], measured["high"]) == pytest.approx((float(ci.low), float(ci.high)), rel=1e-9, abs=1e-12)
    low, high = measured["low"], measured["high"]
    assert cl.verdict("better", measured) == (HOLDS if high < 0 else NOT if low > 0 else NO_DIFF)
    assert cl.verdict("close", measured, margin) == (HOLDS if high <= margin else NOT if low > margin else UNDECIDED)


def test_the_prior_s_reach_is_where_the_responsibilities_are_equal():
    """prior_reach's θ*: λ N(θ*; 0, v1) = (1 − λ) N(θ*; 0, v0), checked by evaluating both densities."""
    rep = {"n_train": 5000, "lam": 1e-3, "var0": 1e-10, "var1": 0.05}
    got = cl.prior_reach(rep)

    def density(theta, var):
        return math.exp(-theta * theta / (2 * var)) / math.sqrt(2 * math.pi * var)

    t = got["spike_reach"]
    assert rep["lam"] * density(t, rep["var1"]) == pytest.approx((1 - rep["lam"]) * density(t, rep["var0"]), rel=1e-9)
    assert got["slab_pull"] == 1 / (5000 * 0.05) and got["spike_pull"] == 1 / (5000 * 1e-10)


def test_the_markdown_table_has_one_line_per_claim_with_its_verdict():
    got = cl.evaluate_claims(comparison(SHIFTS))
    text = cl.format_claims(got, markdown=True).splitlines()
    assert text[0].startswith("| paper | claim |") and len(text) == 2 + len(got)
    for line, claim in zip(text[2:], got):
        assert line.endswith(f"| {claim['verdict']} |") and f"{claim['row']} − {claim['baseline']}" in line
        m = claim["measured"]
        assert f"{m['mean']:+.4f} ± {m['sd']:.4f} [{m['low']:+.4f}, {m['high']:+.4f}]" in line


def test_the_readme_s_study_table_is_the_kept_comparison_recomputed():
    """Every claim row of the README's study table (row − baseline, Δ and its interval, verdict) equals
    the oracle's recomputation from the per-seed test losses of the raw compare.json it cites, and
    every claim of that comparison has its row."""
    import json
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    (cited,) = set(re.findall(r"\(docs/results/(study-[\w.-]+\.json)\)", readme))
    compared = json.loads((repo / "docs" / "results" / cited).read_text())
    rows = {r["label"]: r for r in compared["rows"]}
    table = {m.group(1, 2): m.group(3, 4, 5, 6) for m in re.finditer(
        r"^\| [^|]+ \| ([\w.-]+) − ([\w.-]+) \| ([+-]\d\.\d{4}) \[([+-]\d\.\d{4}), ([+-]\d\.\d{4})\] \| ([a-z ]+) \|$",
        readme, re.M)}
    assert set(table) == {(c["row"], c["baseline"]) for c in compared["claims"]}
    for claim in compared["claims"]:
        a = [run["test"]["target"] for run in rows[claim["row"]]["runs"]]
        b = [run["test"]["target"] for run in rows[claim["baseline"]]["runs"]]
        verdict, (low, high) = oracle(claim["kind"], a, b, float(np.mean(b)))
        if claim["row"].startswith("spruft"):  # its second condition: a lower peak memory than LoRA's
            peak = [sum(v for k, v in rows[x]["memory"].items() if k != "total") for x in (claim["row"], claim["baseline"])]
            verdict = verdict if peak[0] < peak[1] else NOT
        mean, shown_low, shown_high, shown = table[claim["row"], claim["baseline"]]
        assert (mean, shown_low, shown_high) == tuple(f"{v:+.4f}" for v in (np.mean(np.subtract(a, b)), low, high))
        assert shown == verdict, (claim["row"], shown, verdict)
