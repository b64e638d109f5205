"""Decoding under a (data, model) mesh equals decoding on one device."""

import jax
import jax.numpy as jnp
import numpy as np
from hf_testlib import confident_t5_1_1, mixed_length_inputs

from t5pipe import partitioning
from t5pipe.decoding import DecodingOptions, decode, make_decode_fn
from t5pipe.model import abstract_params

MAX_NEW = 12


def test_decoding_under_a_mesh_equals_single_device():
    config, _, params = confident_t5_1_1()
    enc = mixed_length_inputs(config.vocab_size, 8, seed=6)
    mesh = partitioning.create_mesh((4, 1, 2))
    rules = partitioning.logical_axis_rules("standard")
    _, specs = abstract_params(config)
    sharded_params = jax.device_put(params, partitioning.logical_to_sharding(specs, mesh, rules))
    sharded_enc = jax.device_put(jnp.asarray(enc), partitioning.batch_sharding(mesh, rules))
    for options in (
        DecodingOptions("greedy", max_decode_length=MAX_NEW),
        DecodingOptions("beam", max_decode_length=MAX_NEW, num_beams=2, alpha=0.6),
    ):
        single = decode(params, config, enc, options)
        sharded = make_decode_fn(config, options, mesh, rules)(sharded_params, sharded_enc)
        np.testing.assert_array_equal(np.asarray(sharded.tokens), np.asarray(single.tokens))
