"""minisft: exact reference implementations of sparse / parameter-efficient fine-tuning methods
on a GPT-2-style transformer with hand-written backward passes (NumPy on the CPU, CuPy on the GPU).
"""

from . import backend, errors, interop, memory, nn
from .config import GPTConfig
from .model import GPT

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "backend", "errors", "interop", "memory", "nn"]
