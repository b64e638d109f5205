"""Every shipped model gin file builds a config whose shapes match the published checkpoints."""

import jax
import numpy as np
import pytest

from t5pipe import gin_setup
from t5pipe.model import abstract_params
from t5pipe.model_config import T5Config

# Parameter counts of the published checkpoints (millions), as reported by
# Hugging Face's `num_parameters()` on the released weights.
PUBLISHED_MILLIONS = {
    "t5_1_0/small": 60.5,
    "t5_1_0/base": 222.9,
    "t5_1_0/large": 737.7,
    "t5_1_1/small": 77.0,
    "t5_1_1/base": 247.6,
    "t5_1_1/large": 783.2,
    "mt5/small": 300.2,
    "byt5/small": 299.6,
    "flan_t5/base": 247.6,
}
SIZES = {
    "t5_1_0": ["small", "base", "large", "3B", "11B"],
    "t5_1_1": ["small", "base", "large", "xl", "xxl"],
    "mt5": ["small", "base", "large", "xl", "xxl"],
    "byt5": ["small", "base", "large", "xl", "xxl"],
    "flan_t5": ["small", "base", "large", "xl", "xxl"],
}


def config_from_gin(name: str) -> T5Config:
    return gin_setup.model_config_from_gin([f"models/{name}.gin"])


def count_params(config: T5Config) -> int:
    shapes, _ = abstract_params(config)
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(shapes)))


@pytest.mark.parametrize(
    "name", [f"{fam}/{size}" for fam, sizes in SIZES.items() for size in sizes]
)
def test_every_model_gin_file_parses(name):
    config = config_from_gin(name)
    family = name.split("/")[0]
    # T5 1.0 ties the output layer and uses ReLU; every later family has its own output
    # layer and gated GELU. The vocabulary is the family's.
    assert config.tie_word_embeddings == (family == "t5_1_0")
    assert config.feed_forward_proj == ("relu" if family == "t5_1_0" else "gated-gelu")
    assert config.vocab_size == {"mt5": 250112, "byt5": 384}.get(family, 32128)


@pytest.mark.parametrize("name", sorted(PUBLISHED_MILLIONS))
def test_parameter_count_matches_published(name):
    millions = count_params(config_from_gin(name)) / 1e6
    assert millions == pytest.approx(PUBLISHED_MILLIONS[name], abs=0.05)


def test_logical_axes_name_every_parameter():
    _, specs = abstract_params(config_from_gin("t5_1_1/small"))
    allowed = {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets", "layers", None}
    for spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
        assert set(spec) <= allowed and any(spec), spec
