"""Building blocks shared by the encoder-decoder families (umT5, T5Gemma, T5Gemma 2).

Every weight projection goes through `t5pipe.projection.dense`, the one projection
helper of every family (T5 included), so that adapters (LoRA) attach in one place.
Parameters are float32 and carry logical axis names:

    embed    model width          heads     query heads       kv_heads  key/value heads (GQA)
    kv       per-head width       mlp       feed-forward      vocab     vocabulary
    relpos_buckets  relative-position buckets                 layers    scanned layer axis

Masks are boolean (True = may attend) until they become additive biases
(`t5pipe.attention.mask_to_bias`), so sliding windows, causality and packing
combine with `&`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5pipe.attention import MASK_BIAS
from t5pipe.projection import dense

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    # HF's "gelu_new" / "gelu_pytorch_tanh": the tanh approximation.
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
}


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    return nn.with_logical_constraint(x, axes)


def normal(stddev: float) -> Callable:
    return nn.initializers.normal(stddev)


class RMSNorm(nn.Module):
    """Root-mean-square norm, statistics in float32, over the last axis.

    `one_centered` (Gemma): the output is scaled by (1 + scale) in float32 and the
    scale starts at 0; otherwise (T5) by scale, starting at 1, in the activation dtype.
    (float64 activations, for reference checks, keep float64 statistics.)
    """

    epsilon: float
    dtype: str
    one_centered: bool = False
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.zeros if self.one_centered else nn.initializers.ones
        scale = self.param(
            "scale", nn.with_logical_partitioning(init, (self.axis_name,)), (x.shape[-1],)
        )
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        if self.one_centered:
            return (normed * (1.0 + scale)).astype(self.dtype)
        return normed.astype(self.dtype) * scale.astype(self.dtype)


class Embedder(nn.Module):
    """Token embedding table [vocab, embed]: `__call__` looks up, `attend` projects back."""

    vocab_size: int
    features: int
    dtype: str
    stddev: float = 1.0

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(normal(self.stddev), ("vocab", "embed")),
            (self.vocab_size, self.features),
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens [batch, length] -> [batch, length, embed]."""
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """x [batch, length, embed] -> logits [batch, length, vocab]."""
        return jnp.einsum("ble,ve->blv", x, self.embedding.astype(self.dtype))


class FeedForward(nn.Module):
    """wo(dropout(act(wi x))) or, gated, wo(dropout(act(wi_0 x) * wi_1 x)).

    Gemma's gate/up/down projections are wi_0/wi_1/wo.
    """

    d_ff: int
    activation: str
    gated: bool
    dropout_rate: float
    dtype: str

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        """x [batch, length, embed] -> [batch, length, embed]."""
        embed = x.shape[-1]

        def dense_in(name):
            h = dense(
                self,
                name,
                x,
                (embed, self.d_ff),
                ("embed", "mlp"),
                "ble,ef->blf",
                normal(embed**-0.5),
                self.dtype,
            )
            return constrain(h, ("batch", "length", "mlp"))

        act = ACTIVATIONS[self.activation]
        hidden = act(dense_in("wi_0")) * dense_in("wi_1") if self.gated else act(dense_in("wi"))
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
        out = dense(
            self,
            "wo",
            hidden,
            (self.d_ff, embed),
            ("mlp", "embed"),
            "blf,fe->ble",
            normal(self.d_ff**-0.5),
            self.dtype,
        )
        return constrain(out, ("batch", "length", "embed"))


class OutputLayer(nn.Module):
    """The untied output projection [embed, vocab], through `dense`."""

    vocab_size: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        embed = x.shape[-1]
        return dense(
            self,
            "kernel",
            x,
            (embed, self.vocab_size),
            ("embed", "vocab"),
            "ble,ev->blv",
            normal(embed**-0.5),
            self.dtype,
        )


def project_heads(module, name, x, num_heads, head_dim, head_axis, dtype, stddev=None):
    """x [batch, length, embed] -> [batch, length, num_heads, head_dim] through `dense`."""
    embed = x.shape[-1]
    stddev = embed**-0.5 if stddev is None else stddev
    y = dense(
        module,
        name,
        x,
        (embed, num_heads, head_dim),
        ("embed", head_axis, "kv"),
        "ble,ehd->blhd",
        normal(stddev),
        dtype,
    )
    return constrain(y, ("batch", "length", head_axis, "kv"))


def project_out(module, x, embed, dtype, name="out"):
    """x [batch, length, heads, head_dim] -> [batch, length, embed] through `dense`."""
    heads, head_dim = x.shape[-2:]
    y = dense(
        module,
        name,
        x,
        (heads, head_dim, embed),
        ("heads", "kv", "embed"),
        "blhd,hde->ble",
        normal((heads * head_dim) ** -0.5),
        dtype,
    )
    return constrain(y, ("batch", "length", "embed"))


# ----------------------------------------------------------------------------- positions


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Position of each token within its segment: int32 [batch, length].

    A segment starts where the id changes, so packed examples restart at 0 and an
    unpacked, right-padded row counts 0, 1, 2, ... as Hugging Face's position ids do.
    """
    length = segment_ids.shape[1]
    index = jnp.arange(length, dtype=jnp.int32)[None, :]
    previous = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    starts = jnp.where(segment_ids != previous, index, 0)
    return index - jax.lax.cummax(starts, axis=1)


def rope_tables(positions: jax.Array, head_dim: int, theta: float, scale: float = 1.0):
    """RoPE (sin, cos), float32 [batch, length, head_dim], for positions [batch, length].

    Frequencies theta ** (-2i / head_dim), divided by `scale` (linear position
    scaling); both halves of the head use the same frequencies (rotate-half layout).
    """
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(theta), exponent)) / np.float32(scale)
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """x [batch, length, heads, head_dim] rotated by tables [batch, length, head_dim]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    sin, cos = sin[:, :, None].astype(x.dtype), cos[:, :, None].astype(x.dtype)
    return x * cos + rotated * sin


# ----------------------------------------------------------------------------- masks


def window_mask(
    query_positions: jax.Array,
    key_positions: jax.Array,
    before: int | None = None,
    after: int | None = None,
) -> jax.Array:
    """Which keys a query may see: key - query in (-before, after) -> bool [..., q, k].

    None means unbounded. Causal: after=1. A causal sliding window of w: before=w.
    """
    offset = key_positions[..., None, :] - query_positions[..., :, None]
    mask = jnp.ones(offset.shape, jnp.bool_)
    if before is not None:
        mask &= offset > -before
    if after is not None:
        mask &= offset < after
    return mask


def segment_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
    """Same example and a real key: bool [batch, q, k] from segment ids (0 = padding)."""
    return (query_segments[:, :, None] == key_segments[:, None, :]) & (key_segments[:, None] > 0)


def select(flag, if_true: jax.Array, if_false: jax.Array) -> jax.Array:
    """`flag` a Python bool (unrolled layers) picks statically; a traced one (scanned)
    selects elementwise."""
    if isinstance(flag, bool):
        return if_true if flag else if_false
    return jnp.where(flag, if_true, if_false)


# ----------------------------------------------------------------------------- attention


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """cap * tanh(x / cap): bounds logits smoothly to (-cap, cap); None leaves x as is."""
    return x if not cap else jnp.tanh(x / cap) * cap


class KeyValue(NamedTuple):
    """One set of keys/values a query attends to, with what limits it.

    key, value  [batch, k, kv_heads, head_dim], or [batch, kv_heads, k, head_dim] when
                `heads_major` (the decoding cache's layout)
    mask        bool [batch|1, q, k], True where the query may attend
    bias        float [batch|1, heads, q, k] added to the logits (relative positions)
    """

    key: jax.Array
    value: jax.Array
    mask: jax.Array
    heads_major: bool = False
    bias: jax.Array | None = None


def grouped_attention(
    query: jax.Array,
    parts: Sequence[KeyValue],
    *,
    scale: float = 1.0,
    logit_cap: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """Grouped-query attention with one softmax over one or more `KeyValue` parts.

    query [batch, q, heads, head_dim]. Query head h uses key/value head
    h // (heads // kv_heads), as Hugging Face's `repeat_kv`. Logits are (at least)
    float32: dot * scale, soft-capped, plus bias, masked; the weights are cast to the
    value dtype. Several parts (T5Gemma 2's merged self- and cross-attention) behave as
    their keys concatenated, without copying the caches. A part may have fewer
    key/value rows than the query (batch = its rows * beams): query row r then reads its
    row r // beams, so the beams of one input share that input's cross-attention
    keys/values (read once per step, not once per beam); its mask and bias keep one row
    per query row (or one for all).
    -> [batch, q, heads, head_dim] in the query's dtype.
    """
    batch, q_len, heads, head_dim = query.shape
    logits_dtype = jnp.promote_types(query.dtype, jnp.float32)
    first = parts[0]
    kv_heads = first.key.shape[1] if first.heads_major else first.key.shape[2]
    groups = heads // kv_heads
    inputs = min(part.key.shape[0] for part in parts)
    if any(batch % part.key.shape[0] for part in parts):
        raise ValueError(f"grouped_attention: {batch} query rows do not share key/value rows")
    beams = batch // inputs
    # Row r = b * beams + j: every array gets the axes (b, j) in front, a part whose
    # key/value is shared by the beams only b.
    grouped = query.reshape(inputs, beams, q_len, kv_heads, groups, head_dim)

    def rows(x):
        """[batch | 1, ...] -> [inputs | 1, beams | 1, ...]."""
        return x[:, None] if x.shape[0] == 1 else x.reshape(inputs, beams, *x.shape[1:])

    def kv_spec(part):
        shared = part.key.shape[0] == inputs and beams > 1
        return ("b" if shared else "bj") + ("nkd" if part.heads_major else "knd"), shared

    logits = []
    for part in parts:
        spec, shared = kv_spec(part)
        key = part.key if shared else rows(part.key)
        dots = jnp.einsum(
            f"bjqngd,{spec}->bjngqk", grouped, key, preferred_element_type=logits_dtype
        )
        dots = softcap(dots * scale, logit_cap)
        if part.bias is not None:
            bias = rows(part.bias)
            bias = bias.reshape(*bias.shape[:2], kv_heads, groups, *bias.shape[3:])
            dots = dots + bias.astype(logits_dtype)
        logits.append(jnp.where(rows(part.mask)[:, :, None, None], dots, MASK_BIAS))
    sizes = [piece.shape[-1] for piece in logits]
    weights = jax.nn.softmax(jnp.concatenate(logits, axis=-1), axis=-1)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    out = None
    for part, w in zip(parts, jnp.split(weights, np.cumsum(sizes)[:-1], axis=-1), strict=True):
        spec, shared = kv_spec(part)
        value = part.value if shared else rows(part.value)
        piece = jnp.einsum(f"bjngqk,{spec}->bjqngd", w.astype(part.value.dtype), value)
        out = piece if out is None else out + piece
    return out.reshape(batch, q_len, heads, head_dim).astype(query.dtype)


def heads_major(x: jax.Array) -> jax.Array:
    """[batch, length, heads, head_dim] -> [batch, heads, length, head_dim]."""
    return jnp.swapaxes(x, 1, 2)


def self_attention_cache(module: nn.Module, key, value, decode_position):
    """Key/value cache of a decoder self-attention, heads-major [batch, kv_heads, L, d].

    The cache-creating call (full length L) stores zeros and returns key/value as
    given; each later call (one position) writes it at `decode_position` and returns
    the whole cache (the caller masks positions not yet written).
    -> (key, value, heads_major)
    """
    has_cache = module.has_variable("cache", "cached_key")
    batch, length, kv_heads, head_dim = key.shape
    shape = (batch, kv_heads, length, head_dim)
    cached_key = module.variable("cache", "cached_key", jnp.zeros, shape, key.dtype)
    cached_value = module.variable("cache", "cached_value", jnp.zeros, shape, value.dtype)
    if not has_cache:
        return key, value, False
    start = (0, 0, decode_position, 0)
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, heads_major(key), start)
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, heads_major(value), start)
    return cached_key.value, cached_value.value, True


def cross_attention_cache(module: nn.Module, compute_key_value: Callable):
    """Cross-attention keys/values, computed from the encoder output once per decode.

    Stored heads-major as `cross_key`/`cross_value` (the cache entries that are fixed
    for a whole decode); later calls read them without projecting again.
    -> (key, value, heads_major)
    """
    if module.has_variable("cache", "cross_key"):
        key = module.get_variable("cache", "cross_key")
        value = module.get_variable("cache", "cross_value")
        return key, value, True
    key, value = compute_key_value()
    module.put_variable("cache", "cross_key", heads_major(key))
    module.put_variable("cache", "cross_value", heads_major(value))
    return key, value, False


def attention_key_value(module, compute: Callable, decode: bool, is_cross: bool, position):
    """Keys/values of one attention call, through the decoding cache when decoding:
    `compute()` -> (key, value) [batch, length, kv_heads, head_dim] is skipped for cross-
    attention once cached. -> (key, value, heads_major)"""
    if decode and is_cross:
        return cross_attention_cache(module, compute)
    key, value = compute()
    if decode:
        return self_attention_cache(module, key, value, position)
    return key, value, False


def is_fixed_cache_entry(path: tuple[str, ...]) -> bool:
    """The cache entries that stay fixed for a whole decode (cross-attention keys/values)."""
    return path[-1] in ("cross_key", "cross_value")
