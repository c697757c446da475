"""What the model-level cases share: the tiny GPT-2 config and parameters, fixed token batches, a
task that replays them, and the manifest text of model tensors and adapter parameters.

Batches are inputs of a case, never numpy RNG draws the other implementation would have to
repeat: `ReplayTask.sample` hands out the given batches in order and ignores the generator.
"""


import numpy as np

from ...core.backend import to_numpy
from ...data.batches import TokenStream, windows_at
from ...core.config import GPTConfig
from ...core.errors import bad_value
from ...methods import make_method, method_options
from ...model.gpt import GPT, linear_layer_names
from ...training.train import Task
from .case import PLAIN, WEIGHT_OUT_IN

CONFIG = GPTConfig(vocab_size=23, block_size=8, n_layer=2, n_head=2, n_embd=8)
B, T = 2, 6  # batch size and window length of every model-level case (T < block_size on purpose)


def tiny_gpt2_params(seed=7):
    """The cases' base parameters (minisft names, (out, in)): GPT-2's initialisation, then
    LayerNorm weights and biases moved off 1 and 0 so that their gradients are generic."""
    params = GPT(CONFIG, backend="numpy", dtype="float64", seed=seed).state_dict()
    rng = np.random.default_rng(seed)
    for name in params:
        if name.endswith(".bias") or ".ln_" in name or name.startswith("ln_f"):
            params[name] = params[name] + 0.1 * rng.standard_normal(params[name].shape)
    return params


def tiny_model(params=None):
    """A float64 NumPy GPT of CONFIG with `params` (default: tiny_gpt2_params())."""
    params = tiny_gpt2_params() if params is None else params
    return GPT.from_state_dict(params, CONFIG, backend="numpy", dtype="float64")


def token_stream(n=600, seed=11):
    """A learnable synthetic stream: a random walk of steps 1..2 modulo the vocabulary."""
    rng = np.random.default_rng(seed)
    ids = (np.cumsum(rng.integers(1, 3, n)) % CONFIG.vocab_size).astype(np.int64)
    return TokenStream(ids, "vectors/train", CONFIG.vocab_size)


def fixed_batches(n, seed):
    """n (x, y) batches of B windows of T + 1 tokens of token_stream(), at seeded starts."""
    stream = token_stream()
    rng = np.random.default_rng(seed)
    return [windows_at(stream.ids, rng.integers(0, len(stream) - T, B), T) for _ in range(n)]


def explicit_method(name, **options):
    """make_method(name, **options) with EVERY option of the method given: a default changed later
    must not silently change a golden case (a new option makes this fail until it is set here)."""
    missing = sorted(set(method_options(name)) - set(options))
    if missing:
        raise bad_value(f"{name} options of a vectors case", missing,
                        "every option set explicitly (minisft/testing/vectors/: add them, then regenerate the kept copy)")
    return make_method(name, **options)


class ReplayTask(Task):
    """A Task whose `sample` returns `batches` in order (the generator is not used); `used` counts
    the batches handed out. train_ids (LoRA-drop's sample, MGPP's n) is token_stream()."""

    def __init__(self, batches):
        super().__init__(train_ids=token_stream(), val_target=[], val_source=[], batch_size=B, block_size=T)
        self.batches, self.used = list(batches), 0

    def sample(self, generator):
        if self.used == len(self.batches):
            raise bad_value("ReplayTask", f"all {len(self.batches)} batches used", "more replayed batches")
        self.used += 1
        return self.batches[self.used - 1]


def stack_batches(batches):
    """[(x, y)] -> (x (n, B, T), y (n, B, T))."""
    return np.stack([x for x, _ in batches]), np.stack([y for _, y in batches])


def add_batches(case, key, batches, what):
    """The batches as two inputs `key`/x and `key`/y of shape (n, B, T)."""
    x, y = stack_batches(batches)
    case.input(f"{key}/x", x, f"{what}: input token ids, batch by batch", "(n_batches, B, T)")
    case.input(f"{key}/y", y, f"{what}: next-token targets (y[b, t] = x[b, t + 1] within a window)", "(n_batches, B, T)")


def layout(name):
    """The layout text of a base tensor named `name`."""
    return WEIGHT_OUT_IN if name.endswith(".weight") and name[: -len(".weight")] in linear_layer_names(CONFIG) else PLAIN


def adapter_meanings(model):
    """{adapter parameter name: what it is} for every adapter on `model` (shared ones once)."""
    out = {}
    for layer, adapters in model.adapters.items():
        for ad in adapters:
            kind = getattr(ad, "kind", "")
            for name, a in ad.params.items():
                local = name.rsplit(".", 1)[-1]
                if kind == "lora":
                    users = [lay for lay, ads in model.adapters.items() for x in ads if name in x.params]
                    what = {"lora_A": "LoRA A (r, d_in)", "lora_B": "LoRA B (d_out, r)"}[local]
                    out[name] = (f"{what} on {', '.join(users)}: y += {ad.scaling!r} · (x Aᵀ) Bᵀ"
                                 + (" (one LoRA shared by these layers: gradients add up)" if len(users) > 1 else ""))
                elif kind == "row_delta":
                    out[name] = (f"SPruFT row delta {'ΔW_r (rows, d_in)' if local == 'weight' else 'Δb_r (rows,)'} of "
                                 f"{layer} on rows {ad.rows_host.tolist()}: y[..., rows] += x ΔW_rᵀ + Δb_r")
                else:
                    out[name] = f"{kind} adapter parameter of {layer} {tuple(a.shape)}"
    return out


def snapshot(model):
    """(base state dict, {adapter parameter: host copy}, {adapter parameter: meaning}) of `model`."""
    return model.state_dict(), {k: to_numpy(v).copy() for k, v in model.adapter_params().items()}, adapter_meanings(model)


def add_model_tensors(case, key, snap, what):
    """Every base tensor and adapter parameter of a `snapshot` as inputs `key`/<name>."""
    base, adapters, meanings = snap
    for name, value in base.items():
        case.input(f"{key}/{name}", value, f"{what}: base tensor {name}", str(value.shape), layout(name))
    for name, value in adapters.items():
        case.input(f"{key}/{name}", value, f"{what}: {meanings[name]}", str(value.shape))
