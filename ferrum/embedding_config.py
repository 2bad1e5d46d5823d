"""Hyper-parameters of a BERT sentence-embedding model, as an embedding artifact's manifest stores them.

Both sides need them: the compile stage builds the encoder from them; the runtime reads the
embedding size, the longest input it may feed (``max_length``, sentence-transformers'
``max_seq_length``) and the pooling the compiled function already applies (recorded so a client
can see what the vectors are, not applied again at run time).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

POOLING_MODES = ("mean",)


@dataclass(frozen=True)
class BertConfig:
    """A BERT encoder plus its sentence-transformers pooling."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    layer_norm_eps: float
    max_position_embeddings: int
    type_vocab_size: int
    max_length: int
    pooling: str = "mean"
    normalize: bool = True
    architecture: str = "bert"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling {self.pooling!r} is not supported (only {', '.join(POOLING_MODES)})")
        if not 2 <= self.max_length <= self.max_position_embeddings:
            raise ValueError(
                f"max_length {self.max_length} must be in [2, max_position_embeddings={self.max_position_embeddings}]"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BertConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
