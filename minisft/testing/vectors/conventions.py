"""The conventions every case's rule refers to, written into the manifest's "conventions" table: the
tolerance rule, the tiny GPT-2 and its adapters, the decimal reading of a ratio, AdamW, clipping and
one training step. They are definitions another implementation can be written from, not pointers
into minisft's source."""

TOLERANCE = ("|actual - expected| <= atol + rtol * |expected| elementwise (numpy.allclose's rule; NaN only where "
             "NaN is expected); integer and bool tensors exactly equal. atol = rtol * max|finite expected| of the "
             "tensor. float64 cases: rtol 1e-10; float32 cases: 1e-5, their expected values computed in float64 "
             "from the float32 inputs and rounded to float32; a looser rtol only where the case says why.")

LAYOUT = ("Weights of linear layers are (out, in): y = x W^T + b, as torch.nn.Linear; only the gpt2_tiny_* cases "
          "keep HF GPT-2's Conv1D layout (in, out): y = x W + b. Arrays are C order; axes as each tensor's 'axes' says.")

MODEL = (
    "GPT-2 (Radford et al. 2019) without dropout. Config (settings.config): vocab_size V, block_size P, n_layer L, "
    "n_head H, n_embd C, head dim hd = C / H. Parameters (names without HF's 'transformer.' prefix): wte (V, C), "
    "wpe (P, C); for each block i = 0..L-1: h.i.ln_1.weight, h.i.ln_1.bias (C,), h.i.attn.c_attn.weight (3C, C), "
    "h.i.attn.c_attn.bias (3C,), h.i.attn.c_proj.weight (C, C), h.i.attn.c_proj.bias (C,), h.i.ln_2.weight, "
    "h.i.ln_2.bias (C,), h.i.mlp.c_fc.weight (4C, C), h.i.mlp.c_fc.bias (4C,), h.i.mlp.c_proj.weight (C, 4C), "
    "h.i.mlp.c_proj.bias (C,); ln_f.weight, ln_f.bias (C,). A linear layer 'h.i.attn.c_attn' etc. computes "
    "y = x W^T + b. Forward of token ids idx (B, T), T <= P: h = wte[idx] + wpe[0..T-1]; each block: "
    "h = h + attn.c_proj(attention(attn.c_attn(ln_1(h)))); h = h + mlp.c_proj(gelu(mlp.c_fc(ln_2(h)))); "
    "logits = ln_f(h) wte^T (the LM head is wte, tied). LayerNorm: (x - mean) / sqrt(var + 1e-5) * weight + bias "
    "over the last axis, var the biased variance (divided by C). gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 "
    "x^3))). attention(qkv): q = qkv[..., 0:C], k = qkv[..., C:2C], v = qkv[..., 2C:3C]; head j uses features "
    "j*hd..(j+1)*hd of each; per head softmax(q k^T / sqrt(hd)) v with position t attending to positions 0..t only "
    "(causal); the heads' outputs concatenated in head order. Loss: the mean over the positions whose target is "
    "not -100 of logsumexp(logits) - logits[target] (natural log).")

ADAPTERS = (
    "Adapters add to a linear layer's output y = x W^T + b (x (..., d_in), W (d_out, d_in)). LoRA (Hu et al. "
    "2021, as HF PEFT): A (r, d_in), B (d_out, r), scaling s = alpha / r: y += s (x A^T) B^T; named "
    "'<layer>.lora.lora_A' / '.lora_B'. A shared LoRA 'shared.<suffix>.lora_A/B' (LoRA-drop) is one (A, B) used by "
    "several layers, each adding s (x A^T) B^T with its own input x; its gradient is the sum over those layers. A "
    "row delta (SPruFT) on the sorted rows R of a layer: '<layer>.row_delta.weight' (|R|, d_in) and '.bias' (|R|,): "
    "y[..., R] += x dW^T + db. The base tensors stay frozen unless the case lists them as trainable.")

DECIMAL = ("dec(r) is the exact rational value of the shortest decimal string that reads back as the float64 r "
           "(Python's repr(r)): dec(0.29) = 29/100, while the float 0.29 is 0.28999999999999998002... Counts "
           "floor(dec(r) * n) and floor(dec(r) * n + 1/2) are computed exactly (rational arithmetic), never from "
           "the float product r * n (0.29 * 100 = 28.999999999999996 in float64).")

ADAMW = (
    "AdamW as torch.optim.AdamW: each trainable tensor theta with gradient g at its t-th step (t = 1, 2, ... "
    "counted per tensor): theta <- theta * (1 - lr * wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2; "
    "theta <- theta - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps); m and v start at 0; b1 = 0.9, "
    "b2 = 0.999, eps = 1e-8; lr and wd (weight decay) from settings.train. Entries an optimizer mask excludes "
    "keep theta, m and v exactly as they were (the tensor's t still advances).")

CLIP = ("Global-norm clipping as torch.nn.utils.clip_grad_norm_(max_norm = settings.train.grad_clip): N = sqrt(sum "
        "over every trainable tensor of sum g^2); c = max_norm / (N + 1e-6); if c < 1 every gradient is multiplied "
        "by c, else none changes.")

STEP = (
    "One optimizer step t = 0, 1, ..., steps-1 (0-based) of a train_* case, in this order: (1) 'grad': the gradient "
    "of the step's mean loss (conventions.model; with settings.train.accumulation = N > 1, the mean over the "
    "step's N micro-batches, in order, of each one's mean-loss gradient) with respect to every trainable tensor; "
    "(2) 'grad_masked' (only for methods that mask gradients): the method's mask applied; (3) clipping "
    "(conventions.clip) of those gradients: 'grad_norm' is N before clipping, 'clip_scale' the factor applied "
    "(1.0 when none); (4) 'update': the gradient AdamW receives (the clipped gradient, plus any term the method "
    "adds after clipping); (5) AdamW (conventions.adamw) with the method's optimizer masks, if any: 'exp_avg' (m) "
    "and 'exp_avg_sq' (v) after the step; (6) the method's after-step action (pruning): 'param' is every trainable "
    "tensor after the step, 'keep' the method's masks (True = kept). 'loss' is the step batch's mean loss before "
    "its update. Batches are given: step t uses batch/x[t*N + j], batch/y[t*N + j] for j = 0..N-1; nothing is "
    "drawn at random. Per-step tensors are stacked: step/<stage>/<tensor>[t] is step t's value.")

CONVENTIONS = {"tolerance": TOLERANCE, "layout": LAYOUT, "model": MODEL, "adapters": ADAPTERS, "decimal": DECIMAL,
               "adamw": ADAMW, "clip": CLIP, "step": STEP}
