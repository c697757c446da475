"""Counting what trains, written once for every method: exact parameter counts of a model, the LoRA
parameter count r·(d_in + d_out), and the target linear layers a method wraps.

    count_params(model)                 trainable / total / base counts of a prepared model
    lora_param_count(shapes, r)         Σ r·(d_in + d_out) over (d_out, d_in) weight shapes:
                                        A (r, d_in) and B (d_out, r) per layer
    lora_trainable(config, r, targets)  the same over a config's target layers, r validated
    check_targets(targets)              a non-empty tuple of distinct suffixes of LINEAR_SUFFIXES
    target_shapes(config, targets)      [(layer, d_out, d_in)] of the target layers, in model order
    target_layers(model, targets)       their names
"""

from ..core.config import GPTConfig
from ..core.errors import bad_type, positive_int, require
from .gpt import LINEAR_SUFFIXES, linear_layer_names, param_shapes


def count_params(model):
    """Exact trainable and total parameter counts (total = base tensors + adapter parameters)."""
    trainable = sum(int(a.size) for a in model.trainable_params().values())
    for ads in model.adapters.values():  # an ElementMask trains only its unmasked entries
        for ad in ads:
            if hasattr(ad, "mask"):
                trainable -= int(ad.weight.size) - ad.n_trainable()
    total = sum(int(a.size) for a in model.params.values()) + sum(int(a.size) for a in model.adapter_params().values())
    base = sum(int(a.size) for a in model.params.values())
    return {"trainable": trainable, "total": total, "base": base, "trainable_pct": 100.0 * trainable / base}


def check_targets(targets):
    """`targets` as a tuple after checking it is a non-empty list or tuple of distinct linear-layer
    suffixes among LINEAR_SUFFIXES (e.g. ("attn.c_attn", "mlp.c_fc"))."""
    if isinstance(targets, str) or not isinstance(targets, (list, tuple)):
        raise bad_type("targets", targets, f"a list or tuple of suffixes among {LINEAR_SUFFIXES}")
    targets = tuple(targets)
    ok = bool(targets) and all(t in LINEAR_SUFFIXES for t in targets) and len(set(targets)) == len(targets)
    require(ok, "targets", list(targets), f"a non-empty list of distinct suffixes among {LINEAR_SUFFIXES}")
    return targets


def target_shapes(model_config, targets):
    """[(layer, d_out, d_in)] of the target linear layers of `model_config`, in model order."""
    if not isinstance(model_config, GPTConfig):
        raise bad_type("model_config", model_config, "a minisft.GPTConfig")
    targets = check_targets(targets)
    shapes = param_shapes(model_config)
    return [(layer, *shapes[layer + ".weight"]) for layer in linear_layer_names(model_config)
            if layer.split(".", 2)[2] in targets]


def target_layers(model, targets):
    """Linear layer names of `model` whose suffix is in `targets`, in model order."""
    return [layer for layer, _, _ in target_shapes(model.config, targets)]


def lora_param_count(shapes, r):
    """Exact parameters of one rank-r LoRA per weight: Σ r·(d_in + d_out) over `shapes`, an iterable
    of (d_out, d_in) (A is (r, d_in), B is (d_out, r))."""
    return sum(r * (d_out + d_in) for d_out, d_in in shapes)


def lora_trainable(model_config, r, targets=LINEAR_SUFFIXES):
    """Exact LoRA parameter count at rank r on the target layers of `model_config`; r must be at
    most min(d_out, d_in) of every target layer."""
    layers = target_shapes(model_config, targets)
    r = positive_int("r", r)
    smallest = min(min(d_out, d_in) for _, d_out, d_in in layers)
    require(r <= smallest, "r", r, f"at most min(d_out, d_in) = {smallest} over the target layers")
    return lora_param_count(((d_out, d_in) for _, d_out, d_in in layers), r)
