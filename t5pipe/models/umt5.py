"""umT5: T5.1.1 with a relative position bias of its own in every self-attention layer.

Numerics follow Hugging Face's `UMT5ForConditionalGeneration`: unscaled attention,
T5's RMS norm and bucketing, pre-norm residual blocks, gated-GELU feed-forward. The
published checkpoints have a separate output layer (`tie_word_embeddings: false`);
tied, the decoder output is rescaled by d_model**-0.5 as in T5 1.0.

Parameter tree (unscanned; `scan_layers` stacks each stack's `layers_<i>` as `layers`):

    token_embedder/embedding                                  [vocab, embed]
    encoder/layers_<i>/pre_attention_layer_norm/scale         [embed]
    encoder/layers_<i>/attention/{query,key,value}            [embed, heads, kv]
    encoder/layers_<i>/attention/out                          [heads, kv, embed]
    encoder/layers_<i>/attention/relpos_bias                  [heads, relpos_buckets]
    encoder/layers_<i>/pre_mlp_layer_norm/scale
    encoder/layers_<i>/mlp/{wi_0, wi_1 | wi} [embed, mlp], wo [mlp, embed]
    encoder/encoder_norm/scale
    decoder/layers_<i>/{pre_self_attention_layer_norm, self_attention (+ relpos_bias),
        pre_cross_attention_layer_norm, encoder_decoder_attention, pre_mlp_layer_norm, mlp}
    decoder/decoder_norm/scale
    logits_dense/kernel                                       [embed, vocab] (untied)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any, ClassVar

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from t5pipe.models import Family, layers, name_maps
from t5pipe.models.config_base import FamilyConfig, check_positive
from t5pipe.models.encoder_decoder import EncoderDecoder, layer_stack
from t5pipe.relative_position import relative_position_buckets

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "silu": "silu"}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class UMT5Config(FamilyConfig):
    """Shapes and numerics of umT5; field names follow Hugging Face's `UMT5Config`."""

    family: ClassVar[str] = "umt5"

    vocab_size: int = 256384
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_heads: int = 6
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-6
    # "gated-gelu" (all published umT5: tanh GELU), "gated-relu", "relu", "gelu", ...
    feed_forward_proj: str = "gated-gelu"
    tie_word_embeddings: bool = False
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        self.check_common()
        check_positive(self, "vocab_size", "d_model", "d_kv", "d_ff", "num_heads")
        act = self.feed_forward_proj.removeprefix("gated-")
        if act not in _ACTIVATIONS:
            raise ValueError(
                f"UMT5Config.feed_forward_proj={self.feed_forward_proj!r}: expected "
                f"[gated-]{{{', '.join(_ACTIVATIONS)}}}"
            )

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        act = self.feed_forward_proj.removeprefix("gated-")
        # HF: "gated-gelu" means the tanh approximation ("gelu_new"), plain "gelu" the erf.
        return "gelu_tanh" if self.feed_forward_proj == "gated-gelu" else _ACTIVATIONS[act]


class Attention(nn.Module):
    """T5 attention (unscaled) through `dense`, with an own relative position bias
    when `bidirectional` is not None (self-attention), and a decoding cache. Shares
    `layers.grouped_attention` with the Gemma families (one key/value head per query head).
    """

    config: UMT5Config
    bidirectional: bool | None = None
    is_cross_attention: bool = False

    @nn.compact
    def __call__(self, inputs_q, inputs_kv, mask, deterministic, decode=False, position=None):
        """inputs [batch, q|kv length, embed], mask bool [batch|1, q, kv]; `position`
        (decoding one step) is the query's position -> [batch, q, embed]."""
        cfg = self.config
        dtype, heads, kv = jnp.dtype(cfg.dtype), cfg.num_heads, cfg.d_kv
        project = functools.partial(
            layers.project_heads,
            self,
            num_heads=heads,
            head_dim=kv,
            head_axis="heads",
            dtype=dtype,
        )
        # Mesh TF's initialisation folds the missing 1/sqrt(d_kv) into the query.
        query = project("query", inputs_q, stddev=(cfg.d_model * kv) ** -0.5)

        def key_value():
            return project("key", inputs_kv), project("value", inputs_kv)

        key, value, heads_major = layers.attention_key_value(
            self, key_value, decode, self.is_cross_attention, position
        )

        bias = None
        if self.bidirectional is not None:
            key_length = key.shape[2] if heads_major else key.shape[1]
            bias = self._relative_bias(inputs_q.shape[1], key_length, position)
        rate = 0.0 if deterministic else cfg.dropout_rate
        out = layers.grouped_attention(
            query,
            [layers.KeyValue(key, value, mask, heads_major, bias)],
            dropout_rate=rate,
            dropout_rng=self.make_rng("dropout") if rate > 0.0 else None,
        )
        return layers.project_out(self, out, cfg.d_model, dtype)

    def _relative_bias(self, query_length, key_length, position):
        """[1, heads, q, k]: this layer's learned bias per (head, distance bucket)."""
        cfg = self.config
        table = self.param(
            "relpos_bias",
            nn.with_logical_partitioning(
                layers.normal(cfg.d_model**-0.5), ("heads", "relpos_buckets")
            ),
            (cfg.num_heads, cfg.relative_attention_num_buckets),
        )
        # Decoding one step, the query is row `position` of the full square.
        rows = query_length if position is None else key_length
        buckets = jnp.asarray(
            relative_position_buckets(
                rows,
                key_length,
                self.bidirectional,
                cfg.relative_attention_num_buckets,
                cfg.relative_attention_max_distance,
            )
        )
        if position is not None:
            buckets = jax.lax.dynamic_slice_in_dim(buckets, position, 1, axis=0)
        return jnp.take(table, buckets, axis=1)[None]


def _norm(cfg: UMT5Config, name: str):
    return layers.RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name=name)


def _mlp(cfg: UMT5Config):
    return layers.FeedForward(
        cfg.d_ff, cfg.activation, cfg.is_gated, cfg.dropout_rate, cfg.dtype, name="mlp"
    )


class EncoderLayer(nn.Module):
    config: UMT5Config
    deterministic: bool

    @nn.compact
    def __call__(self, x, mask):
        """x [batch, length, embed], mask bool [batch, length, length] -> x."""
        cfg, det = self.config, self.deterministic
        drop = functools.partial(nn.Dropout(cfg.dropout_rate), deterministic=det)
        h = _norm(cfg, "pre_attention_layer_norm")(x)
        x = x + drop(Attention(cfg, bidirectional=True, name="attention")(h, h, mask, det))
        h = _norm(cfg, "pre_mlp_layer_norm")(x)
        x = x + drop(_mlp(cfg)(h, det))
        return layers.constrain(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
    config: UMT5Config
    deterministic: bool
    decode: bool

    @nn.compact
    def __call__(self, x, encoded, self_mask, cross_mask, position):
        """x [batch, length, embed], encoded [batch, enc_length, embed] -> x."""
        cfg, det = self.config, self.deterministic
        drop = functools.partial(nn.Dropout(cfg.dropout_rate), deterministic=det)
        h = _norm(cfg, "pre_self_attention_layer_norm")(x)
        attention = Attention(cfg, bidirectional=False, name="self_attention")
        x = x + drop(attention(h, h, self_mask, det, self.decode, position))
        h = _norm(cfg, "pre_cross_attention_layer_norm")(x)
        cross = Attention(cfg, is_cross_attention=True, name="encoder_decoder_attention")
        x = x + drop(cross(h, encoded, cross_mask, det, self.decode))
        h = _norm(cfg, "pre_mlp_layer_norm")(x)
        x = x + drop(_mlp(cfg)(h, det))
        return layers.constrain(x, ("batch", "length", "embed"))


class Encoder(nn.Module):
    config: UMT5Config

    @nn.compact
    def __call__(self, embedded, segment_ids, deterministic: bool):
        """embedded [batch, length, embed], segment_ids [batch, length] -> [batch, length, embed]"""
        cfg = self.config
        mask = layers.segment_mask(segment_ids, segment_ids)
        x = nn.Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
        x = layers.constrain(x.astype(cfg.dtype), ("batch", "length", "embed"))
        x = layer_stack(
            EncoderLayer,
            cfg.num_encoder_layers,
            scan=cfg.scan_layers,
            remat_policy=cfg.remat_policy,
            config=cfg,
            deterministic=deterministic,
        )(x, mask)
        x = _norm(cfg, "encoder_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
    config: UMT5Config

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
        cfg = self.config
        cross_mask = layers.segment_mask(decoder_segment_ids, encoder_segment_ids)
        position = None
        if decode and self.has_variable("cache", "position"):
            counter = self.variable("cache", "position", jnp.zeros, (), jnp.int32)
            position = counter.value
            self_mask = (jnp.arange(max_decode_length) <= position)[None, None]
            counter.value = position + 1
        else:
            if decode:
                self.variable("cache", "position", jnp.zeros, (), jnp.int32)
            length = embedded.shape[1]
            causal = jnp.tril(jnp.ones((length, length), jnp.bool_))[None]
            same = decoder_segment_ids[:, :, None] == decoder_segment_ids[:, None, :]
            self_mask = causal & same
        x = nn.Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
        x = layers.constrain(x.astype(cfg.dtype), ("batch", "length", "embed"))
        x = layer_stack(
            DecoderLayer,
            cfg.num_decoder_layers,
            scan=cfg.scan_layers,
            remat_policy=cfg.remat_policy,
            config=cfg,
            deterministic=deterministic,
            decode=decode,
        )(x, encoded, self_mask, cross_mask, position)
        x = _norm(cfg, "decoder_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class UMT5(EncoderDecoder):
    """The umT5 encoder-decoder, with the contract of `t5pipe.models`."""

    config: UMT5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = layers.Embedder(cfg.vocab_size, cfg.d_model, cfg.dtype)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if not cfg.tie_word_embeddings:
            self.logits_dense = layers.OutputLayer(cfg.vocab_size, cfg.dtype)

    def embed_encoder(self, tokens):
        return self.token_embedder(tokens)

    def embed_decoder(self, tokens):
        return self.token_embedder(tokens)

    def logits(self, hidden):
        if self.config.tie_word_embeddings:
            return self.token_embedder.attend(hidden * (self.config.d_model**-0.5))
        return self.logits_dense(hidden)


# ----------------------------------------------------------------------------- Hugging Face

_HF_FIELDS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "dropout_rate",
    "layer_norm_epsilon",
    "feed_forward_proj",
    "tie_word_embeddings",
    "pad_token_id",
    "eos_token_id",
    "decoder_start_token_id",
)


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> UMT5Config:
    """A `UMT5Config` from the dict of a Hugging Face `config.json`."""
    values = {k: hf[k] for k in _HF_FIELDS if hf.get(k) is not None}
    values["num_encoder_layers"] = hf["num_layers"]
    values["num_decoder_layers"] = hf.get("num_decoder_layers") or hf["num_layers"]
    values.update(overrides)
    return UMT5Config(**values)


def config_to_hf(config: UMT5Config) -> dict[str, Any]:
    """The `config.json` dict of `UMT5ForConditionalGeneration` with these shapes."""
    hf = {k: getattr(config, k) for k in _HF_FIELDS}
    hf.update(
        architectures=["UMT5ForConditionalGeneration"],
        model_type="umt5",
        num_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers,
        is_encoder_decoder=True,
        use_cache=True,
    )
    return hf


def hf_entries(config: UMT5Config) -> Iterator[name_maps.Entry]:
    """(hf_name, path, to_ours, to_hf) for every tensor of the unscanned tree."""
    d, h, k = config.d_model, config.num_heads, config.d_kv
    m = name_maps

    def attention(hf, path, relative):
        for name, ours in (("q", "query"), ("k", "key"), ("v", "value")):
            yield m.heads_in(f"{hf}.{name}.weight", (*path, ours), d, h, k)
        yield m.heads_out(f"{hf}.o.weight", (*path, "out"), d, h, k)
        if relative:
            yield m.transposed(f"{hf}.relative_attention_bias.weight", (*path, "relpos_bias"))

    def mlp(hf, path):
        for name in ("wi_0", "wi_1") if config.is_gated else ("wi",):
            yield m.transposed(f"{hf}.{name}.weight", (*path, name))
        yield m.transposed(f"{hf}.wo.weight", (*path, "wo"))

    yield m.same("shared.weight", ("token_embedder", "embedding"))
    for i in range(config.num_encoder_layers):
        hf, ours = f"encoder.block.{i}.layer", ("encoder", f"layers_{i}")
        yield m.same(f"{hf}.0.layer_norm.weight", (*ours, "pre_attention_layer_norm", "scale"))
        yield from attention(f"{hf}.0.SelfAttention", (*ours, "attention"), True)
        yield m.same(f"{hf}.1.layer_norm.weight", (*ours, "pre_mlp_layer_norm", "scale"))
        yield from mlp(f"{hf}.1.DenseReluDense", (*ours, "mlp"))
    yield m.same("encoder.final_layer_norm.weight", ("encoder", "encoder_norm", "scale"))
    for i in range(config.num_decoder_layers):
        hf, ours = f"decoder.block.{i}.layer", ("decoder", f"layers_{i}")
        yield m.same(f"{hf}.0.layer_norm.weight", (*ours, "pre_self_attention_layer_norm", "scale"))
        yield from attention(f"{hf}.0.SelfAttention", (*ours, "self_attention"), True)
        yield m.same(
            f"{hf}.1.layer_norm.weight", (*ours, "pre_cross_attention_layer_norm", "scale")
        )
        yield from attention(f"{hf}.1.EncDecAttention", (*ours, "encoder_decoder_attention"), False)
        yield m.same(f"{hf}.2.layer_norm.weight", (*ours, "pre_mlp_layer_norm", "scale"))
        yield from mlp(f"{hf}.2.DenseReluDense", (*ours, "mlp"))
    yield m.same("decoder.final_layer_norm.weight", ("decoder", "decoder_norm", "scale"))
    if not config.tie_word_embeddings:
        yield m.transposed("lm_head.weight", ("logits_dense", "kernel"))


def _ignored(config: UMT5Config):
    tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    if config.tie_word_embeddings:
        tied.add("lm_head.weight")
    return tied.__contains__


FAMILY = Family(
    name="umt5",
    config_cls=UMT5Config,
    module_cls=UMT5,
    hf_architecture="UMT5ForConditionalGeneration",
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    params_from_hf=lambda tensors, config: name_maps.params_from_hf(
        tensors, hf_entries(config), _ignored(config)
    ),
    params_to_hf=lambda params, config: name_maps.params_to_hf(params, hf_entries(config)),
    layer_counts=lambda config: {
        "encoder": config.num_encoder_layers,
        "decoder": config.num_decoder_layers,
    },
    hf_model_types=("umt5",),
    is_fixed_cache=layers.is_fixed_cache_entry,
    hf_entries=hf_entries,
)
