"""PyTorch twin of AdaPEFT (Xu & Bu, arXiv 2505.12579) and of GeN's forward-only curvature fit (Bu &
Xu, arXiv 2407.02772): the parity oracle of minisft.methods.adapeft, written from the definitions
(proofs/decisions.md §2), not from minisft's code.

- Groups, "modules": one LoRA group per linear module type over all blocks (`lora:attn.c_attn`, …),
  `bias` (every linear layer's bias), `layernorm` (every LayerNorm weight and bias, ln_f included),
  `embeddings` (wte, wpe); "tensors": every base tensor alone. n_k counts entries, r·(d_in + d_out)
  per LoRA layer.
- The probe: every group trains at once (base tensors with requires_grad, LoRA factors A, B from the
  caller's initial values: the twin does not redraw PEFT's initialisation), torch.optim.AdamW
  (β = (0.9, 0.999), ε = 1e-8, no weight decay) or plain SGD, constant lr, one batch per step. At
  steps 0, every, 2·every, … each group's influence is measured BEFORE that step's update:
    g by autograd on the step's batch;
    d = g (SGD), or for AdamW d = θ − θ⁺ of one torch AdamW step with lr = 1 taken on a copy of the
      parameters and of a deep copy of the optimizer's state — the real optimizer advances once per
      step (GeN's released code steps it to read d and then again to train);
    "exact": a_k = d_kᵀ H d_k with H d_k by torch.func (forward-over-reverse: the jvp of the
      gradient), b_k = g_kᵀ d_k;
    "gen": the losses at θ − c·η·d_k, c ∈ (−2, −1, 1, 2), and L(θ), all on one fresh batch;
      (a_k, b_k) by least squares of y = L(θ − x d_k) − L(θ) ≈ ½ a x² − b x (torch.linalg.lstsq),
      R² = 1 − SS_res / SS_tot (centred) over the 4 points;
    valid iff a_k > 0 and b_k > 0 (and R² > 0.99 for "gen"); I_k = b_k² / (2 a_k).
- Summary: a group's influence is the mean of its valid estimates; a group without one is not a
  candidate.
- Selection: max Σ_k z_k I_k subject to Σ_k z_k n_k ≤ capacity over the candidates, by brute force
  over every subset (at most `BRUTE_FORCE_MAX` candidates) or else scipy.optimize.milp (HiGHS,
  relative gap 0).
- Training: the chosen groups from the caller's initial values, torch.optim.AdamW on given batches.

Parameter keys are minisft's names (base tensors by name, LoRA factors `<layer>.lora.lora_A/B`),
so results compare by name. Batches are NumPy (x, y) int arrays; results are NumPy / floats.
"""

import copy
import fnmatch
import itertools
import math

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch.func import functional_call, grad, jvp

from .adapters import LoRAFactors, LoRALinear, freeze_base, wrap_linear
from .torch_gpt import TorchGPT

LINEAR = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
GEN_C = (-2.0, -1.0, 1.0, 2.0)
R2_MIN = 0.99
BRUTE_FORCE_MAX = 16


def partition(config, kind, r):
    """{group: {"tensors": [base names], "lora": [layers], "n": size}} of "modules" or "tensors"."""
    C, V, T = config.n_embd, config.vocab_size, config.block_size
    shapes = {"wte.weight": (V, C), "wpe.weight": (T, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    dims = {"attn.c_attn": (3 * C, C), "attn.c_proj": (C, C), "mlp.c_fc": (4 * C, C), "mlp.c_proj": (C, 4 * C)}
    for i in range(config.n_layer):
        for ln in ("ln_1", "ln_2"):
            shapes[f"h.{i}.{ln}.weight"] = shapes[f"h.{i}.{ln}.bias"] = (C,)
        for s, (d_out, d_in) in dims.items():
            shapes[f"h.{i}.{s}.weight"], shapes[f"h.{i}.{s}.bias"] = (d_out, d_in), (d_out,)
    if kind == "tensors":
        spec = {name: ([name], []) for name in shapes}
    else:
        spec = {f"lora:{s}": ([], [f"h.{i}.{s}" for i in range(config.n_layer)]) for s in LINEAR}
        spec["bias"] = ([f"h.{i}.{s}.bias" for i in range(config.n_layer) for s in LINEAR], [])
        spec["layernorm"] = ([n for n in shapes if fnmatch.fnmatch(n, "h.*.ln_*") or n.startswith("ln_f.")], [])
        spec["embeddings"] = (["wte.weight", "wpe.weight"], [])
    out = {}
    for group, (tensors, layers) in spec.items():
        n = sum(math.prod(shapes[t]) for t in tensors) + sum(r * sum(dims[l.split(".", 2)[2]]) for l in layers)
        out[group] = {"tensors": tensors, "lora": layers, "n": n}
    return out


class Twin:
    """A float64 TorchGPT whose trainable parameters are the given groups' tensors and LoRA factors.

    groups: partition(...) restricted to the groups that train; lora_init {layer: (A, B)};
    scaling = α / r."""

    def __init__(self, state_dict, config, groups, lora_init, scaling):
        self.model = TorchGPT.from_minisft(state_dict, config, dtype=torch.float64)
        freeze_base(self.model)
        own = dict(self.model.named_parameters())
        self.params, self.members = {}, {}
        for group, spec in groups.items():
            keys = []
            for name in spec["tensors"]:
                self.params[name] = own[name].requires_grad_(True)
                keys.append(name)
            for layer in spec["lora"]:
                A, B = lora_init[layer]
                f = LoRAFactors(A, B, scaling).to(torch.float64)
                wrap_linear(self.model, layer, lambda base, f=f: LoRALinear(base, f))
                self.params[f"{layer}.lora.lora_A"], self.params[f"{layer}.lora.lora_B"] = f.A, f.B
                keys += [f"{layer}.lora.lora_A", f"{layer}.lora.lora_B"]
            self.members[group] = keys
        path = {id(p): k for k, p in self.model.named_parameters()}
        self.path = {key: path[id(p)] for key, p in self.params.items()}  # key -> module attribute path

    def loss(self, batch, params=None):
        """Mean cross-entropy on batch (x, y); `params` {key: tensor} replaces the live values."""
        x, y = (torch.as_tensor(np.asarray(a)) for a in batch)
        if params is None:
            return self.model(x, y)[1]
        return functional_call(self.model, {self.path[k]: v for k, v in params.items()}, (x, y))[1]

    def gradient(self, batch):
        keys = list(self.params)
        g = torch.autograd.grad(self.loss(batch), [self.params[k] for k in keys])
        return dict(zip(keys, g))

    def values(self):
        return {k: p.detach().clone() for k, p in self.params.items()}

    def hvp(self, batch, direction):
        """{key: (H d)[key]} by forward-over-reverse (torch.func.jvp of torch.func.grad)."""
        primal = self.values()
        tangent = {k: direction.get(k, torch.zeros_like(v)) for k, v in primal.items()}
        return jvp(grad(lambda p: self.loss(batch, p)), (primal,), (tangent,))[1]


def adam_direction(twin, opt, g):
    """θ − θ⁺ of one torch AdamW step with lr = 1 on copies of the parameters and of opt's state."""
    keys = list(twin.params)
    copies = [twin.params[k].detach().clone().requires_grad_(True) for k in keys]
    shadow = torch.optim.AdamW(copies, lr=1.0)
    shadow.load_state_dict(copy.deepcopy(opt.state_dict()))  # deep: load_state_dict may alias tensors
    for group in shadow.param_groups:
        group["lr"] = 1.0
    for c, k in zip(copies, keys):
        c.grad = g[k].detach().clone()
    shadow.step()
    return {k: twin.params[k].detach() - c.detach() for c, k in zip(copies, keys)}


def gen_fit(xs, losses, loss0):
    """(a, b, R²) of y = L − L(θ) ≈ ½ a x² − b x by least squares (torch.linalg.lstsq, float64)."""
    x = torch.tensor(xs, dtype=torch.float64)
    y = torch.tensor(losses, dtype=torch.float64) - loss0
    X = torch.stack([0.5 * x * x, -x], dim=1)
    a, b = torch.linalg.lstsq(X, y[:, None], driver="gelsd").solution[:, 0].tolist()
    resid = y - X @ torch.tensor([a, b], dtype=torch.float64)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid * resid).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return a, b, r2


def estimate(twin, g, d, estimator, batch=None, fresh=None, eta=None):
    """{group: {"a", "b", "r2", "influence", "valid"}} along d restricted to each group."""
    out = {}
    loss0 = float(twin.loss(fresh, twin.values())) if estimator == "gen" else None
    for group, keys in twin.members.items():
        d_k = {k: d[k] for k in keys}
        r2 = None
        if estimator == "exact":
            hd = twin.hvp(batch, d_k)
            a = sum(float((d_k[k] * hd[k]).sum()) for k in keys)
            b = sum(float((g[k] * d_k[k]).sum()) for k in keys)
        else:
            base = twin.values()
            losses = [float(twin.loss(fresh, {k: base[k] - c * eta * d_k[k] if k in d_k else base[k] for k in base}))
                      for c in GEN_C]
            a, b, r2 = gen_fit([c * eta for c in GEN_C], losses, loss0)
        valid = a > 0 and b > 0 and (r2 is None or r2 > R2_MIN)
        out[group] = {"a": a, "b": b, "r2": r2, "influence": b * b / (2 * a) if valid else None, "valid": valid}
    return out


def probe(twin, batches, fresh, estimator, direction, every, lr, eta=None, inspect=None):
    """The probe: len(batches) steps; fresh {step: batch} for "gen". Returns [{"step", "estimates"}].
    inspect(step, batch, g, d, estimates), if given, runs at each probed step before the update."""
    params = list(twin.params.values())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0) if direction == "adam" else torch.optim.SGD(params, lr=lr)
    records = []
    for step, batch in enumerate(batches):
        g = twin.gradient(batch)
        if step % every == 0:
            d = adam_direction(twin, opt, g) if direction == "adam" else g
            est = estimate(twin, g, d, estimator, batch, fresh.get(step), eta if eta is not None else lr)
            records.append({"step": step, "estimates": est})
            if inspect is not None:
                inspect(step, batch, g, d, est)
        for k, p in twin.params.items():
            p.grad = g[k].detach().clone()
        opt.step()
    return records


def mean_influence(records):
    """{group: mean of its valid influences, or None}."""
    groups = records[0]["estimates"]
    out = {}
    for group in groups:
        valid = [r["estimates"][group]["influence"] for r in records if r["estimates"][group]["valid"]]
        out[group] = sum(valid) / len(valid) if valid else None
    return out


def select(influence, sizes, capacity):
    """The chosen groups (a set) and their total influence: brute force or scipy.optimize.milp."""
    cand = [g for g, v in influence.items() if v is not None and v > 0]
    if len(cand) <= BRUTE_FORCE_MAX:
        best = (0.0, frozenset())
        for z in itertools.product([False, True], repeat=len(cand)):
            chosen = [g for g, on in zip(cand, z) if on]
            if sum(sizes[g] for g in chosen) <= capacity:
                best = max(best, (sum(influence[g] for g in chosen), frozenset(chosen)), key=lambda t: t[0])
        return set(best[1]), best[0]
    v = np.array([influence[g] for g in cand])
    n = np.array([sizes[g] for g in cand], dtype=np.float64)
    res = milp(-v, constraints=LinearConstraint(n[None, :], -np.inf, capacity), integrality=np.ones(len(cand)),
               bounds=Bounds(0, 1), options={"mip_rel_gap": 0.0})
    if not res.success:
        raise RuntimeError(f"milp: {res.message}")
    chosen = {g for g, z in zip(cand, res.x) if z > 0.5}
    return chosen, float(v[res.x > 0.5].sum())


def train(twin, batches, lr, weight_decay):
    """torch.optim.AdamW on every trainable parameter of the twin over the batches -> {key: array}."""
    opt = torch.optim.AdamW(list(twin.params.values()), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        twin.loss(batch).backward()
        opt.step()
    return {k: p.detach().numpy().copy() for k, p in twin.params.items()}
