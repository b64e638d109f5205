"""Gemma building blocks shared by T5Gemma and T5Gemma 2: stack config, attention,
the sandwich-norm residual block, the encoder stack, decoder masks, and the Hugging
Face config/name-map pieces of one stack.

Numerics follow Hugging Face's Gemma-based encoder-decoders: embeddings scaled by
sqrt(width), RoPE, grouped-query attention scaled by query_pre_attn_scalar**-0.5
(tanh soft-capped logits in T5Gemma, QK-norm in T5Gemma 2), interleaved
sliding-window and global layers, RMS norms (1 + scale) before and after every
sublayer, GeGLU feed-forward.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from t5pipe.models import layers, name_maps
from t5pipe.models.config_base import check_positive
from t5pipe.models.encoder_decoder import layer_stack

LAYER_TYPES = ("sliding_attention", "full_attention")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GemmaStackConfig:
    """One stack (encoder or decoder) of a Gemma-style encoder-decoder.

    Layer i (0-based) uses a sliding window unless (i + 1) is a multiple of
    `sliding_window_pattern`; `layer_types` lists them explicitly instead. RoPE:
    `rope_theta` and linear `rope_scaling_factor` for global layers; sliding layers
    use `rope_local_theta` unscaled, or exactly the global RoPE when it is None.
    """

    d_model: int = 2304
    d_ff: int = 9216
    num_layers: int = 26
    num_heads: int = 8
    num_kv_heads: int = 4
    head_dim: int = 256
    query_pre_attn_scalar: int = 256
    sliding_window: int = 4096
    sliding_window_pattern: int = 2
    layer_types: tuple[str, ...] = ()
    rope_theta: float = 10000.0
    rope_scaling_factor: float = 1.0
    rope_local_theta: float | None = None
    attn_logit_softcapping: float | None = 50.0
    rms_norm_eps: float = 1e-6
    activation: str = "gelu_tanh"

    def __post_init__(self):
        check_positive(self, "d_model", "d_ff", "num_layers", "num_heads", "num_kv_heads")
        check_positive(self, "head_dim", "sliding_window", "sliding_window_pattern")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"GemmaStackConfig.num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.layer_types and (
            len(self.layer_types) != self.num_layers or set(self.layer_types) - set(LAYER_TYPES)
        ):
            raise ValueError(
                f"GemmaStackConfig.layer_types must list {self.num_layers} entries of "
                f"{LAYER_TYPES}, got {self.layer_types}"
            )
        if self.activation not in layers.ACTIVATIONS:
            raise ValueError(
                f"GemmaStackConfig.activation={self.activation!r}: expected one of "
                f"{sorted(layers.ACTIVATIONS)}"
            )

    def replace(self, **changes: Any) -> GemmaStackConfig:
        return dataclasses.replace(self, **changes)

    def is_sliding(self, layer: int) -> bool:
        if self.layer_types:
            return self.layer_types[layer] == "sliding_attention"
        return (layer + 1) % self.sliding_window_pattern != 0

    def rope(self, positions):
        """RoPE (sin, cos) [batch, length, head_dim] of global layers, then of sliding ones."""
        global_rope = layers.rope_tables(
            positions, self.head_dim, self.rope_theta, self.rope_scaling_factor
        )
        if self.rope_local_theta is None:
            return global_rope, global_rope
        return global_rope, layers.rope_tables(positions, self.head_dim, self.rope_local_theta)


class GemmaAttention(nn.Module):
    """Gemma attention through `dense`: GQA, RoPE (self-attention), optional QK-norm,
    logits scaled by query_pre_attn_scalar**-0.5 and soft-capped; decoding cache."""

    stack: GemmaStackConfig
    dtype: str
    dropout_rate: float
    is_cross_attention: bool = False
    qk_norm: bool = False

    @nn.compact
    def __call__(self, x, kv_input, mask, rope, deterministic, decode=False, position=None):
        """x [batch, q, embed], kv_input [batch, kv, kv_embed], mask bool [batch|1, q, kv],
        rope (sin, cos) [batch, q, head_dim] or None -> [batch, q, embed]."""
        s = self.stack
        query = self.project("query", x, s.num_heads, "heads")
        if rope is not None:
            query = layers.apply_rope(query, *rope)

        def key_value():
            key = self.project("key", kv_input, s.num_kv_heads, "kv_heads")
            value = self.project("value", kv_input, s.num_kv_heads, "kv_heads")
            return (layers.apply_rope(key, *rope) if rope is not None else key), value

        key, value, heads_major = layers.attention_key_value(
            self, key_value, decode, self.is_cross_attention, position
        )
        parts = [layers.KeyValue(key, value, mask, heads_major)]
        out = layers.grouped_attention(query, parts, **self.attention_options(deterministic))
        return layers.project_out(self, out, x.shape[-1], self.dtype)

    def project(self, name, x, num_heads, head_axis):
        """A q/k/v projection [batch, length, heads, head_dim], QK-normed if asked."""
        y = layers.project_heads(
            self, name, x, num_heads, self.stack.head_dim, head_axis, self.dtype
        )
        if self.qk_norm and name in ("query", "key"):
            norm = layers.RMSNorm(
                self.stack.rms_norm_eps,
                self.dtype,
                one_centered=True,
                axis_name="kv",
                name=f"{name}_norm",
            )
            y = norm(y)
        return y

    def attention_options(self, deterministic: bool) -> dict:
        rate = 0.0 if deterministic else self.dropout_rate
        return dict(
            scale=self.stack.query_pre_attn_scalar**-0.5,
            logit_cap=self.stack.attn_logit_softcapping,
            dropout_rate=rate,
            dropout_rng=self.make_rng("dropout") if rate > 0.0 else None,
        )


def layer_kind(is_sliding, sliding: tuple, full: tuple) -> tuple:
    """The (mask, rope) of a layer: `sliding`'s if it uses a sliding window, else `full`'s."""
    return jax.tree.map(functools.partial(layers.select, is_sliding), sliding, full)


def sandwich(module, name, sublayer, x, stack: GemmaStackConfig, dtype, drop):
    """x + drop(post_norm(sublayer(pre_norm(x)))): Gemma's residual block."""
    norm = functools.partial(layers.RMSNorm, stack.rms_norm_eps, dtype, one_centered=True)
    h = sublayer(norm(name=f"pre_{name}_norm", parent=module)(x))
    return x + drop(norm(name=f"post_{name}_norm", parent=module)(h))


def gemma_mlp(module, stack: GemmaStackConfig, config):
    return layers.FeedForward(
        stack.d_ff,
        stack.activation,
        True,
        config.dropout_rate,
        config.dtype,
        name="mlp",
        parent=module,
    )


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward blocks; also T5Gemma 2's (with QK-norm)."""

    stack: GemmaStackConfig
    config: Any
    deterministic: bool
    qk_norm: bool = False

    @nn.compact
    def __call__(self, x, global_mask, sliding_mask, global_rope, local_rope, is_sliding):
        s, cfg, det = self.stack, self.config, self.deterministic
        drop = functools.partial(nn.Dropout(cfg.dropout_rate), deterministic=det)
        mask, rope = layer_kind(is_sliding, (sliding_mask, local_rope), (global_mask, global_rope))
        attention = GemmaAttention(
            s, cfg.dtype, cfg.attention_dropout_rate, qk_norm=self.qk_norm, name="self_attention"
        )
        x = sandwich(
            self,
            "self_attention",
            lambda h: attention(h, h, mask, rope, det),
            x,
            s,
            cfg.dtype,
            drop,
        )
        mlp = gemma_mlp(self, s, cfg)
        x = sandwich(self, "mlp", lambda h: mlp(h, det), x, s, cfg.dtype, drop)
        return layers.constrain(x, ("batch", "length", "embed"))


class GemmaEncoder(nn.Module):
    """The encoder stack. `window` "symmetric": a sliding layer sees |i - j| <= w
    (T5Gemma); "gemma3": -(w + 1) // 2 < j - i <= w // 2 (T5Gemma 2)."""

    stack: GemmaStackConfig
    config: Any
    qk_norm: bool = False
    window: str = "symmetric"

    @nn.compact
    def __call__(self, embedded, segment_ids, deterministic: bool):
        """embedded [batch, length, embed], segment_ids [batch, length] -> same shape."""
        s, cfg = self.stack, self.config
        index = jnp.arange(segment_ids.shape[1])[None]
        global_mask = layers.segment_mask(segment_ids, segment_ids)
        w = s.sliding_window
        before, after = (w + 1, w + 1) if self.window == "symmetric" else ((w + 1) // 2, w // 2 + 1)
        sliding_mask = global_mask & layers.window_mask(index, index, before, after)
        global_rope, local_rope = s.rope(layers.positions_from_segments(segment_ids))
        x = nn.Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
        x = layers.constrain(x, ("batch", "length", "embed"))
        x = layer_stack(
            EncoderLayer,
            s.num_layers,
            scan=cfg.scan_layers,
            remat_policy=cfg.remat_policy,
            per_layer=lambda i: (s.is_sliding(i),),
            stack=s,
            config=cfg,
            deterministic=deterministic,
            qk_norm=self.qk_norm,
        )(x, global_mask, sliding_mask, global_rope, local_rope)
        x = layers.RMSNorm(s.rms_norm_eps, cfg.dtype, one_centered=True, name="encoder_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


def decoder_masks(module, stack, decoder_segment_ids, decode, max_decode_length):
    """Self-attention masks and RoPE positions of a decoder call, and the decode position.

    -> (global_mask, sliding_mask, positions [batch, length], position or None); the
    masks are bool [batch|1, length, keys]: causal (and within the example) in teacher
    forcing, the cache's written positions when decoding one step.
    """
    if decode and module.has_variable("cache", "position"):
        counter = module.variable("cache", "position", jnp.zeros, (), jnp.int32)
        position = counter.value
        counter.value = position + 1
        keys = jnp.arange(max_decode_length)[None]
        query = jnp.reshape(position, (1, 1))
        global_mask = layers.window_mask(query, keys, after=1)
        sliding_mask = layers.window_mask(query, keys, stack.sliding_window, 1)
        positions = jnp.broadcast_to(query, decoder_segment_ids.shape)
        return global_mask, sliding_mask, positions, position
    if decode:
        module.variable("cache", "position", jnp.zeros, (), jnp.int32)
    index = jnp.arange(decoder_segment_ids.shape[1])[None]
    same = decoder_segment_ids[:, :, None] == decoder_segment_ids[:, None, :]
    global_mask = same & layers.window_mask(index, index, after=1)
    sliding_mask = same & layers.window_mask(index, index, stack.sliding_window, 1)
    return global_mask, sliding_mask, layers.positions_from_segments(decoder_segment_ids), None


class GemmaDecoder(nn.Module):
    """The decoder stack of `config.decoder`, made of `layer_cls` layers called as
    layer(x, encoded, global_mask, sliding_mask, cross_mask, global_rope, local_rope,
    position, is_sliding)."""

    config: Any
    layer_cls: type[nn.Module]

    @nn.compact
    def __call__(
        self,
        embedded,
        encoded,
        decoder_segment_ids,
        encoder_segment_ids,
        deterministic: bool,
        decode: bool = False,
        max_decode_length: int | None = None,
    ):
        """embedded [batch, length, embed] (one position per decoding step)
        -> [batch, length, embed]."""
        cfg, s = self.config, self.config.decoder
        global_mask, sliding_mask, positions, position = decoder_masks(
            self, s, decoder_segment_ids, decode, max_decode_length
        )
        cross_mask = layers.segment_mask(decoder_segment_ids, encoder_segment_ids)
        global_rope, local_rope = s.rope(positions)
        x = nn.Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
        x = layers.constrain(x, ("batch", "length", "embed"))
        x = layer_stack(
            self.layer_cls,
            s.num_layers,
            scan=cfg.scan_layers,
            remat_policy=cfg.remat_policy,
            per_layer=lambda i: (s.is_sliding(i),),
            stack=s,
            config=cfg,
            deterministic=deterministic,
            decode=decode,
        )(x, encoded, global_mask, sliding_mask, cross_mask, global_rope, local_rope, position)
        x = layers.RMSNorm(s.rms_norm_eps, cfg.dtype, one_centered=True, name="decoder_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


def scaled_embedding(embedder: layers.Embedder, tokens, width: int):
    """Gemma's input embedding: table row * sqrt(width), the factor in the activation dtype."""
    return embedder(tokens) * jnp.asarray(width**0.5, embedder.dtype)


def final_logits(hidden, embedder, logits_dense, config) -> jnp.ndarray:
    """Output projection (tied to `embedder` or `logits_dense`), soft-capped, float32."""
    logits = embedder.attend(hidden) if logits_dense is None else logits_dense(hidden)
    return layers.softcap(logits.astype(jnp.float32), config.final_logit_softcapping)


# ----------------------------------------------------------------------------- Hugging Face

_HF_ACTIVATIONS = {
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu": "gelu",
    "silu": "silu",
    "relu": "relu",
}


def stack_from_hf(hf: dict[str, Any], **overrides: Any) -> GemmaStackConfig:
    """A `GemmaStackConfig` from a Hugging Face Gemma module config dict."""
    if hf.get("attention_bias"):
        raise ValueError("attention_bias=True (biased q/k/v/o projections) is not supported")
    layer_types = tuple(hf.get("layer_types") or ())
    rope = hf.get("rope_parameters") or {}
    values = dict(
        d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf["num_key_value_heads"],
        head_dim=hf["head_dim"],
        query_pre_attn_scalar=hf["query_pre_attn_scalar"],
        sliding_window=hf["sliding_window"],
        attn_logit_softcapping=hf.get("attn_logit_softcapping"),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        activation=_HF_ACTIVATIONS[hf.get("hidden_activation", "gelu_pytorch_tanh")],
    )
    if "full_attention" in rope:  # per layer type (T5Gemma 2)
        values.update(_rope_from_hf(rope["full_attention"], "global"))
        values.update(_rope_from_hf(rope.get("sliding_attention", {}), "local"))
    else:
        values.update(_rope_from_hf({**hf, **rope}, "global"))
    if layer_types:
        pattern = _sliding_window_pattern(layer_types)
        if pattern is None:
            values["layer_types"] = layer_types
        else:
            values["sliding_window_pattern"] = pattern
    values.update(overrides)
    return GemmaStackConfig(**values)


def _sliding_window_pattern(layer_types: tuple[str, ...]) -> int | None:
    """The n for which exactly every n-th layer is global, or None for another layout."""
    sliding = [t == "sliding_attention" for t in layer_types]
    for n in range(1, len(sliding) + 2):
        if all(((i + 1) % n != 0) == s for i, s in enumerate(sliding)):
            return n
    return None


def _rope_from_hf(rope: dict[str, Any], which: str) -> dict[str, Any]:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "linear"):
        raise ValueError(f"RoPE type {kind!r} is not supported (default and linear are)")
    theta = float(rope.get("rope_theta", 10000.0))
    factor = float(rope.get("factor", 1.0)) if kind == "linear" else 1.0
    if which == "global":
        return {"rope_theta": theta, "rope_scaling_factor": factor}
    if factor != 1.0:
        raise ValueError("linear RoPE scaling on sliding-window layers is not supported")
    return {"rope_local_theta": theta}


def stack_to_hf(stack: GemmaStackConfig, config, per_layer_rope: bool) -> dict[str, Any]:
    """The Hugging Face module config dict of one stack."""
    global_rope = {"rope_type": "default", "rope_theta": stack.rope_theta}
    if stack.rope_scaling_factor != 1.0:
        global_rope.update(rope_type="linear", factor=stack.rope_scaling_factor)
    if per_layer_rope:
        local = stack.rope_local_theta if stack.rope_local_theta is not None else stack.rope_theta
        rope = {
            "full_attention": global_rope,
            "sliding_attention": {"rope_type": "default", "rope_theta": local},
        }
    else:
        rope = global_rope
    return dict(
        hidden_size=stack.d_model,
        intermediate_size=stack.d_ff,
        num_hidden_layers=stack.num_layers,
        num_attention_heads=stack.num_heads,
        num_key_value_heads=stack.num_kv_heads,
        head_dim=stack.head_dim,
        query_pre_attn_scalar=stack.query_pre_attn_scalar,
        sliding_window=stack.sliding_window,
        layer_types=[
            LAYER_TYPES[0] if stack.is_sliding(i) else LAYER_TYPES[1]
            for i in range(stack.num_layers)
        ],
        attn_logit_softcapping=stack.attn_logit_softcapping,
        final_logit_softcapping=config.final_logit_softcapping,
        rms_norm_eps=stack.rms_norm_eps,
        rope_parameters=rope,
        attention_bias=False,
        hidden_activation={"gelu_tanh": "gelu_pytorch_tanh"}.get(
            stack.activation, stack.activation
        ),
        vocab_size=config.vocab_size,
        pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
        bos_token_id=config.decoder_start_token_id,
        dropout_rate=config.dropout_rate,
        attention_dropout=config.attention_dropout_rate,
    )


def first_token_id(token_id):
    """Gemma IT checkpoints list several EOS ids ([1, 107]); decoding stops on the first."""
    return token_id[0] if isinstance(token_id, list | tuple) else token_id


def attention_entries(hf, path, stack: GemmaStackConfig, kv_embed: int | None = None):
    """q/k/v/o of one Gemma attention (k/v reading `kv_embed`, default the stack width)."""
    m, d, dh = name_maps, stack.d_model, stack.head_dim
    yield m.heads_in(f"{hf}.q_proj.weight", (*path, "query"), d, stack.num_heads, dh)
    for name, ours in (("k", "key"), ("v", "value")):
        yield m.heads_in(
            f"{hf}.{name}_proj.weight", (*path, ours), kv_embed or d, stack.num_kv_heads, dh
        )
    yield m.heads_out(f"{hf}.o_proj.weight", (*path, "out"), d, stack.num_heads, dh)


def block_entries(hf, path, name, hf_name):
    """The two norms around one sublayer: pre_<name>_norm / post_<name>_norm."""
    for side in ("pre", "post"):
        yield name_maps.same(
            f"{hf}.{side}_{hf_name}.weight", (*path, f"{side}_{name}_norm", "scale")
        )


def mlp_entries(hf, path):
    for name, ours in (("gate", "wi_0"), ("up", "wi_1"), ("down", "wo")):
        yield name_maps.transposed(f"{hf}.{name}_proj.weight", (*path, "mlp", ours))
