"""PyTorch (autograd) twin of SPruFT's scores, selection and training (minisft.methods.spruft;
Li & Bhaskara 2025, "An Efficient Row-Based Sparse Fine-Tuning", arXiv 2502.11439): the parity oracle.

Written from the definitions, not from minisft's code, on a float64 `TorchGPT`:
- G: autograd on the target weights (requires_grad on them only), `.grad` left to accumulate over
  the calibration batches — the sum Σ_b ∂L_b/∂W;
- F: one forward and backward PER SEQUENCE (the sequence's share Σ_t ℓ_bt / (B·T) of its batch's
  mean loss), the gradient zeroed before each, squares summed, divided by the number of sequences;
- Ĝ: the central-difference SPSA estimate with directions drawn from a numpy Generator in the
  documented order (per batch, per direction, per layer in order: standard_normal(shape));
- wanda: ‖X_j‖₂ from forward pre-hooks on the target nn.Linear layers (inputs squared and summed
  over every calibration token, square root at the end), no backward pass; random: one
  `rng.random(size)` per layer and axis in unit order (the released code's torch.rand per layer);
- scores as explicit tensor reductions over the input axis (rows) or the output axis (columns);
  multivariable from the full G (not from the streaming identity the library uses);
- groups spelled out from GPT-2's layout (q | k | v blocks, head-major features);
- selection by a stable sort of −score (ties: lower index; globally: earlier unit); budgets by
  exact rational arithmetic on the ratio's decimal reading;
- training with `RowDeltaLinear` / `ColumnDeltaLinear` wrappers and torch.optim.AdamW.
Batches are (x, y) NumPy int arrays; results are NumPy arrays keyed by layer / unit names.
"""

import math
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from .adapters import ColumnDeltaLinear, RowDeltaLinear, freeze_base, wrap_linear

PAIRS = {"attn": ("attn.c_attn", "attn.c_proj"), "mlp": ("mlp.c_fc", "mlp.c_proj")}


def _weight(twin, layer):
    return twin.get_submodule(layer).weight


def _batch_loss(twin, x, y):
    return twin(torch.as_tensor(x), torch.as_tensor(y))[1]


def summed_gradients(twin, layers, batches):
    """{layer: Σ_batches ∂(mean batch loss)/∂W} by autograd."""
    freeze_base(twin)
    for layer in layers:
        _weight(twin, layer).requires_grad_(True)
    for x, y in batches:
        _batch_loss(twin, x, y).backward()  # .grad accumulates: the sum over batches
    out = {layer: _weight(twin, layer).grad.detach().clone() for layer in layers}
    for layer in layers:
        _weight(twin, layer).grad = None
        _weight(twin, layer).requires_grad_(False)
    return out


def mean_squared_sample_gradients(twin, layers, batches):
    """{layer: F}: the mean over sequences of (∂ℓ_s/∂W)², ℓ_s = Σ_t CE(sequence s) / (B·T)."""
    freeze_base(twin)
    weights = {layer: _weight(twin, layer) for layer in layers}
    total = {layer: torch.zeros_like(w) for layer, w in weights.items()}
    n = 0
    for x, y in batches:
        B, T = x.shape
        for s in range(B):
            for w in weights.values():
                w.requires_grad_(True)
                w.grad = None
            logits = twin(torch.as_tensor(x[s : s + 1]))[0]
            loss = F.cross_entropy(logits.reshape(T, -1), torch.as_tensor(y[s]), reduction="sum") / (B * T)
            loss.backward()
            for layer, w in weights.items():
                total[layer] += w.grad**2
            n += 1
    for w in weights.values():
        w.grad = None
        w.requires_grad_(False)
    return {layer: t / n for layer, t in total.items()}


def zeroth_order_gradients(twin, layers, batches, n_samples, eps, rng):
    """{layer: Σ_batches (1/K) Σ_k [(L(W+εz_k) − L(W−εz_k)) / 2ε] z_k}, forward passes only."""
    freeze_base(twin)
    weights = {layer: _weight(twin, layer) for layer in layers}
    base = {layer: w.detach().clone() for layer, w in weights.items()}
    total = {layer: torch.zeros_like(w) for layer, w in base.items()}

    def loss_at(x, y, z, sign):
        with torch.no_grad():
            for layer, w in weights.items():
                w.copy_(base[layer] + sign * eps * z[layer])
            return _batch_loss(twin, x, y).item()

    for x, y in batches:
        batch = {layer: torch.zeros_like(w) for layer, w in base.items()}
        for _ in range(n_samples):
            z = {layer: torch.as_tensor(rng.standard_normal(tuple(w.shape))) for layer, w in base.items()}
            slope = (loss_at(x, y, z, 1.0) - loss_at(x, y, z, -1.0)) / (2 * eps)
            for layer in batch:
                batch[layer] += slope * z[layer]
        for layer in total:
            total[layer] += batch[layer] / n_samples
    with torch.no_grad():
        for layer, w in weights.items():
            w.copy_(base[layer])
    return total


def activation_norms(twin, layers, batches):
    """{layer: (d_in,) sqrt(Σ over all calibration tokens of the layer input squared)}, forward only."""
    sums = {}
    hooks = []
    for layer in layers:
        def hook(module, inputs, layer=layer):
            x = inputs[0].detach()
            sums[layer] = sums.get(layer, 0) + (x * x).reshape(-1, x.shape[-1]).sum(dim=0)
        hooks.append(twin.get_submodule(layer).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for x, y in batches:
                _batch_loss(twin, x, y)
    finally:
        for h in hooks:
            h.remove()
    return {layer: sums[layer].sqrt() for layer in layers}


def axis_scores(importance, W, stat, axis, p=2, multivariable=False):
    """Row (axis "rows": reduce over the input index j) or column (reduce over i) scores."""
    dim = 1 if axis == "rows" else 0
    if importance == "random":
        return stat[axis]
    if importance == "wanda":
        return (W.abs() * stat.reshape(1, -1)).sum(dim)  # |W_ij| ‖X_j‖, reduced over j (rows) or i (cols)
    if importance == "magnitude":
        return W.abs().pow(p).sum(dim)
    if importance == "obd":
        return (W**2 * stat).sum(dim)
    prod = W * stat  # taylor / zeroth_order
    return prod.sum(dim).abs() if multivariable else prod.abs().sum(dim)


def layer_scores(twin, layers, importance, batches=(), axes=None, p=2, multivariable=False,
                 zo_samples=None, zo_eps=1e-3, rng=None):
    """{layer: {axis: scores}}; `axes` {layer: [axis, ...]} defaults to rows everywhere."""
    axes = axes or {layer: ["rows"] for layer in layers}
    if importance == "magnitude":
        stats = dict.fromkeys(layers)
    elif importance == "random":
        stats = {layer: {axis: torch.as_tensor(rng.random(_weight(twin, layer).shape[0 if axis == "rows" else 1]))
                         for axis in axes[layer]} for layer in layers}
    elif importance == "wanda":
        stats = activation_norms(twin, layers, batches)
    elif importance == "taylor":
        stats = summed_gradients(twin, layers, batches)
    elif importance == "obd":
        stats = mean_squared_sample_gradients(twin, layers, batches)
    else:
        stats = zeroth_order_gradients(twin, layers, batches, zo_samples, zo_eps, rng)
    return {layer: {axis: axis_scores(importance, _weight(twin, layer).detach(), stats[layer], axis, p, multivariable)
                    for axis in axes[layer]} for layer in layers}


def group_members(C, H, kind):
    """[(row indices of the row member, column indices of the column member)] per group."""
    if kind == "mlp":
        return [([i], [i]) for i in range(4 * C)]
    hd = C // H
    return [([part * C + h * hd + t for part in range(3) for t in range(hd)], [h * hd + t for t in range(hd)])
            for h in range(H)]


def unit_scores(twin, layers, importance, mode="rows", **kw):
    """({unit: scores}, {unit: (row layer, column layer, members) or None}) for row or neuron mode."""
    if mode == "rows":
        scores = layer_scores(twin, layers, importance, **kw)
        return {layer: scores[layer]["rows"] for layer in layers}, dict.fromkeys(layers)
    cfg = twin.config
    axes, units = {}, {}
    for i in range(cfg.n_layer):
        for kind, (row_sfx, col_sfx) in PAIRS.items():
            row_layer, col_layer = f"h.{i}.{row_sfx}", f"h.{i}.{col_sfx}"
            if row_layer in layers:
                axes[row_layer], axes[col_layer] = ["rows"], ["cols"]
                units[f"h.{i}.{kind}"] = (row_layer, col_layer, group_members(cfg.n_embd, cfg.n_head, kind))
    scores = layer_scores(twin, list(axes), importance, axes=axes, **kw)
    out = {}
    for unit, (row_layer, col_layer, members) in units.items():
        r, c = scores[row_layer]["rows"], scores[col_layer]["cols"]
        out[unit] = torch.stack([(r[rows].sum() + c[cols].sum()) / (len(rows) + len(cols)) for rows, cols in members])
    return out, units


def rows_for_ratio(n, ratio):
    k = math.floor(Fraction(repr(float(ratio))) * n)
    return max(1, k - k % 4)


def top(scores, k):
    return torch.sort(torch.sort(-scores, stable=True).indices[:k]).values


def select(scores, units, ratio=None, rows=None, scope="layer"):
    """{unit: sorted indices}: top-k per unit, or one threshold per family (the unit name's suffix
    after the block: the layer suffix in row mode, "attn"/"mlp" in neuron mode) on mean-normalised scores."""
    if scope == "layer":
        return {u: top(s, rows if rows is not None else rows_for_ratio(len(s), ratio)) for u, s in scores.items()}
    families = {}
    for u in scores:
        families.setdefault("rows" if units[u] is None else u.split(".", 2)[2], []).append(u)
    out = {}
    for names in families.values():
        sizes = [len(scores[u]) for u in names]
        total = rows * len(names) if rows is not None else max(1, math.floor(Fraction(repr(float(ratio))) * sum(sizes)))
        flat = torch.cat([scores[u] / scores[u].mean() for u in names])
        keep = torch.sort(-flat, stable=True).indices[:total]
        start = 0
        for u, n in zip(names, sizes):
            out[u] = torch.sort(keep[(keep >= start) & (keep < start + n)] - start).values
            start += n
    return out


def adapter_indices(chosen, units):
    """({layer: rows}, {layer: cols}) as sorted NumPy arrays, only non-empty ones."""
    rows, cols = {}, {}
    for u, sel in chosen.items():
        sel = sel.tolist()
        if units[u] is None:
            rows[u] = sel
            continue
        row_layer, col_layer, members = units[u]
        rows[row_layer] = sorted(i for g in sel for i in members[g][0])
        cols[col_layer] = sorted(j for g in sel for j in members[g][1])
    keep = lambda d: {k: np.asarray(v, dtype=np.int64) for k, v in d.items() if v}  # noqa: E731
    return keep(rows), keep(cols)


def kaiming_uniform(rng, shape, fan_in):
    """U(±1/√fan_in): kaiming_uniform_(a=√5), drawn with the numpy Generator."""
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


def initial_deltas(twin, rows, cols, init, bias, rng):
    """{(layer, "rows"|"cols"): (weight, bias or None)} drawn in linear-layer order (a layer's rows
    before its columns); bias deltas start at zero."""
    out = {}
    for i in range(twin.config.n_layer):
        for suffix in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            layer = f"h.{i}.{suffix}"
            d_out, d_in = _weight(twin, layer).shape
            if layer in rows:
                shape = (len(rows[layer]), d_in)
                w = np.zeros(shape) if init == "zeros" else kaiming_uniform(rng, shape, d_in)
                out[(layer, "rows")] = (w, np.zeros(shape[0]) if bias else None)
            if layer in cols:
                shape = (d_out, len(cols[layer]))
                w = np.zeros(shape) if init == "zeros" else kaiming_uniform(rng, shape, shape[1])
                out[(layer, "cols")] = (w, None)
    return out


def train_deltas(twin, rows, cols, init, batches, lr, weight_decay):
    """Train the row / column deltas with torch.optim.AdamW, one batch per step (mean loss, no
    clipping); returns {(layer, "rows"|"cols"): (weight, bias or None)} as NumPy arrays."""
    freeze_base(twin)
    mods = {}
    for (layer, axis), (w, b) in init.items():
        if axis == "rows":
            mods[(layer, axis)] = wrap_linear(twin, layer, lambda base: RowDeltaLinear(base, rows[layer], w, b))
        else:
            mods[(layer, axis)] = wrap_linear(twin, layer, lambda base: ColumnDeltaLinear(base, cols[layer], w))
    params = [p for m in mods.values() for p in (m.weight, getattr(m, "bias", None)) if p is not None]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    for x, y in batches:
        opt.zero_grad()
        _batch_loss(twin, x, y).backward()
        opt.step()
    return {key: (m.weight.detach().numpy(), None if getattr(m, "bias", None) is None else m.bias.detach().numpy())
            for key, m in mods.items()}
