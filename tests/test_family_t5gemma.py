"""T5Gemma against Hugging Face's `T5GemmaForConditionalGeneration` (PyTorch, float32).

Two tiny configs: one whose inputs and decodes are longer than its sliding window
(soft-caps small enough to bite), and one shaped like 9B-2B (a wider, deeper encoder
with more heads than the decoder, grouped-query attention, untied output layer).
"""

import jax
import numpy as np
import pytest
import torch
import transformers
from family_testlib import (
    assert_decoding_equals_references,
    assert_hf_round_trip,
    assert_parity,
    config_from_gin,
    hf_parameter_count,
    mixed_length_inputs,
    ours_decode,
    params_from,
    parity_errors,
    scan_remat_bf16_errors,
    spread_weights,
)

from t5pipe.models import count_params, get_family, init_params
from t5pipe.models.gemma import GemmaStackConfig
from t5pipe.models.t5gemma import T5GemmaConfig, config_from_hf, config_to_hf

STACK = dict(d_model=32, d_ff=64, num_heads=4, num_kv_heads=2, head_dim=8)
CONFIGS = {
    # Window 4 < the 13 encoder tokens and the 10 decoded ones.
    "sliding": T5GemmaConfig(
        encoder=GemmaStackConfig(**STACK, num_layers=3, query_pre_attn_scalar=12,
                                 sliding_window=4, attn_logit_softcapping=10.0),
        decoder=GemmaStackConfig(**STACK, num_layers=3, query_pre_attn_scalar=12,
                                 sliding_window=4, attn_logit_softcapping=10.0),
        vocab_size=128, final_logit_softcapping=8.0,
    ),
    "9b_2b_shaped": T5GemmaConfig(
        encoder=GemmaStackConfig(d_model=48, d_ff=96, num_layers=4, num_heads=6, num_kv_heads=3,
                                 head_dim=8, query_pre_attn_scalar=8, sliding_window=6),
        decoder=GemmaStackConfig(**STACK, num_layers=2, query_pre_attn_scalar=8,
                                 sliding_window=6),
        vocab_size=128, tie_word_embeddings=False,
    ),
}  # fmt: skip


def hf_model(config: T5GemmaConfig):
    hf_config = transformers.T5GemmaConfig(**config_to_hf(config))
    hf = transformers.T5GemmaForConditionalGeneration(hf_config)
    # Scaled by sqrt(width), embeddings of std 0.3 would swamp the residual stream and a
    # tied output layer would echo the input token; 0.1 keeps decodes varied.
    return spread_weights(hf, 0.3, one_centered_norms=True, embedding_std=0.1)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def t5gemma(request):
    config = CONFIGS[request.param]
    hf = hf_model(config)
    return config, hf, params_from(hf, config)


def test_encoder_and_logits_match_transformers(t5gemma):
    config, hf, params = t5gemma
    assert_parity(parity_errors(config, hf, params), {"float32": 1e-5})


def test_hf_round_trip_and_config_map(t5gemma):
    config, hf, _ = t5gemma
    copies = {"lm_head.out_proj.weight": "model.decoder.embed_tokens.weight"}
    assert_hf_round_trip(hf, config, copies if config.tie_word_embeddings else {})
    assert config_from_hf(config_to_hf(config)) == config
    assert config_from_hf(hf.config.to_dict()) == config
    assert T5GemmaConfig.from_dict(config.to_dict()) == config


def test_greedy_beam_and_cached_decoding_equal_references(t5gemma):
    config, hf, params = t5gemma
    enc = mixed_length_inputs(config.vocab_size, 32, max_length=12)
    assert_decoding_equals_references(params, config, hf, enc)


def test_scanned_decoding_equals_unrolled():
    config = CONFIGS["9b_2b_shaped"]
    params = params_from(hf_model(config), config)
    enc = mixed_length_inputs(config.vocab_size, 32, max_length=12)
    scanned = config.replace(scan_layers=True)
    scanned_params = get_family("t5gemma").scan_layout(params, config)
    np.testing.assert_array_equal(
        ours_decode(scanned_params, scanned, enc), ours_decode(params, config, enc)
    )


def test_scanned_remat_and_bfloat16_forward():
    config = CONFIGS["sliding"]
    config = config.replace(
        encoder=config.encoder.replace(num_layers=2), decoder=config.decoder.replace(num_layers=2)
    )
    errors = scan_remat_bf16_errors(config, init_params(config, jax.random.PRNGKey(0)))
    assert max(errors[k] for k in errors if k != "bfloat16") <= 1e-6, errors
    assert errors["bfloat16"] <= 2e-2, errors


PUBLISHED = ["2b_2b", "9b_2b", "9b_9b", "s_s", "b_b", "l_l", "ml_ml", "xl_xl"]
# Parameter counts of the released safetensors (the Hub's model API; the output layer is
# tied and stored once). The 2B-2B and L-L entries are not known here.
HUB_COUNTS = {
    "9b_2b": 12_292_375_296,
    "9b_9b": 20_333_401_088,
    "s_s": 312_517_632,
    "b_b": 591_490_560,
    "ml_ml": 2_200_345_344,
    "xl_xl": 3_766_980_608,
}


@pytest.mark.parametrize("size", PUBLISHED)
def test_parameter_count_equals_transformers(size):
    config = config_from_gin(get_family("t5gemma"), f"models/t5gemma/{size}.gin")
    with torch.device("meta"):
        hf = transformers.T5GemmaForConditionalGeneration(
            transformers.T5GemmaConfig(**config_to_hf(config))
        )
    ours = count_params(config.replace(scan_layers=True))
    assert ours == hf_parameter_count(hf)
    assert ours == HUB_COUNTS.get(size, ours)
