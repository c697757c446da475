"""MGPP (Zhang, Sun & Liang 2024, arXiv 2411.00969)."""

from .method import MGPP
from .prior import (DEFAULT_LAMBDA, DEFAULT_SIGMA0, DEFAULT_SIGMA1, check_prior, cubic_sparsity, magnitude_masks,
                    neg_log_prior, neg_log_prior_grad)
