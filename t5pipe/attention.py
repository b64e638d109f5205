"""The one attention kernel every T5 attention layer calls.

Kept apart from the layers so that a fused implementation (cuDNN through
`jax.nn.dot_product_attention`) can be swapped in by name without touching the
model. T5 does not scale the logits by 1/sqrt(d_kv): the initialisation of the
query projection absorbs that factor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Added to the logits of masked positions. Finite, so that a fully masked row
# (a padding query) gives a uniform softmax instead of NaN.
MASK_BIAS = -1e10


def mask_to_bias(mask: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Boolean mask (True = may attend) -> additive bias of the same shape."""
    return jnp.where(mask, jnp.zeros((), dtype), jnp.asarray(MASK_BIAS, dtype))


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    implementation: str = "xla",
    kv_heads_major: bool = False,
) -> jax.Array:
    """Unscaled multi-head attention with an additive bias.

    Args:
      query: [batch, q_length, heads, kv]
      key: [batch, kv_length, heads, kv]
      value: [batch, kv_length, heads, kv]
      bias: [batch or 1, heads or 1, q_length, kv_length], float; holds the
        relative position bias and the mask (see `mask_to_bias`).
      dropout_rate: dropout on the attention weights (as HF and t5x do); needs
        `dropout_rng` when > 0.
      implementation: "xla" (einsum + float32 softmax) or "cudnn" (fused kernel,
        GPU only, no attention dropout).
      kv_heads_major: key and value come as [batch, heads, kv_length, kv] (the
        decoding cache's layout) instead.

    Key/value may have fewer rows than the query: then `batch` = kv_rows * groups and
    query row r attends to key/value row r // groups (the beams of one input share the
    cross-attention keys/values of that input, which are read once, not once per beam).

    Returns:
      [batch, q_length, heads, kv] in the query's dtype.
    """
    kv = "bhkd" if kv_heads_major else "bkhd"
    rows, kv_rows = query.shape[0], key.shape[0]
    if rows % kv_rows:
        raise ValueError(f"attention: {rows} query rows do not share {kv_rows} key/value rows")
    groups = rows // kv_rows
    if implementation == "cudnn":
        if groups > 1:
            key, value = jnp.repeat(key, groups, axis=0), jnp.repeat(value, groups, axis=0)
        if kv_heads_major:
            key, value = jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2)
        if dropout_rate > 0.0 and dropout_rng is not None:
            raise ValueError("attention_impl='cudnn' does not support attention dropout")
        return jax.nn.dot_product_attention(
            query, key, value, bias=bias.astype(query.dtype), scale=1.0, implementation="cudnn"
        )
    if implementation != "xla":
        raise ValueError(f"unknown attention implementation {implementation!r}")

    q_spec, w_spec = "bqhd", "bhqk"
    if groups > 1:
        # Row r = b * groups + j: a group axis j next to the shared key/value's batch.
        query = query.reshape(kv_rows, groups, *query.shape[1:])
        bias = bias if bias.shape[0] == 1 else bias.reshape(kv_rows, groups, *bias.shape[1:])
        bias = bias[None] if bias.ndim == 4 else bias
        q_spec, w_spec = "bjqhd", "bjhqk"
    logits = jnp.einsum(f"{q_spec},{kv}->{w_spec}", query, key, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits + bias.astype(jnp.float32), axis=-1)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum(f"{w_spec},{kv}->{q_spec}", weights.astype(value.dtype), value)
    return out.reshape(rows, *out.shape[-3:])
