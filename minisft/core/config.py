"""GPTConfig: the shape of a GPT-2-style model, validated at construction."""

from dataclasses import asdict, dataclass

from .errors import bad_value, positive_int


@dataclass(frozen=True)
class GPTConfig:
    """GPT-2 architecture sizes. Defaults are a small CPU-friendly model, not GPT-2 124M."""

    vocab_size: int = 512
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64

    def __post_init__(self):
        for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            positive_int(field, getattr(self, field))
        if self.n_embd % self.n_head:
            raise bad_value("n_embd", self.n_embd, f"a multiple of n_head={self.n_head}")

    def to_dict(self):
        return asdict(self)
