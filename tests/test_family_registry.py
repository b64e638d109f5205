"""The family registry: lookup by name, by config and by Hugging Face config; config
dicts that name their family (and old T5 ones that do not); what decoding keeps fixed."""

import json

import jax
import jax.numpy as jnp
import pytest
from testlib import tiny_config

from t5pipe import decoding
from t5pipe.model import T5
from t5pipe.models import (
    abstract_params,
    config_from_dict,
    family_for_hf,
    family_names,
    family_of,
    get_family,
    model_for,
)
from t5pipe.models.gemma import GemmaStackConfig
from t5pipe.models.t5gemma import T5GemmaConfig
from t5pipe.models.t5gemma2 import GEMMA3_STACK, T5Gemma2Config
from t5pipe.models.umt5 import UMT5Config

STACK = dict(d_model=16, d_ff=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=8,
             query_pre_attn_scalar=8, sliding_window=3)  # fmt: skip
CONFIGS = {
    "t5": tiny_config(num_encoder_layers=1, num_decoder_layers=2),
    "umt5": UMT5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_heads=2,
                       num_encoder_layers=1, num_decoder_layers=2,
                       relative_attention_num_buckets=8, relative_attention_max_distance=16),
    "t5gemma": T5GemmaConfig(encoder=GemmaStackConfig(**STACK), decoder=GemmaStackConfig(**STACK),
                             vocab_size=64),
    "t5gemma2": T5Gemma2Config(encoder=GEMMA3_STACK.replace(**STACK),
                               decoder=GEMMA3_STACK.replace(**STACK), vocab_size=64,
                               eoi_token_index=60),
}  # fmt: skip


def test_every_family_is_registered_and_found_by_its_config():
    assert family_names() == sorted(CONFIGS)
    for name, config in CONFIGS.items():
        family = family_of(config)
        assert family is get_family(name) and family.name == name
        assert isinstance(model_for(config), family.module_cls)
    assert get_family("t5").module_cls is T5
    with pytest.raises(ValueError, match=r"unknown model family 't5gema'.*did you mean: t5gemma"):
        get_family("t5gema")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_dicts_name_their_family_and_round_trip(name):
    config = CONFIGS[name]
    values = config.to_dict()
    assert values.get("family", "t5") == name
    assert config_from_dict(values) == config
    # Through JSON (lists instead of tuples), as a checkpoint's metadata stores it.
    assert config_from_dict(json.loads(json.dumps(values))) == config


def test_old_t5_checkpoint_dicts_without_family_are_t5():
    values = CONFIGS["t5"].to_dict()
    assert "family" not in values
    assert config_from_dict(values) == CONFIGS["t5"]
    assert config_from_dict({**values, "family": "t5"}) == CONFIGS["t5"]
    with pytest.raises(ValueError, match="UMT5Config holds family 'umt5', not 't5gemma'"):
        UMT5Config.from_dict({**CONFIGS["umt5"].to_dict(), "family": "t5gemma"})


def test_hugging_face_configs_find_their_family():
    for model_type, name in (("t5", "t5"), ("mt5", "t5"), ("umt5", "umt5"),
                             ("t5gemma", "t5gemma"), ("t5gemma2", "t5gemma2")):  # fmt: skip
        assert family_for_hf({"model_type": model_type}).name == name
    with pytest.raises(ValueError, match="model_type 'gemma2'"):
        family_for_hf({"model_type": "gemma2"})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fixed_cache_is_exactly_the_cross_attention_keys_and_values(name):
    """Decoding keeps cross-attention K/V (built once from the encoder output) out of the
    loop; self-attention K/V and the position grow and are reordered between beams."""
    config = CONFIGS[name]
    model = model_for(config)
    params, _ = abstract_params(config)

    def cache(params):
        tokens = jnp.ones((3, 5), jnp.int32)
        encoded, segments = model.apply({"params": params}, tokens, method="encode")
        return decoding._init_cache(model, params, encoded, segments, max_length=7)

    fixed, growing = jax.eval_shape(cache, params)
    kv_heads = getattr(config, "num_heads", None) or config.decoder.num_kv_heads
    head_dim = getattr(config, "d_kv", None) or config.decoder.head_dim
    assert {leaf.shape for leaf in fixed.values()} == {(3, kv_heads, 5, head_dim)}
    assert len(fixed) == 2 * 2  # key and value of each of the 2 decoder layers
    assert [leaf.shape for leaf in growing.values() if not leaf.shape] == [()]  # the position
    assert {leaf.shape for leaf in growing.values() if leaf.shape} == {(3, kv_heads, 7, head_dim)}
