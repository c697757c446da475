"""minisft: exact reference implementations of sparse / parameter-efficient fine-tuning methods
on a GPT-2-style transformer with hand-written backward passes (NumPy on the CPU, CuPy on the GPU).

    import minisft as ms
    model = ms.GPT(ms.GPTConfig(), backend="numpy", dtype="float64", seed=0)
    loss, grads = model.loss_and_grads(idx, targets)

Algorithm primitives: ms.importance, ms.knapsack, ms.gmt, ms.mgpp, ms.loradrop (array in, array
out); methods the trainer drives: ms.methods (SPruFT, AdaPEFT, LoRADrop, GMT, MGPP, FullFineTune,
LoRAMethod); adapters: ms.adapters; HF GPT-2 conversion: ms.interop.

Importing minisft changes nothing outside it: it registers the GPU fast paths with minisft's own
dispatch (minisft.core.fastpath) and sets no environment variable or thread pool.
"""

from . import gpu  # noqa: F401  (registers the fast paths)
from . import methods, nn
from .core import backend, errors, fileio
from .core.config import GPTConfig
from .core.version import __version__
from .data import batches, corpus, tokenizer
from .methods import gmt, loradrop, mgpp
from .methods.adapeft import curvature, groups, knapsack
from .methods.spruft import calibration, importance, structure
from .model import adapters, interop, memory
from .model.gpt import GPT
from .training import checkpoint, optim, train

__all__ = [
    "GPT", "GPTConfig", "adapters", "backend", "batches", "calibration", "checkpoint", "corpus", "curvature", "errors",
    "fileio", "gmt", "groups", "importance", "interop", "knapsack", "loradrop", "memory", "methods", "mgpp",
    "nn", "optim", "structure", "tokenizer", "train",
]
