"""Token cross-entropy for T5 training: z-loss, label smoothing, t5x's loss normalisation.

Pure functions of arrays. The loss of a batch is

    sum_tokens weight * (cross_entropy + z_loss * log(Z)**2) / normalizing_factor

where `weight` is the feature converter's `decoder_loss_weights` (0 on padding,
and on packing's gaps), and `normalizing_factor` follows t5x's
`LOSS_NORMALIZING_FACTOR`:

    None                       no normalisation: the weighted sum (t5x's default)
    a number                   divide by that constant (t5x's finetune configs use
                               e.g. 233472 = 2048 * 114 to match Mesh TF)
    "NUM_REAL_TARGET_TOKENS"   divide by the number of real target tokens in the batch
    "AVERAGE_PER_SEQUENCE"     every sequence (packed segment) weighs the same: token
                               weights become 1/len(sequence), divide by #sequences

The factor is computed on the whole batch (`normalizing_weights`) before any
split into microbatches, so the sum of microbatch losses equals the batch loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"
AVERAGE_PER_SEQUENCE = "AVERAGE_PER_SEQUENCE"
NORMALIZING_MODES = (NUM_REAL_TARGET_TOKENS, AVERAGE_PER_SEQUENCE)


def normalizing_weights(
    weights: jax.Array,
    segment_ids: jax.Array | None,
    loss_normalizing_factor: float | str | None,
) -> tuple[jax.Array, jax.Array]:
    """Per-token loss weights and the divisor of the summed loss, for a whole batch.

    weights [batch, length] (0/1), segment_ids [batch, length] or None (unpacked)
    -> (weights [batch, length] float32, factor [] float32).
    """
    weights = weights.astype(jnp.float32)
    if loss_normalizing_factor is None:
        return weights, jnp.float32(1.0)
    if isinstance(loss_normalizing_factor, str):
        if loss_normalizing_factor == NUM_REAL_TARGET_TOKENS:
            return weights, jnp.maximum(jnp.sum(weights), 1.0)
        if loss_normalizing_factor == AVERAGE_PER_SEQUENCE:
            return _per_sequence_weights(weights, segment_ids)
        raise ValueError(
            f"LOSS_NORMALIZING_FACTOR={loss_normalizing_factor!r}: expected a number, None, "
            f"or one of {NORMALIZING_MODES}"
        )
    factor = float(loss_normalizing_factor)
    if factor <= 0:
        raise ValueError(f"LOSS_NORMALIZING_FACTOR={factor} must be positive")
    return weights, jnp.float32(factor)


def _per_sequence_weights(weights: jax.Array, segment_ids: jax.Array | None):
    """Weights 1/len(sequence) on each sequence's tokens; factor = number of sequences."""
    if segment_ids is None:
        segment_ids = (weights > 0).astype(jnp.int32)
    # Tokens of the same (row, segment) share a length; segment 0 is padding.
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    lengths = jnp.sum(same * weights[:, None, :], axis=-1)  # [batch, length]
    per_token = jnp.where(lengths > 0, weights / jnp.maximum(lengths, 1.0), 0.0)
    num_sequences = jnp.sum(per_token)  # each real sequence contributes exactly 1
    return per_token, jnp.maximum(num_sequences, 1.0)


def cross_entropy_with_z_loss(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    *,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Weighted token losses, summed (not normalised).

    logits [batch, length, vocab] float32, targets [batch, length] int,
    weights [batch, length] float -> (total loss [], z-loss part [], correct-token weight []).

    Label smoothing puts `label_smoothing` of the target mass uniformly on the other
    tokens; its constant entropy term is subtracted as in t5x so that a perfect
    prediction has loss 0. z-loss adds `z_loss * log(Z)**2` per token to keep the
    softmax normaliser near 1 (PaLM, T5X).
    """
    vocab = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1) if vocab > 1 else 0.0
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    target_log_prob = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if label_smoothing > 0.0:
        mean_log_prob = jnp.sum(log_probs, axis=-1)
        smoothed = confidence * target_log_prob + low * (mean_log_prob - target_log_prob)
        # Entropy of the smoothed target distribution: the loss's minimum, removed.
        normalizer = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
        token_loss = -smoothed - normalizer
    else:
        token_loss = -target_log_prob
    token_z_loss = z_loss * jnp.square(log_z)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    total = jnp.sum((token_loss + token_z_loss) * weights)
    return total, jnp.sum(token_z_loss * weights), jnp.sum(correct * weights)
