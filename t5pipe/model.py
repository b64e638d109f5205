"""T5 encoder-decoder in Flax Linen.

Every parameter and the main activations carry logical axis names (`batch`,
`length`, `embed`, `mlp`, `heads`, `kv`, `vocab`, `relpos_buckets`, and
`layers` when scanned); `t5pipe.partitioning` maps them onto a device mesh.

Parameter tree (unscanned; with `scan_layers` the `layers_<i>` become one
`layers` subtree whose leaves have a leading [layers] axis):

    token_embedder/embedding                      [vocab, embed]
    encoder/relpos_bias/rel_embedding             [heads, relpos_buckets]
    encoder/layers_<i>/pre_attention_layer_norm/scale
    encoder/layers_<i>/attention/{query,key,value}   [embed, heads, kv]
    encoder/layers_<i>/attention/out             [heads, kv, embed]
    encoder/layers_<i>/pre_mlp_layer_norm/scale
    encoder/layers_<i>/mlp/{wi | wi_0, wi_1} [embed, mlp]; mlp/wo [mlp, embed]
    encoder/encoder_norm/scale                    [embed]
    decoder/relpos_bias/rel_embedding
    decoder/layers_<i>/{pre_self_attention_layer_norm, self_attention,
        pre_cross_attention_layer_norm, encoder_decoder_attention, pre_mlp_layer_norm, mlp}
    decoder/decoder_norm/scale
    logits_dense/kernel                           [embed, vocab]   (untied only)
    prompt                                        [prompt_length, embed] (prompt tuning only)

Numerics follow the T5 paper's Mesh TensorFlow code (and so Hugging Face's
`T5ForConditionalGeneration`): unscaled attention, RMS norm without mean
subtraction or bias, pre-norm residual blocks, one relative position bias per
stack shared by all its layers.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5pipe import projection
from t5pipe.attention import dot_product_attention, mask_to_bias
from t5pipe.model_config import T5Config
from t5pipe.models import abstract_params, init_params  # noqa: F401 - kept importable here
from t5pipe.projection import dense
from t5pipe.relative_position import RelativePositionBias

_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _param(module: nn.Module, name: str, stddev: float, shape, axes, init=None):
    """A float32 parameter annotated with logical axis names."""
    init = init if init is not None else nn.initializers.normal(stddev)
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def _constrain(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    return nn.with_logical_constraint(x, axes)


def _activation(name: str):
    return {
        "relu": jax.nn.relu,
        # HF: plain "gelu" is the exact erf GELU, "gated-gelu" the tanh approximation.
        "gelu": functools.partial(jax.nn.gelu, approximate=False),
        "gated-gelu": functools.partial(jax.nn.gelu, approximate=True),
        "gated-relu": jax.nn.relu,
        "gated-silu": jax.nn.silu,
    }[name]


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, no mean subtraction, statistics in float32."""

    epsilon: float
    dtype: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _param(self, "scale", 0.0, (x.shape[-1],), ("embed",), nn.initializers.ones)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return normed.astype(self.dtype) * scale.astype(self.dtype)


def _heads_major(x: jax.Array) -> jax.Array:
    """[batch, length, heads, kv] -> [batch, heads, length, kv]."""
    return jnp.swapaxes(x, 1, 2)


class MultiHeadAttention(nn.Module):
    """Projections around `dot_product_attention`, with a key/value cache for decoding.

    Self-attention caches keys/values per step; cross-attention computes them
    once from the encoder output on the cache-creating call and reuses them.
    """

    config: T5Config
    is_cross_attention: bool = False

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        bias: jax.Array,
        deterministic: bool,
        decode: bool = False,
        decode_position: jax.Array | None = None,
    ) -> jax.Array:
        """inputs_q [batch, q_length, embed], inputs_kv [batch, kv_length, embed],
        bias [batch|1, heads, q_length, kv_length] -> [batch, q_length, embed]."""
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        heads, kv = cfg.num_heads, cfg.d_kv

        def project(name, x, stddev):
            shape, axes = (cfg.d_model, heads, kv), ("embed", "heads", "kv")
            init = nn.initializers.normal(stddev)
            y = dense(self, name, x, shape, axes, "ble,ehd->blhd", init, dtype)
            return _constrain(y, ("batch", "length", "heads", "kv"))

        # Mesh TF's initialisation folds the missing 1/sqrt(d_kv) into the query.
        query = project("query", inputs_q, (cfg.d_model * kv) ** -0.5)

        # The decoding cache holds keys/values heads-major, [batch, heads, length, kv]:
        # the layout the per-step attention matmuls read as is. Stored [batch, length,
        # heads, kv], every layer's cache was transposed again at every step, which cost
        # more than the step's matmuls at small batch sizes.
        kv_heads_major = False
        if decode and self.is_cross_attention:
            # `project` must run on every call so the parameters exist; only the
            # cache-creating call pays for it on the real encoder output.
            has_cache = self.has_variable("cache", "cached_key")
            key = project("key", inputs_kv, cfg.d_model**-0.5)
            value = project("value", inputs_kv, cfg.d_model**-0.5)
            cached_key = self.variable("cache", "cached_key", _heads_major, key)
            cached_value = self.variable("cache", "cached_value", _heads_major, value)
            if has_cache:
                key, value = cached_key.value, cached_value.value
                kv_heads_major = True
        else:
            key = project("key", inputs_kv, cfg.d_model**-0.5)
            value = project("value", inputs_kv, cfg.d_model**-0.5)
            if decode:
                has_cache = self.has_variable("cache", "cached_key")
                batch, length = key.shape[:2]
                shape = (batch, heads, length, kv)
                cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, key.dtype)
                cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, key.dtype)
                if has_cache:
                    # One new position: write it at `decode_position`, attend to the whole cache
                    # (the caller's bias masks positions not yet written).
                    start = (0, 0, decode_position, 0)
                    key = jax.lax.dynamic_update_slice(cached_key.value, _heads_major(key), start)
                    value = jax.lax.dynamic_update_slice(
                        cached_value.value, _heads_major(value), start
                    )
                    cached_key.value, cached_value.value = key, value
                    kv_heads_major = True

        dropout_rng = None
        if not deterministic and cfg.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        out = dot_product_attention(
            query,
            key,
            value,
            bias,
            dropout_rate=0.0 if deterministic else cfg.dropout_rate,
            dropout_rng=dropout_rng,
            implementation=cfg.attention_impl,
            kv_heads_major=kv_heads_major,
        )
        out_init = nn.initializers.normal((heads * kv) ** -0.5)
        out_shape, out_axes = (heads, kv, cfg.d_model), ("heads", "kv", "embed")
        out = dense(self, "out", out, out_shape, out_axes, "blhd,hde->ble", out_init, dtype)
        return _constrain(out, ("batch", "length", "embed"))


class FeedForward(nn.Module):
    """wo(dropout(act(wi x))) or, gated, wo(dropout(act(wi_0 x) * wi_1 x))."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        """x [batch, length, embed] -> [batch, length, embed]."""
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        x = x.astype(dtype)

        def dense_in(name):
            init = nn.initializers.normal(cfg.d_model**-0.5)
            y = dense(
                self, name, x, (cfg.d_model, cfg.d_ff), ("embed", "mlp"), "ble,ef->blf", init, dtype
            )
            return _constrain(y, ("batch", "length", "mlp"))

        act = _activation(cfg.feed_forward_proj)
        hidden = act(dense_in("wi_0")) * dense_in("wi_1") if cfg.is_gated else act(dense_in("wi"))
        hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=deterministic)
        wo_init = nn.initializers.normal(cfg.d_ff**-0.5)
        shape, axes = (cfg.d_ff, cfg.d_model), ("mlp", "embed")
        out = dense(self, "wo", hidden, shape, axes, "blf,fe->ble", wo_init, dtype)
        return _constrain(out, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool):
        """x [batch, length, embed], bias [batch, heads, length, length] -> (x, None)."""
        cfg = self.config
        drop = functools.partial(nn.Dropout(cfg.dropout_rate), deterministic=deterministic)
        norm = functools.partial(RMSNorm, cfg.layer_norm_epsilon, cfg.dtype)
        h = norm(name="pre_attention_layer_norm")(x)
        x = x + drop(MultiHeadAttention(cfg, name="attention")(h, h, bias, deterministic))
        h = norm(name="pre_mlp_layer_norm")(x)
        x = x + drop(FeedForward(cfg, name="mlp")(h, deterministic))
        return _constrain(x, ("batch", "length", "embed")), None


class DecoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        encoded: jax.Array,
        self_bias: jax.Array,
        cross_bias: jax.Array,
        decode_position: jax.Array | None,
        deterministic: bool,
        decode: bool,
    ):
        """x [batch, length, embed], encoded [batch, enc_length, embed] -> (x, None)."""
        cfg = self.config
        drop = functools.partial(nn.Dropout(cfg.dropout_rate), deterministic=deterministic)
        norm = functools.partial(RMSNorm, cfg.layer_norm_epsilon, cfg.dtype)
        h = norm(name="pre_self_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg, name="self_attention")(
            h, h, self_bias, deterministic, decode, decode_position
        )
        x = x + drop(h)
        h = norm(name="pre_cross_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg, is_cross_attention=True, name="encoder_decoder_attention")(
            h, encoded, cross_bias, deterministic, decode
        )
        x = x + drop(h)
        h = norm(name="pre_mlp_layer_norm")(x)
        x = x + drop(FeedForward(cfg, name="mlp")(h, deterministic))
        return _constrain(x, ("batch", "length", "embed")), None


def _stack(layer_cls, cfg: T5Config, num_layers: int, num_array_args: int, static_argnums):
    """Returns a callable(x, *args) -> x running `num_layers` layers, scanned or unrolled.

    `static_argnums` are the positions (counting `self` as 0) of Python-valued
    arguments, which remat must not trace.
    """
    if cfg.remat_policy != "none":
        layer_cls = nn.remat(
            layer_cls,
            policy=_REMAT_POLICIES[cfg.remat_policy],
            prevent_cse=not cfg.scan_layers,
            static_argnums=static_argnums,
        )
    if cfg.scan_layers:
        scanned = nn.scan(
            layer_cls,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * num_array_args,
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg, name="layers")
        return lambda x, *args: scanned(x, *args)[0]

    layers = [layer_cls(cfg, name=f"layers_{i}") for i in range(num_layers)]

    def run(x, *args):
        for layer in layers:
            x, _ = layer(x, *args)
        return x

    return run


class Encoder(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, embedded: jax.Array, segment_ids: jax.Array, deterministic: bool):
        """embedded [batch, length, embed], segment_ids [batch, length] (0 = padding)
        -> [batch, length, embed]."""
        cfg = self.config
        length = embedded.shape[1]
        position_bias = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")(
            length, length
        )
        # A query attends to the keys of its own example; padding keys are never attended.
        mask = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
        bias = position_bias + mask_to_bias(mask)[:, None]
        x = nn.Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
        x = _constrain(x.astype(cfg.dtype), ("batch", "length", "embed"))
        x = _stack(EncoderLayer, cfg, cfg.num_encoder_layers, 2, (3,))(x, bias, deterministic)
        x = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="encoder_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(
        self,
        embedded: jax.Array,
        encoded: jax.Array,
        decoder_segment_ids: jax.Array,
        encoder_segment_ids: jax.Array,
        deterministic: bool,
        decode: bool = False,
        max_decode_length: int | None = None,
    ):
        """embedded [batch, length, embed], encoded [batch, enc_length, embed],
        segment ids [batch, length] / [batch, enc_length] -> [batch, length, embed].

        With `decode=True` the first call (no cache yet) creates the cache from
        a full-length `embedded` and the encoder output; each later call takes
        one position ([batch, 1, embed]) and needs `max_decode_length`.
        """
        cfg = self.config
        length = embedded.shape[1]
        relpos = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")
        cross_mask = decoder_segment_ids[:, :, None] == encoder_segment_ids[:, None, :]
        cross_mask &= encoder_segment_ids[:, None, :] > 0
        decode_position = None
        if decode and self.has_variable("cache", "position"):
            position = self.variable("cache", "position", jnp.zeros, (), jnp.int32)
            decode_position = position.value
            self_bias = relpos(max_decode_length, max_decode_length, decode_position)
            self_bias += mask_to_bias(jnp.arange(max_decode_length) <= decode_position)
            position.value = decode_position + 1
        else:
            if decode:
                self.variable("cache", "position", jnp.zeros, (), jnp.int32)
            causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
            same_segment = decoder_segment_ids[:, :, None] == decoder_segment_ids[:, None, :]
            self_bias = relpos(length, length) + mask_to_bias(causal & same_segment)[:, None]
        cross_bias = mask_to_bias(cross_mask)[:, None]

        x = nn.Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
        x = _constrain(x.astype(cfg.dtype), ("batch", "length", "embed"))
        x = _stack(DecoderLayer, cfg, cfg.num_decoder_layers, 6, (6, 7))(
            x, encoded, self_bias, cross_bias, decode_position, deterministic, decode
        )
        x = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="decoder_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class T5(nn.Module):
    """The encoder-decoder. Methods: `__call__` (teacher-forced logits), `encode`, `decode`."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(1.0), ("vocab", "embed")
            ),
            param_dtype=jnp.float32,
            dtype=cfg.dtype,
        )
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if not cfg.tie_word_embeddings:
            self.logits_dense = nn.DenseGeneral(
                cfg.vocab_size,
                use_bias=False,
                dtype=cfg.dtype,
                param_dtype=jnp.float32,
                dot_general=projection.dot_general,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.normal(cfg.d_model**-0.5), ("embed", "vocab")
                ),
            )
        if cfg.prompt_length > 0:
            self.prompt = self.param(
                "prompt",
                nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "embed")),
                (cfg.prompt_length, cfg.d_model),
                jnp.float32,
            )

    def encode(
        self,
        encoder_input_tokens: jax.Array,
        encoder_segment_ids: jax.Array | None = None,
        enable_dropout: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """tokens [batch, length] -> (encoded [batch, P + length, embed],
        encoder segment ids [batch, P + length]), P = prompt_length."""
        cfg = self.config
        if encoder_segment_ids is None:
            encoder_segment_ids = (encoder_input_tokens != cfg.pad_token_id).astype(jnp.int32)
        embedded = self.token_embedder(encoder_input_tokens)
        if cfg.prompt_length > 0:
            batch = encoder_input_tokens.shape[0]
            prompt = jnp.broadcast_to(
                self.prompt.astype(embedded.dtype), (batch, *self.prompt.shape)
            )
            embedded = jnp.concatenate([prompt, embedded], axis=1)
            # The prompt belongs to the row's first example (prompt tuning is unpacked).
            prompt_segments = jnp.broadcast_to(
                jnp.maximum(encoder_segment_ids[:, :1], 1), (batch, cfg.prompt_length)
            )
            encoder_segment_ids = jnp.concatenate([prompt_segments, encoder_segment_ids], axis=1)
        encoded = self.encoder(embedded, encoder_segment_ids, not enable_dropout)
        return encoded, encoder_segment_ids

    def decode(
        self,
        encoded: jax.Array,
        encoder_segment_ids: jax.Array,
        decoder_input_tokens: jax.Array,
        decoder_segment_ids: jax.Array | None = None,
        enable_dropout: bool = False,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> jax.Array:
        """-> logits [batch, length, vocab], float32."""
        cfg = self.config
        if decoder_segment_ids is None:
            decoder_segment_ids = jnp.ones(decoder_input_tokens.shape, jnp.int32)
        embedded = self.token_embedder(decoder_input_tokens)
        hidden = self.decoder(
            embedded,
            encoded,
            decoder_segment_ids,
            encoder_segment_ids,
            not enable_dropout,
            decode,
            max_decode_length,
        )
        if cfg.tie_word_embeddings:
            logits = self.token_embedder.attend(hidden * (cfg.d_model**-0.5))
        else:
            logits = self.logits_dense(hidden)
        return _constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

    def __call__(
        self,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        enable_dropout: bool = False,
    ) -> jax.Array:
        """Teacher-forced logits: tokens [batch, enc_length], [batch, dec_length]
        -> [batch, dec_length, vocab], float32."""
        encoded, encoder_segment_ids = self.encode(
            encoder_input_tokens, encoder_segment_ids, enable_dropout
        )
        return self.decode(
            encoded, encoder_segment_ids, decoder_input_tokens, decoder_segment_ids, enable_dropout
        )


def shift_right(targets: jax.Array, start_token_id: int = 0) -> jax.Array:
    """Decoder inputs from targets [batch, length]: start token, then targets[:-1]."""
    start = jnp.full((targets.shape[0], 1), start_token_id, targets.dtype)
    return jnp.concatenate([start, targets[:, :-1]], axis=1)
