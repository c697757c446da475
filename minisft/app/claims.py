"""Each paper's headline claim, measured on a comparison (compare.json) and judged by a written rule.

A claim compares a method's row with a baseline row of the same comparison on the target domain's
TEST loss (nats/token; learning rates were chosen on validation, minisft.app.compare), paired by
seed: d_s = loss(method, seed s) − loss(baseline, seed s), both from the same base model and the
same batches. With K seeds, d̄ is their mean, sd their sample standard deviation, and the 95%
interval d̄ ± t(0.975, K − 1) · sd / √K (Student's t, paired). The verdicts:

- a claim that the method is **better** ("lower loss"): *holds* when the whole interval is below 0,
  *does not hold* when it is above 0, else *no difference measured*;
- a claim that the method is **close** to the baseline ("comparable", "matching"): with the margin
  δ = CLOSE_MARGIN × the baseline's mean test loss, *holds* when the interval's upper end is at most
  δ, *does not hold* when its lower end exceeds δ, else *undecided*;
- with one seed there is no interval: *undecided (one seed)*.
A claim with a second condition (SPruFT's lower memory) holds only if that condition holds too; a row
missing from the comparison makes the claim *not measured*.
"""

import math
from dataclasses import dataclass

from scipy import stats

from ..core.errors import bad_value

CLOSE_MARGIN = 0.01  # δ: "close" means at most 1% worse than the baseline's mean test loss
HOLDS, NOT, NO_DIFF, UNDECIDED, ONE_SEED, MISSING = ("holds", "does not hold", "no difference measured", "undecided",
                                                      "undecided (one seed)", "not measured")


@dataclass(frozen=True)
class Claim:
    paper: str
    says: str  # the paper's sentence, as the paper states it (the source in brackets)
    kind: str  # "better" or "close"
    row: str  # a label, or a label prefix followed by "*"
    baseline: str


def claims_for(lora_r):
    """The claims a comparison of preset LoRA rank `lora_r` can test (labels as compare_runs makes them)."""
    r, half = lora_r, lora_r // 2
    spruft = "SPruFT (Li & Bhaskara 2025, arXiv 2502.11439)"
    adapeft = "AdaPEFT (Xu & Bu 2025, arXiv 2505.12579)"
    loradrop = "LoRA-drop (Zhou et al. 2024, arXiv 2402.07721)"
    gmt = "GMT (Li et al. 2024, arXiv 2406.15330)"
    mgpp = "MGPP (Zhang, Sun & Liang 2024, arXiv 2411.00969)"
    return [
        Claim(spruft, "improves sparse fine-tuning's memory efficiency by 20-50% while matching the accuracy "
              "of LoRA's variants (abstract): at LoRA's trainable count, loss close to LoRA's and a lower "
              "peak memory", "close", "spruft-*", f"lora-r{r}"),
        Claim(adapeft, "selects the most influential subset to train (abstract): its knapsack subset beats "
              "LoRA's uniform allocation at the same parameter budget", "better", f"adapeft-r{r}", f"lora-r{r}"),
        Claim(adapeft, "the selected subset empirically transfers across training horizons (abstract): the "
              "subset chosen by a probe 4x shorter trains as well as the longer probe's",
              "close", f"adapeft-r{r}", f"adapeft-r{r}-probe*"),
        Claim(loradrop, "performance comparable to full fine-tuning and LoRA while retaining 50% of the LoRA "
              "parameters on average (abstract): loss close to LoRA's", "close", f"loradrop-r{r}", f"lora-r{r}"),
        Claim(loradrop, "(the same budget: LoRA-drop against a LoRA of about its parameter count, rank r/2)",
              "better", f"loradrop-r{r}", f"lora-r{half}"),
        *[Claim(gmt, f"outperforms traditional fine-tuning methods (abstract): drop ratio {d}", "better",
                f"gmt-d{d}", "full") for d in ("0.2", "0.5")],
        *[Claim(mgpp, f"superiority over existing pruning methods, particularly in high sparsity settings "
                f"(abstract): against magnitude pruning on the same schedule at {s}% sparsity{extra}", "better",
                f"mgpp-s{s}{suffix}", f"magprune-s{s}")
          for s, suffix, extra in (("80", "", ""), ("90", "", ""), ("95", "", ""),
                                   ("90", "-anneal", ", λ annealed 0.1 → 1e-4 (PTMGP)"),
                                   ("90", "-reach", ", v0 = 1e-5: a spike reaching the median weight (minisft's "
                                                    "setting, not the authors')"))],
    ]


def _find(rows, pattern):
    if pattern.endswith("*"):
        return next((r for r in rows if r["label"].startswith(pattern[:-1])), None)
    return next((r for r in rows if r["label"] == pattern), None)


def _per_seed(row):
    return {run["seed"]: run["test"]["target"] for run in row["runs"]}


def paired(row, baseline):
    """{"diffs", "mean", "sd", "low", "high", "seeds"}: the paired per-seed differences of the target
    test loss (row − baseline) and their 95% t interval (module docstring; low/high None for one seed)."""
    a, b = _per_seed(row), _per_seed(baseline)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise bad_value("rows", [row["label"], baseline["label"]], "rows run with at least one common seed")
    diffs = [a[s] - b[s] for s in seeds]
    k = len(diffs)
    mean = math.fsum(diffs) / k
    if k == 1:
        return {"seeds": seeds, "diffs": diffs, "mean": mean, "sd": None, "low": None, "high": None}
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (k - 1))
    half = float(stats.t.ppf(0.975, k - 1)) * sd / math.sqrt(k)
    return {"seeds": seeds, "diffs": diffs, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def verdict(kind, measured, margin=None):
    """The verdict of the rule (module docstring) for a `paired` measurement."""
    if measured["low"] is None:
        return ONE_SEED
    if kind == "better":
        return HOLDS if measured["high"] < 0 else NOT if measured["low"] > 0 else NO_DIFF
    if kind == "close":
        return HOLDS if measured["high"] <= margin else NOT if measured["low"] > margin else UNDECIDED
    raise bad_value("kind", kind, "'better' or 'close'")


def peak_bytes(row):
    """The row's peak memory of one training step, summed over the meter's categories."""
    return sum(v for k, v in row["memory"].items() if k in ("frozen", "trainable", "grads", "optimizer", "activations"))


def evaluate_claims(compared):
    """[claim record] of a compare.json dictionary: the claim, the rows, the paired measurement,
    the verdict and the facts each claim adds (memory, parameter counts, subsets, masks, the prior)."""
    rows = compared["rows"]
    out = []
    for claim in claims_for(compared["preset"]["lora_r"]):
        row, base = _find(rows, claim.row), _find(rows, claim.baseline)
        record = {"paper": claim.paper, "says": claim.says, "kind": claim.kind, "row": claim.row,
                  "baseline": claim.baseline}
        if row is None or base is None:
            out.append({**record, "verdict": MISSING})
            continue
        measured = paired(row, base)
        margin = CLOSE_MARGIN * base["target"]["mean"] if claim.kind == "close" else None
        result = verdict(claim.kind, measured, margin)
        facts = _facts(row, base)
        if "memory_lower" in facts and result == HOLDS and not facts["memory_lower"]:
            result = NOT
        out.append({**record, "row": row["label"], "baseline": base["label"], "measured": measured, "margin": margin,
                    "verdict": result, "facts": facts})
    return out


def _facts(row, base):
    """What a claim adds to the loss difference: peak memory, trainable counts, AdaPEFT's subsets,
    MGPP's masks and regrowth and the reach of its prior."""
    facts = {"trainable": [row["counts"]["trainable"], base["counts"]["trainable"]]}
    if row["method"] == "spruft":
        facts["peak_bytes"] = [peak_bytes(row), peak_bytes(base)]
        facts["memory_lower"] = facts["peak_bytes"][0] < facts["peak_bytes"][1]
    if row["method"] == "adapeft" and base["method"] == "adapeft":
        facts["jaccard"] = [_jaccard(a["report"]["chosen"]["groups"], b["report"]["chosen"]["groups"])
                            for a, b in zip(row["runs"], base["runs"])]
    if row["method"] == "mgpp":
        facts["regrown"] = [run["report"].get("regrown") for run in row["runs"]]
        facts["regrown_baseline"] = [run["report"].get("regrown") for run in base["runs"]]
        if "mask_difference" in row:
            facts["mask_difference"] = row["mask_difference"]["per_seed"]
        facts["prior"] = prior_reach(row["runs"][0]["report"])
    return facts


def _jaccard(a, b):
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def prior_reach(report):
    """Where MGPP's prior acts, from its settings (minisft.methods.mgpp.prior): the slab pulls every
    weight toward 0 by the gradient θ/(n·v1) (`slab_pull` = 1/(n·v1)); the spike takes over below
    |θ*|, where the two components' responsibilities are equal:
        θ*² = 2·v0·v1/(v1 − v0) · ln((1 − λ)/λ · sqrt(v1/v0)),
    and pulls a weight below it by θ/(n·v0) (`spike_pull` = 1/(n·v0))."""
    n, lam, v0, v1 = report["n_train"], report["lam"], report["var0"], report["var1"]
    log_ratio = math.log((1 - lam) / lam * math.sqrt(v1 / v0))
    reach = math.sqrt(2 * v0 * v1 / (v1 - v0) * log_ratio) if log_ratio > 0 else 0.0
    return {"n": n, "lam": lam, "var0": v0, "var1": v1, "slab_pull": 1 / (n * v1), "spike_pull": 1 / (n * v0),
            "spike_reach": reach}


def format_claims(claims, markdown=False):
    """The claims as a table: paper, claim, rows, paired difference (mean ± sd, 95% interval), verdict."""
    header = ["paper", "claim", "row − baseline", "Δ test loss (mean ± sd) [95% interval]", "verdict"]
    body = []
    for c in claims:
        m = c.get("measured")
        if m is None:
            cell = "-"
        elif m["sd"] is None:
            cell = f"{m['mean']:+.4f} (one seed)"
        else:
            cell = f"{m['mean']:+.4f} ± {m['sd']:.4f} [{m['low']:+.4f}, {m['high']:+.4f}]"
        if c.get("margin") is not None:
            cell += f", δ = {c['margin']:.4f}"
        body.append([c["paper"].split(" (")[0], c["says"], f"{c['row']} − {c['baseline']}", cell, c["verdict"]])
    if markdown:
        line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
        return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in body])
    return "\n\n".join(f"{paper}: {says}\n  {rows}: {cell}\n  verdict: {v}" for paper, says, rows, cell, v in body)
