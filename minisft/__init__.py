"""minisft: exact reference implementations of sparse / parameter-efficient fine-tuning methods
on a GPT-2-style transformer with hand-written backward passes (NumPy on the CPU, CuPy on the GPU).
"""

from . import backend, errors

__version__ = "0.1.0"
