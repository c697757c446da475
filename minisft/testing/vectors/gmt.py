"""Golden vectors of GMT's gradient masks: per-tensor and global masks at several drop ratios, on
gradients with ties, signed zeros and an infinity (the global ties at r = 0.5 cross tensors), and a
tensor of 100 entries on which the count floor(r·n) read on the float product differs from the
decimal reading.
"""

import numpy as np

from ...methods.gmt import global_gradient_masks, gradient_masks
from .case import CaseWriter

RATIOS = (0.0, 0.3, 0.5, 0.9)
COUNT_RATIO = 0.29  # on the 100 entries of `count/d`: floor(0.29 * 100) is 28 in float arithmetic, 29 exactly
RULE = (
    "GMT's keep masks (True = kept) of gradients g. Drop count k = floor(dec(r) * n) (conventions.decimal: r read as "
    "its shortest decimal, the product exact), n = the tensor's number of entries (scope 'tensor') or the total "
    "over all tensors (scope 'global'). The k entries of smallest |g| are dropped, |-0.0| = |+0.0| = 0 and +inf the "
    "largest magnitude. Ties: scope 'tensor' drops the lower flat (C-order) index first; scope 'global' lays the "
    "tensors end to end in settings.tensor_order (each flattened in C order) and drops the earlier position in that "
    "concatenation first, i.e. the earlier tensor first, then the lower flat index. count/r0.29/d: the per-tensor "
    "mask of the 100-entry tensor count/d at r = 0.29.")


def _grads():
    rng = np.random.default_rng(71)
    a = rng.standard_normal((3, 4))
    a[0, 1], a[2, 3], a[1, 0] = 0.5, -0.5, 0.5  # a three-way tie in |g|
    b = np.array([0.0, -0.0, 1.0, -1.0, np.inf])
    c = np.array([[0.5, -2.0], [1e-300, 0.25]])  # ties with a across tensors
    return {"a": a, "b": b, "c": c}


def gmt_cases():
    grads = _grads()
    case = CaseWriter("gmt_masks", "GMT's keep masks per tensor and over all tensors together at several drop ratios",
                      RULE, "GMT: Li et al. 2024, arXiv 2406.15330", {"ratios": list(RATIOS), "tensor_order": list(grads)})
    for name, g in grads.items():
        case.input(f"grads/{name}", g, f"accumulated gradient Γ of tensor {name}", str(g.shape))
    d = np.random.default_rng(73).standard_normal((10, 10))
    case.input("count/d", d, "a gradient of 100 entries (the count's decimal reading)", "(10, 10)")
    case.expected(f"count/r{COUNT_RATIO}/d", gradient_masks([d], COUNT_RATIO)[0], f"keep mask of count/d at drop ratio "
                  f"{COUNT_RATIO}", "(10, 10)", f"drop the floor(dec({COUNT_RATIO}) n) smallest |g|", "exact")
    for r in RATIOS:
        for scope, masks in (("tensor", gradient_masks(grads, r)), ("global", global_gradient_masks(grads, r))):
            for name, m in masks.items():
                case.expected(f"{scope}/r{r}/{name}", m, f"keep mask of {name} (True = kept), drop ratio {r}, "
                              f"scope {scope}", str(m.shape), f"drop the floor(dec({r}) n) smallest |g| ({scope})",
                              "exact")
    case.discriminates("gmt_count_decimal", [f"count/r{COUNT_RATIO}/d"], "k = floor(dec(0.29) * 100) = 29",
                       "k = floor(0.29 * 100) on the float product = floor(28.999999999999996) = 28")
    case.discriminates("gmt_global_tie_order", [f"global/r0.5/{n}" for n in grads],
                       "global ties: the earlier tensor first, then the lower flat index (tensors end to end)",
                       "global ties: the lower flat index first, then the earlier tensor")
    return [case]
