"""Decoding against Hugging Face `generate` (independent reference) and against itself.

Equivalent settings for beam search: our alpha=0 (rank finished beams by plain
log-probability) is HF's length_penalty=0.0, and our stopping rule (stop once no
alive beam can beat the worst finished one; at max length alive beams count as
finished) is HF's early_stopping="never". HF fills after EOS with EOS, we with 0;
the comparison cuts both after the first EOS.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_testlib import T5_1_0, T5_1_1, confident_t5_1_1, hf_model, hf_state, mixed_length_inputs
from testlib import tiny_config

from t5pipe.decoding import DecodingOptions, brevity_penalty, decode
from t5pipe.hf import t5 as hf_mapping
from t5pipe.model import T5

MAX_NEW = 12


def cut_after_eos(tokens, length=MAX_NEW, eos=1):
    """[n, <=length] -> [n, length]: zeros after the first EOS and at the end."""
    tokens = np.pad(np.asarray(tokens), ((0, 0), (0, length - tokens.shape[1])))
    for row in tokens:
        ends = np.flatnonzero(row == eos)
        if ends.size:
            row[ends[0] + 1 :] = 0
    return tokens


def hf_generate(hf, enc, **kwargs):
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(enc, dtype=torch.long),
            attention_mask=torch.tensor((enc != 0).astype(np.int64)),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            **kwargs,
        )
    return cut_after_eos(out.numpy()[:, 1:])  # drop the decoder start token


@pytest.mark.parametrize("family", [T5_1_0, T5_1_1], ids=["t5_1_0", "t5_1_1"])
def test_greedy_equals_transformers_generate(family):
    config = tiny_config(**family)
    hf = hf_model(config)
    params = hf_mapping.params_from_hf(hf_state(hf).items(), config)
    enc = mixed_length_inputs(config.vocab_size, 32)
    ours = decode(params, config, enc, DecodingOptions("greedy", max_decode_length=MAX_NEW))
    ref = hf_generate(hf, enc, num_beams=1)
    np.testing.assert_array_equal(np.asarray(ours.tokens[:, 0]), ref)


def test_beam_search_equals_transformers_and_beats_greedy():
    config, hf, params = confident_t5_1_1()
    enc = mixed_length_inputs(config.vocab_size, 64, seed=1)
    options = DecodingOptions("beam", max_decode_length=MAX_NEW, num_beams=4, alpha=0.0)
    beams = decode(params, config, enc, options)
    greedy = decode(params, config, enc, DecodingOptions("greedy", max_decode_length=MAX_NEW))
    ref = hf_generate(hf, enc, num_beams=4, length_penalty=0.0, early_stopping="never")
    ours = np.asarray(beams.tokens[:, 0])
    assert (ours == ref).all(axis=1).mean() >= 0.95
    # Both paths end in EOS sometimes, so the finished-pool logic is exercised.
    assert 0 < (ours == config.eos_token_id).any(axis=1).mean() < 1
    assert np.all(np.asarray(beams.log_probs[:, 0]) >= np.asarray(greedy.log_probs[:, 0]) - 1e-4)


def teacher_forced_log_prob(params, config, enc, tokens):
    """Sum of log-probs of decoded tokens [n, L] (0-padded after EOS), by a full forward pass."""
    dec_in = np.concatenate([np.zeros((len(tokens), 1), np.int32), tokens[:, :-1]], axis=1)
    logits = T5(config).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec_in))
    log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    picked = np.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    # Positions after the EOS are padding; the EOS itself is scored.
    ended_before = np.cumsum(tokens == config.eos_token_id, axis=1) - (tokens == 1)
    return np.where(ended_before > 0, 0.0, picked).sum(axis=1)


def test_beam_scores_and_several_decodes():
    config, _, params = confident_t5_1_1()
    enc = mixed_length_inputs(config.vocab_size, 8, seed=2)
    options = DecodingOptions(
        "beam", max_decode_length=MAX_NEW, num_beams=4, alpha=0.6, num_decodes=3
    )
    out = decode(params, config, enc, options)
    assert out.tokens.shape == (8, 3, MAX_NEW) and out.scores.shape == (8, 3)
    scores = np.asarray(out.scores)
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first
    tokens = np.asarray(out.tokens).reshape(-1, MAX_NEW)
    lengths = np.where((tokens == 1).any(axis=1), np.argmax(tokens == 1, axis=1) + 1, MAX_NEW)
    log_probs = teacher_forced_log_prob(params, config, np.repeat(enc, 3, axis=0), tokens)
    np.testing.assert_allclose(np.asarray(out.log_probs).ravel(), log_probs, atol=1e-4)
    np.testing.assert_allclose(
        scores.ravel(), log_probs / np.asarray(brevity_penalty(0.6, lengths)), atol=1e-4
    )


def uncached_greedy(params, config, enc, length):
    """Reference: re-runs the whole decoder on the prefix at every step (no cache)."""
    model = T5(config)
    tokens = np.zeros((len(enc), length + 1), np.int32)  # column 0: start token
    ended = np.zeros(len(enc), bool)
    for i in range(length):
        logits = model.apply({"params": params}, jnp.asarray(enc), jnp.asarray(tokens[:, : i + 1]))
        chosen = np.where(ended, 0, np.argmax(np.asarray(logits[:, i]), axis=-1))
        tokens[:, i + 1] = chosen
        ended |= chosen == config.eos_token_id
    return tokens[:, 1:]


@pytest.fixture(scope="module")
def uncached_reference():
    """(config, params, inputs, uncached greedy tokens, their log-probs), computed once."""
    config, _, params = confident_t5_1_1()
    enc = mixed_length_inputs(config.vocab_size, 16, seed=3)
    reference = uncached_greedy(params, config, enc, MAX_NEW)
    return config, params, enc, reference, teacher_forced_log_prob(params, config, enc, reference)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
def test_cached_decoding_equals_uncached(scan_layers, uncached_reference):
    config, params, enc, reference, reference_log_probs = uncached_reference
    if scan_layers:
        params = hf_mapping.scan_layout(params, config)
        config = config.replace(scan_layers=True)
    cached = decode(params, config, enc, DecodingOptions("greedy", max_decode_length=MAX_NEW))
    np.testing.assert_array_equal(np.asarray(cached.tokens[:, 0]), reference)
    np.testing.assert_allclose(np.asarray(cached.log_probs[:, 0]), reference_log_probs, atol=1e-4)


def test_scanned_beam_search_equals_unrolled():
    config, _, params = confident_t5_1_1()
    enc = mixed_length_inputs(config.vocab_size, 8, seed=4)
    options = DecodingOptions("beam", max_decode_length=MAX_NEW, num_beams=3, alpha=0.6)
    unrolled = decode(params, config, enc, options)
    scanned = decode(
        hf_mapping.scan_layout(params, config), config.replace(scan_layers=True), enc, options
    )
    np.testing.assert_array_equal(np.asarray(unrolled.tokens), np.asarray(scanned.tokens))


def test_sampling_filters_and_degenerate_cases():
    config, _, params = confident_t5_1_1()
    enc = mixed_length_inputs(config.vocab_size, 8, seed=5)
    greedy = np.asarray(
        decode(params, config, enc, DecodingOptions(max_decode_length=MAX_NEW)).tokens
    )
    rng = jax.random.PRNGKey(0)
    for degenerate in (dict(temperature=0.0), dict(top_k=1), dict(top_p=1e-6)):
        options = DecodingOptions("sample", max_decode_length=MAX_NEW, **degenerate)
        np.testing.assert_array_equal(
            np.asarray(decode(params, config, enc, options, rng).tokens), greedy
        )
    # Several samples per input: sorted by log-probability; high temperature gives variety.
    options = DecodingOptions("sample", max_decode_length=MAX_NEW, temperature=2.0, num_decodes=4)
    out = decode(params, config, enc, options, rng)
    assert out.tokens.shape == (8, 4, MAX_NEW)
    assert np.all(np.diff(np.asarray(out.log_probs), axis=1) <= 0)
    assert len({tuple(row) for row in np.asarray(out.tokens).reshape(-1, MAX_NEW)}) > 8
    # top-k 3: every first token is among the 3 most likely first tokens.
    options = DecodingOptions("sample", max_decode_length=1, top_k=3, num_decodes=16)
    first = np.asarray(decode(params, config, enc, options, rng).tokens)[:, :, 0]
    logits = T5(config).apply({"params": params}, jnp.asarray(enc), jnp.zeros((8, 1), jnp.int32))
    top3 = np.argsort(-np.asarray(logits[:, 0]), axis=-1)[:, :3]
    assert all(set(first[i]) <= set(top3[i]) for i in range(8))
    assert len(set(first.ravel())) > 8  # it does sample


def test_bad_options_say_what_is_wrong():
    with pytest.raises(ValueError, match="method='nucleus'"):
        DecodingOptions("nucleus")
    with pytest.raises(ValueError, match="num_decodes=5 must be in 1..num_beams=4"):
        DecodingOptions("beam", num_beams=4, num_decodes=5)
