"""LoRA on 8 simulated devices: adapters shard by the logical-axis rules, losses match 1 device."""

import functools

import jax
import numpy as np
import optax
from lora_testlib import RANK, abstract_params_with, lora_init, memorisation_batch, randomize_b
from testlib import tiny_config

from t5pipe import lora, partitioning, peft
from t5pipe.model import T5
from t5pipe.train_step import init_train_state, train_step

LAYOUTS = {"data8": (8, 1, 1), "data2_fsdp2_model2": (2, 2, 2)}


def run_layout(config, lora_config, params, batches, mesh_shape):
    optimizer = peft.freeze_except(optax.adam(1e-2), params, lora.TRAINABLE)
    step = functools.partial(
        train_step,
        model=T5(config),
        optimizer=optimizer,
        learning_rate=optax.constant_schedule(1e-2),
    )
    mesh = partitioning.create_mesh(mesh_shape, devices=jax.devices()[: int(np.prod(mesh_shape))])
    rules = partitioning.logical_axis_rules("standard")
    shapes, specs = abstract_params_with(config, lora_config)
    state_shapes = jax.eval_shape(lambda p: init_train_state(p, optimizer, 0), shapes)
    state_specs = partitioning.state_logical_specs(state_shapes, shapes, specs)
    sharding = partitioning.logical_to_sharding(state_specs, mesh, rules)
    batch_sharding = partitioning.batch_sharding(mesh, rules)
    state = jax.device_put(init_train_state(params, optimizer, 0), sharding)
    with partitioning.activation_rules(mesh, rules):
        jitted = jax.jit(
            lora.with_lora(step, lora_config),
            in_shardings=(sharding, batch_sharding),
            out_shardings=(sharding, None),
        )
        losses = []
        for batch in batches:
            state, metrics = jitted(state, jax.device_put(batch, batch_sharding))
            losses.append(float(metrics["loss"]))
    return losses, state


def test_adapters_shard_by_the_rules_and_train_alike_on_every_mesh():
    config = tiny_config(num_encoder_layers=1, num_decoder_layers=1)
    lora_config = lora.LoraConfig(rank=RANK, targets=r"/(query|value|out|wo)$")
    base, adapter = lora.split_adapter(lora_init(config, lora_config, seed=3))
    params = lora.insert_adapter(base, randomize_b(adapter))
    batches = [memorisation_batch(config, rows=8, seed=s) for s in range(3)]
    reference, _ = run_layout(config, lora_config, params, batches, (1, 1, 1))
    assert reference[-1] < reference[0]
    e, h, kv, mlp = config.d_model, config.num_heads, config.d_kv, config.d_ff
    for name, shape in LAYOUTS.items():
        losses, state = run_layout(config, lora_config, params, batches, shape)
        np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=name)
        _, fsdp, model = shape
        adapter = lora.flat_adapter(lora.split_adapter(state["params"])[1])

        def local(path, adapter=adapter):
            shards = {s.data.shape for s in adapter[path].addressable_shards}
            assert len(shards) == 1, path
            return shards.pop()

        layer = "encoder/layers_0/"
        assert local(layer + "attention/query_lora/a") == (e // fsdp, RANK)
        assert local(layer + "attention/query_lora/b") == (RANK, h // model, kv)
        assert local(layer + "attention/out_lora/a") == (h // model, kv, RANK)
        assert local(layer + "attention/out_lora/b") == (RANK, e // fsdp)
        assert local(layer + "mlp/wo_lora/a") == (mlp // model, RANK)
        assert local(layer + "mlp/wo_lora/b") == (RANK, e // fsdp)
