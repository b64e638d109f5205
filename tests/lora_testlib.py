"""Helpers shared by the LoRA tests (one device and tests/multi_device/)."""

import jax
import numpy as np

from t5pipe import lora
from t5pipe.model import abstract_params, init_params

RANK = 4


def lora_init(config, lora_config, seed=0):
    with lora.attach(lora_config):
        return init_params(config, jax.random.PRNGKey(seed))


def abstract_params_with(config, lora_config):
    with lora.attach(lora_config):
        return abstract_params(config)


def randomize_b(adapter, seed=1, scale=0.5):
    """Fresh adapters are no-ops (B = 0); tests need ones that change the model."""
    flat = lora.flat_adapter(adapter)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(flat))
    return lora.unflatten(
        {
            path: jax.random.normal(key, value.shape) * scale if path.endswith("/b") else value
            for (path, value), key in zip(sorted(flat.items()), keys, strict=True)
        }
    )


def memorisation_batch(config, rows=4, enc=10, dec=7, seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(2, config.vocab_size, (rows, dec)).astype(np.int32)
    return {
        "encoder_input_tokens": rng.integers(2, config.vocab_size, (rows, enc)).astype(np.int32),
        "decoder_input_tokens": np.concatenate([np.zeros((rows, 1), np.int32), targets[:, :-1]], 1),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": np.ones((rows, dec), np.int32),
    }
