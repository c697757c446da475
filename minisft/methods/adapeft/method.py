"""AdaPEFT as a fine-tuning method: the probe, the selection and the `AdaPEFT` / `GroupSubset`
classes the trainer drives (map and choices: minisft/methods/adapeft/__init__.py).

`report()`: per group n_k, mean I_k, PPI_k, valid/probed counts and each invalid estimate's reason;
every probe's raw estimates; the exact Pareto front and the greedy chain (each point: parameters,
influence, group names; greedy points flagged on/off the front, and the index where the chain first
leaves it); the greedy prefix that fits the budget; the chosen set.
"""

import math

import numpy as np

from ...model.budgets import count_params, lora_trainable
from ...model.gpt import param_shapes
from ...distributed import data_parallel as dp
from ...core.errors import NonFiniteLossError, require
from ...training.optim import SGD, AdamW
from ..base import Method
from . import knapsack
from .config import AdaPEFTConfig, GroupSubsetConfig
from .curvature import group_influence, step_direction
from .groups import apply_groups_by_name, build_groups, dense_only


def capacity_of(budget, base_params):
    """The budget in parameters: itself for an int, floor(fraction · base_params) for a float."""
    return budget if isinstance(budget, int) else int(math.floor(budget * base_params))


def check_capacity(budget, groups, base_params):
    """The budget's capacity, after checking some group fits it."""
    capacity = capacity_of(budget, base_params)
    smallest = min(groups, key=lambda g: g.size)
    require(capacity >= smallest.size, "budget", budget,
            f"a budget some group fits: {capacity} parameters is a budget no subset fits "
            f"(the smallest group, {smallest.name!r}, has {smallest.size})")
    return capacity


def probe(model, task, rng, groups, estimator="exact", direction="adam", steps=8, every=4, lr=1e-3,
          eta=None, lora_alpha=8, comm=None):
    """Activate every group, train `steps` steps and measure influences at steps 0, every, ….

    groups: [Group]; rng: the numpy Generator for batches and LoRA init. Leaves the model trained
    (the caller resets it). Returns (records, optimizer): records = [{"step", "loss", "estimates"}]
    with estimates as curvature.group_influence returns them. comm (data parallel): every loss and
    gradient, those of the HVP's and GeN's evaluations too, is the global batch's
    (minisft.distributed.data_parallel), so every rank measures the same influences.
    """
    model.freeze()
    for g in groups:
        g.activate(model, lora_alpha, rng)
    members = {g.name: g.param_names(model) for g in groups}
    sizes = {g.name: g.size for g in groups}
    opt = AdamW(lr=lr, weight_decay=0.0) if direction == "adam" else SGD(lr=lr)
    records = []
    for step in range(steps):
        x, y = task.sample(rng)
        params = model.trainable_params()
        loss, grads = dp.loss_and_grads(model, x, y, comm)
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"loss={loss} at probe step {step}: expected a finite loss (lower probe_lr)")
        if step % every == 0:
            d = step_direction(direction, grads, params, opt)
            fresh = task.sample(rng) if estimator == "gen" else None
            est = group_influence(members, sizes, grads, d, estimator, params=params,
                                  grad_fn=lambda p: dp.loss_and_grads(model, x, y, comm)[1],
                                  loss_fn=(lambda p: dp.loss(model, *fresh, comm)) if fresh else None,
                                  eta=eta if eta is not None else lr)
            records.append({"step": step, "loss": loss, "estimates": est})
        opt.step(params, grads)
    return records, opt


def summarize(groups, records):
    """Per group: n, mean influence over valid estimates (None without one), PPI, counts, reasons."""
    out = []
    for g in groups:
        ests = [(r["step"], e) for r in records for e in r["estimates"] if e["group"] == g.name]
        valid = [e["influence"] for _, e in ests if e["valid"]]
        mean = float(np.mean(valid)) if valid else None
        out.append({"name": g.name, "n": g.size, "influence": mean, "ppi": None if mean is None else mean / g.size,
                    "n_valid": len(valid), "n_probes": len(ests),
                    "invalid": [{"step": s, "reason": e["reason"]} for s, e in ests if not e["valid"]]})
    return out


def _points(chain, names):
    return [{"params": w, "influence": v, "groups": [n for n, z in zip(names, mask) if z]} for w, v, mask in chain]


def front_report(names, values, sizes, capacity):
    """The exact Pareto front, the greedy (descending-PPI) chain with where it leaves the front, and
    the greedy prefix that fits the capacity, as JSON-ready dicts."""
    front = knapsack.pareto_front(values, sizes)
    chain = knapsack.greedy_chain(values, sizes)
    on_front = {(w, v) for w, v, _ in front}
    greedy = _points(chain, names)
    for p in greedy:
        p["on_front"] = (p["params"], p["influence"]) in on_front
    leaves = next((i for i, p in enumerate(greedy) if not p["on_front"]), None)
    fitting = [p for p in greedy if p["params"] <= capacity]
    return {"front": _points(front, names), "greedy": greedy, "greedy_leaves_front_at": leaves,
            "greedy_at_budget": fitting[-1]}


class AdaPEFT(Method):
    """Select parameter groups by a knapsack over probe-measured influence; train only those."""

    name = "adapeft"
    paper = "Xu & Bu 2025, arXiv 2505.12579 (GeN estimator: arXiv 2407.02772)"
    Config = AdaPEFTConfig

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        self._report = {}

    @property
    def trains_base(self):
        """Full-FT learning rate only when every group is a dense base tensor ("tensors"); a partition
        with LoRA groups ("modules") is a PEFT method."""
        return dense_only(self.config.groups)

    def check_config(self, config):
        """lora_r against the layers' widths and the budget against the groups of a model of `config`."""
        c = self.config
        if not dense_only(c.groups):
            lora_trainable(config, c.lora_r)
        base = sum(math.prod(shape) for shape in param_shapes(config).values())
        check_capacity(c.budget, build_groups(config, c.groups, c.lora_r), base)

    def prepare(self, model, task, rng):
        require(not model.adapters, "model", f"adapters on {sorted(model.adapters)[:4]}", "a base model without adapters")
        c = self.config
        groups = build_groups(model.config, c.groups, c.lora_r)
        capacity = check_capacity(c.budget, groups, count_params(model)["base"])
        base = {k: model.params[k].copy() for g in groups for k in g.tensors}
        records, _ = probe(model, task, rng, groups, c.estimator, c.direction, c.probe_steps, c.every,
                           c.probe_lr, c.eta, c.lora_alpha, dp.comm_of(task))
        for k, v in base.items():
            model.params[k][...] = v
        model.adapters.clear()
        summary = summarize(groups, records)
        names = [s["name"] for s in summary]
        values = np.array([s["influence"] or 0.0 for s in summary])
        sizes = np.array([g.size for g in groups], dtype=np.int64)
        mask = knapsack.solve(values, sizes, capacity)
        require(bool(mask.any()), "probe", [f"{s['name']}: {s['invalid'][:1]}" for s in summary][:4],
                "at least one group with a valid influence estimate that fits the budget "
                "(try more probe_steps, another estimator or a different probe_lr)")
        chosen = [n for n, z in zip(names, mask) if z]
        apply_groups_by_name(model, chosen, c.groups, c.lora_r, c.lora_alpha, rng)
        self._report = {
            "partition": c.groups if isinstance(c.groups, str) else "user",
            "estimator": c.estimator, "direction": c.direction,
            "budget": {"requested": c.budget, "capacity": capacity, "base_params": count_params(model)["base"]},
            "groups": summary,
            "probes": records,
            "chosen": {"groups": chosen, "params": int(sizes[mask].sum()),
                       "influence": float(np.cumsum(values[mask])[-1])},  # f(S) as knapsack sums it
            **front_report(names, values, sizes, capacity),
        }

    def report(self):
        return self._report


class GroupSubset(Method):
    """Train a fixed subset of groups, named (the transfer claim; each point of the front)."""

    name = "group_subset"
    paper = "Xu & Bu 2025, arXiv 2505.12579 (a fixed subset of AdaPEFT's groups: transfer, front points)"
    Config = GroupSubsetConfig

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        self.chosen = []

    @property
    def trains_base(self):
        return dense_only(self.config.groups)

    def check_config(self, config):
        """The names against the groups of a model of `config`, and lora_r against its widths."""
        c = self.config
        known = [g.name for g in build_groups(config, c.groups, c.lora_r)]
        for name in c.names:
            require(name in known, "names", name, f"a group of the {c.groups!r} partition, such as {known[:4]}")
        if not dense_only(c.groups):
            lora_trainable(config, c.lora_r)

    def prepare(self, model, task, rng):
        c = self.config
        self.chosen = apply_groups_by_name(model, list(c.names), c.groups, c.lora_r, c.lora_alpha, rng)

    def report(self):
        return {"groups": [g.name for g in self.chosen], "params": sum(g.size for g in self.chosen)}
