"""Conversion to and from Hugging Face GPT-2 (`GPT2LMHeadModel`) state dicts, configs and folders,
and export of LoRA adapters as HF PEFT adapter folders.

HF GPT-2 stores its linear layers as Conv1D with weights (in, out); minisft stores (out, in) like
torch.nn.Linear. This module transposes them — here and nowhere else. HF names carry a
"transformer." prefix and an `lm_head.weight` tied to `wte.weight`. Values may be NumPy arrays or
anything `numpy.asarray` accepts (CPU torch tensors without grad, for instance); minisft never
imports torch.

Folders (safetensors only: a pickle `pytorch_model.bin` is refused, never unpickled):
    save_hf_gpt2(state_dict, config, out_dir)   config.json + model.safetensors, which
                                                transformers.GPT2LMHeadModel.from_pretrained loads
    load_hf_gpt2(folder) -> (config, state_dict)  a local HF GPT-2 folder (save_pretrained's output)
    save_peft_adapter(model, out_dir)           the model's LoRA adapters as adapter_config.json +
                                                adapter_model.safetensors for peft.PeftModel.from_pretrained
    write_peft_lora(factors, out_dir)           the same from {layer: (A, B, scaling)} (a run folder's
                                                trained LoRA factors, without a live model)
Choices: the HF config written has no dropout (minisft has none) and ties the LM head, as GPT-2;
PEFT's LoRA is written with fan_in_fan_out=True (GPT-2's Conv1D), lora_dropout 0 and
lora_alpha = scaling · r, so that PEFT's alpha / r is minisft's scaling whatever produced it
(rsLoRA's α/√r included). A LoRA shared by several layers (LoRA-drop's SharedLoRA) is written as
one copy of its factors per layer: PEFT has no shared-factor LoRA, and the copies give the same
function. Exporting a run folder (`minisft export`): merged.safetensors -> save_hf_gpt2; the LoRA
factors of trained.safetensors (`<layer>.lora.lora_A/B`, and `shared.<suffix>.lora_A/B` for the
layers the LoRA-drop report lists as shared) -> write_peft_lora with scaling alpha / r.
"""

import re

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from ..core.backend import to_numpy
from ..core.config import GPTConfig
from ..core.errors import MinisftError, bad_type, bad_value, numeric_array, positive_int, str_keyed_dict
from ..core.fileio import as_path, atomic_write_bytes, atomic_write_json, bad_path, ensure_writable_dir, read_json
from .gpt import GPT, param_shapes

PREFIX = "transformer."
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older transformers versions


def _is_conv1d(name):
    return name.startswith("h.") and name.endswith(CONV1D)


def from_hf_gpt2(hf_state_dict):
    """HF GPT2LMHeadModel state dict -> minisft names and (out, in) weights (NumPy arrays, copies)."""
    str_keyed_dict("hf_state_dict", hf_state_dict, "an HF GPT-2 state dict {name: tensor}")
    if PREFIX + "wte.weight" not in hf_state_dict:
        raise bad_value("hf_state_dict", sorted(hf_state_dict)[:3], f"an HF GPT-2 state dict with {PREFIX}wte.weight")
    out = {}
    for key, value in hf_state_dict.items():
        if key == "lm_head.weight" or key.endswith(HF_BUFFERS):
            continue
        if not key.startswith(PREFIX):
            raise bad_value("hf_state_dict key", key, f"a name starting with {PREFIX!r} or 'lm_head.weight'")
        name = key[len(PREFIX):]
        a = numeric_array(f"hf_state_dict[{key!r}]", value)
        out[name] = a.T.copy() if _is_conv1d(name) else a.copy()
    head = hf_state_dict.get("lm_head.weight")
    if head is not None and not np.array_equal(numeric_array("hf_state_dict['lm_head.weight']", head), out["wte.weight"]):
        raise bad_value("hf_state_dict['lm_head.weight']", "differs from wte", "a head tied to transformer.wte.weight")
    return out


def to_hf_gpt2(state_dict):
    """minisft state dict -> HF GPT2LMHeadModel names, (in, out) Conv1D weights, tied lm_head (copies)."""
    str_keyed_dict("state_dict", state_dict, "a minisft state dict {name: array}")
    if "wte.weight" not in state_dict:
        raise bad_value("state_dict", sorted(state_dict)[:3], "a minisft GPT state dict with wte.weight")
    out = {}
    for name, value in state_dict.items():
        a = numeric_array(f"state_dict[{name!r}]", value)
        out[PREFIX + name] = a.T.copy() if _is_conv1d(name) else a.copy()
    out["lm_head.weight"] = out[PREFIX + "wte.weight"].copy()
    return out


def config_from_hf(hf_config):
    """GPTConfig from an HF GPT2Config (or its to_dict()); rejects settings minisft does not model."""
    if isinstance(hf_config, dict):
        d = hf_config
    elif callable(getattr(hf_config, "to_dict", None)):
        d = hf_config.to_dict()
    else:
        raise bad_type("hf_config", hf_config, "an HF GPT2Config or its to_dict()")
    act = d.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise bad_value("activation_function", act, "'gelu_new' (tanh GELU), as GPT-2")
    eps = d.get("layer_norm_epsilon", 1e-5)
    if eps != 1e-5:
        raise bad_value("layer_norm_epsilon", eps, "1e-5, as GPT-2")
    sizes = {}
    for ours, theirs in (("vocab_size", "vocab_size"), ("block_size", "n_positions"), ("n_layer", "n_layer"),
                         ("n_head", "n_head"), ("n_embd", "n_embd")):
        if theirs not in d:
            raise bad_value("hf_config", sorted(d)[:5], f"a GPT-2 config with {theirs!r}")
        sizes[ours] = positive_int(f"hf_config[{theirs!r}]", d[theirs])
    return GPTConfig(**sizes)


# ------------------------------------------------------------------------------ HF folders
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
PICKLE_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
# HF GPT2Config settings minisft's model does not have: (key, the only value minisft can load)
HF_FIXED = (("add_cross_attention", False), ("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
            ("tie_word_embeddings", True))


def hf_gpt2_config(config, dtype="float32"):
    """The config.json dict of an HF GPT2LMHeadModel with `config`'s shapes: GPT-2's settings
    (tanh GELU "gelu_new", LayerNorm eps 1e-5, tied LM head) and no dropout, as minisft."""
    if not isinstance(config, GPTConfig):
        raise bad_type("config", config, "a minisft.GPTConfig")
    if dtype not in ("float32", "float64"):
        raise bad_value("dtype", dtype, "'float32' or 'float64'")
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
            "n_head": config.n_head, "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "initializer_range": 0.02, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "add_cross_attention": False, "tie_word_embeddings": True, "bos_token_id": None, "eos_token_id": None,
            "use_cache": True, "dtype": dtype, "torch_dtype": dtype}


def _checked_state_dict(state_dict, config):
    """{name: host array} with exactly the names and shapes of `config`, one float dtype."""
    if not isinstance(config, GPTConfig):
        raise bad_type("config", config, "a minisft.GPTConfig")
    if not isinstance(state_dict, dict):
        raise bad_type("state_dict", state_dict, "a dict {parameter name: array}")
    expected = param_shapes(config)
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise bad_value("state_dict keys", f"missing {missing[:5]}, unexpected {unexpected[:5]}",
                        f"exactly the parameter names of {config}")
    host = {k: np.asarray(to_numpy(state_dict[k])) for k in expected}
    for k, shape in expected.items():
        if host[k].shape != shape:
            raise bad_value(f"state_dict[{k!r}].shape", host[k].shape, f"{shape} for {config}")
    dtypes = sorted({str(a.dtype) for a in host.values()})
    if len(dtypes) != 1 or dtypes[0] not in ("float32", "float64"):
        raise bad_value("state_dict dtypes", dtypes, "one float dtype for every tensor: float32 or float64")
    return host, dtypes[0]


def save_hf_gpt2(state_dict, config, out_dir):
    """Write a minisft state dict as an HF GPT-2 folder: config.json and model.safetensors (HF names,
    Conv1D weights (in, out), the tied lm_head.weight left out as save_pretrained does).
    Returns the folder's Path; files are written atomically."""
    host, dtype = _checked_state_dict(state_dict, config)
    out = ensure_writable_dir(out_dir, "out_dir")
    tensors = to_hf_gpt2(host)
    del tensors["lm_head.weight"]
    atomic_write_bytes(out / HF_WEIGHTS, safetensors_bytes(tensors, metadata={"format": "pt"}))
    atomic_write_json(out / HF_CONFIG, hf_gpt2_config(config, dtype))
    return out


def _hf_settings(d, path):
    """Reject an HF config that is not a GPT-2 minisft can run, naming the setting."""
    if d.get("model_type") != "gpt2":
        raise bad_path(f"{path} model_type={d.get('model_type')!r}", path, "model_type 'gpt2' (a GPT-2 checkpoint)")
    missing = [k for k in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd") if k not in d]
    if missing:
        raise bad_path(f"{path} (no {missing})", path, "a GPT-2 config with vocab_size, n_positions, n_layer, n_head, n_embd")
    inner = d.get("n_inner")
    if inner is not None and inner != 4 * d["n_embd"]:
        raise bad_path(f"{path} n_inner={inner}", path, f"n_inner null or 4 * n_embd = {4 * d['n_embd']} (GPT-2's MLP)")
    for key, value in HF_FIXED:
        if d.get(key, value) != value:
            raise bad_path(f"{path} {key}={d[key]!r}", path, f"{key}={value!r}, as GPT-2 (minisft models nothing else)")


def _weights_path(folder):
    path = folder / HF_WEIGHTS
    if path.is_file():
        return path
    if (folder / (HF_WEIGHTS + ".index.json")).is_file():
        raise bad_path("folder", folder, f"a single {HF_WEIGHTS} (sharded checkpoints are not supported: "
                       "save_pretrained(folder, max_shard_size='100GB') writes one file)")
    pickled = [name for name in PICKLE_WEIGHTS if (folder / name).is_file()]
    if pickled:
        raise bad_path("folder", folder, f"weights in {HF_WEIGHTS}; found only {pickled[0]}, which minisft does not "
                       "read (pickle can run code): convert it once with transformers, "
                       "GPT2LMHeadModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)")
    raise bad_path("folder", folder, f"an HF GPT-2 folder with {HF_WEIGHTS} (save_pretrained's output)")


def _read_safetensors(path):
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, TypeError, ValueError) as e:
        raise bad_path("path", path, f"a complete safetensors file of float32/float64 tensors ({e})") from None


def load_hf_gpt2(folder):
    """(GPTConfig, {minisft name: (out, in) array}) of a local HF GPT-2 folder: config.json
    (model_type "gpt2", GPT-2's activation, eps and tied head) and model.safetensors. Names with or
    without the "transformer." prefix (GPT2LMHeadModel's or GPT2Model's) are accepted; every
    parameter must be present with its config's shape, and no other tensor (causal-mask buffers of
    old transformers versions aside). Nothing is downloaded."""
    folder = as_path("folder", folder)
    if not folder.is_dir():
        raise bad_path("folder", folder, "an existing folder holding an HF GPT-2 model (config.json, model.safetensors)")
    if not (folder / HF_CONFIG).is_file():
        raise bad_path("folder", folder, f"an HF model folder with {HF_CONFIG} (save_pretrained writes one)")
    d = read_json(folder / HF_CONFIG)
    if not isinstance(d, dict):
        raise bad_path("path", folder / HF_CONFIG, "a JSON object (an HF config)")
    _hf_settings(d, folder / HF_CONFIG)
    try:
        config = config_from_hf(d)
    except MinisftError as e:
        raise bad_path("path", folder / HF_CONFIG, f"a GPT-2 config minisft can run ({e})") from None
    path = _weights_path(folder)
    tensors = _read_safetensors(path)
    if tensors and not any(k.startswith(PREFIX) for k in tensors):
        tensors = {(k if k == "lm_head.weight" else PREFIX + k): v for k, v in tensors.items()}
    try:
        state_dict = from_hf_gpt2(tensors)
    except MinisftError as e:
        raise bad_path("path", path, f"GPT-2 tensor names ({e})") from None
    expected = param_shapes(config)
    missing, extra = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or extra:
        raise bad_path("path", path, f"exactly the tensors of its config.json's GPT-2 (missing {missing[:5]}, "
                       f"unexpected {extra[:5]})")
    for name, shape in expected.items():
        if state_dict[name].shape != shape:
            raise bad_path("path", path, f"{name} of shape {shape} for its config.json (got {state_dict[name].shape})")
    return config, state_dict


# ------------------------------------------------------------------------------- PEFT LoRA
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model." + PREFIX


def _lora_factors(model):
    """{layer: (A, B, scaling)} of every LoRA on `model`; a clear error for anything PEFT's LoRA
    adapter cannot express."""
    if not isinstance(model, GPT):
        raise bad_type("model", model, "a minisft.GPT with LoRA adapters")
    if model.trainable:
        raise bad_value("model.trainable", sorted(model.trainable)[:4],
                        "no trainable base tensors: a PEFT adapter carries LoRA factors only (merge the adapters "
                        "and export the whole model with save_hf_gpt2)")
    factors = {}
    for layer, adapters in model.adapters.items():
        for ad in adapters:
            if getattr(ad, "kind", None) != "lora":
                raise bad_value(f"model.adapters[{layer!r}]", type(ad).__name__,
                                "LoRA adapters only (merge other adapters and export with save_hf_gpt2)")
            if ad.merged:
                raise bad_value(f"model.adapters[{layer!r}]", "a merged LoRA", "unmerged LoRA adapters")
            if layer in factors:
                raise bad_value(f"model.adapters[{layer!r}]", "two LoRA adapters", "at most one LoRA per layer")
            factors[layer] = (ad.A, ad.B, ad.scaling)
    if not factors:
        raise bad_value("model.adapters", "no LoRA adapter", "a model with LoRA adapters (LoRAMethod, LoRADrop)")
    return factors


def write_peft_lora(factors, out_dir):
    """Write {layer: (A (r, d_in), B (d_out, r), scaling)} as a PEFT LoRA adapter folder for HF
    GPT-2 (layer names as minisft's, e.g. "h.0.attn.c_attn"); returns the folder's Path."""
    if not isinstance(factors, dict) or not factors:
        raise bad_type("factors", factors, "a non-empty dict {layer: (A, B, scaling)}")
    tensors, ranks, scalings = {}, set(), set()
    for layer, (A, B, scaling) in factors.items():
        if not (isinstance(layer, str) and re.fullmatch(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)", layer)):
            raise bad_value("factors layer", layer, "a linear layer name such as 'h.0.attn.c_attn'")
        A, B = numeric_array(f"factors[{layer!r}] A", to_numpy(A)), numeric_array(f"factors[{layer!r}] B", to_numpy(B))
        if A.ndim != 2 or B.ndim != 2 or B.shape[1] != A.shape[0]:
            raise bad_value(f"factors[{layer!r}] shapes", (A.shape, B.shape), "A (r, d_in) and B (d_out, r)")
        ranks.add(A.shape[0])
        scalings.add(float(scaling))
        tensors[f"{PEFT_PREFIX}{layer}.lora_A.weight"] = np.ascontiguousarray(A)
        tensors[f"{PEFT_PREFIX}{layer}.lora_B.weight"] = np.ascontiguousarray(B)
    if len(ranks) != 1 or len(scalings) != 1:
        raise bad_value("factors", f"ranks {sorted(ranks)}, scalings {sorted(scalings)}",
                        "one rank and one scaling for every layer (as LoRAMethod and LoRADrop train)")
    (r,), (scaling,) = ranks, scalings
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": scaling * r,
              "lora_dropout": 0.0, "target_modules": sorted(factors), "fan_in_fan_out": True, "bias": "none",
              "use_rslora": False, "init_lora_weights": True, "inference_mode": True,
              "base_model_name_or_path": None, "modules_to_save": None}
    out = ensure_writable_dir(out_dir, "out_dir")
    atomic_write_bytes(out / PEFT_WEIGHTS, safetensors_bytes(tensors, metadata={"format": "pt"}))
    atomic_write_json(out / PEFT_CONFIG, config)
    return out


def save_peft_adapter(model, out_dir):
    """Write the LoRA adapters of `model` (every base tensor frozen; LoRA only, unmerged) as a PEFT
    adapter folder that `peft.PeftModel.from_pretrained(GPT2LMHeadModel, out_dir)` loads onto the
    model's base weights; shared LoRA factors are written once per layer. Returns the Path."""
    return write_peft_lora(_lora_factors(model), out_dir)
