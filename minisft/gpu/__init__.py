"""The fast path (CuPy): fused kernels (`kernels`) and tiled attention (`flash_attention`) that
compute what the reference `xp` code computes in fewer passes over memory and fewer launches.

Importing this package registers each as the fast path of the reference function it replaces
(minisft.core.fastpath): `layers` (minisft.nn), `adapters`, `optim`, `select`, `buckets`. Nothing in the
reference imports it; the package root does. CuPy itself is imported only when a kernel first runs.
"""

from . import adapters, buckets, layers, optim, select

__all__ = ["adapters", "buckets", "layers", "optim", "select"]
