"""LoRA attached at the shared projection: layout, training, dropout, merging (one device;
sharding is in tests/multi_device/test_lora_mesh.py)."""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from lora_testlib import RANK, abstract_params_with, lora_init, memorisation_batch, randomize_b
from testlib import tiny_config

from t5pipe import decoding, lora, peft
from t5pipe.errors import UserInputError
from t5pipe.model import T5, abstract_params, init_params
from t5pipe.projection import dense
from t5pipe.train_step import init_train_state, train_step


@functools.partial(jax.jit, static_argnames=("config", "lora_config"))
def _logits(params, encoder_tokens, decoder_tokens, config, lora_config):
    apply = T5(config).apply
    if lora_config is not None:
        apply = lora.with_lora(apply, lora_config)
    return apply({"params": params}, encoder_tokens, decoder_tokens)


def logits(params, config, batch, lora_config=None):
    """Teacher-forced logits, with the adapters in `params` applied when `lora_config`."""
    tokens = batch["encoder_input_tokens"], batch["decoder_input_tokens"]
    return np.asarray(_logits(params, *tokens, config=config, lora_config=lora_config))


def test_adapters_sit_beside_the_selected_kernels_with_logical_axes():
    config = tiny_config()
    with lora.attach(lora.LoraConfig(rank=RANK)) as attached:
        _, specs = abstract_params(config)
    specs = lora.flat_adapter(specs)
    params = lora_init(config, lora.LoraConfig(rank=RANK))
    base, adapter = lora.split_adapter(params)
    flat = lora.flat_adapter(adapter)
    # Default targets: query and value of every attention (encoder self, decoder self + cross).
    kernels = {p.rsplit("/", 1)[0].removesuffix("_lora") for p in flat}
    assert len(kernels) == 2 * (config.num_encoder_layers + 2 * config.num_decoder_layers)
    assert all(k.endswith(("/query", "/value")) for k in kernels)
    assert sorted(attached.adapted) == sorted(kernels)
    e, h, kv = config.d_model, config.num_heads, config.d_kv
    a, b = "encoder/layers_0/attention/query_lora/a", "encoder/layers_0/attention/query_lora/b"
    assert flat[a].shape == (e, RANK) and tuple(specs[a]) == ("embed", None)
    assert flat[b].shape == (RANK, h, kv) and tuple(specs[b]) == (None, "heads", "kv")
    # B starts at zero, A at PEFT's kaiming-uniform bound 1/sqrt(fan_in).
    assert not np.any(flat[b]) and 0 < np.abs(flat[a]).max() <= e**-0.5
    # The base tree is exactly the model without LoRA (same paths and initial values).
    jax.tree.map(np.testing.assert_array_equal, base, init_params(config, jax.random.PRNGKey(0)))
    # Other kernels, other layouts: attention out [heads, kv, embed], MLP wo [mlp, embed].
    _, specs = abstract_params_with(config, lora.LoraConfig(rank=RANK, targets=r"/(out|wo)$"))
    specs = lora.flat_adapter(specs)
    out = "decoder/layers_1/encoder_decoder_attention/out_lora/"
    assert tuple(specs[out + "a"]) == ("heads", "kv", None)
    assert tuple(specs[out + "b"]) == (None, "embed")
    assert tuple(specs["encoder/layers_0/mlp/wo_lora/a"]) == ("mlp", None)
    assert tuple(specs["encoder/layers_0/mlp/wo_lora/b"]) == (None, "embed")


def test_targets_that_match_nothing_name_the_projections():
    with pytest.raises(UserInputError, match=r"matches no projection.*attention/query"):
        lora_init(tiny_config(), lora.LoraConfig(targets="q_proj$"))
    with pytest.raises(UserInputError, match="rank"):
        lora.LoraConfig(rank=0)


def test_training_changes_only_the_adapters():
    config = tiny_config()
    lora_config = lora.LoraConfig(rank=RANK, alpha=8.0)
    params = lora_init(config, lora_config)
    batch = memorisation_batch(config)
    # A fresh adapter (B = 0) leaves the model exactly as it was.
    base, adapter = lora.split_adapter(params)
    np.testing.assert_array_equal(
        logits(params, config, batch, lora_config), logits(base, config, batch)
    )

    optimizer = peft.freeze_except(optax.adam(3e-2), params, lora.TRAINABLE)
    state = init_train_state(params, optimizer, seed=0)
    step = functools.partial(
        train_step,
        model=T5(config),
        optimizer=optimizer,
        learning_rate=optax.constant_schedule(3e-2),
    )
    step = jax.jit(lora.with_lora(step, lora_config))
    losses = []
    for _ in range(25):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.6 * losses[0], losses

    new_base, new_adapter = lora.split_adapter(jax.device_get(state["params"]))
    jax.tree.map(np.testing.assert_array_equal, new_base, base)  # bit-identical
    changed = jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.any(x != y)), new_adapter, adapter))
    assert all(changed) and len(changed) == len(jax.tree.leaves(adapter))
    # Adam state (mu, nu) exists for the adapters only.
    adapter_size = sum(x.size for x in jax.tree.leaves(adapter))
    float_state = [x for x in jax.tree.leaves(state["opt_state"]) if x.dtype == jnp.float32]
    assert sum(x.size for x in float_state) == 2 * adapter_size
    assert adapter_size < 0.1 * sum(x.size for x in jax.tree.leaves(base))


class OneProjection(nn.Module):
    @nn.compact
    def __call__(self, x):
        return dense(self, "kernel", x, (RANK, RANK), ("embed", "mlp"), "bi,io->bo",
                     nn.initializers.normal(1.0), jnp.float32)  # fmt: skip


def test_dropout_acts_on_the_adapter_input_only():
    lora_config = lora.LoraConfig(rank=RANK, alpha=float(RANK), dropout=0.5, targets="kernel")
    x = jax.random.normal(jax.random.PRNGKey(0), (64, RANK)) + 3.0
    with lora.attach(lora_config):
        params = nn.unbox(OneProjection().init(jax.random.PRNGKey(1), x)["params"])
    # A = B = identity and scale 1: the adapter's output is its dropped-out input.
    params["kernel_lora"] = {"a": jnp.eye(RANK), "b": jnp.eye(RANK)}
    base = np.asarray(x @ params["kernel"])
    with lora.attach(lora_config):
        train = OneProjection().apply(
            {"params": params}, x, rngs={"dropout": jax.random.PRNGKey(2)}
        )
        evaluation = OneProjection().apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(evaluation) - base, x, rtol=1e-5, atol=1e-5)
    delta = np.asarray(train) - base
    kept = np.isclose(delta, 2.0 * np.asarray(x), rtol=1e-4)  # inverted dropout: x / (1 - p)
    dropped = np.isclose(delta, 0.0, atol=1e-4)
    assert np.all(kept | dropped) and 0.3 < kept.mean() < 0.7


def test_merged_and_several_adapters_on_one_base(tmp_path):
    config = tiny_config()
    first = lora.LoraConfig(rank=RANK, alpha=8.0)
    second = lora.LoraConfig(rank=2, alpha=2.0, targets=r"/(out|wi_0|wo)$")
    base, adapter_1 = lora.split_adapter(lora_init(config, first))
    _, adapter_2 = lora.split_adapter(lora_init(config, second))
    adapter_1, adapter_2 = randomize_b(adapter_1, 1), randomize_b(adapter_2, 2)
    batch = memorisation_batch(config)
    plain = logits(base, config, batch)
    for adapter, cfg in ((adapter_1, first), (adapter_2, second)):
        unmerged = logits(lora.insert_adapter(base, adapter), config, batch, cfg)
        merged = logits(lora.merge(base, adapter, cfg), config, batch)
        assert np.abs(unmerged - plain).max() > 0.1  # the adapter matters
        np.testing.assert_allclose(merged, unmerged, rtol=1e-5, atol=1e-5)
    # Both at once: merged one after the other (the kernels sum both updates).
    both = lora.merge(lora.merge(base, adapter_1, first), adapter_2, second)
    kernel = "encoder/layers_0/attention/query"
    delta = lora.delta_kernel(
        base["encoder"]["layers_0"]["attention"]["query"],
        *(adapter_1["encoder"]["layers_0"]["attention"]["query_lora"][k] for k in "ab"),
        first.scale,
        kernel,
    )
    np.testing.assert_allclose(
        both["encoder"]["layers_0"]["attention"]["query"],
        base["encoder"]["layers_0"]["attention"]["query"] + delta,
        rtol=1e-6,
    )
    # Saved alone: small, and read back bit for bit.
    folder = lora.save_adapter(tmp_path / "adapter", adapter_2, second)
    loaded, loaded_config = lora.load_adapter(folder)
    assert loaded_config == second
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(adapter_2))
    base_bytes = sum(x.nbytes for x in jax.tree.leaves(base))
    assert os.path.getsize(folder / lora.ADAPTER_FILE) < 0.1 * base_bytes
    wrong = tiny_config(d_ff=48)
    with pytest.raises(UserInputError, match=r"do not fit the kernel .*mlp/(wi_0|wo) "):
        lora.insert_adapter(abstract_params(wrong)[0], loaded)


def test_decoding_with_an_attached_adapter_equals_the_merged_model():
    # The decoding cache path (cross-attention keys/values computed once) goes through
    # the interception too.
    config = tiny_config(num_encoder_layers=1, num_decoder_layers=1)
    lora_config = lora.LoraConfig(rank=RANK, targets=r"/(key|value|wo)$")
    base, adapter = lora.split_adapter(lora_init(config, lora_config))
    adapter = randomize_b(adapter)
    options = decoding.DecodingOptions(method="greedy", max_decode_length=8)
    tokens = jnp.asarray(memorisation_batch(config, rows=6)["encoder_input_tokens"])
    decode = functools.partial(decoding.decode_batch, config=config, options=options)
    attached = jax.jit(lora.with_lora(decode, lora_config))(
        lora.insert_adapter(base, adapter), encoder_tokens=tokens
    )
    merged = decoding.decode(lora.merge(base, adapter, lora_config), config, tokens, options)
    plain = decoding.decode(base, config, tokens, options)
    assert len(np.unique(np.asarray(merged.tokens))) > 5
    np.testing.assert_array_equal(np.asarray(attached.tokens), np.asarray(merged.tokens))
    assert not np.array_equal(np.asarray(plain.tokens), np.asarray(merged.tokens))


def test_scanned_layers_carry_stacked_adapters():
    config = tiny_config()
    lora_config = lora.LoraConfig(rank=RANK, targets=r"/(query|wo)$")
    shapes, specs = abstract_params_with(config.replace(scan_layers=True), lora_config)
    wo, query = ("decoder", "layers", "mlp", "wo_lora"), ("encoder", "layers", "attention")
    layers = config.num_decoder_layers
    assert lora.flat_adapter(shapes)["/".join(wo) + "/a"].shape == (layers, config.d_ff, RANK)
    assert tuple(lora.flat_adapter(specs)["/".join(wo) + "/a"]) == ("layers", "mlp", None)
    b = "/".join(query) + "/query_lora/b"
    assert tuple(lora.flat_adapter(specs)[b]) == ("layers", None, "heads", "kv")
