"""FLOPs of an encoder-decoder T5 step, for MFU (model FLOPs utilisation).

Counted per example, at the padded lengths the step really computes, as
2 FLOPs per multiply-add:

    encoder weights        x input tokens   (attention q/k/v/o, MLP)
    decoder weights        x target tokens  (self-attention q/k/v/o, cross-attention
                                             q/o, MLP, the output layer)
    cross-attention K/V    x input tokens   (projections of the encoder output)
    attention scores and weighted values:
        encoder self   2 * in^2 * heads*d_kv,   decoder self 2 * tgt^2 * heads*d_kv,
        cross          2 * tgt*in * heads*d_kv  (per layer, each doubled for 2 FLOPs/MAC)

Embedding lookups, norms, softmax and the loss are not counted (they are small
and not matmuls). A training step is 3x the forward pass (the backward pass
costs two); rematerialisation's extra forward is not model work and is left
out, as in the PaLM paper's MFU definition.
"""

from __future__ import annotations

import jax

from t5pipe.model_config import T5Config

# Dense bf16 peak FLOP/s per device (vendor figures), for MFU. Others: pass peak_flops.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
}


def forward_flops_per_example(config: T5Config, input_length: int, target_length: int) -> float:
    """Forward-pass FLOPs for one example of `input_length` / `target_length` tokens."""
    d, inner = config.d_model, config.num_heads * config.d_kv
    inputs = input_length + config.prompt_length
    targets = target_length
    mlp = (3 if config.is_gated else 2) * d * config.d_ff
    attention_projections = 4 * d * inner

    encoder = config.num_encoder_layers * (
        2 * (attention_projections + mlp) * inputs + 2 * 2 * inputs * inputs * inner
    )
    decoder_per_layer = (
        2 * (attention_projections + 2 * d * inner + mlp) * targets  # self q/k/v/o, cross q/o, mlp
        + 2 * (2 * d * inner) * inputs  # cross-attention k/v over the encoder output
        + 2 * 2 * targets * targets * inner  # self-attention scores and values
        + 2 * 2 * targets * inputs * inner  # cross-attention scores and values
    )
    output_layer = 2 * d * config.vocab_size * targets
    return float(encoder + config.num_decoder_layers * decoder_per_layer + output_layer)


def train_flops_per_step(
    config, batch_size: int, input_length: int, target_length: int
) -> float | None:
    """FLOPs of one training step (forward + backward) on a [batch_size] batch; None for
    the families other than T5 (their counts would need sliding windows, GQA and merged
    attention, so MFU is not reported for them rather than reported wrong)."""
    if not isinstance(config, T5Config):
        return None
    return 3.0 * batch_size * forward_flops_per_example(config, input_length, target_length)


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """The device's peak FLOP/s from `PEAK_FLOPS`, or None when unknown (e.g. CPU)."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    if kind in PEAK_FLOPS:
        return PEAK_FLOPS[kind]
    for name, value in PEAK_FLOPS.items():
        if kind.startswith(name):
            return value
    return None
