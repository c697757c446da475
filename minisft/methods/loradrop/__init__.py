"""LoRA-drop (Zhou et al. 2024, arXiv 2402.07721)."""

from .method import LoRADrop, keep_and_share, layer_importance, layer_scores
from .selection import layer_output_sq_norm, normalize_importance, select_layers
