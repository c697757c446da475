"""GMT (Li et al. 2024, arXiv 2406.15330)."""

from .masks import global_gradient_masks, gradient_mask, gradient_masks
from .method import GMT
