"""Golden vectors of a whole tiny GPT-2 with HF parameter names: token ids, targets, every parameter
(HF GPT2LMHeadModel names and layout), the logits, the loss and every gradient.

The parameters are stored as `transformers.GPT2LMHeadModel.state_dict()` holds them: names with the
"transformer." prefix, Conv1D weights (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) as
(in, out). `lm_head.weight` is tied to `transformer.wte.weight` and not stored (as HF's
save_pretrained leaves it out); the gradient of wte is the sum of its embedding and LM-head uses.
`minisft.model.interop.from_hf_gpt2` turns both dicts into minisft names and (out, in) weights.
"""

import numpy as np

from ...model.interop import CONV1D, PREFIX, hf_gpt2_config, to_hf_gpt2
from .case import PLAIN, WEIGHT_IN_OUT, CaseWriter, float32_case
from .fixtures import B, CONFIG, T, tiny_gpt2_params, tiny_model


def _hf(tensors):
    """minisft dict -> HF names and layout, without the tied lm_head.weight."""
    out = to_hf_gpt2(tensors)
    del out["lm_head.weight"]
    return out


def _layout(hf_name):
    return WEIGHT_IN_OUT if hf_name.startswith(PREFIX + "h.") and hf_name.endswith(CONV1D) else PLAIN


def gpt2_cases():
    rng = np.random.default_rng(2024)
    idx = rng.integers(0, CONFIG.vocab_size, (B, T))
    targets = rng.integers(0, CONFIG.vocab_size, (B, T))
    targets[0, 2] = targets[1, 5] = -100
    host = tiny_gpt2_params()
    cases = []
    for dtype in ("float64", "float32"):
        params = host if dtype == "float64" else float32_case(host)
        model = tiny_model({k: v.astype(np.float64) for k, v in params.items()})
        loss, grads = model.loss_and_grads(idx, targets)
        logits = model.logits(idx)
        case = CaseWriter(
            f"gpt2_tiny_{dtype}",
            f"a {CONFIG.n_layer}-layer GPT-2 (vocab {CONFIG.vocab_size}, {CONFIG.block_size} positions, "
            f"{CONFIG.n_head} heads, width {CONFIG.n_embd}) in {dtype}: logits, mean cross-entropy and the gradient "
            "of every parameter, with HF GPT2LMHeadModel names and layout",
            "The model of conventions.model on the given parameters, which are stored as HF GPT2LMHeadModel's "
            "state_dict holds them: names with the 'transformer.' prefix, and the Conv1D weights attn.c_attn, "
            "attn.c_proj, mlp.c_fc, mlp.c_proj as (in, out) (y = x W + b; transpose them for conventions.model's "
            "(out, in)); lm_head.weight is tied to transformer.wte.weight and not stored. Expected: logits (B, T, V), "
            "the mean cross-entropy over the targets that are not -100, and its gradient with respect to every "
            "stored parameter in the same names and layout; the gradient of wte is the sum of its embedding and "
            "LM-head uses." + ("" if dtype == "float64" else " float32 case: expected values computed in float64 "
                                                              "from the float32 parameters, rounded to float32."),
            "GPT-2: Radford et al. 2019",
            {"config": CONFIG.to_dict(), "hf_config": hf_gpt2_config(CONFIG, dtype),
             "lm_head": "tied to transformer.wte.weight (not stored)", "ignore_index": -100})
        case.input("idx", idx, "input token ids", "(B, T)")
        case.input("targets", targets, "next-token targets; -100 = ignored", "(B, T)")
        for name, value in _hf(params).items():
            case.input(f"params/{name}", value, f"parameter {name}", str(value.shape), _layout(name))
        case.expected("logits", logits.astype(dtype), "ln_f(h) wteᵀ", "(B, T, vocab)", "logits = ln_f(h) wte^T",
                      dtype)
        case.expected("loss", np.asarray(loss, dtype=dtype), "mean cross-entropy over the non-ignored targets", "()",
                      "mean over targets != -100 of logsumexp(logits) - logits[target]", dtype)
        for name, g in _hf(grads).items():
            extra = " (embedding and tied LM head together)" if name.endswith("wte.weight") else ""
            case.expected(f"grads/{name}", g.astype(dtype), f"dloss/d{name}{extra}", str(g.shape),
                          f"d loss / d {name}", dtype, _layout(name))
        cases.append(case)
    return cases
