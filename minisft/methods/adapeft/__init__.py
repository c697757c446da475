"""AdaPEFT (Xu & Bu 2025, arXiv 2505.12579)."""

from . import curvature, groups, knapsack
from .method import AdaPEFT, GroupSubset
