"""SPruFT (Li & Bhaskara 2025, arXiv 2502.11439)."""

from . import calibration, importance, structure
from .method import SPruFT, lora_trainable, rows_matching_lora, spruft_rows_per_layer, spruft_trainable
