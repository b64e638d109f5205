"""The T5 architecture hyper-parameters: one frozen dataclass, gin-configurable.

Gin model files (`gin/models/<family>/<size>.gin`) bind `T5Config.*`; checkpoints
store `T5Config.to_dict()` so that they describe themselves.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gin

FEED_FORWARD_KINDS = ("relu", "gelu", "gated-gelu", "gated-relu", "gated-silu")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
DTYPES = ("float32", "bfloat16", "float16")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shapes and numerics of a T5 encoder-decoder.

    Field names follow Hugging Face's `T5Config` where one exists, so that
    `config.json` maps onto this one field for field.
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    # "relu" (T5 1.0), "gated-gelu" (T5 1.1, mT5, ByT5, Flan-T5; tanh GELU as in HF).
    feed_forward_proj: str = "relu"
    # T5 1.0 shares the output layer with the input embedding and rescales the
    # decoder output by d_model**-0.5 first; T5 1.1 has a separate output layer.
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    # Activation dtype; parameters are always float32.
    dtype: str = "float32"
    # Scan over layers (one compiled layer body; parameters gain a `layers` axis).
    scan_layers: bool = False
    # What a layer keeps for the backward pass: "none" keeps everything,
    # "full" recomputes the layer, "dots" keeps only matmul outputs.
    remat_policy: str = "none"
    # Attention implementation passed to `t5pipe.attention.dot_product_attention`.
    attention_impl: str = "xla"
    # Number of learned soft-prompt vectors prepended to the encoder input (0: off).
    prompt_length: int = 0

    def __post_init__(self):
        if self.feed_forward_proj not in FEED_FORWARD_KINDS:
            raise ValueError(
                f"T5Config.feed_forward_proj={self.feed_forward_proj!r}: expected one of "
                f"{FEED_FORWARD_KINDS}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"T5Config.remat_policy={self.remat_policy!r}: expected one of {REMAT_POLICIES}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"T5Config.dtype={self.dtype!r}: expected one of {DTYPES}")
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)}")

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    def replace(self, **changes: Any) -> T5Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> T5Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown T5Config fields {unknown}; known: {sorted(known)}")
        return cls(**values)
