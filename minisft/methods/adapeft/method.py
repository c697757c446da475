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
from ...core.errors import NonFiniteLossError, bad_type, positive_int, ratio_in, require
from ...training.optim import SGD, AdamW
from ..base import Method
from . import knapsack
from .curvature import DIRECTIONS, ESTIMATORS, group_influence, step_direction
from .groups import apply_groups_by_name, build_groups, check_groups, dense_only


def check_budget(budget):
    """`budget` after checking it is a positive int or a float fraction in (0, 1]."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise bad_type("budget", budget, "a positive int (parameters) or a float in (0, 1] (fraction of the base)")
    if isinstance(budget, (int, np.integer)):
        require(budget > 0, "budget", budget, "a positive parameter count")
        return int(budget)
    return ratio_in("budget", budget, 0.0, 1.0)


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
    option_help = {
        "budget": "trainable parameters: a count (int) or a fraction of the base model (float in (0, 1])",
        "groups": "partition into groups: modules (LoRA per module type, biases, norms, embeddings), tensors, "
                  "or a {name: patterns} dict (Python API)",
        "estimator": f"influence estimator: {', '.join(ESTIMATORS)} (exact: Hessian-vector product; gen: GeN's fit)",
        "direction": f"update direction the influence is measured along: {', '.join(DIRECTIONS)}",
        "probe_steps": "probe training steps (all groups active)",
        "every": "measure the influence every this many probe steps",
        "lora_r": "rank of the LoRA groups", "lora_alpha": "scaling numerator of the LoRA groups",
        "probe_lr": "learning rate of the probe",
        "eta": "step size the influence is evaluated at (none: probe_lr)",
    }

    def __init__(self, budget: int | float = 0.01, groups: str | dict = "modules", estimator: str = "exact",
                 direction: str = "adam", probe_steps: int = 8, every: int = 4, lora_r: int = 8,
                 lora_alpha: float = 8, probe_lr: float = 1e-3, eta: float | None = None):
        self.budget = check_budget(budget)
        self.groups = check_groups(groups)
        require(estimator in ESTIMATORS, "estimator", estimator, f"one of {ESTIMATORS}")
        require(direction in DIRECTIONS, "direction", direction, f"one of {DIRECTIONS}")
        self.estimator, self.direction = estimator, direction
        self.probe_steps = positive_int("probe_steps", probe_steps)
        self.every = positive_int("every", every)
        self.lora_r = positive_int("lora_r", lora_r)
        self.lora_alpha = ratio_in("lora_alpha", lora_alpha, 0.0, math.inf, high_open=True)
        self.probe_lr = ratio_in("probe_lr", probe_lr, 0.0, math.inf, high_open=True)
        self.eta = None if eta is None else ratio_in("eta", eta, 0.0, math.inf, high_open=True)
        self._report = {}

    @property
    def trains_base(self):
        """Full-FT learning rate only when every group is a dense base tensor ("tensors"); a partition
        with LoRA groups ("modules") is a PEFT method."""
        return dense_only(self.groups)

    def options(self):
        return {"budget": self.budget, "groups": self.groups, "estimator": self.estimator,
                "direction": self.direction, "probe_steps": self.probe_steps, "every": self.every,
                "lora_r": self.lora_r, "lora_alpha": self.lora_alpha, "probe_lr": self.probe_lr, "eta": self.eta}

    def check_config(self, config):
        """lora_r against the layers' widths and the budget against the groups of a model of `config`."""
        if not dense_only(self.groups):
            lora_trainable(config, self.lora_r)
        base = sum(math.prod(shape) for shape in param_shapes(config).values())
        check_capacity(self.budget, build_groups(config, self.groups, self.lora_r), base)

    def prepare(self, model, task, rng):
        require(not model.adapters, "model", f"adapters on {sorted(model.adapters)[:4]}", "a base model without adapters")
        groups = build_groups(model.config, self.groups, self.lora_r)
        capacity = check_capacity(self.budget, groups, count_params(model)["base"])
        base = {k: model.params[k].copy() for g in groups for k in g.tensors}
        records, _ = probe(model, task, rng, groups, self.estimator, self.direction, self.probe_steps, self.every,
                           self.probe_lr, self.eta, self.lora_alpha, dp.comm_of(task))
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
        apply_groups_by_name(model, chosen, self.groups, self.lora_r, self.lora_alpha, rng)
        self._report = {
            "partition": self.groups if isinstance(self.groups, str) else "user",
            "estimator": self.estimator, "direction": self.direction,
            "budget": {"requested": self.budget, "capacity": capacity, "base_params": count_params(model)["base"]},
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
    option_help = {"names": "the groups to train, by name (see `minisft adapeft-front`)",
                   "groups": "the partition the names refer to: modules, tensors, or a {name: patterns} dict",
                   "lora_r": "rank of the LoRA groups", "lora_alpha": "scaling numerator of the LoRA groups"}

    def __init__(self, names: tuple[str, ...] = ("lora:attn.c_attn",), groups: str | dict = "modules",
                 lora_r: int = 8, lora_alpha: float = 8):
        names = [names] if isinstance(names, str) else list(names)
        require(bool(names) and all(isinstance(n, str) for n in names), "names", names, "a non-empty list of group names")
        self.names, self.groups = names, check_groups(groups)
        self.lora_r = positive_int("lora_r", lora_r)
        self.lora_alpha = ratio_in("lora_alpha", lora_alpha, 0.0, math.inf, high_open=True)
        self.chosen = []

    @property
    def trains_base(self):
        return dense_only(self.groups)

    def options(self):
        return {"names": self.names, "groups": self.groups, "lora_r": self.lora_r, "lora_alpha": self.lora_alpha}

    def check_config(self, config):
        """The names against the groups of a model of `config`, and lora_r against its widths."""
        known = [g.name for g in build_groups(config, self.groups, self.lora_r)]
        for name in self.names:
            require(name in known, "names", name, f"a group of the {self.groups!r} partition, such as {known[:4]}")
        if not dense_only(self.groups):
            lora_trainable(config, self.lora_r)

    def prepare(self, model, task, rng):
        self.chosen = apply_groups_by_name(model, self.names, self.groups, self.lora_r, self.lora_alpha, rng)

    def report(self):
        return {"groups": [g.name for g in self.chosen], "params": sum(g.size for g in self.chosen)}
