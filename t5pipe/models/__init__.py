"""Model families behind one encoder-decoder interface, looked up by name.

    family = get_family("t5gemma")          # or family_of(config)
    model = family.module_cls(config)       # or model_for(config)
    encoded, encoder_segment_ids = model.apply(
        {"params": params}, tokens, method=model.encode)
    logits = model.apply({"params": params}, encoded, encoder_segment_ids, decoder_tokens,
        method=model.decode)                 # float32 [batch, length, vocab]

Every family's flax module has the T5 contract (`t5pipe.model.T5`):

    __call__(encoder_input_tokens, decoder_input_tokens, encoder_segment_ids=None,
             decoder_segment_ids=None, enable_dropout=False) -> logits (teacher-forced)
    encode(encoder_input_tokens, encoder_segment_ids=None, enable_dropout=False)
        -> (encoded [batch, enc_length, embed], encoder_segment_ids [batch, enc_length])
    decode(encoded, encoder_segment_ids, decoder_input_tokens, decoder_segment_ids=None,
           enable_dropout=False, decode=False, max_decode_length=None)
        -> float32 logits [batch, length, vocab]

With decode=True the first call (full-length decoder input, no cache yet) creates the
"cache" collection, each later call feeds one position. `Family.is_fixed_cache(path)`
names the cache entries fixed for a whole decode (cross-attention keys/values, built
once from the encoder output); the rest (self-attention keys/values, the position)
grows step by step and is what beam search reorders. Beam search keeps the fixed
entries at one row per input while the queries have one row per beam, so a family's
cross-attention must let query row r read key/value row r // beams (as
`layers.grouped_attention` and `t5pipe.attention.dot_product_attention` do).

Each config is a frozen, gin-configurable dataclass with replace/to_dict/from_dict and
the fields decoding and training read (pad/eos/decoder_start token ids, dropout_rate,
dtype, scan_layers, remat_policy); non-T5 configs carry `family` and write it in
`to_dict()`. A checkpoint's `model_config` dict without "family" is T5.

Families are registered by module path (big_vision style): a family module defines
`FAMILY`, imported on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5pipe.errors import nearest

_FAMILY_MODULES = {
    "t5": "t5pipe.models.t5",
    "umt5": "t5pipe.models.umt5",
    "t5gemma": "t5pipe.models.t5gemma",
    "t5gemma2": "t5pipe.models.t5gemma2",
}
DEFAULT_FAMILY = "t5"  # what a config dict without "family" holds


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything the pipeline needs to know about one architecture.

    name            registry key, also the "family" of its config dicts
    config_cls      frozen dataclass of the hyper-parameters
    module_cls      flax module, `module_cls(config)`, with the contract above
    hf_architecture transformers class of its checkpoints (config.json "architectures")
    hf_model_types  config.json "model_type" values it reads
    config_from_hf  config.json dict -> config
    config_to_hf    config -> config.json dict that transformers reads back
    hf_entries      config -> generator of (hf_name, param_path, to_ours, to_hf), unscanned
                    tree (see `t5pipe.models.name_maps`); None where the family keeps
                    its own map (T5)
    params_from_hf  ((name, array) stream, config) -> unscanned parameter tree
    params_to_hf    (unscanned tree, config) -> (name, array) stream
    layer_counts    config -> {stack name: depth}, for the scanned layout
    is_fixed_cache  cache path -> True for entries fixed during a decode
    """

    name: str
    config_cls: type
    module_cls: type[nn.Module]
    hf_architecture: str
    config_from_hf: Callable[[dict], Any]
    config_to_hf: Callable[[Any], dict]
    params_from_hf: Callable[[Iterable[tuple[str, Any]], Any], dict]
    params_to_hf: Callable[[dict, Any], Iterator[tuple[str, Any]]]
    layer_counts: Callable[[Any], dict[str, int]]
    is_fixed_cache: Callable[[tuple[str, ...]], bool]
    hf_model_types: tuple[str, ...] = ()
    hf_entries: Callable[[Any], Iterator[tuple]] | None = None

    def scan_layout(self, params: dict, config) -> dict:
        from t5pipe.models.name_maps import scan_layout

        return scan_layout(params, self.layer_counts(config))

    def unscan_layout(self, params: dict, config) -> dict:
        from t5pipe.models.name_maps import unscan_layout

        return unscan_layout(params, self.layer_counts(config))


def family_names() -> list[str]:
    return sorted(_FAMILY_MODULES)


def get_family(name: str) -> Family:
    """The family registered as `name` ("t5", "umt5", "t5gemma", "t5gemma2")."""
    if name not in _FAMILY_MODULES:
        raise ValueError(
            f"unknown model family {name!r}{nearest(name, _FAMILY_MODULES)}; "
            f"known: {family_names()}"
        )
    return importlib.import_module(_FAMILY_MODULES[name]).FAMILY


def family_for_hf(hf_config: dict[str, Any]) -> Family:
    """The family that reads a Hugging Face `config.json` dict (by its "model_type")."""
    model_type = hf_config.get("model_type")
    by_type = {t: name for name in _FAMILY_MODULES for t in get_family(name).hf_model_types}
    if model_type not in by_type:
        raise ValueError(
            f"no model family reads Hugging Face model_type {model_type!r}"
            f"{nearest(str(model_type), by_type)}; known: {sorted(by_type)}"
        )
    return get_family(by_type[model_type])


def family_of(config) -> Family:
    """The family a config belongs to (T5's config predates the `family` field)."""
    family = get_family(getattr(config, "family", DEFAULT_FAMILY))
    if not isinstance(config, family.config_cls):
        raise TypeError(f"{type(config).__name__} is not a model config of any family")
    return family


def model_for(config) -> nn.Module:
    """The flax module of `config`'s family, built from `config`."""
    return family_of(config).module_cls(config)


def config_from_dict(values: dict[str, Any]):
    """A config from a checkpoint's `model_config` dict; without "family" it is T5."""
    values = dict(values)
    family = get_family(values.get("family", DEFAULT_FAMILY))
    if not hasattr(family.config_cls, "family"):
        values.pop("family", None)
    return family.config_cls.from_dict(values)


def register_configurables() -> None:
    """Imports every family, so that gin files can bind their config classes."""
    for name in _FAMILY_MODULES:
        get_family(name)


def init_params(config, rng: jax.Array, batch: int = 1, length: int = 8):
    """Random parameters of any family, as a plain (unboxed) pytree."""
    tokens = jnp.ones((batch, length), jnp.int32)
    return nn.unbox(model_for(config).init(rng, tokens, tokens)["params"])


def abstract_params(config):
    """(shape/dtype pytree, logical PartitionSpec pytree) of the parameters, unallocated."""
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    boxed = jax.eval_shape(
        lambda rng, t: model_for(config).init(rng, t, t)["params"], jax.random.PRNGKey(0), tokens
    )
    return nn.unbox(boxed), nn.get_partition_spec(boxed)


def count_params(config) -> int:
    shapes, _ = abstract_params(config)
    return int(sum(leaf.size for leaf in jax.tree.leaves(shapes)))
