"""Mesh construction, logical-axis rules, and checkpoints moving between meshes (8 CPU devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from testlib import tiny_config

from t5pipe import checkpoint_format, partitioning
from t5pipe.model import T5, abstract_params, init_params
from t5pipe.vocabularies import byt5_vocabulary

LAYOUTS = {
    "data8": (8, 1, 1),
    "fsdp8": (1, 8, 1),
    "data2_fsdp2_model2": (2, 2, 2),
    "data4_model2": (4, 1, 2),
}


def sharded_params(config, mesh_shape, rules_name="standard", seed=0):
    mesh = partitioning.create_mesh(mesh_shape)
    rules = partitioning.logical_axis_rules(rules_name)
    _, specs = abstract_params(config)
    shardings = partitioning.logical_to_sharding(specs, mesh, rules)
    params = jax.jit(lambda rng: init_params(config, rng), out_shardings=shardings)(
        jax.random.PRNGKey(seed)
    )
    return params, mesh, rules


def test_mesh_shape_with_rest_and_errors():
    assert dict(partitioning.create_mesh((-1, 2, 1)).shape) == {"data": 4, "fsdp": 2, "model": 1}
    with pytest.raises(ValueError, match="at most one -1"):
        partitioning.create_mesh((-1, -1, 2))
    with pytest.raises(ValueError, match="does not divide 8 devices"):
        partitioning.create_mesh((-1, 3, 1))
    with pytest.raises(ValueError, match="holds 4 devices"):
        partitioning.create_mesh((2, 2, 1))
    with pytest.raises(ValueError, match="expected one of"):
        partitioning.logical_axis_rules("pipeline")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_parameters_are_sharded_as_the_rules_say(layout):
    data, fsdp, model = LAYOUTS[layout]
    config = tiny_config()
    params, _, _ = sharded_params(config, LAYOUTS[layout])
    query = params["encoder"]["layers_0"]["attention"]["query"]  # [embed, heads, kv]
    assert query.addressable_shards[0].data.shape == (
        config.d_model // fsdp,
        config.num_heads // model,
        config.d_kv,
    )
    wi = params["decoder"]["layers_1"]["mlp"]["wi_0"]  # [embed, mlp]
    assert wi.addressable_shards[0].data.shape == (config.d_model // fsdp, config.d_ff // model)
    embedding = params["token_embedder"]["embedding"]  # [vocab, embed]
    assert embedding.addressable_shards[0].data.shape == (
        config.vocab_size // model,
        config.d_model // fsdp,
    )
    relpos = params["encoder"]["relpos_bias"]["rel_embedding"]  # [heads, buckets]
    assert relpos.addressable_shards[0].data.shape == (
        config.num_heads // model,
        config.relative_attention_num_buckets,
    )


def test_data_parallel_rules_replicate_parameters():
    params, _, _ = sharded_params(tiny_config(), (1, 8, 1), rules_name="data_parallel")
    for leaf in jax.tree.leaves(params):
        assert leaf.addressable_shards[0].data.shape == leaf.shape


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_forward_pass_is_layout_independent(layout):
    config = tiny_config()
    tokens = np.random.default_rng(0).integers(1, config.vocab_size, (8, 12)).astype(np.int32)
    reference = T5(config).apply(
        {"params": init_params(config, jax.random.PRNGKey(0))}, tokens, tokens
    )
    params, mesh, rules = sharded_params(config, LAYOUTS[layout])
    batch = jax.device_put(tokens, partitioning.batch_sharding(mesh, rules))
    with partitioning.activation_rules(mesh, rules):
        logits = jax.jit(lambda p, t: T5(config).apply({"params": p}, t, t))(params, batch)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(reference), rtol=1e-5, atol=1e-5)


def test_checkpoint_restores_onto_another_mesh(tmp_path):
    config = tiny_config()
    params, _, _ = sharded_params(config, (8, 1, 1), seed=3)
    checkpoint_format.save_checkpoint(
        tmp_path / "ckpt", {"params": params}, config, byt5_vocabulary()
    )

    _, specs = abstract_params(config)
    mesh = partitioning.create_mesh((2, 1, 4))
    rules = partitioning.logical_axis_rules("standard")
    shardings = partitioning.logical_to_sharding(specs, mesh, rules)
    target = jax.tree.map(
        lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), params, shardings
    )
    restored = checkpoint_format.load_params(tmp_path / "ckpt", target)
    for original, back, sharding in zip(
        jax.tree.leaves(params), jax.tree.leaves(restored), jax.tree.leaves(shardings), strict=True
    ):
        assert back.sharding == sharding
        np.testing.assert_array_equal(np.asarray(back), np.asarray(original))


def test_model_info_lists_partition_specs():
    config = tiny_config()
    params, mesh, rules = sharded_params(config, (2, 2, 2))
    _, specs = abstract_params(config)
    info = partitioning.describe_params(params, specs, mesh, rules)
    line = next(x for x in info.splitlines() if x.startswith("encoder/layers_0/attention/query"))
    assert "logical=('embed', 'heads', 'kv')" in line and "mesh=('fsdp', 'model', None)" in line
    assert f"total parameters: {sum(x.size for x in jax.tree.leaves(params)):,}" in info
    assert jnp.dtype(params["encoder"]["encoder_norm"]["scale"].dtype) == jnp.float32


class FakeTpuDevice:
    """What create_hybrid_device_mesh reads of a multi-slice TPU device (CPUs have no
    slice_index). `device_kind` is unknown to mesh_utils' topology handlers, so each
    slice is laid out in device order."""

    platform = "fake_tpu"
    device_kind = "fake multi-slice device"

    def __init__(self, id, slice_index):
        self.id, self.slice_index, self.process_index = id, slice_index, id // 2

    def __repr__(self):
        return f"dev{self.id}/slice{self.slice_index}"


def test_dcn_mesh_shape_puts_slices_along_the_dcn_axis():
    devices = [FakeTpuDevice(i, slice_index=i // 4) for i in range(8)]  # 2 slices x 4
    grid = partitioning.device_grid((-1, 1, 2), (2, 1, 1), devices)
    assert grid.shape == (4, 1, 2)  # data 2 per slice x 2 slices, model 2 within a slice
    slices = np.vectorize(lambda d: d.slice_index)(grid)
    np.testing.assert_array_equal(slices[:, 0, 0], [0, 0, 1, 1])
    assert all(len(set(slices[i, 0, :])) == 1 for i in range(4))  # model stays on one slice
    assert sorted(d.id for d in grid.flat) == list(range(8))

    # fsdp across slices instead: data 4 within a slice, fsdp 2 over DCN.
    grid = partitioning.device_grid((4, 1, 1), (1, 2, 1), devices)
    assert grid.shape == (4, 2, 1)
    np.testing.assert_array_equal(np.vectorize(lambda d: d.slice_index)(grid)[0, :, 0], [0, 1])


def test_dcn_mesh_shape_errors():
    devices = [FakeTpuDevice(i, slice_index=i // 4) for i in range(8)]
    with pytest.raises(ValueError, match=r"dcn_mesh_shape=\(2, 1\) needs 3 entries"):
        partitioning.device_grid((-1, 1, 1), (2, 1), devices)
    with pytest.raises(ValueError, match="asks for 3 slices, which do not divide 8 devices"):
        partitioning.device_grid((-1, 1, 1), (3, 1, 1), devices)
    with pytest.raises(ValueError, match=r"mesh_shape=\(8, 1, 1\) holds 8 devices, but 4"):
        partitioning.device_grid((8, 1, 1), (2, 1, 1), devices)
    with pytest.raises(ValueError, match="Number of slices 2 must equal"):
        partitioning.device_grid((-1, 1, 1), (4, 1, 1), devices)
    with pytest.raises(ValueError, match="needs multi-slice devices.*cpu devices have none"):
        partitioning.create_mesh((-1, 1, 1), dcn_mesh_shape=(2, 1, 1))


def test_optimizer_state_specs_follow_their_parameters():
    from jax.sharding import PartitionSpec as P

    from t5pipe import optimizers, peft

    config = tiny_config()
    shapes, specs = abstract_params(config)
    adamw = optimizers.adamw(1e-3)
    # AdamW behind PEFT's freeze: frozen parameters carry no state at all.
    tx = peft.freeze_except(adamw, shapes, "mlp")
    state = jax.eval_shape(tx.init, shapes)
    state_specs = partitioning.state_logical_specs(state, shapes, specs)
    by_path = {
        jax.tree_util.keystr(path): spec
        for path, spec in jax.tree_util.tree_flatten_with_path(
            state_specs, is_leaf=lambda x: isinstance(x, P)
        )[0]
    }
    mu = [k for k in by_path if k.endswith("['decoder']['layers_1']['mlp']['wi_0']")]
    assert mu and all(by_path[k] == P("embed", "mlp") for k in mu)  # mu and nu
    assert not any("attention" in k for k in by_path)  # frozen: no state
    counts = [k for k in by_path if k.endswith(".count")]
    assert counts and all(by_path[k] == P() for k in counts)
    # Factored Adafactor on [embed 32, heads 4, kv 8] (min dim 4): rows drop `embed`...
    factored = jax.eval_shape(optimizers.adafactor(1e-3, min_dim_size_to_factor=4).init, shapes)
    factored_specs = partitioning.state_logical_specs(factored, shapes, specs)
    stats = next(
        s
        for s in jax.tree.leaves(factored_specs, is_leaf=lambda s: hasattr(s, "v_row"))
        if hasattr(s, "v_row")
    )
    query = stats.v_row["encoder"]["layers_0"]["attention"]["query"]
    assert query == P("heads", "kv")  # d0 = embed (largest) removed from the row statistics
    assert stats.v_col["encoder"]["layers_0"]["attention"]["query"] == P("embed", "heads")
    # A square kernel leaves the dropped axis ambiguous: replicated, never mis-sharded.
    square = {"w": jax.ShapeDtypeStruct((16, 16), np.float32)}
    square_state = jax.eval_shape(optimizers.adafactor(1e-3, min_dim_size_to_factor=4).init, square)
    square_specs = partitioning.state_logical_specs(square_state, square, {"w": P("embed", "mlp")})
    square_stats = next(
        s
        for s in jax.tree.leaves(square_specs, is_leaf=lambda s: hasattr(s, "v_row"))
        if hasattr(s, "v_row")
    )
    assert square_stats.v_row["w"] == P() and square_stats.v_col["w"] == P()
