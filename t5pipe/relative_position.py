"""T5's relative position bias: the bucketing of key-query distances and its table.

T5 and umT5 share the bucketing; T5 keeps one table per stack, umT5 one per layer.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5pipe.model_config import T5Config


@functools.lru_cache(maxsize=64)
def relative_position_buckets(
    query_length: int, key_length: int, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """T5's bucketing of (key position - query position): int32 [query_length, key_length].

    Half the buckets (all of them when causal) hold exact distances; the rest
    are log-spaced up to `max_distance`. In the bidirectional case keys after
    the query use the upper half. Computed on the host in float32 with the same
    operation order as the reference code, so bucket edges agree exactly.
    """
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    buckets = np.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).astype(relative.dtype) * num_buckets
        distance = np.abs(relative)
    else:
        distance = -np.minimum(relative, 0)
    max_exact = num_buckets // 2
    scaled = (
        np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
        / np.float32(math.log(max_distance / max_exact))
        * np.float32(num_buckets - max_exact)
    )
    large = np.minimum(max_exact + scaled.astype(relative.dtype), num_buckets - 1)
    buckets += np.where(distance < max_exact, distance, large)
    return buckets.astype(np.int32)


class RelativePositionBias(nn.Module):
    """Learned scalar bias per (head, bucket): [1, heads, query_length, key_length]."""

    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(
        self, query_length: int, key_length: int, query_position: jax.Array | None = None
    ) -> jax.Array:
        """-> [1, heads, query_length, key_length]; with `query_position` (decoding one
        step) only that row: [1, heads, 1, key_length]."""
        cfg = self.config
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(
                nn.initializers.normal(cfg.d_model**-0.5), ("heads", "relpos_buckets")
            ),
            (cfg.num_heads, cfg.relative_attention_num_buckets),
            jnp.float32,
        )
        buckets = jnp.asarray(
            relative_position_buckets(
                query_length,
                key_length,
                self.bidirectional,
                cfg.relative_attention_num_buckets,
                cfg.relative_attention_max_distance,
            )
        )
        if query_position is not None:
            buckets = jax.lax.dynamic_slice_in_dim(buckets, query_position, 1, axis=0)
        return jnp.take(table, buckets, axis=1)[None]
