"""The same training under every mesh layout (8 simulated CPU devices).

From the same initial parameters and the same global batches, three steps of the real
`train_step` (T5's Adafactor, float32) on one device and under data 8, fsdp 8,
data 2 x fsdp 2 x model 2 and data 4 x model 2 must give the same losses, the same
final parameters and the same greedy decodes; parameters and optimizer state must be
split across devices as the `standard` rules say.
"""

import functools

import jax
import numpy as np
import pytest
from testlib import tiny_config

from t5pipe import decoding, optimizers, partitioning
from t5pipe.model import T5, abstract_params, init_params
from t5pipe.train_step import init_train_state, train_step

LAYOUTS = {  # (data, fsdp, model)
    "data8": (8, 1, 1),
    "fsdp8": (1, 8, 1),
    "data2_fsdp2_model2": (2, 2, 2),
    "data4_model2": (4, 1, 2),
}
BATCH, ENC_LEN, DEC_LEN, STEPS = 8, 16, 12, 3
# Adafactor factors the second moment of kernels whose two largest dims are >= 16:
# [embed 32, mlp 64] kernels get row/column statistics, [embed, heads 4, kv 8] does not.
MIN_DIM_TO_FACTOR = 16


def packed_batches(config, seed=0):
    """STEPS global batches shaped like seqio's packed EncDecFeatureConverter output:
    two examples per row (segment ids 1, 2, then 0-padding), targets shifted right
    within each segment to make the decoder inputs."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(STEPS):
        batch = {}
        for prefix, length in (("encoder", ENC_LEN), ("decoder", DEC_LEN)):
            tokens = np.zeros((BATCH, length), np.int32)
            segments = np.zeros((BATCH, length), np.int32)
            positions = np.zeros((BATCH, length), np.int32)
            inputs = np.zeros((BATCH, length), np.int32)
            for row in range(BATCH):
                first = rng.integers(2, length // 2)
                second = rng.integers(1, length - first)
                start = 0
                for segment, size in ((1, first), (2, second)):
                    span = slice(start, start + size)
                    tokens[row, span] = rng.integers(2, config.vocab_size, size)
                    tokens[row, start + size - 1] = config.eos_token_id
                    segments[row, span] = segment
                    positions[row, span] = np.arange(size)
                    inputs[row, start + 1 : start + size] = tokens[row, start : start + size - 1]
                    start += size
            if prefix == "encoder":
                batch["encoder_input_tokens"] = tokens
            else:
                batch["decoder_target_tokens"] = tokens
                batch["decoder_input_tokens"] = inputs
                batch["decoder_loss_weights"] = (segments > 0).astype(np.int32)
            batch[f"{prefix}_segment_ids"] = segments
            batch[f"{prefix}_positions"] = positions
        batches.append(batch)
    return batches


def make_optimizer():
    schedule = optimizers.constant_schedule(learning_rate=0.05)
    return optimizers.adafactor(schedule, min_dim_size_to_factor=MIN_DIM_TO_FACTOR), schedule


def run_layout(config, initial_params, batches, mesh_shape):
    """Three train steps, then greedy decodes of the initial and the final parameters.

    mesh_shape (1, 1, 1) is the one-device reference: the same code on a one-device mesh.
    """
    optimizer, schedule = make_optimizer()
    step_fn = functools.partial(
        train_step,
        model=T5(config),
        optimizer=optimizer,
        learning_rate=schedule,
        z_loss=1e-4,
        loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
    )
    devices = jax.devices()[: int(np.prod(mesh_shape))]
    mesh = partitioning.create_mesh(mesh_shape, devices=devices)
    rules = partitioning.logical_axis_rules("standard")
    shapes, param_specs = abstract_params(config)
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
            step_fn,
            in_shardings=(state_sharding, batch_sharding),
            out_shardings=(state_sharding, None),
        )
        losses = []
        for batch in batches:
            state, metrics = jitted(state, jax.device_put(batch, batch_sharding))
            losses.append(float(metrics["loss"]))
    options = decoding.DecodingOptions(method="greedy", max_decode_length=10)
    decode_fn = decoding.make_decode_fn(config, options, mesh, rules)
    encoder_tokens = jax.device_put(batches[0]["encoder_input_tokens"], batch_sharding)
    decodes = {
        "initial": np.asarray(decode_fn(params, encoder_tokens).tokens),
        "final": np.asarray(decode_fn(state["params"], encoder_tokens).tokens),
    }
    return {"losses": losses, "state": state, "decodes": decodes}


@pytest.fixture(scope="module")
def runs():
    config = tiny_config(num_encoder_layers=1, num_decoder_layers=1)
    initial_params = init_params(config, jax.random.PRNGKey(7))
    batches = packed_batches(config)
    results = {"one_device": run_layout(config, initial_params, batches, (1, 1, 1))}
    for name, shape in LAYOUTS.items():
        results[name] = run_layout(config, initial_params, batches, shape)
    return config, results


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_losses_and_parameters_match_one_device(runs, layout):
    _, results = runs
    reference, run = results["one_device"], results[layout]
    # The loss really moves, so equal losses say the updates were equal too.
    assert reference["losses"][-1] < reference["losses"][0] - 0.05
    np.testing.assert_allclose(run["losses"], reference["losses"], rtol=1e-5)
    assert int(run["state"]["step"]) == STEPS and int(run["state"]["skipped_steps"]) == 0
    flat_reference = jax.tree_util.tree_flatten_with_path(reference["state"]["params"])[0]
    flat_run = jax.tree.leaves(run["state"]["params"])
    for (path, expected), actual in zip(flat_reference, flat_run, strict=True):
        np.testing.assert_allclose(
            np.asarray(actual),
            np.asarray(expected),
            rtol=1e-5,
            atol=1e-6,
            err_msg=f"{layout}: {jax.tree_util.keystr(path)}",
        )


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_greedy_decodes_match_one_device(runs, layout):
    _, results = runs
    reference = results["one_device"]["decodes"]
    # Random initial parameters decode to varied tokens; after three steps on targets that
    # all end in EOS the model may already stop at once. Both must match token for token.
    assert reference["initial"].shape == (BATCH, 1, 10)
    assert len(np.unique(reference["initial"])) > 5
    for which in ("initial", "final"):
        np.testing.assert_array_equal(
            results[layout]["decodes"][which], reference[which], err_msg=f"{layout}: {which}"
        )


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_parameters_and_optimizer_state_are_sharded_as_the_rules_say(runs, layout):
    config, results = runs
    data, fsdp, model = LAYOUTS[layout]
    state = results[layout]["state"]
    embed, mlp, heads = config.d_model, config.d_ff, config.num_heads

    def local_shape(array):
        shapes = {shard.data.shape for shard in array.addressable_shards}
        assert len(shapes) == 1 and len(array.addressable_shards) == 8
        return shapes.pop()

    wi = ("decoder", "layers_0", "mlp", "wi_0")  # [embed, mlp]: factored
    query = ("encoder", "layers_0", "attention", "query")  # [embed, heads, kv]
    relpos = ("encoder", "relpos_bias", "rel_embedding")  # [heads, buckets]

    def leaf(tree, path):
        for key in path:
            tree = tree[key]
        return tree

    params = state["params"]
    assert local_shape(leaf(params, wi)) == (embed // fsdp, mlp // model)
    assert local_shape(leaf(params, query)) == (embed // fsdp, heads // model, config.d_kv)
    assert local_shape(params["token_embedder"]["embedding"]) == (
        config.vocab_size // model,
        embed // fsdp,
    )

    # optax Adafactor state: (FactoredState(count, v_row, v_col, v), ...) after clipping.
    factored = next(
        s
        for s in jax.tree.leaves(state["opt_state"], is_leaf=lambda s: hasattr(s, "v_row"))
        if hasattr(s, "v_row")
    )
    assert local_shape(factored.count) == ()
    # [embed, mlp]: the row statistics keep `embed`, the column statistics keep `mlp`.
    assert leaf(factored.v_row, wi).shape == (embed,)
    assert local_shape(leaf(factored.v_row, wi)) == (embed // fsdp,)
    assert leaf(factored.v_col, wi).shape == (mlp,)
    assert local_shape(leaf(factored.v_col, wi)) == (mlp // model,)
    assert leaf(factored.v, wi).shape == (1,)  # unused placeholder: replicated
    # Unfactored second moments are split exactly like their parameters.
    assert local_shape(leaf(factored.v, query)) == (embed // fsdp, heads // model, config.d_kv)
    assert local_shape(leaf(factored.v, relpos)) == (
        heads // model,
        config.relative_attention_num_buckets,
    )
    # Data parallelism alone replicates everything.
    if fsdp == model == 1:
        for array in jax.tree.leaves(state):
            assert local_shape(array) == array.shape
