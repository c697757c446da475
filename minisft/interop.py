"""Conversion to and from Hugging Face GPT-2 (`GPT2LMHeadModel`) state dicts and configs.

HF GPT-2 stores its linear layers as Conv1D with weights (in, out); minisft stores (out, in) like
torch.nn.Linear. This module transposes them — here and nowhere else. HF names carry a
"transformer." prefix and an `lm_head.weight` tied to `wte.weight`. Values may be NumPy arrays or
anything `numpy.asarray` accepts (CPU torch tensors without grad, for instance); minisft never
imports torch.
"""

import numpy as np

from .config import GPTConfig
from .errors import bad_value

PREFIX = "transformer."
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older transformers versions


def _is_conv1d(name):
    return name.startswith("h.") and name.endswith(CONV1D)


def from_hf_gpt2(hf_state_dict):
    """HF GPT2LMHeadModel state dict -> minisft names and (out, in) weights (NumPy arrays)."""
    out = {}
    for key, value in hf_state_dict.items():
        if key == "lm_head.weight" or key.endswith(HF_BUFFERS):
            continue
        if not key.startswith(PREFIX):
            raise bad_value("hf_state_dict key", key, f"a name starting with {PREFIX!r} or 'lm_head.weight'")
        name = key[len(PREFIX):]
        a = np.asarray(value)
        out[name] = a.T.copy() if _is_conv1d(name) else a.copy()
    head = hf_state_dict.get("lm_head.weight")
    if head is not None and not np.array_equal(np.asarray(head), out.get("wte.weight")):
        raise bad_value("hf_state_dict['lm_head.weight']", "differs from wte", "a head tied to transformer.wte.weight")
    return out


def to_hf_gpt2(state_dict):
    """minisft state dict -> HF GPT2LMHeadModel names, (in, out) Conv1D weights, tied lm_head."""
    out = {}
    for name, value in state_dict.items():
        a = np.asarray(value)
        out[PREFIX + name] = a.T.copy() if _is_conv1d(name) else a.copy()
    out["lm_head.weight"] = out[PREFIX + "wte.weight"].copy()
    return out


def config_from_hf(hf_config):
    """GPTConfig from an HF GPT2Config (or its to_dict()); rejects settings minisft does not model."""
    d = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
    act = d.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise bad_value("activation_function", act, "'gelu_new' (tanh GELU), as GPT-2")
    eps = d.get("layer_norm_epsilon", 1e-5)
    if eps != 1e-5:
        raise bad_value("layer_norm_epsilon", eps, "1e-5, as GPT-2")
    return GPTConfig(vocab_size=d["vocab_size"], block_size=d["n_positions"], n_layer=d["n_layer"],
                     n_head=d["n_head"], n_embd=d["n_embd"])
