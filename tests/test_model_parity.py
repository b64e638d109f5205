"""The Flax T5 against Hugging Face's PyTorch T5 (independent reference), float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_testlib import T5_1_0, T5_1_1, batch, hf_model, hf_state, relative_error
from testlib import tiny_config

from t5pipe.hf import t5 as hf_mapping
from t5pipe.model import T5, init_params, shift_right
from t5pipe.relative_position import relative_position_buckets


@pytest.mark.parametrize("family", [T5_1_0, T5_1_1], ids=["t5_1_0", "t5_1_1"])
def test_teacher_forced_logits_and_encoder_match_transformers(family):
    config = tiny_config(**family)
    hf = hf_model(config)
    params = hf_mapping.params_from_hf(hf_state(hf).items(), config)
    enc, targets, enc_mask, dec_mask = batch(config.vocab_size)
    dec_in = np.asarray(shift_right(jnp.asarray(targets)))
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc_mask.astype(np.int64)),
            decoder_input_ids=torch.tensor(dec_in),
        )
    model = T5(config)
    logits = model.apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec_in))
    encoded, _ = model.apply({"params": params}, jnp.asarray(enc), method=T5.encode)
    assert relative_error(logits, out.logits.numpy(), dec_mask) <= 1e-5
    assert relative_error(encoded, out.encoder_last_hidden_state.numpy(), enc_mask) <= 1e-5


@pytest.mark.parametrize("family", [T5_1_0, T5_1_1], ids=["t5_1_0", "t5_1_1"])
def test_hf_round_trip_is_bit_exact(family):
    config = tiny_config(**family)
    state = hf_state(hf_model(config))
    back = dict(hf_mapping.params_to_hf(hf_mapping.params_from_hf(state.items(), config), config))
    assert set(back) == set(hf_mapping.hf_tensor_names(config))
    for name, array in back.items():
        assert array.dtype == state[name].dtype and np.array_equal(array, state[name]), name


def test_relative_position_buckets_match_transformers():
    attention = transformers.models.t5.modeling_t5.T5Attention
    for bidirectional in (True, False):
        for buckets, max_distance in ((32, 128), (8, 20)):
            relative = torch.arange(300)[None, :] - torch.arange(300)[:, None]
            ref = attention._relative_position_bucket(
                relative,
                bidirectional=bidirectional,
                num_buckets=buckets,
                max_distance=max_distance,
            ).numpy()
            ours = relative_position_buckets(300, 300, bidirectional, buckets, max_distance)
            np.testing.assert_array_equal(ours, ref)


def test_packed_examples_match_separate_runs():
    config = tiny_config()
    params = init_params(config, jax.random.PRNGKey(1))
    rng = np.random.default_rng(3)
    examples = [
        (rng.integers(2, 128, n), rng.integers(2, 128, m)) for n, m in ((5, 3), (4, 6), (6, 2))
    ]
    model = T5(config)
    enc_packed = np.concatenate([e for e, _ in examples])[None]
    enc_seg = np.concatenate([np.full(len(e), i + 1) for i, (e, _) in enumerate(examples)])[None]
    dec_seg = np.concatenate([np.full(len(t), i + 1) for i, (_, t) in enumerate(examples)])[None]
    # Each example's decoder input restarts with the start token.
    dec_in = np.concatenate(
        [np.asarray(shift_right(jnp.asarray(t[None])))[0] for _, t in examples]
    )[None]
    packed = model.apply(
        {"params": params},
        jnp.asarray(enc_packed),
        jnp.asarray(dec_in),
        encoder_segment_ids=jnp.asarray(enc_seg),
        decoder_segment_ids=jnp.asarray(dec_seg),
    )[0]
    offset = 0
    for enc, tgt in examples:
        alone = model.apply(
            {"params": params}, jnp.asarray(enc[None]), shift_right(jnp.asarray(tgt[None]))
        )[0]
        piece = packed[offset : offset + len(tgt)]
        assert np.linalg.norm(piece - alone) / np.linalg.norm(alone) <= 1e-5
        offset += len(tgt)


def test_bfloat16_activations_close_to_float32():
    config = tiny_config()
    params = hf_mapping.params_from_hf(hf_state(hf_model(config)).items(), config)
    enc, targets, _, dec_mask = batch(config.vocab_size, seed=1)
    dec_in = shift_right(jnp.asarray(targets))
    full = T5(config).apply({"params": params}, jnp.asarray(enc), dec_in)
    half = T5(config.replace(dtype="bfloat16")).apply({"params": params}, jnp.asarray(enc), dec_in)
    assert half.dtype == jnp.float32  # logits come back in float32 for the loss
    assert relative_error(half, full, dec_mask) <= 2e-2


@pytest.mark.parametrize("remat_policy", ["none", "full", "dots"])
def test_scanned_layers_equal_unrolled(remat_policy):
    config = tiny_config()
    params = hf_mapping.params_from_hf(hf_state(hf_model(config)).items(), config)
    enc, targets, _, dec_mask = batch(config.vocab_size, seed=2)
    dec_in = shift_right(jnp.asarray(targets))
    unrolled = T5(config).apply({"params": params}, jnp.asarray(enc), dec_in)
    scanned_config = config.replace(scan_layers=True, remat_policy=remat_policy)
    scanned = T5(scanned_config).apply(
        {"params": hf_mapping.scan_layout(params, config)}, jnp.asarray(enc), dec_in
    )
    assert relative_error(scanned, unrolled, dec_mask) <= 1e-6


def test_dropout_is_active_only_when_enabled():
    config = tiny_config(dropout_rate=0.3)
    tokens = jnp.ones((2, 6), jnp.int32)
    params = jax.tree.map(
        np.asarray, hf_mapping.params_from_hf(hf_state(hf_model(config)).items(), config)
    )
    model = T5(config)
    det1 = model.apply({"params": params}, tokens, tokens)
    det2 = model.apply({"params": params}, tokens, tokens)
    drop = model.apply(
        {"params": params},
        tokens,
        tokens,
        enable_dropout=True,
        rngs={"dropout": jax.random.PRNGKey(0)},
    )
    np.testing.assert_array_equal(det1, det2)
    assert not np.allclose(drop, det1)
