"""Layers as pure function pairs, in the style of llm.c's train_gpt2.c and Chainer's FunctionNode.

Every layer is `<name>_forward(inputs..., need=...) -> (out, cache)` and
`<name>_backward(dout, cache, need=None) -> {input_name: grad}`:

- `need` at forward names the gradients backward will be asked for; the cache keeps exactly what
  those need and nothing else (a frozen weight's layer keeps no copy of its input for dW).
- backward computes only the gradients asked for (default: all that forward prepared for), so a
  frozen weight costs no weight-gradient GEMM and no buffer.
- One body serves NumPy and CuPy (`xp = array_module(x)`). Inputs are never mutated.

Derivations: proofs/<layer>.md, each naming its finite-difference and PyTorch tests.
"""

from .attention import attention_backward, attention_forward
from .cross_entropy import IGNORE_INDEX, cross_entropy_backward, cross_entropy_forward
from .embedding import embedding_backward, embedding_forward
from .gelu import gelu_backward, gelu_forward
from .layernorm import layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward

__all__ = [
    "IGNORE_INDEX",
    "attention_backward",
    "attention_forward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "embedding_backward",
    "embedding_forward",
    "gelu_backward",
    "gelu_forward",
    "layernorm_backward",
    "layernorm_forward",
    "linear_backward",
    "linear_forward",
]
