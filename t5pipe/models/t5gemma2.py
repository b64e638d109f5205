"""T5Gemma 2 (text): Gemma 3 layers in an encoder-decoder with merged decoder attention.

Numerics follow Hugging Face's `T5Gemma2ForConditionalGeneration` on text inputs: as
T5Gemma (`t5pipe.models.gemma`) but with QK-norm instead of attention soft-capping,
RoPE bases per layer kind (global layers 1M, optionally linearly scaled; sliding layers
10k), five sliding layers per global one, encoder windows -(w + 1) // 2 < j - i <=
w // 2, one embedding table for encoder, decoder and output (plus a learned
end-of-image embedding that replaces the row of `eoi_token_index`), and a decoder
whose single attention attends, under one softmax, to its own past (causal, sliding
or global) and to the encoder output (keys through the same k projection and k-norm,
without RoPE). The vision tower is not part of this model.

Parameter tree (unscanned; `scan_layers` stacks each stack's `layers_<i>` as `layers`):

    token_embedder/embedding [vocab, embed]; token_embedder/eoi_embedding [embed]
    encoder/layers_<i>/{pre,post}_self_attention_norm/scale, {pre,post}_mlp_norm/scale
    encoder/layers_<i>/self_attention/{query, key, value, out, query_norm/scale [kv],
        key_norm/scale [kv]}; mlp/{wi_0, wi_1, wo}
    encoder/encoder_norm/scale
    decoder/layers_<i>/{... as the encoder, with merged_attention for self_attention}
    decoder/decoder_norm/scale
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import flax.linen as nn
import gin
import jax.numpy as jnp

from t5pipe.models import Family, layers, name_maps
from t5pipe.models.config_base import FamilyConfig, check_positive
from t5pipe.models.encoder_decoder import EncoderDecoder
from t5pipe.models.gemma import (
    GemmaAttention,
    GemmaDecoder,
    GemmaEncoder,
    GemmaStackConfig,
    attention_entries,
    block_entries,
    final_logits,
    first_token_id,
    gemma_mlp,
    layer_kind,
    mlp_entries,
    sandwich,
    stack_from_hf,
    stack_to_hf,
)

GEMMA3_STACK = GemmaStackConfig(
    sliding_window_pattern=6,
    rope_theta=1_000_000.0,
    rope_local_theta=10_000.0,
    attn_logit_softcapping=None,
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Gemma2Config(FamilyConfig):
    """Shapes and numerics of a T5Gemma 2 text model (Hugging Face's `T5Gemma2Config`)."""

    family: ClassVar[str] = "t5gemma2"
    nested: ClassVar[dict[str, type]] = {"encoder": GemmaStackConfig, "decoder": GemmaStackConfig}

    encoder: GemmaStackConfig = GEMMA3_STACK
    decoder: GemmaStackConfig = GEMMA3_STACK
    vocab_size: int = 262144
    eoi_token_index: int = 256000
    final_logit_softcapping: float | None = None
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 2
    dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        self.check_common()
        check_positive(self, "vocab_size")
        if self.encoder.d_model != self.decoder.d_model:
            raise ValueError(
                f"T5Gemma2Config: encoder and decoder share one embedding, so their widths "
                f"must agree (encoder.d_model={self.encoder.d_model}, "
                f"decoder.d_model={self.decoder.d_model})"
            )
        for name in ("encoder", "decoder"):
            if getattr(self, name).attn_logit_softcapping is not None:
                raise ValueError(
                    f"T5Gemma2Config.{name}.attn_logit_softcapping must be None: T5Gemma 2 "
                    "normalises queries and keys instead of soft-capping attention logits"
                )


class Embedder(layers.Embedder):
    """The shared table, scaled by sqrt(width) in float32, with the end-of-image token's
    row replaced by a learned vector (unscaled)."""

    eoi_token_index: int = 256000

    def setup(self):
        super().setup()
        self.eoi_embedding = self.param(
            "eoi_embedding",
            nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            (self.features,),
        )

    def __call__(self, tokens):
        rows = jnp.take(self.embedding, tokens, axis=0) * jnp.float32(self.features**0.5)
        rows = jnp.where((tokens == self.eoi_token_index)[..., None], self.eoi_embedding, rows)
        return rows.astype(self.dtype)


class MergedAttention(GemmaAttention):
    """One attention over the decoder's own keys (RoPE) and the encoder's (no RoPE),
    both through the same k/v projections and k-norm, under one softmax."""

    qk_norm: bool = True

    @nn.compact
    def __call__(self, x, encoded, self_mask, cross_mask, rope, deterministic, decode, position):
        """x [batch, q, embed], encoded [batch, enc, embed], masks bool [batch|1, q, keys]
        -> [batch, q, embed]."""
        s = self.stack
        length = x.shape[1]
        query = layers.apply_rope(self.project("query", x, s.num_heads, "heads"), *rope)
        has_cross = decode and self.has_variable("cache", "cross_key")
        # Before the cross keys/values are cached, one projection serves both parts.
        inputs = x if has_cross else jnp.concatenate([x, encoded.astype(x.dtype)], axis=1)
        keys = self.project("key", inputs, s.num_kv_heads, "kv_heads")
        values = self.project("value", inputs, s.num_kv_heads, "kv_heads")
        key, value = layers.apply_rope(keys[:, :length], *rope), values[:, :length]
        cross = (keys[:, length:], values[:, length:])
        heads_major = cross_major = False
        if decode:
            cross_key, cross_value, cross_major = layers.cross_attention_cache(self, lambda: cross)
            cross = (cross_key, cross_value)
            key, value, heads_major = layers.self_attention_cache(self, key, value, position)
        parts = [
            layers.KeyValue(key, value, self_mask, heads_major),
            layers.KeyValue(*cross, cross_mask, cross_major),
        ]
        out = layers.grouped_attention(query, parts, **self.attention_options(deterministic))
        return layers.project_out(self, out, x.shape[-1], self.dtype)


class DecoderLayer(nn.Module):
    stack: GemmaStackConfig
    config: T5Gemma2Config
    deterministic: bool
    decode: bool

    @nn.compact
    def __call__(
        self,
        x,
        encoded,
        global_mask,
        sliding_mask,
        cross_mask,
        global_rope,
        local_rope,
        position,
        is_sliding,
    ):
        s, cfg, det = self.stack, self.config, self.deterministic
        drop = functools.partial(nn.Dropout(cfg.dropout_rate), deterministic=det)
        mask, rope = layer_kind(is_sliding, (sliding_mask, local_rope), (global_mask, global_rope))
        attention = MergedAttention(
            s, cfg.dtype, cfg.attention_dropout_rate, name="merged_attention"
        )

        def attend(h):
            return attention(h, encoded, mask, cross_mask, rope, det, self.decode, position)

        x = sandwich(self, "self_attention", attend, x, s, cfg.dtype, drop)
        mlp = gemma_mlp(self, s, cfg)
        x = sandwich(self, "mlp", lambda h: mlp(h, det), x, s, cfg.dtype, drop)
        return layers.constrain(x, ("batch", "length", "embed"))


class T5Gemma2(EncoderDecoder):
    """The T5Gemma 2 text encoder-decoder, with the contract of `t5pipe.models`."""

    config: T5Gemma2Config

    def setup(self):
        cfg = self.config
        width = cfg.encoder.d_model
        self.token_embedder = Embedder(
            cfg.vocab_size, width, cfg.dtype, width**-0.5, eoi_token_index=cfg.eoi_token_index
        )
        self.encoder = GemmaEncoder(cfg.encoder, cfg, qk_norm=True, window="gemma3")
        self.decoder = GemmaDecoder(cfg, DecoderLayer)

    def embed_encoder(self, tokens):
        return self.token_embedder(tokens)

    def embed_decoder(self, tokens):
        return self.token_embedder(tokens)

    def logits(self, hidden):
        return final_logits(hidden, self.token_embedder, None, self.config)


# ----------------------------------------------------------------------------- Hugging Face


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> T5Gemma2Config:
    """A `T5Gemma2Config` from the dict of a Hugging Face `config.json` (text part)."""
    encoder, decoder = hf["encoder"], hf["decoder"]
    # HF's T5Gemma 2 attention never soft-caps, whatever the config says.
    no_cap = {"attn_logit_softcapping": None}
    values = dict(
        encoder=stack_from_hf(encoder["text_config"], **no_cap),
        decoder=stack_from_hf(decoder, **no_cap),
        vocab_size=decoder["vocab_size"],
        eoi_token_index=encoder.get("eoi_token_index", hf.get("eoi_token_index", 256000)),
        final_logit_softcapping=decoder.get("final_logit_softcapping"),
        dropout_rate=hf.get("dropout_rate", 0.0),
        attention_dropout_rate=hf.get("attention_dropout", 0.0),
        pad_token_id=decoder.get("pad_token_id", 0),
        eos_token_id=first_token_id(decoder.get("eos_token_id", 1)),
        decoder_start_token_id=decoder.get("bos_token_id", 2),
    )
    values.update(overrides)
    return T5Gemma2Config(**values)


def config_to_hf(config: T5Gemma2Config, vision_config: dict | None = None) -> dict[str, Any]:
    """The `config.json` dict of `T5Gemma2ForConditionalGeneration` with these text shapes.

    `vision_config` (a SigLIP vision config dict) describes the vision tower this model
    does not hold; transformers' default is used when it is None.
    """
    text = stack_to_hf(config.encoder, config, per_layer_rope=True)
    return dict(
        architectures=["T5Gemma2ForConditionalGeneration"],
        model_type="t5gemma2",
        encoder=dict(
            text_config=text,
            vision_config=vision_config or {},
            eoi_token_index=config.eoi_token_index,
            tie_word_embeddings=True,
        ),
        decoder=stack_to_hf(config.decoder, config, per_layer_rope=True),
        tie_word_embeddings=True,
        dropout_rate=config.dropout_rate,
        attention_dropout=config.attention_dropout_rate,
        pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
        bos_token_id=config.decoder_start_token_id,
        vocab_size=config.vocab_size,
        is_encoder_decoder=True,
    )


def _stack_entries(hf_prefix: str, stack_name: str, stack: GemmaStackConfig, attention: str):
    for i in range(stack.num_layers):
        hf, ours = f"{hf_prefix}.layers.{i}", (stack_name, f"layers_{i}")
        yield from block_entries(hf, ours, "self_attention", "self_attn_layernorm")
        yield from attention_entries(f"{hf}.self_attn", (*ours, attention), stack)
        for norm in ("q", "k"):
            yield name_maps.same(
                f"{hf}.self_attn.{norm}_norm.weight",
                (*ours, attention, f"{'query' if norm == 'q' else 'key'}_norm", "scale"),
            )
        yield from block_entries(hf, ours, "mlp", "feedforward_layernorm")
        yield from mlp_entries(f"{hf}.mlp", ours)
    yield name_maps.same(f"{hf_prefix}.norm.weight", (stack_name, f"{stack_name}_norm", "scale"))


def hf_entries(config: T5Gemma2Config):
    """(hf_name, path, to_ours, to_hf) for every text tensor of the unscanned tree."""
    embed = "model.encoder.text_model.embed_tokens"
    yield name_maps.same(f"{embed}.weight", ("token_embedder", "embedding"))
    yield name_maps.same(f"{embed}.eoi_embedding", ("token_embedder", "eoi_embedding"))
    yield from _stack_entries(
        "model.encoder.text_model", "encoder", config.encoder, "self_attention"
    )
    yield from _stack_entries("model.decoder", "decoder", config.decoder, "merged_attention")


# Tied copies of the shared embedding, and the vision tower this model does not hold.
_TIED = ("model.decoder.embed_tokens.weight", "model.decoder.embed_tokens.eoi_embedding",
         "lm_head.out_proj.weight")  # fmt: skip
_VISION_PREFIXES = ("model.encoder.vision_tower.", "model.encoder.multi_modal_projector.")


def is_ignored_hf_name(name: str) -> bool:
    return name in _TIED or name.startswith(_VISION_PREFIXES)


FAMILY = Family(
    name="t5gemma2",
    config_cls=T5Gemma2Config,
    module_cls=T5Gemma2,
    hf_architecture="T5Gemma2ForConditionalGeneration",
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    params_from_hf=lambda tensors, config: name_maps.params_from_hf(
        tensors, hf_entries(config), is_ignored_hf_name
    ),
    params_to_hf=lambda params, config: name_maps.params_to_hf(params, hf_entries(config)),
    layer_counts=lambda config: {
        "encoder": config.encoder.num_layers,
        "decoder": config.decoder.num_layers,
    },
    hf_model_types=("t5gemma2",),
    is_fixed_cache=layers.is_fixed_cache_entry,
    hf_entries=hf_entries,
)
