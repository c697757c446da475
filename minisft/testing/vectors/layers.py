"""Golden vectors of every layer's forward and backward (minisft.nn), in float64 and float32.

Each case gives the inputs and an upstream gradient dy (dloss = 1 for the cross-entropy) and
expects the output and every input/weight gradient, i.e. the vector-Jacobian products
dL/dθ = (∂out/∂θ)ᵀ dy; each case's rule states the layer's formula (RULES).
"""

import numpy as np

from ... import nn
from .case import PLAIN, WEIGHT_OUT_IN, CaseWriter, float32_case, widened

DTYPES = ("float64", "float32")


def _linear(rng):
    inputs = {"x": rng.standard_normal((2, 3, 5)), "weight": rng.standard_normal((4, 5)), "bias": rng.standard_normal(4)}
    dy = rng.standard_normal((2, 3, 4))

    def run(v):
        y, cache = nn.linear_forward(v["x"], v["weight"], v["bias"])
        g = nn.linear_backward(v["dy"], cache)
        return {"y": y, "dx": g["x"], "dweight": g["weight"], "dbias": g["bias"]}

    docs = {
        "x": ("layer input", "(B, T, d_in)"), "weight": ("weight W", "(d_out, d_in)"),
        "bias": ("bias b", "(d_out,)"), "dy": ("upstream gradient dL/dy", "(B, T, d_out)"),
        "y": ("y = x Wᵀ + b", "(B, T, d_out)"), "dx": ("dL/dx = dy W", "(B, T, d_in)"),
        "dweight": ("dL/dW = Σ_(b,t) dyᵀ x", "(d_out, d_in)"), "dbias": ("dL/db = Σ_(b,t) dy", "(d_out,)"),
    }
    return "linear", inputs, dy, run, docs, {"weight": WEIGHT_OUT_IN, "dweight": WEIGHT_OUT_IN}, {}


def _attention(rng):
    B, T, H, hd = 2, 4, 2, 3
    inputs = {"qkv": rng.standard_normal((B, T, 3 * H * hd))}
    dy = rng.standard_normal((B, T, H * hd))

    def run(v):
        y, cache = nn.attention_forward(v["qkv"], H)
        return {"y": y, "dqkv": nn.attention_backward(v["dy"], cache)["x"]}

    docs = {
        "qkv": ("fused q|k|v, the output of c_attn: last axis [q | k | v], each C = H·hd split into heads "
                "h·hd..(h+1)·hd", "(B, T, 3C)"),
        "dy": ("upstream gradient dL/dy", "(B, T, C)"),
        "y": ("causal softmax(q kᵀ / √hd) v per head, heads concatenated (before c_proj)", "(B, T, C)"),
        "dqkv": ("dL/dqkv in the layout of qkv", "(B, T, 3C)"),
    }
    return "attention", inputs, dy, run, docs, {}, {"n_head": H, "head_dim": hd, "causal": True}


def _layernorm(rng):
    C = 6
    inputs = {"x": rng.standard_normal((2, 3, C)) * 3 + 1, "weight": rng.standard_normal(C), "bias": rng.standard_normal(C)}
    dy = rng.standard_normal((2, 3, C))

    def run(v):
        y, cache = nn.layernorm_forward(v["x"], v["weight"], v["bias"])
        g = nn.layernorm_backward(v["dy"], cache)
        return {"y": y, "dx": g["x"], "dweight": g["weight"], "dbias": g["bias"]}

    docs = {
        "x": ("layer input", "(B, T, C)"), "weight": ("scale w", "(C,)"), "bias": ("shift b", "(C,)"),
        "dy": ("upstream gradient dL/dy", "(B, T, C)"),
        "y": ("(x − mean) / sqrt(biased var + 1e-5) · w + b over the last axis", "(B, T, C)"),
        "dx": ("dL/dx", "(B, T, C)"), "dweight": ("dL/dw", "(C,)"), "dbias": ("dL/db", "(C,)"),
    }
    return "layernorm", inputs, dy, run, docs, {}, {"eps": 1e-5}


def _gelu(rng):
    x = np.concatenate([rng.standard_normal(14) * 2, [0.0, -6.0, 6.0, -12.0, 12.0, 1e-8, -1e-8]])
    inputs = {"x": x.reshape(3, 7)}
    dy = rng.standard_normal((3, 7))

    def run(v):
        y, cache = nn.gelu_forward(v["x"])
        return {"y": y, "dx": nn.gelu_backward(v["dy"], cache)["x"]}

    docs = {
        "x": ("input (some large |x| where tanh saturates, exact 0, tiny values)", "(3, 7)"),
        "dy": ("upstream gradient dL/dy", "(3, 7)"),
        "y": ("½ x (1 + tanh(√(2/π)(x + 0.044715 x³))): the tanh approximation (GPT-2's gelu_new), "
              "not the erf GELU", "(3, 7)"),
        "dx": ("dL/dx", "(3, 7)"),
    }
    return "gelu", inputs, dy, run, docs, {}, {"approximation": "tanh"}


def _embedding(rng):
    V, C, n_pos, B, T = 7, 5, 6, 2, 4
    inputs = {"idx": np.array([[1, 3, 3, 0], [6, 1, 1, 1]], dtype=np.int64),
              "wte": rng.standard_normal((V, C)), "wpe": rng.standard_normal((n_pos, C))}
    dy = rng.standard_normal((B, T, C))

    def run(v):
        x, cache = nn.embedding_forward(v["idx"], v["wte"], v["wpe"])
        g = nn.embedding_backward(v["dy"], cache)
        return {"x": x, "dwte": g["wte"], "dwpe": g["wpe"]}

    docs = {
        "idx": ("token ids (repeated ids: their gradients add up)", "(B, T)"),
        "wte": ("token embedding", "(vocab, C)"), "wpe": ("position embedding (more rows than T)", "(n_positions, C)"),
        "dy": ("upstream gradient dL/dx", "(B, T, C)"),
        "x": ("wte[idx] + wpe[:T]", "(B, T, C)"),
        "dwte": ("dL/dwte: row v = Σ over (b, t) with idx = v of dy[b, t]; zero for unused ids", "(vocab, C)"),
        "dwpe": ("dL/dwpe: row t = Σ_b dy[b, t] for t < T, zero beyond", "(n_positions, C)"),
    }
    return "embedding", inputs, dy, run, docs, {}, {}


def _cross_entropy(rng):
    targets = np.array([[2, -100, 8, 0], [5, 5, -100, 1]], dtype=np.int64)
    logits = rng.standard_normal((2, 4, 9)) * 3
    logits[1, 3] += 40.0  # a confidently predicted row (stable log-sum-exp)
    inputs = {"logits": logits, "targets": targets}

    def run(v):
        loss, cache = nn.cross_entropy_forward(v["logits"], v["targets"])
        return {"loss": np.asarray(loss), "dlogits": nn.cross_entropy_backward(1.0, cache)["x"]}

    docs = {
        "logits": ("logits z", "(B, T, V)"),
        "targets": ("target ids; -100 = ignored (no loss, zero gradient), as torch's ignore_index", "(B, T)"),
        "loss": ("mean over the non-ignored positions of logsumexp(z) − z[target]", "()"),
        "dlogits": ("dL/dz = (softmax(z) − onehot(target)) / n_valid on valid rows, 0 on ignored rows", "(B, T, V)"),
    }
    return "cross_entropy", inputs, None, run, docs, {}, {"ignore_index": -100, "dloss": 1.0}


BUILDERS = (_linear, _attention, _layernorm, _gelu, _embedding, _cross_entropy)
RULES = {
    "linear": "y = x W^T + b with W (d_out, d_in); for the upstream gradient dy: dx = dy W, dW = sum over the "
              "leading axes of dy^T x, db = sum over the leading axes of dy.",
    "attention": "Causal multi-head self-attention on the fused projection qkv (B, T, 3C), C = H * hd: q, k, v = "
                 "qkv[..., 0:C], qkv[..., C:2C], qkv[..., 2C:3C]; head j uses features j*hd..(j+1)*hd; y_j = "
                 "softmax(q_j k_j^T / sqrt(hd), position t attending to 0..t) v_j; y = the heads concatenated in "
                 "order. dqkv = the vector-Jacobian product of y at dy, in qkv's layout.",
    "layernorm": "y = (x - mean) / sqrt(var + 1e-5) * w + b over the last axis, var the biased variance (divided by "
                 "C); dx, dw, db the vector-Jacobian products at dy (dw, db summed over the leading axes).",
    "gelu": "y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (GPT-2's tanh approximation, not the erf GELU); "
            "dx = dy * dy/dx elementwise.",
    "embedding": "x = wte[idx] + wpe[0..T-1] (positions 0..T-1 of the (n_positions, C) table); dwte row v = sum of "
                 "dy[b, t] over the (b, t) with idx[b, t] = v (0 for unused ids); dwpe row t = sum over b of "
                 "dy[b, t] for t < T, 0 beyond.",
    "cross_entropy": "loss = mean over the positions whose target is not -100 of logsumexp(z) - z[target] (natural "
                     "log); dlogits = d loss / d z = (softmax(z) - onehot(target)) / n_valid on valid positions, 0 "
                     "on ignored ones (upstream dloss = 1).",
}
FLOAT32 = (" float32 case: the inputs are float32; the expected values are computed in float64 arithmetic from "
           "them and rounded to float32 (the correctly rounded answer).")


def nn_cases():
    """Every layer's case in float64 and float32 (CaseWriter list)."""
    cases = []
    for seed, builder in enumerate(BUILDERS):
        layer, inputs, dy, run, docs, layouts, settings = builder(np.random.default_rng(1000 + seed))
        values = dict(inputs, **({} if dy is None else {"dy": dy}))
        for dtype in DTYPES:
            given = values if dtype == "float64" else float32_case(values)
            out = run(widened(given))
            case = CaseWriter(
                f"nn_{layer}_{dtype}", f"the {layer} layer's forward and backward in {dtype}",
                RULES[layer] + ("" if dtype == "float64" else FLOAT32), "GPT-2: Radford et al. 2019", settings)
            for key, value in given.items():
                meaning, axes = docs[key]
                case.input(key, value, meaning, axes, layouts.get(key, PLAIN))
            for key, value in out.items():
                meaning, axes = docs[key]
                case.expected(key, np.asarray(value).astype(dtype), meaning, axes, meaning, dtype,
                              layouts.get(key, PLAIN))
            cases.append(case)
    return cases
