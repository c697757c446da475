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
run's fingerprint and the method's report: LoRA-drop's shared layers). Every safetensors file is
read through `checkpoint.load_checkpoint`, which verifies its checksum.

Identity, not only integrity (`run_files`): the manifest used is the checksummed copy inside the
safetensors files, and model/manifest.json, trained.safetensors and merged.safetensors must carry
the same one; result.json's fingerprint must be the run the manifest names (its digest) and its
report the one the manifest's digest names. An edited manifest, another run's model file or an
edited result is an error naming the file, never a silent export.

Both exports are in the run's dtype: a float64 run's merged model and PEFT base are float64, so
transformers' default loading (the checkpoint's dtype) computes in float64. The base of a PEFT export
is the file the run started from, as its manifest records it: the cached pretrained base
(WORKDIR/pretrain/<file>, found from the run folder's place in its workdir, RUN resolved first) or
the HF folder of `finetune --init`, cast to the run's dtype as the run cast it; its tensors must have
the digest the run recorded when it started (a base replaced since, another seed's or an edited
--init folder, is an error). The tokenizer is the one whose SHA-256 the manifest records: the
`--init` folder's tokenizer.json, or the workdir's cached BPE (WORKDIR/cache/bpe-*.json); an export
without it is refused. LoRA-drop's shared LoRA is written as one copy of its factors per layer that
uses it (PEFT has no shared factors; interop.write_peft_lora).

OUT is written as one folder (`fileio.replaced_folder`): the files go into a temporary folder that
takes OUT's place in one step, so a killed export leaves the earlier OUT or the new one, never a
mix. OUT must be new, empty, or an earlier minisft export (it holds EXPORT_MARKER, written with
the run's identity); a folder holding anything else is refused, never replaced.
"""

import contextlib
from pathlib import Path

import numpy as np

from ..model.adapters.lora import lora_scaling
from ..training.checkpoint import arrays_digest, checkpoint_meta, load_checkpoint
from ..training.train import MODEL_FILES, run_identity
from ..core.config import GPTConfig
from ..core.errors import MinisftError, bad_value, foreign_file
from ..core.fileio import (as_path, atomic_write_json, bad_path, owned_folder, read_checked, read_json,
    replaced_folder)
from ..core.version import __version__
from ..data.tokenizer import BPETokenizer, save_hf_tokenizer
from ..model.interop import load_hf_gpt2, save_hf_gpt2, write_peft_lora

LORA_METHODS = ("lora", "loradrop")
EXPORT_MARKER = "minisft-export.json"


def check_out_folder(out_dir, arg="out_dir"):
    """Check, before any work, that `out_dir` may receive an export (module docstring)."""
    owned_folder(as_path(arg, out_dir), EXPORT_MARKER, arg)


def run_files(run):
    """(run folder Path resolved, manifest dict, result dict) of a finished run folder, after
    checking their identity (module docstring)."""
    run = as_path("run", run)
    if not (run / "model" / "manifest.json").is_file():
        raise bad_value("run", str(run), "a finished run folder of `minisft finetune` (holding model/manifest.json)")
    run = run.resolve()  # the workdir is found from the run's place in it
    manifest = read_json(run / "model" / "manifest.json")
    stored = None
    for name in MODEL_FILES[:2]:
        path = run / "model" / name
        embedded = checkpoint_meta(path).get("manifest")
        if stored is None:
            stored = embedded
        if not isinstance(embedded, dict) or embedded != stored:
            raise foreign_file("run", path, f"the model file of the same run as {MODEL_FILES[0]} (the manifests "
                               "inside differ: another run's file?)")
    if not isinstance(manifest, dict) or {k: v for k, v in manifest.items() if k != "files"} != stored:
        raise foreign_file("run", run / "model" / "manifest.json", "an unedited model/manifest.json: the manifest "
                           "the checksummed model files carry (it was edited)")
    result = read_json(run / "result.json")
    if not isinstance(result, dict):
        raise bad_path("run", run / "result.json", "a JSON object: the run's result")
    if "run" in stored and not (  # runs of earlier minisft versions carry no identity: integrity only
            isinstance(result.get("fingerprint"), dict) and run_identity(result["fingerprint"]) == stored["run"]
            and arrays_digest({}, result.get("report")) == stored.get("report_sha256")):
        raise foreign_file("run", run / "result.json", "the result of the run the model files name (its "
                           "fingerprint and report digests; it was edited or is another run's)")
    return run, stored, result


def _config(manifest, run):
    try:
        return GPTConfig(**manifest["model"])
    except (KeyError, TypeError, MinisftError) as e:
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
    check_out_folder(out_dir)
    run, manifest, _ = run_files(run)
    _tokenizer(run, manifest)  # refused before anything is written
    arrays, _ = load_checkpoint(run / "model" / "merged.safetensors")
    with _export_folder(out_dir, run, manifest, "hf") as tmp:
        _save_hf(arrays, run, manifest, tmp)
    return as_path("out_dir", out_dir)


def _base_state_dict(run, manifest):
    """The state dict the run started from (module docstring), read and checked against the digest
    the run recorded."""
    base = manifest.get("base") or {}
    if "init" in base:
        state_dict = load_hf_gpt2(base["init"])[1]
        where = f"its --init folder {base['init']}"
    elif "pretrained" in base:
        path = _workdir(run) / base["pretrained"]
        if not path.is_file():
            raise bad_value("run", str(run), f"its base model at {path} (the workdir's cached pretrained base, "
                            "which the run started from); it was moved or deleted")
        state_dict = load_checkpoint(path)[0]
        where = f"its base model {path}"
    else:
        raise bad_value("run", str(run), "a run whose manifest names its base model (runs of this minisft version)")
    dtype = np.dtype(manifest.get("dtype", "float32"))
    digest = arrays_digest({k: np.asarray(v, dtype=dtype) for k, v in state_dict.items()})
    if "base_model" in manifest and digest != manifest["base_model"]:
        raise foreign_file("run", run, f"{where} as the run started from it (digest {manifest['base_model'][:12]}); "
                           f"it is another model now (digest {digest[:12]}: replaced or edited since)")
    return state_dict


def _lora_factors(run, manifest, result):
    """{layer: (A, B, scaling)} of a LoRA / LoRA-drop run, shared factors repeated per layer."""
    method, options = manifest.get("method"), manifest.get("options") or {}
    if method not in LORA_METHODS:
        raise bad_value("run", f"a {method} run", f"a run of {' or '.join(LORA_METHODS)} (a PEFT LoRA adapter "
                        "holds LoRA factors only; export any run as a whole model with --hf)")
    if not ("r" in options and "alpha" in options):
        raise bad_value("run", str(run), "a manifest whose options hold the LoRA rank r and alpha")
    scaling = lora_scaling(options["r"], options["alpha"], options.get("use_rslora", False))
    trained, _ = load_checkpoint(run / "model" / "trained.safetensors")
    factors = {name[: -len(".lora.lora_A")]: (A, trained[name[: -len("A")] + "B"], scaling)
               for name, A in trained.items() if name.endswith(".lora.lora_A")}
    shared = (result.get("report") or {}).get("shared") or {}
    for suffix, layers in shared.items():
        pair = [trained.get(f"shared.{suffix}.lora_{f}") for f in "AB"]
        if any(f is None for f in pair):
            raise bad_value("run", str(run), f"the shared LoRA 'shared.{suffix}' that result.json's report names "
                            "in model/trained.safetensors")
        for layer in layers:
            factors[layer] = (*pair, scaling)
    return dict(sorted(factors.items()))


def export_peft(run, out_dir):
    """Write a LoRA / LoRA-drop run's adapter as a PEFT folder and its base model in out_dir/base;
    returns the folder's Path."""
    check_out_folder(out_dir)
    run, manifest, result = run_files(run)
    factors = _lora_factors(run, manifest, result)
    base = _base_state_dict(run, manifest)
    _tokenizer(run, manifest)  # refused before anything is written
    with _export_folder(out_dir, run, manifest, "peft") as tmp:
        write_peft_lora(factors, tmp)
        _save_hf(base, run, manifest, Path(tmp) / "base")
    return as_path("out_dir", out_dir)


@contextlib.contextmanager
def _export_folder(out_dir, run, manifest, kind):
    """replaced_folder for an export of `run`, its marker (EXPORT_MARKER) written first."""
    with replaced_folder(out_dir, EXPORT_MARKER, "out_dir") as tmp:
        atomic_write_json(tmp / EXPORT_MARKER, {"format": kind, "run": str(run), "run_identity": manifest.get("run"),
                                                "method": manifest.get("method"), "minisft_version": __version__})
        yield tmp
