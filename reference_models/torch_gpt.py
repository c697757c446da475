"""An independent PyTorch (autograd) GPT-2 twin that loads a minisft state dict.

Written from the GPT-2 definition, not from minisft's code: nn.Linear layers, F.layer_norm,
F.gelu(approximate="tanh"), naive causal attention (or F.scaled_dot_product_attention when
`sdpa=True`), the LM head tied to wte, F.cross_entropy with ignore_index=-100.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, C, H, sdpa):
        super().__init__()
        self.n_head, self.sdpa = H, sdpa
        self.ln_1 = nn.LayerNorm(C, eps=1e-5)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(C, 3 * C)
        self.attn.c_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(C, 4 * C)
        self.mlp.c_proj = nn.Linear(4 * C, C)

    def attention(self, x):
        B, T, C = x.shape
        q, k, v = self.attn.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = att @ v
        return self.attn.c_proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    def __init__(self, config, sdpa=False):
        super().__init__()
        C = config.n_embd
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, C)
        self.wpe = nn.Embedding(config.block_size, C)
        self.h = nn.ModuleList(Block(C, config.n_head, sdpa) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(C, eps=1e-5)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    @classmethod
    def from_minisft(cls, state_dict, config, dtype=torch.float64, device="cpu", sdpa=False):
        """Copy a minisft state dict ({name: numpy array}, (out, in) weights) into a twin."""
        model = cls(config, sdpa=sdpa).to(device=device, dtype=dtype)
        own = dict(model.named_parameters())
        if set(own) != set(state_dict):
            raise ValueError(f"state dict names differ: {sorted(set(own) ^ set(state_dict))[:5]}")
        with torch.no_grad():
            for k, v in state_dict.items():
                own[k].copy_(torch.as_tensor(np.asarray(v)))
        return model

    def grads(self):
        """{name: numpy gradient} after backward()."""
        return {k: p.grad.detach().cpu().numpy() for k, p in self.named_parameters() if p.grad is not None}
