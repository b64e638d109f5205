"""A grouped-query family (T5Gemma, one key/value head) under every mesh layout.

As `test_scale_out` does for T5: from the same parameters and packed batches, three
real train steps on one device and under data 8, fsdp 8 and data 2 x fsdp 2 x model 2
give the same losses and parameters, parameters are split as the `standard` rules say
(the single key/value head, fewer than the model axis has devices, stays whole), and
greedy decodes under the 2 x 2 x 2 mesh equal the one-device ones.
"""

import functools

import jax
import numpy as np
import pytest
from test_scale_out import BATCH, STEPS, make_optimizer, packed_batches

from t5pipe import decoding, partitioning
from t5pipe.models import abstract_params, init_params, model_for
from t5pipe.models.gemma import GemmaStackConfig
from t5pipe.models.t5gemma import T5GemmaConfig
from t5pipe.train_step import init_train_state, train_step

LAYOUTS = {"one_device": (1, 1, 1), "data8": (8, 1, 1), "fsdp8": (1, 8, 1),
           "data2_fsdp2_model2": (2, 2, 2)}  # fmt: skip
STACK = GemmaStackConfig(d_model=32, d_ff=64, num_layers=1, num_heads=4, num_kv_heads=1,
                         head_dim=8, query_pre_attn_scalar=8, sliding_window=4)  # fmt: skip
# Untied: with a tied output layer, random Gemma weights echo the input token.
CONFIG = T5GemmaConfig(encoder=STACK, decoder=STACK, vocab_size=128, tie_word_embeddings=False)


def run_layout(initial_params, batches, mesh_shape):
    optimizer, schedule = make_optimizer()
    step_fn = functools.partial(
        train_step, model=model_for(CONFIG), optimizer=optimizer, learning_rate=schedule,
        z_loss=1e-4, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
    )  # fmt: skip
    mesh = partitioning.create_mesh(mesh_shape, devices=jax.devices()[: int(np.prod(mesh_shape))])
    rules = partitioning.logical_axis_rules("standard")
    shapes, param_specs = abstract_params(CONFIG)
    state_shapes = jax.eval_shape(lambda p: init_train_state(p, optimizer, seed=0), shapes)
    state_specs = partitioning.state_logical_specs(state_shapes, shapes, param_specs)
    state_sharding = partitioning.logical_to_sharding(state_specs, mesh, rules)
    batch_sharding = partitioning.batch_sharding(mesh, rules)
    params = jax.device_put(initial_params, state_sharding["params"])
    with partitioning.activation_rules(mesh, rules):
        state = jax.jit(
            lambda p: init_train_state(p, optimizer, seed=0), out_shardings=state_sharding
        )(params)
        jitted = jax.jit(
            step_fn, in_shardings=(state_sharding, batch_sharding),
            out_shardings=(state_sharding, None),
        )  # fmt: skip
        losses = []
        for batch in batches:
            state, metrics = jitted(state, jax.device_put(batch, batch_sharding))
            losses.append(float(metrics["loss"]))
    decodes = None
    if mesh_shape in ((1, 1, 1), (2, 2, 2)):
        options = decoding.DecodingOptions(method="greedy", max_decode_length=8)
        encoder_tokens = jax.device_put(batches[0]["encoder_input_tokens"], batch_sharding)
        decode_fn = decoding.make_decode_fn(CONFIG, options, mesh, rules)
        decodes = np.asarray(decode_fn(params, encoder_tokens).tokens)
    return {"losses": losses, "state": state, "decodes": decodes}


@pytest.fixture(scope="module")
def runs():
    initial_params = init_params(CONFIG, jax.random.PRNGKey(7))
    batches = packed_batches(CONFIG)
    return {name: run_layout(initial_params, batches, shape) for name, shape in LAYOUTS.items()}


@pytest.mark.parametrize("layout", ["data8", "fsdp8", "data2_fsdp2_model2"])
def test_losses_and_parameters_match_one_device(runs, layout):
    reference, run = runs["one_device"], runs[layout]
    assert reference["losses"][-1] < reference["losses"][0] - 0.05
    np.testing.assert_allclose(run["losses"], reference["losses"], rtol=1e-5)
    assert int(run["state"]["step"]) == STEPS
    flat_reference = jax.tree_util.tree_flatten_with_path(reference["state"]["params"])[0]
    for (path, expected), actual in zip(
        flat_reference, jax.tree.leaves(run["state"]["params"]), strict=True
    ):
        np.testing.assert_allclose(
            np.asarray(actual), np.asarray(expected), rtol=1e-5, atol=1e-6,
            err_msg=f"{layout}: {jax.tree_util.keystr(path)}",
        )  # fmt: skip


def test_greedy_decodes_under_the_mesh_match_one_device(runs):
    reference = runs["one_device"]["decodes"]
    assert reference.shape == (BATCH, 1, 8) and len(np.unique(reference)) > 5
    np.testing.assert_array_equal(runs["data2_fsdp2_model2"]["decodes"], reference)


@pytest.mark.parametrize("layout", ["data8", "fsdp8", "data2_fsdp2_model2"])
def test_parameters_are_split_as_the_rules_say(runs, layout):
    _, fsdp, model = LAYOUTS[layout]
    params = runs[layout]["state"]["params"]
    s = STACK

    def local_shape(array):
        shapes = {shard.data.shape for shard in array.addressable_shards}
        assert len(shapes) == 1 and len(array.addressable_shards) == 8
        return shapes.pop()

    attention = params["encoder"]["layers_0"]["self_attention"]
    assert local_shape(attention["query"]) == (s.d_model // fsdp, s.num_heads // model, 8)
    # One key/value head: `kv_heads` is never split, even with a model axis of 2.
    assert attention["key"].shape == (s.d_model, 1, 8)
    assert local_shape(attention["key"]) == (s.d_model // fsdp, 1, 8)
    assert local_shape(attention["out"]) == (s.num_heads // model, 8, s.d_model // fsdp)
    cross = params["decoder"]["layers_0"]["encoder_decoder_attention"]
    assert local_shape(cross["value"]) == (s.d_model // fsdp, 1, 8)
    mlp = params["decoder"]["layers_0"]["mlp"]
    assert local_shape(mlp["wi_0"]) == (s.d_model // fsdp, s.d_ff // model)
    assert local_shape(params["decoder_embedder"]["embedding"]) == (
        CONFIG.vocab_size // model,
        s.d_model // fsdp,
    )
    assert local_shape(params["logits_dense"]["kernel"]) == (
        s.d_model // fsdp,
        CONFIG.vocab_size // model,
    )
    norm = params["encoder"]["layers_0"]["pre_self_attention_norm"]["scale"]
    assert local_shape(norm) == (s.d_model // fsdp,)
