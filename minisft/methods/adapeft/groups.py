"""Parameter groups: the units AdaPEFT selects (map and choices: minisft/methods/adapeft/__init__.py).

A group k has a name, an exact size n_k (its trainable parameter count) and a way to train it:
base tensors it trains densely in place (`GPT.unfreeze`) and linear layers it gives a fresh LoRA
adapter (rank r, PEFT initialisation). Groups are written as fnmatch patterns:
    "h.*.ln_1.weight"      base parameter names (trained in place)
    "lora:h.*.mlp.c_fc"    linear layer names (each gets LoRA; n = r·(d_in + d_out) per layer,
                           budgets.lora_param_count)
Partitions: "modules", "tensors", or a dict {group name: pattern or list of patterns} of the
user's own. Groups must be disjoint (no tensor or LoRA layer in two groups) and every pattern must
match.
"""

import fnmatch
from dataclasses import dataclass

import numpy as np

from ...model.adapters import LoRA
from ...core.backend import rng as make_rng
from ...model.budgets import lora_param_count
from ...core.errors import bad_type, bad_value, positive_int, require
from ...model.gpt import LINEAR_SUFFIXES, linear_layer_names, param_shapes

PARTITIONS = ("modules", "tensors")
LORA_PREFIX = "lora:"


def module_patterns():
    """The "modules" partition as {group name: patterns}."""
    out = {f"{LORA_PREFIX}{s}": [f"{LORA_PREFIX}h.*.{s}"] for s in LINEAR_SUFFIXES}
    out["bias"] = [f"h.*.{s}.bias" for s in LINEAR_SUFFIXES]
    out["layernorm"] = ["h.*.ln_*", "ln_f.*"]
    out["embeddings"] = ["wte.weight", "wpe.weight"]
    return out


def check_groups(groups):
    """`groups` validated: a partition name, or the user's dict as {name: [patterns]}."""
    if isinstance(groups, str):
        require(groups in PARTITIONS, "groups", groups, f"one of {PARTITIONS} or a dict of name patterns")
        return groups
    if not isinstance(groups, dict) or not groups:
        raise bad_type("groups", groups, f"one of {PARTITIONS} or a non-empty {{name: pattern(s)}} dict")
    out = {}
    for name, pats in groups.items():
        pats = [pats] if isinstance(pats, str) else pats
        ok = isinstance(name, str) and name and isinstance(pats, (list, tuple)) and pats \
            and all(isinstance(p, str) and p for p in pats)
        require(ok, f"groups[{name!r}]", pats, "a non-empty pattern string or list of them, under a non-empty name")
        out[name] = list(pats)
    return out


def partition_patterns(config, groups):
    """{group name: [patterns]} of "modules", "tensors" (for `config`) or a user dict."""
    groups = check_groups(groups)
    if groups == "modules":
        return module_patterns()
    if groups == "tensors":
        return {name: [name] for name in param_shapes(config)}
    return groups


def dense_only(groups):
    """True when no group of the partition uses LoRA (every unit is a base tensor trained in place)."""
    groups = check_groups(groups)
    if groups == "tensors":
        return True
    patterns = module_patterns() if groups == "modules" else groups
    return not any(p.startswith(LORA_PREFIX) for pats in patterns.values() for p in pats)


@dataclass(frozen=True)
class Group:
    """One selectable unit: base `tensors` trained in place and `lora_layers` given LoRA of rank
    `lora_r`; `size` is the exact trainable count n_k."""

    name: str
    tensors: tuple
    lora_layers: tuple
    lora_r: int
    size: int

    def activate(self, model, lora_alpha, generator):
        """Unfreeze the tensors and attach fresh LoRA adapters (drawn from `generator`)."""
        model.unfreeze(self.tensors)
        for layer in self.lora_layers:
            model.add_adapter(layer, LoRA(model, layer, r=self.lora_r, alpha=lora_alpha, generator=generator))

    def param_names(self, model):
        """The names, among model.trainable_params(), of this group's arrays (after `activate`)."""
        adapter_names = [k for layer in self.lora_layers for ad in model.adapters.get(layer, ()) for k in ad.params]
        return list(self.tensors) + adapter_names

    def to_dict(self):
        return {"name": self.name, "n": self.size, "tensors": list(self.tensors), "lora_layers": list(self.lora_layers)}


def build_groups(config, groups="modules", lora_r=8):
    """[Group] of a partition ("modules", "tensors" or a pattern dict) for a model of `config`.

    Sizes: a tensor counts its entries; a LoRA layer W (d_out, d_in) counts r·(d_in + d_out).
    """
    lora_r = positive_int("lora_r", lora_r)
    shapes = param_shapes(config)
    layers = linear_layer_names(config)
    owner = {}
    out = []
    for name, pats in partition_patterns(config, groups).items():
        tensors, lora_layers = set(), set()
        for pat in pats:
            lora = pat.startswith(LORA_PREFIX)
            pool = layers if lora else list(shapes)
            hits = fnmatch.filter(pool, pat[len(LORA_PREFIX):] if lora else pat)
            require(bool(hits), f"groups[{name!r}]", pat,
                    "a pattern matching a parameter name (e.g. 'h.*.ln_1.weight') or, after 'lora:', "
                    "a linear layer name (e.g. 'lora:h.*.mlp.c_fc')")
            for hit in hits:
                key = (LORA_PREFIX if lora else "") + hit
                if key in owner and owner[key] != name:
                    raise bad_value("groups", f"{key} in {owner[key]!r} and {name!r}", "disjoint groups")
                owner[key] = name
            (lora_layers if lora else tensors).update(hits)
        tensors = [t for t in shapes if t in tensors]  # model order
        lora_layers = [layer for layer in layers if layer in lora_layers]
        for layer in lora_layers:
            d_out, d_in = shapes[layer + ".weight"]
            require(lora_r <= min(d_out, d_in), "lora_r", lora_r, f"at most min(d_out, d_in) = {min(d_out, d_in)} for {layer}")
        size = sum(int(np.prod(shapes[t])) for t in tensors) + lora_param_count(
            (shapes[layer + ".weight"] for layer in lora_layers), lora_r)
        out.append(Group(name, tuple(tensors), tuple(lora_layers), lora_r, size))
    return out


def apply_groups_by_name(model, names, groups="modules", lora_r=8, lora_alpha=8, generator=0):
    """Train exactly the groups `names` of a partition on `model` (by NAME: a subset chosen on one
    model applies to another of a different size); returns the [Group] activated.

    The model must carry no adapters; every base tensor is frozen first, then each named group is
    activated in partition order (LoRA drawn from `generator`: a seed or a numpy Generator).
    """
    require(not model.adapters, "model", f"adapters on {sorted(model.adapters)[:4]}", "a model without adapters")
    generator = make_rng(generator)
    by_name = {g.name: g for g in build_groups(model.config, groups, lora_r)}
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in by_name]
    require(bool(names) and not unknown, "names", unknown or names,
            f"a non-empty list of group names among {list(by_name)[:8]}{'...' if len(by_name) > 8 else ''}")
    model.freeze()
    chosen = [g for g in by_name.values() if g.name in names]
    for g in chosen:
        g.activate(model, lora_alpha, generator)
    return chosen


__all__ = ["Group", "LORA_PREFIX", "PARTITIONS", "apply_groups_by_name", "build_groups", "check_groups", "dense_only", "module_patterns",
           "partition_patterns"]
