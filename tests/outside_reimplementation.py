"""A re-implementation written from a golden-vector suite's manifest alone — NumPy and PyTorch, no
minisft and no reference_models (tests/test_outside_reimplementation.py runs it with both blocked) —
checked against the suite: GMT's masks (gmt_masks), MGPP's schedule, prior and counts
(mgpp_primitives), and the whole training trajectories of GMT (train_gmt, train_gmt_global_frozen),
MGPP (train_mgpp) and magnitude pruning (train_magprune), every stage of every step.

Everything below follows the manifest's text: conventions.model (the GPT-2), conventions.adamw,
conventions.clip, conventions.step, conventions.decimal, and each case's rule. The files are read
with the safetensors format's own description (an 8-byte header length, a JSON header, raw
little-endian data) and checked against the manifest's SHA-256.

    python tests/outside_reimplementation.py SUITE_DIR [--wrong READING]

prints one line per case and exits 0 when every case agrees; --wrong swaps in a wrong reading of a
rule (see WRONG) to show the suite rejecting it (exit 1, naming the first step and tensor).
"""

import argparse
import hashlib
import json
import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

WRONG = ("float_count", "half_even", "global_ties_index_first", "prior_before_clip", "monotone")
DTYPES = {"F64": np.float64, "F32": np.float32, "I64": np.int64, "I32": np.int32, "BOOL": np.bool_}


class Mismatch(Exception):
    pass


# ------------------------------------------------------------------------------- the files
def read_case(folder, manifest, name):
    entry = manifest["cases"][name]
    data = (folder / entry["file"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise Mismatch(f"{name}: the file's SHA-256 differs from the manifest's")
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        tensors[key] = np.frombuffer(body[begin:end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"]).copy()
    return entry, tensors


def compare(name, key, actual, expected, info):
    """conventions.tolerance: |a - e| <= atol + rtol |e| (NaN where NaN); integers and bools equal."""
    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape:
        raise Mismatch(f"{name}:{key}: shape {a.shape}, expected {e.shape}")
    if e.dtype.kind in "biu":
        if not np.array_equal(a, e):
            raise Mismatch(f"{name}:{key}: {int((a != e).sum())} entries differ (exact)")
        return
    a, e = a.astype(np.float64), e.astype(np.float64)
    same = (a == e) | (np.isnan(a) & np.isnan(e))
    with np.errstate(invalid="ignore"):
        bad = ~same & ~(np.abs(a - e) <= info["atol"] + info["rtol"] * np.abs(e))
    if bad.any():
        i = np.unravel_index(int(np.argmax(np.where(bad, np.abs(a - e), -1))), e.shape)
        raise Mismatch(f"{name}:{key}: {int(bad.sum())} of {e.size} entries outside the tolerance; at {i}: "
                       f"{a[i]!r} vs {e[i]!r}")


# ------------------------------------------------------------------------------ conventions
def dec(r):
    """conventions.decimal: the exact value of r's shortest round-trip decimal."""
    return Fraction(repr(float(r)))


def gmt_count(r, n, wrong):
    return math.floor(r * n) if wrong == "float_count" else math.floor(dec(r) * n)


def prune_count(s, n, wrong):
    if wrong == "half_even":
        return round(dec(s) * n)
    if wrong == "float_count":
        return math.floor(s * n + 0.5)
    return math.floor(dec(s) * n + Fraction(1, 2))


def smallest(tensors, k, wrong=None):
    """Keep masks (True = kept) dropping the k smallest |x| over the tensors laid end to end (ties:
    the earlier position first)."""
    flat = torch.cat([t.detach().abs().reshape(-1).double() for t in tensors])
    if wrong == "global_ties_index_first":
        index = torch.cat([torch.arange(t.numel()) for t in tensors]).double()
        order = torch.tensor(sorted(range(flat.numel()), key=lambda p: (flat[p].item(), index[p].item(), p)))
    else:
        order = torch.sort(flat, stable=True).indices
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    return [m.reshape(t.shape) for m, t in zip(torch.split(keep, [t.numel() for t in tensors]), tensors)]


def layer_norm(x, w, b):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w + b


def gelu(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def gpt2_loss(P, cfg, idx, targets):
    """conventions.model: the mean cross-entropy of the GPT-2 with parameters P on (idx, targets)."""
    B, T = idx.shape
    C, H = cfg["n_embd"], cfg["n_head"]
    hd = C // H
    h = P["wte.weight"][idx] + P["wpe.weight"][:T]
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(cfg["n_layer"]):
        def lin(name, x):
            return x @ P[f"h.{i}.{name}.weight"].T + P[f"h.{i}.{name}.bias"]

        qkv = lin("attn.c_attn", layer_norm(h, P[f"h.{i}.ln_1.weight"], P[f"h.{i}.ln_1.bias"]))
        q, k, v = (qkv[..., j * C:(j + 1) * C].reshape(B, T, H, hd).transpose(1, 2) for j in range(3))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        y = torch.softmax(scores.masked_fill(causal, -math.inf), -1) @ v
        h = h + lin("attn.c_proj", y.transpose(1, 2).reshape(B, T, C))
        h = h + lin("mlp.c_proj", gelu(lin("mlp.c_fc", layer_norm(h, P[f"h.{i}.ln_2.weight"], P[f"h.{i}.ln_2.bias"]))))
    logits = layer_norm(h, P["ln_f.weight"], P["ln_f.bias"]) @ P["wte.weight"].T
    valid = targets != -100
    lse = torch.logsumexp(logits, -1)
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lse - picked)[valid].mean()


def neg_log_prior_grad(theta, lam, v0, v1):
    """mgpp_primitives' rule: theta (w1 / v1 + w0 / v0), w the responsibilities (in logs)."""
    log_slab = math.log(lam) - 0.5 * math.log(2 * math.pi * v1) - theta ** 2 / (2 * v1)
    log_spike = math.log(1 - lam) - 0.5 * math.log(2 * math.pi * v0) - theta ** 2 / (2 * v0)
    log_total = torch.logaddexp(log_slab, log_spike)
    return theta * (torch.exp(log_slab - log_total) / v1 + torch.exp(log_spike - log_total) / v0)


def schedule(t, s_i, s_f, t_i, t_f):
    if t < t_i:
        return 0.0
    if t > t_f:
        return s_f
    return s_f + (s_i - s_f) * (1 - (t - t_i) / (t_f - t_i)) ** 3


# ------------------------------------------------------------------------------ the cases
def check_gmt_masks(name, entry, X, wrong):
    order = entry["settings"]["tensor_order"]
    grads = [torch.tensor(X[f"grads/{n}"]) for n in order]
    for r in entry["settings"]["ratios"]:
        for n, g in zip(order, grads):
            [m] = smallest([g], gmt_count(r, g.numel(), wrong))
            compare(name, f"tensor/r{r}/{n}", m.numpy(), X[f"tensor/r{r}/{n}"], entry["tensors"][f"tensor/r{r}/{n}"])
        masks = smallest(grads, gmt_count(r, sum(g.numel() for g in grads), wrong), wrong)
        for n, m in zip(order, masks):
            compare(name, f"global/r{r}/{n}", m.numpy(), X[f"global/r{r}/{n}"], entry["tensors"][f"global/r{r}/{n}"])
    [m] = smallest([torch.tensor(X["count/d"])], gmt_count(0.29, X["count/d"].size, wrong))
    compare(name, "count/r0.29/d", m.numpy(), X["count/r0.29/d"], entry["tensors"]["count/r0.29/d"])


def check_mgpp_primitives(name, entry, X, wrong):
    s = entry["settings"]
    theta = torch.tensor(X["theta"])
    for key, p in s["priors"].items():
        got = neg_log_prior_grad(theta, p["lam"], p["var0"], p["var1"]).numpy()
        compare(name, f"{key}/neg_log_prior_grad", got, X[f"{key}/neg_log_prior_grad"],
                entry["tensors"][f"{key}/neg_log_prior_grad"])
    sch = s["schedule"]
    levels = [schedule(t, sch["initial"], sch["final"], sch["t_start"], sch["t_end"]) for t in range(len(X["schedule"]))]
    compare(name, "schedule", np.array(levels), X["schedule"], entry["tensors"]["schedule"])
    weights = [torch.tensor(X[f"count_params/{n}"]) for n in s["count_tensor_order"]]
    for level in s["count_sparsities"]:
        for n, w in zip(s["count_tensor_order"], weights):
            [m] = smallest([w], prune_count(level, w.numel(), wrong))
            key = f"counts/layer/s{level}/{n}"
            compare(name, key, m.numpy(), X[key], entry["tensors"][key])
        masks = smallest(weights, prune_count(level, sum(w.numel() for w in weights), wrong), wrong)
        for n, m in zip(s["count_tensor_order"], masks):
            key = f"counts/global/s{level}/{n}"
            compare(name, key, m.numpy(), X[key], entry["tensors"][key])


def train(entry, X, wrong):
    """conventions.step for GMT, MGPP and magnitude pruning -> {step: {key: array}}."""
    s, o, cfg = entry["settings"], entry["settings"]["options"], entry["settings"]["config"]
    tr = s["train"]
    lr, wd, clip, N = tr["lr"], tr["weight_decay"], tr["grad_clip"], tr["accumulation"]
    P = {k[len("start/"):]: torch.tensor(v) for k, v in X.items() if k.startswith("start/")}
    names = s["param_order"]
    for n in names:
        P[n].requires_grad_(True)
    m = {n: torch.zeros_like(P[n]) for n in names}
    v = {n: torch.zeros_like(P[n]) for n in names}
    method = s["method"]
    if method in ("mgpp", "magprune"):
        t_i = math.floor(dec(o["t_start"]) * tr["steps"])
        t_f = math.floor(dec(o["t_end"]) * tr["steps"])
        prune_at = set(range(t_i, t_f, o["every"])) | {t_f}
        prunable = s["prunable"]
    keep_masks, dump = None, {}
    for t in range(tr["steps"]):
        record = {}
        grads = {n: torch.zeros_like(P[n]) for n in names}
        loss_sum = 0.0
        for j in range(N):
            x, y = torch.tensor(X["batch/x"][t * N + j]), torch.tensor(X["batch/y"][t * N + j])
            loss = gpt2_loss(P, cfg, x, y)
            for n, g in zip(names, torch.autograd.grad(loss, [P[n] for n in names])):
                grads[n] += g / N
            loss_sum += loss.item()
        record["loss"] = loss_sum / N
        record.update({f"grad/{n}": g.numpy().copy() for n, g in grads.items()})
        frozen = {}
        if method == "gmt":
            if o["scope"] == "tensor":
                masks = [smallest([grads[n]], gmt_count(o["drop_ratio"], grads[n].numel(), wrong))[0] for n in names]
            else:
                masks = smallest([grads[n] for n in names], gmt_count(o["drop_ratio"], sum(g.numel() for g in grads.values()),
                                                                       wrong), wrong)
            for n, keep in zip(names, masks):
                grads[n] = torch.where(keep, grads[n], torch.zeros_like(grads[n]))
                record[f"keep/{n}"], record[f"grad_masked/{n}"] = keep.numpy(), grads[n].numpy().copy()
                if o["freeze_masked"]:
                    frozen[n] = ~keep
        prior = method == "mgpp" and t <= t_f
        if prior and wrong == "prior_before_clip":
            for n in prunable:
                grads[n] = grads[n] + neg_log_prior_grad(P[n].detach(), o["lam"], o["var0"], o["var1"]) / o["n_train"]
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        c = clip / (norm + 1e-6)
        record["grad_norm"], record["clip_scale"] = norm, min(c, 1.0)
        if c < 1:
            grads = {n: g * c for n, g in grads.items()}
        if prior and wrong != "prior_before_clip":
            for n in prunable:
                grads[n] = grads[n] + neg_log_prior_grad(P[n].detach(), o["lam"], o["var0"], o["var1"]) / o["n_train"]
        if method == "mgpp":
            record.update({f"update/{n}": g.numpy().copy() for n, g in grads.items()})
        with torch.no_grad():
            for n in names:  # conventions.adamw, step count t + 1
                g, k = grads[n], t + 1
                new_p = P[n] * (1 - lr * wd)
                new_m = 0.9 * m[n] + 0.1 * g
                new_v = 0.999 * v[n] + 0.001 * g * g
                new_p = new_p - (lr / (1 - 0.9 ** k)) * new_m / (torch.sqrt(new_v) / math.sqrt(1 - 0.999 ** k) + 1e-8)
                if n in frozen:
                    new_p, new_m, new_v = (torch.where(frozen[n], old, new) for old, new in
                                           ((P[n], new_p), (m[n], new_m), (v[n], new_v)))
                P[n].copy_(new_p)
                m[n], v[n] = new_m, new_v
            if method in ("mgpp", "magprune"):
                if t in prune_at:
                    level = schedule(t, o["initial_sparsity"], o["final_sparsity"], t_i, t_f)
                    total = sum(P[n].numel() for n in prunable)
                    ranked = [P[n] if wrong != "monotone" or keep_masks is None  # monotone: the pruned rank first
                              else torch.where(keep_masks[n], P[n], torch.zeros_like(P[n])) for n in prunable]
                    keep_masks = dict(zip(prunable, smallest(ranked, prune_count(level, total, wrong))))
                if t in prune_at or t > t_f:
                    for n in prunable:
                        P[n].mul_(keep_masks[n])
                for n in prunable:
                    record[f"keep/{n}"] = (np.ones(P[n].shape, bool) if keep_masks is None
                                           else keep_masks[n].numpy().copy())
        record.update({f"exp_avg/{n}": m[n].numpy().copy() for n in names})
        record.update({f"exp_avg_sq/{n}": v[n].numpy().copy() for n in names})
        record.update({f"param/{n}": P[n].detach().numpy().copy() for n in names})
        dump[t] = record
    return dump


def check_trajectory(name, entry, X, wrong):
    dump = train(entry, X, wrong)
    s = entry["settings"]
    for t, record in dump.items():
        for stage in s["stages"]:
            keys = [stage] if stage in record else [f"{stage}/{n}" for n in s["trainable"] if f"{stage}/{n}" in record]
            for key in keys:
                full = f"step/{key}"
                try:
                    compare(name, full, record[key], X[full][t], entry["tensors"][full])
                except Mismatch as e:
                    raise Mismatch(f"first difference at step {t}, stage {stage}: {e}") from None


CHECKS = {"gmt_masks": check_gmt_masks, "mgpp_primitives": check_mgpp_primitives,
          "train_gmt": check_trajectory, "train_gmt_global_frozen": check_trajectory,
          "train_mgpp": check_trajectory, "train_magprune": check_trajectory}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--wrong", choices=WRONG)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    manifest = json.loads((args.suite / "manifest.json").read_text())
    failed = 0
    for name, check in CHECKS.items():
        entry, X = read_case(args.suite, manifest, name)
        try:
            check(name, entry, X, args.wrong)
            print(f"{name}: agrees")
        except Mismatch as e:
            print(f"{name}: DIFFERS: {e}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
