"""SPruFT (Li & Bhaskara 2025, arXiv 2502.11439)."""

from . import calibration, importance, structure
from .budget import rows_for_ratio, rows_matching_lora, spruft_rows_per_layer, spruft_trainable
from .method import SPruFT
