"""minisft: exact reference implementations of sparse / parameter-efficient fine-tuning methods
on a GPT-2-style transformer with hand-written backward passes (NumPy on the CPU, CuPy on the GPU).

    import minisft as ms
    model = ms.GPT(ms.GPTConfig(), backend="numpy", dtype="float64", seed=0)
    loss, grads = model.loss_and_grads(idx, targets)

Algorithm primitives: ms.importance, ms.knapsack, ms.gmt, ms.mgpp, ms.loradrop (array in, array
out); methods the trainer drives: ms.methods (SPruFT, AdaPEFT, LoRADrop, GMT, MGPP, FullFineTune,
LoRAMethod); adapters: ms.adapters; HF GPT-2 conversion: ms.interop.
"""

from .rank_threads import share_cores

share_cores()  # before NumPy loads its BLAS: ranks sharing a host share its cores (minisft.rank_threads)

from . import (adapters, backend, batches, checkpoint, corpus, errors, fileio, interop, kernels, memory, methods, nn, optim,
               tokenizer, train)
from .config import GPTConfig
from .methods import gmt, loradrop, mgpp
from .methods.adapeft import curvature, groups, knapsack
from .methods.spruft import calibration, importance, structure
from .model import GPT
from .version import __version__
__all__ = [
    "GPT", "GPTConfig", "adapters", "backend", "batches", "calibration", "checkpoint", "corpus", "curvature", "errors",
    "fileio", "gmt", "groups", "importance", "interop", "kernels", "knapsack", "loradrop", "memory", "methods", "mgpp",
    "nn", "optim", "structure", "tokenizer", "train",
]
