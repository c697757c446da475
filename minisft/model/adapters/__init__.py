"""Trainable views of frozen linear layers ("wrap, don't mutate", as HF PEFT).

Every adapter attaches to one linear layer `y = x Wᵀ + b` of a GPT and adds a contribution to y
without touching W or b. All of them are built from the same `nn.linear` forward/backward pair (on
CuPy, RowDelta, ColumnDelta and LoRA run the same equations through kernels.gemm's scale-and-add
and the column gather/scatter kernels), so each backward computes only its own parameters'
gradients and the dx it passes on:

| adapter      | contribution to y                      | trainable                          |
|--------------|----------------------------------------|------------------------------------|
| Dense        | x ΔWᵀ + Δb                             | ΔW (d_out, d_in), Δb               |
| ElementMask  | x (M ∘ ΔW)ᵀ, gradient masked by M      | ΔW (d_out, d_in), M a 0/1 mask     |
| RowDelta     | y[:, rows] += x ΔW_rᵀ + Δb_r           | ΔW_r (r, d_in), Δb_r (r,)          |
| ColumnDelta  | y += x[:, cols] ΔW_cᵀ                  | ΔW_c (d_out, c)                    |
| LoRA         | s · (x Aᵀ) Bᵀ                          | A (r, d_in), B (d_out, r)          |
| SharedLoRA   | LoRA whose A, B are shared by layers   | one A, B; gradient summed          |

Tensor groups that are not a view of a linear layer (biases for BitFit, LayerNorms, embeddings,
and whole weights for full fine-tuning, GMT and MGPP) train in place through `GPT.unfreeze`, as
`requires_grad` does in PyTorch; their masked updates live in the optimizer (`masks=`).
"""

from .base import Adapter, adapter_delta_weights, merge_adapters, unmerge_adapters
from .dense import Dense, ElementMask
from .lora import LoRA, SharedLoRA
from .rows import ColumnDelta, RowDelta

__all__ = [
    "Adapter",
    "ColumnDelta",
    "Dense",
    "ElementMask",
    "LoRA",
    "RowDelta",
    "SharedLoRA",
    "adapter_delta_weights",
    "merge_adapters",
    "unmerge_adapters",
]
