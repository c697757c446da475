"""Golden vectors of GMT's gradient masks (minisft.methods.gmt; the paper's map is its package
docstring): per-tensor and global masks at several drop ratios, on gradients with ties, signed
zeros and an infinity.
"""

import numpy as np

from ...methods.gmt import global_gradient_masks, gradient_masks
from .case import CaseWriter

RATIOS = (0.0, 0.3, 0.5, 0.9)


def _grads():
    rng = np.random.default_rng(71)
    a = rng.standard_normal((3, 4))
    a[0, 1], a[2, 3], a[1, 0] = 0.5, -0.5, 0.5  # a three-way tie in |g|
    b = np.array([0.0, -0.0, 1.0, -1.0, np.inf])
    c = np.array([[0.5, -2.0], [1e-300, 0.25]])  # ties with a across tensors
    return {"a": a, "b": b, "c": c}


def gmt_cases():
    grads = _grads()
    case = CaseWriter("gmt_masks", "GMT's keep masks: drop the floor(r·n) smallest |g| (r read as its shortest "
                      "decimal), per tensor and over all tensors together (tensor order a, b, c); ties: the lower "
                      "flat index, then the earlier tensor, is dropped first; |−0.0| = |+0.0|; +inf is the largest",
                      "minisft/methods/gmt/__init__.py (the paper's map); proofs/gmt_mask.md",
                      {"ratios": list(RATIOS), "tensor_order": list(grads)})
    for name, g in grads.items():
        case.input(f"grads/{name}", g, f"accumulated gradient Γ of tensor {name}", str(g.shape))
    for r in RATIOS:
        for scope, masks in (("tensor", gradient_masks(grads, r)), ("global", global_gradient_masks(grads, r))):
            for name, m in masks.items():
                case.expected(f"{scope}/r{r}/{name}", m, f"keep mask of {name} (True = kept), drop ratio {r}, "
                              f"scope {scope}", str(m.shape),
                              f"minisft.methods.gmt.{'gradient_masks' if scope == 'tensor' else 'global_gradient_masks'}",
                              "exact")
    return [case]
