"""Export a finished fine-tuning run for the tools users already have: HF transformers and PEFT.

    minisft export RUN --hf OUT     the fine-tuned model with every adapter merged, as an HF GPT-2
                                    folder (config.json + model.safetensors) that
                                    `GPT2LMHeadModel.from_pretrained(OUT)` loads, with the run's
                                    tokenizer (tokenizer.json, tokenizer_config.json,
                                    special_tokens_map.json: `AutoTokenizer.from_pretrained(OUT)`)
    minisft export RUN --peft OUT   a LoRA or LoRA-drop run's adapter as a PEFT folder
                                    (adapter_config.json + adapter_model.safetensors) and, in OUT/base,
                                    the base model it applies to as an HF GPT-2 folder with the
                                    tokenizer: `PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(OUT/base), OUT)`

RUN is a run folder `minisft finetune` wrote (WORKDIR/runs/<experiment>/<label>/seed<s>): its
`model/merged.safetensors` (the merged base state dict in minisft's names and (out, in) layout, in the
run's dtype), `model/trained.safetensors` (the trainable tensors), `model/manifest.json` (method,
options, model config, dtype, which base and tokenizer the run started from) and `result.json` (the
method's report: LoRA-drop's shared layers). Every safetensors file is read through
`checkpoint.load_checkpoint`, which verifies its checksum.

Both exports are in the run's dtype: a float64 run's merged model and PEFT base are float64, so
transformers' default loading (the checkpoint's dtype) computes in float64. The base of a PEFT export
is the file the run started from, as its manifest records it: the cached pretrained base
(WORKDIR/pretrain/<file>, found from the run folder's place in its workdir) or the HF folder of
`finetune --init`, cast to the run's dtype as the run cast it. The tokenizer is the one whose SHA-256
the manifest records: the `--init` folder's tokenizer.json, or the workdir's cached BPE
(WORKDIR/cache/bpe-*.json); an export without it is refused. LoRA-drop's shared LoRA is written as
one copy of its factors per layer that uses it (PEFT has no shared factors; interop.write_peft_lora).
"""

from pathlib import Path

from ..model.adapters.lora import lora_scaling
from ..training.checkpoint import load_checkpoint
from ..core.config import GPTConfig
from ..core.errors import bad_value
from ..core.fileio import as_path, read_checked, read_json
from ..data.tokenizer import BPETokenizer, save_hf_tokenizer
from ..model.interop import load_hf_gpt2, save_hf_gpt2, write_peft_lora

LORA_METHODS = ("lora", "loradrop")


def _run_files(run):
    """(run folder Path, manifest dict) after checking `run` is a finished run folder."""
    run = as_path("run", run).resolve()  # the workdir is found from the run's place in it
    manifest_path = run / "model" / "manifest.json"
    if not manifest_path.is_file():
        raise bad_value("run", str(run), "a finished run folder of `minisft finetune` (holding model/manifest.json)")
    return run, read_json(manifest_path)


def _config(manifest, run):
    try:
        return GPTConfig(**manifest["model"])
    except (KeyError, TypeError) as e:
        raise bad_value("run", str(run), f"a model/manifest.json with the model's config ({e})") from None


def _workdir(run):
    """WORKDIR of a run folder WORKDIR/runs/<experiment>/<label>/seed<s>."""
    return run.parents[3] if len(run.parents) > 3 else run


def _tokenizer(run, manifest):
    """The run's tokenizer (module docstring): the BPETokenizer whose fingerprint the manifest records."""
    want = manifest.get("tokenizer")
    init = (manifest.get("base") or {}).get("init")
    candidates = [Path(init) / "tokenizer.json"] if init else []
    candidates += sorted((_workdir(run) / "cache").glob("bpe-*.json"))
    for path in candidates:
        if path.is_file():
            try:
                tok = (BPETokenizer.from_file(path) if path.name == "tokenizer.json"
                       else BPETokenizer.from_str(read_checked(path), path))
            except ValueError:  # a damaged cache file is not the run's tokenizer
                continue
            if tok.fingerprint() == want:
                return tok
    raise bad_value("run", str(run), f"its tokenizer (SHA-256 {want}) in {_workdir(run) / 'cache'}"
                    + (f" or {init}" if init else "") + ": it was moved or deleted (the tokenizer is exported with "
                    "the model)")


def _save_hf(state_dict, run, manifest, out_dir):
    """The HF GPT-2 folder of `state_dict` in the run's dtype, with the run's tokenizer."""
    config = _config(manifest, run)
    dtype = manifest.get("dtype", "float32")
    out = save_hf_gpt2({k: v.astype(dtype, copy=False) for k, v in state_dict.items()}, config, out_dir)
    save_hf_tokenizer(_tokenizer(run, manifest), out, config.block_size)
    return out


def export_hf(run, out_dir):
    """Write the run's merged model and tokenizer as an HF GPT-2 folder; returns its Path."""
    run, manifest = _run_files(run)
    _tokenizer(run, manifest)  # refused before anything is written
    arrays, _ = load_checkpoint(run / "model" / "merged.safetensors")
    return _save_hf(arrays, run, manifest, out_dir)


def _base_state_dict(run, manifest):
    """The state dict the run started from (module docstring), read and verified."""
    base = manifest.get("base") or {}
    if "init" in base:
        return load_hf_gpt2(base["init"])[1]
    if "pretrained" in base:
        path = _workdir(run) / base["pretrained"]
        if not path.is_file():
            raise bad_value("run", str(run), f"its base model at {path} (the workdir's cached pretrained base, "
                            "which the run started from); it was moved or deleted")
        return load_checkpoint(path)[0]
    raise bad_value("run", str(run), "a run whose manifest names its base model (runs of this minisft version)")


def _lora_factors(run, manifest):
    """{layer: (A, B, scaling)} of a LoRA / LoRA-drop run, shared factors repeated per layer."""
    method, options = manifest.get("method"), manifest.get("options") or {}
    if method not in LORA_METHODS:
        raise bad_value("run", f"a {method} run", f"a run of {' or '.join(LORA_METHODS)} (a PEFT LoRA adapter "
                        "holds LoRA factors only; export any run as a whole model with --hf)")
    scaling = lora_scaling(options["r"], options["alpha"], options.get("use_rslora", False))
    trained, _ = load_checkpoint(run / "model" / "trained.safetensors")
    factors = {name[: -len(".lora.lora_A")]: (A, trained[name[: -len("A")] + "B"], scaling)
               for name, A in trained.items() if name.endswith(".lora.lora_A")}
    shared = (read_json(run / "result.json").get("report") or {}).get("shared") or {}
    for suffix, layers in shared.items():
        for layer in layers:
            factors[layer] = (trained[f"shared.{suffix}.lora_A"], trained[f"shared.{suffix}.lora_B"], scaling)
    return dict(sorted(factors.items()))


def export_peft(run, out_dir):
    """Write a LoRA / LoRA-drop run's adapter as a PEFT folder and its base model in out_dir/base;
    returns the folder's Path."""
    run, manifest = _run_files(run)
    factors = _lora_factors(run, manifest)
    base = _base_state_dict(run, manifest)
    _tokenizer(run, manifest)  # refused before anything is written
    out = write_peft_lora(factors, out_dir)
    _save_hf(base, run, manifest, Path(out) / "base")
    return out
