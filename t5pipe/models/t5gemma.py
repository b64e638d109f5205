"""T5Gemma: Gemma 2 layers in a T5 encoder-decoder layout.

Numerics follow Hugging Face's `T5GemmaForConditionalGeneration`: embeddings scaled
by sqrt(width) (in the activation dtype), RoPE, grouped-query attention scaled by
query_pre_attn_scalar**-0.5 with tanh soft-capped logits, interleaved sliding-window
and global layers (encoder windows |i - j| <= w, decoder causal windows i - j < w),
RMS norms (1 + scale) before and after every sublayer, GeGLU feed-forward, soft-capped
final logits. Encoder and decoder are separate stacks whose widths may differ (9B-2B):
the decoder's cross-attention reads the encoder width.

Parameter tree (unscanned; `scan_layers` stacks each stack's `layers_<i>` as `layers`):

    encoder_embedder/embedding, decoder_embedder/embedding        [vocab, embed]
    encoder/layers_<i>/{pre,post}_self_attention_norm/scale        [embed]
    encoder/layers_<i>/self_attention/query [embed, heads, kv]; key, value
        [embed, kv_heads, kv]; out [heads, kv, embed]
    encoder/layers_<i>/{pre,post}_mlp_norm/scale; mlp/{wi_0, wi_1} [embed, mlp], wo
    encoder/encoder_norm/scale
    decoder/layers_<i>/{... as the encoder ..., {pre,post}_cross_attention_norm,
        encoder_decoder_attention/{query, key [enc_embed, kv_heads, kv], value, out}}
    decoder/decoder_norm/scale
    logits_dense/kernel                                            [embed, vocab] (untied)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import flax.linen as nn
import gin

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
    scaled_embedding,
    stack_from_hf,
    stack_to_hf,
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5GemmaConfig(FamilyConfig):
    """Shapes and numerics of a T5Gemma model (Hugging Face's `T5GemmaConfig`)."""

    family: ClassVar[str] = "t5gemma"
    nested: ClassVar[dict[str, type]] = {"encoder": GemmaStackConfig, "decoder": GemmaStackConfig}

    encoder: GemmaStackConfig = GemmaStackConfig()
    decoder: GemmaStackConfig = GemmaStackConfig()
    vocab_size: int = 256000
    tie_word_embeddings: bool = True
    final_logit_softcapping: float | None = 30.0
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 2  # Gemma's <bos>
    dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        self.check_common()
        check_positive(self, "vocab_size")


class DecoderLayer(nn.Module):
    stack: GemmaStackConfig
    config: T5GemmaConfig
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
        s, cfg, det, decode = self.stack, self.config, self.deterministic, self.decode
        drop = functools.partial(nn.Dropout(cfg.dropout_rate), deterministic=det)
        mask, rope = layer_kind(is_sliding, (sliding_mask, local_rope), (global_mask, global_rope))
        attention = functools.partial(GemmaAttention, s, cfg.dtype, cfg.attention_dropout_rate)
        self_attention = attention(name="self_attention")
        x = sandwich(
            self,
            "self_attention",
            lambda h: self_attention(h, h, mask, rope, det, decode, position),
            x,
            s,
            cfg.dtype,
            drop,
        )
        cross = attention(is_cross_attention=True, name="encoder_decoder_attention")
        x = sandwich(
            self,
            "cross_attention",
            lambda h: cross(h, encoded, cross_mask, None, det, decode),
            x,
            s,
            cfg.dtype,
            drop,
        )
        mlp = gemma_mlp(self, s, cfg)
        x = sandwich(self, "mlp", lambda h: mlp(h, det), x, s, cfg.dtype, drop)
        return layers.constrain(x, ("batch", "length", "embed"))


class T5Gemma(EncoderDecoder):
    """The T5Gemma encoder-decoder, with the contract of `t5pipe.models`."""

    config: T5GemmaConfig

    def setup(self):
        cfg = self.config
        embedder = functools.partial(layers.Embedder, cfg.vocab_size, dtype=cfg.dtype)
        self.encoder_embedder = embedder(cfg.encoder.d_model, stddev=cfg.encoder.d_model**-0.5)
        self.decoder_embedder = embedder(cfg.decoder.d_model, stddev=cfg.decoder.d_model**-0.5)
        self.encoder = GemmaEncoder(cfg.encoder, cfg)
        self.decoder = GemmaDecoder(cfg, DecoderLayer)
        self.logits_dense = None
        if not cfg.tie_word_embeddings:
            self.logits_dense = layers.OutputLayer(cfg.vocab_size, cfg.dtype)

    def embed_encoder(self, tokens):
        return scaled_embedding(self.encoder_embedder, tokens, self.config.encoder.d_model)

    def embed_decoder(self, tokens):
        return scaled_embedding(self.decoder_embedder, tokens, self.config.decoder.d_model)

    def logits(self, hidden):
        return final_logits(hidden, self.decoder_embedder, self.logits_dense, self.config)


# ----------------------------------------------------------------------------- Hugging Face


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> T5GemmaConfig:
    """A `T5GemmaConfig` from the dict of a Hugging Face `config.json`."""
    decoder = hf["decoder"]
    values = dict(
        encoder=stack_from_hf(hf["encoder"]),
        decoder=stack_from_hf(decoder),
        vocab_size=hf.get("vocab_size", decoder["vocab_size"]),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        final_logit_softcapping=decoder.get("final_logit_softcapping"),
        dropout_rate=hf.get("dropout_rate", 0.0),
        attention_dropout_rate=hf.get("attention_dropout", 0.0),
        pad_token_id=decoder.get("pad_token_id", 0),
        eos_token_id=first_token_id(decoder.get("eos_token_id", 1)),
        decoder_start_token_id=decoder.get("bos_token_id", 2),
    )
    values.update(overrides)
    return T5GemmaConfig(**values)


def config_to_hf(config: T5GemmaConfig) -> dict[str, Any]:
    """The `config.json` dict of `T5GemmaForConditionalGeneration` with these shapes."""
    return dict(
        architectures=["T5GemmaForConditionalGeneration"],
        model_type="t5gemma",
        encoder=stack_to_hf(config.encoder, config, per_layer_rope=False),
        decoder=stack_to_hf(config.decoder, config, per_layer_rope=False),
        vocab_size=config.vocab_size,
        tie_word_embeddings=config.tie_word_embeddings,
        dropout_rate=config.dropout_rate,
        attention_dropout=config.attention_dropout_rate,
        pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
        bos_token_id=config.decoder_start_token_id,
        is_encoder_decoder=True,
    )


def hf_entries(config: T5GemmaConfig):
    """(hf_name, path, to_ours, to_hf) for every tensor of the unscanned tree."""
    enc, dec = config.encoder, config.decoder
    yield name_maps.same("model.encoder.embed_tokens.weight", ("encoder_embedder", "embedding"))
    for i in range(enc.num_layers):
        hf, ours = f"model.encoder.layers.{i}", ("encoder", f"layers_{i}")
        yield from block_entries(hf, ours, "self_attention", "self_attn_layernorm")
        yield from attention_entries(f"{hf}.self_attn", (*ours, "self_attention"), enc)
        yield from block_entries(hf, ours, "mlp", "feedforward_layernorm")
        yield from mlp_entries(f"{hf}.mlp", ours)
    yield name_maps.same("model.encoder.norm.weight", ("encoder", "encoder_norm", "scale"))
    yield name_maps.same("model.decoder.embed_tokens.weight", ("decoder_embedder", "embedding"))
    for i in range(dec.num_layers):
        hf, ours = f"model.decoder.layers.{i}", ("decoder", f"layers_{i}")
        yield from block_entries(hf, ours, "self_attention", "self_attn_layernorm")
        yield from attention_entries(f"{hf}.self_attn", (*ours, "self_attention"), dec)
        yield from block_entries(hf, ours, "cross_attention", "cross_attn_layernorm")
        yield from attention_entries(
            f"{hf}.cross_attn", (*ours, "encoder_decoder_attention"), dec, enc.d_model
        )
        yield from block_entries(hf, ours, "mlp", "feedforward_layernorm")
        yield from mlp_entries(f"{hf}.mlp", ours)
    yield name_maps.same("model.decoder.norm.weight", ("decoder", "decoder_norm", "scale"))
    if not config.tie_word_embeddings:
        yield name_maps.transposed("lm_head.out_proj.weight", ("logits_dense", "kernel"))


def _ignored(config: T5GemmaConfig):
    return lambda name: config.tie_word_embeddings and name == "lm_head.out_proj.weight"


FAMILY = Family(
    name="t5gemma",
    config_cls=T5GemmaConfig,
    module_cls=T5Gemma,
    hf_architecture="T5GemmaForConditionalGeneration",
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    params_from_hf=lambda tensors, config: name_maps.params_from_hf(
        tensors, hf_entries(config), _ignored(config)
    ),
    params_to_hf=lambda params, config: name_maps.params_to_hf(params, hf_entries(config)),
    layer_counts=lambda config: {
        "encoder": config.encoder.num_layers,
        "decoder": config.decoder.num_layers,
    },
    hf_model_types=("t5gemma",),
    is_fixed_cache=layers.is_fixed_cache_entry,
    hf_entries=hf_entries,
)
