"""T5Gemma 2 (text) against Hugging Face's `T5Gemma2ForConditionalGeneration` (float32).

The tiny config has two sliding layers per global one (window 4, shorter than the
inputs and the decodes), one key/value head for four query heads, both RoPE bases
(global ones linearly scaled), and an end-of-image token inside the vocabulary, which
the inputs contain. HF's model carries a (tiny) vision tower that text inputs never use.
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
from t5pipe.models.t5gemma2 import GEMMA3_STACK, T5Gemma2Config, config_from_hf, config_to_hf

EOI = 100
STACK = GEMMA3_STACK.replace(
    d_model=32, d_ff=64, num_layers=3, num_heads=4, num_kv_heads=1, head_dim=8,
    query_pre_attn_scalar=8, sliding_window=4, sliding_window_pattern=3,
    rope_scaling_factor=8.0,
)  # fmt: skip
CONFIG = T5Gemma2Config(encoder=STACK, decoder=STACK, vocab_size=128, eoi_token_index=EOI)
TINY_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                   num_attention_heads=2, image_size=28, patch_size=14)  # fmt: skip
VISION = ("model.encoder.vision_tower.", "model.encoder.multi_modal_projector.")


def hf_config(config: T5Gemma2Config, vision: dict, tokens_per_image: int):
    values = config_to_hf(config, vision)
    values["encoder"]["mm_tokens_per_image"] = tokens_per_image
    return transformers.T5Gemma2Config(**values, attn_implementation="eager")


@pytest.fixture(scope="module")
def t5gemma2():
    hf = transformers.T5Gemma2ForConditionalGeneration(hf_config(CONFIG, TINY_VISION, 4))
    # Scaled by sqrt(width), embeddings of std 0.3 would swamp the residual stream and the
    # tied output layer would echo the input token; 0.1 keeps decodes varied.
    hf = spread_weights(hf, 0.3, one_centered_norms=True, embedding_std=0.1)
    return CONFIG, hf, params_from(hf, CONFIG)


def test_encoder_and_logits_match_transformers(t5gemma2):
    config, hf, params = t5gemma2
    assert hf.config._attn_implementation == "eager"
    assert_parity(parity_errors(config, hf, params, special=(EOI,)), {"float32": 1e-5})


def test_hf_round_trip_and_config_map(t5gemma2):
    config, hf, _ = t5gemma2
    shared = "model.encoder.text_model.embed_tokens"
    copies = {
        "model.decoder.embed_tokens.weight": f"{shared}.weight",
        "model.decoder.embed_tokens.eoi_embedding": f"{shared}.eoi_embedding",
        "lm_head.out_proj.weight": f"{shared}.weight",
    }
    back = assert_hf_round_trip(hf, config, copies)
    text = {name for name in hf.state_dict() if not name.startswith(VISION)}
    assert text == set(back) | set(copies)
    assert config_from_hf(hf.config.to_dict()) == config
    assert T5Gemma2Config.from_dict(config.to_dict()) == config


def test_greedy_beam_and_cached_decoding_equal_references(t5gemma2):
    config, hf, params = t5gemma2
    enc = mixed_length_inputs(config.vocab_size, 32, max_length=12)
    enc[::5, 0] = EOI  # the end-of-image embedding in some inputs
    greedy = assert_decoding_equals_references(params, config, hf, enc)
    scanned_params = get_family("t5gemma2").scan_layout(params, config)
    scanned = ours_decode(scanned_params, config.replace(scan_layers=True), enc)
    np.testing.assert_array_equal(scanned, greedy)


def test_scanned_remat_and_bfloat16_forward():
    errors = scan_remat_bf16_errors(CONFIG, init_params(CONFIG, jax.random.PRNGKey(0)))
    assert max(errors[k] for k in errors if k != "bfloat16") <= 1e-6, errors
    assert errors["bfloat16"] <= 2e-2, errors


# Gemma 3's SigLIP tower (896 px, patch 14, 256 tokens per image): only for building HF's
# model; its parameters are not counted.
SIGLIP = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
              num_attention_heads=16, image_size=896, patch_size=14)  # fmt: skip


@pytest.mark.parametrize("size", ["270m_270m", "1b_1b", "4b_4b"])
def test_parameter_count_equals_transformers_text_model(size):
    config = config_from_gin(get_family("t5gemma2"), f"models/t5gemma2/{size}.gin")
    with torch.device("meta"):
        hf = transformers.T5Gemma2ForConditionalGeneration(hf_config(config, SIGLIP, 256))
    assert count_params(config.replace(scan_layers=True)) == hf_parameter_count(hf, VISION)
