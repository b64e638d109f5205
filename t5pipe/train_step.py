"""One training step and one teacher-forced eval step: pure functions for `jax.jit`.

The train state is a plain dict pytree:

    {"step": int32 [],          steps taken (also the data position)
     "params": ...,             float32 parameters
     "opt_state": ...,          optax state
     "rng": uint32 [2],         base key; step s uses fold_in(rng, s): resumable per step
     "skipped_steps": int32 []} updates dropped because the loss or gradient was not finite

Batches are the dicts of seqio's EncDecFeatureConverter, [batch, length] each:
encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
decoder_loss_weights, and when packed encoder/decoder_segment_ids and _positions.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from t5pipe import peft
from t5pipe.errors import UserInputError
from t5pipe.losses import (
    AVERAGE_PER_SEQUENCE,
    NORMALIZING_MODES,
    cross_entropy_with_z_loss,
    normalizing_weights,
)

TrainState = dict[str, Any]
Batch = dict[str, jax.Array]
NONFINITE_POLICIES = ("stop", "skip")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizationConfig:
    """What one training step optimises and how.

    optimizer: an optax constructor called with the schedule (`@adafactor`, `@adamw`;
    default Adafactor with T5's settings); learning_rate: a schedule or a number;
    z_loss (Z_LOSS), label_smoothing (LABEL_SMOOTHING), loss_normalizing_factor
    (LOSS_NORMALIZING_FACTOR: None, a number, 'NUM_REAL_TARGET_TOKENS',
    'AVERAGE_PER_SEQUENCE'); num_microbatches: gradient accumulation (same update as
    the full batch); trainable_params: a regex over parameter paths, the rest frozen;
    on_nonfinite: 'stop' (exit 65) or 'skip' a step whose loss, gradient or update is
    NaN/Inf (its update is never applied either way).
    """

    optimizer: Callable[..., optax.GradientTransformation] | None = None
    learning_rate: optax.Schedule | float = 1e-3
    z_loss: float = 1e-4
    label_smoothing: float = 0.0
    loss_normalizing_factor: float | str | None = None
    num_microbatches: int = 1
    trainable_params: str | None = None
    on_nonfinite: str = "stop"

    def __post_init__(self):
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise UserInputError(
                f"train.on_nonfinite={self.on_nonfinite!r}: expected 'stop' or 'skip'"
            )
        micro = self.num_microbatches
        if isinstance(micro, bool) or not isinstance(micro, int) or micro < 1:
            raise UserInputError(f"train.num_microbatches={micro!r}: expected a whole number >= 1")
        factor = self.loss_normalizing_factor
        if isinstance(factor, str) and factor not in NORMALIZING_MODES:
            raise UserInputError(
                f"LOSS_NORMALIZING_FACTOR={factor!r}: expected a number, None, or one of "
                f"{NORMALIZING_MODES}"
            )
        if isinstance(factor, int | float) and not isinstance(factor, bool) and factor <= 0:
            raise UserInputError(f"LOSS_NORMALIZING_FACTOR={factor} must be positive")
        if self.trainable_params is not None:
            try:
                re.compile(self.trainable_params)
            except re.error as error:
                raise UserInputError(
                    f"train.trainable_params={self.trainable_params!r} is not a regular "
                    f"expression ({error})"
                ) from None

    def schedule(self) -> optax.Schedule:
        rate = self.learning_rate
        return rate if callable(rate) else optax.constant_schedule(float(rate))

    def make_optimizer(self) -> optax.GradientTransformation:
        """The optimizer over the schedule (Adafactor with T5's settings by default)."""
        from t5pipe.optimizers import adafactor

        return (self.optimizer or adafactor)(learning_rate=self.schedule())


def init_train_state(params: Any, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": optimizer.init(params),
        "rng": jax.random.key_data(jax.random.PRNGKey(seed)),
        "skipped_steps": jnp.zeros((), jnp.int32),
    }


def logits_for(model: nn.Module, params, batch: Batch, dropout_rng: jax.Array | None) -> jax.Array:
    """Teacher-forced logits [batch, length, vocab]; dropout on when `dropout_rng` is given."""
    return model.apply(
        {"params": params},
        batch["encoder_input_tokens"],
        with_start_token(batch, model.config.decoder_start_token_id),
        batch.get("encoder_segment_ids"),
        batch.get("decoder_segment_ids"),
        enable_dropout=dropout_rng is not None,
        rngs={"dropout": dropout_rng} if dropout_rng is not None else None,
    )


def with_start_token(batch: Batch, start_token_id: int) -> jax.Array:
    """The decoder inputs [batch, length] with each target's first position holding
    `start_token_id`: seqio shifts targets right with 0 (T5's start), but other families
    start from another token (T5Gemma's <bos> = 2), as decoding and scoring do."""
    tokens = batch["decoder_input_tokens"]
    if start_token_id == 0:
        return tokens
    if "decoder_positions" in batch:  # packed: every segment starts at position 0
        first = (batch["decoder_positions"] == 0) & (batch["decoder_segment_ids"] > 0)
    else:
        first = jnp.arange(tokens.shape[1])[None, :] == 0
    return jnp.where(first, jnp.asarray(start_token_id, tokens.dtype), tokens)


def microbatch_loss(
    params, batch: Batch, factor, dropout_rng, *, model, z_loss, smoothing, per_sequence=False
):
    """Loss of one microbatch, already divided by the whole batch's normalising factor.

    `batch["weights"]` holds the normalising token weights; per_sequence: they are not
    the real tokens' 0/1 weights (AVERAGE_PER_SEQUENCE), so the per-token sum and the
    correct tokens are summed again with those (XLA shares the token losses).
    -> (loss [], (z_loss [], correct-token weight [], real-token count [],
        summed loss of the real tokens [])).
    """
    logits = logits_for(model, params, batch, dropout_rng)
    targets = batch["decoder_target_tokens"]
    losses = functools.partial(
        cross_entropy_with_z_loss, logits, targets, z_loss=z_loss, label_smoothing=smoothing
    )
    total, z_total, correct = losses(batch["weights"])
    real = (batch["decoder_loss_weights"] > 0).astype(jnp.float32)
    token_total = total
    if per_sequence:  # the weights are 1 / length, not the real tokens' 0/1
        token_total, _, correct = losses(real)
    return total / factor, (z_total / factor, correct, jnp.sum(real), token_total)


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
    """[batch, ...] -> [num_microbatches, batch / num_microbatches, ...].

    Microbatch m takes rows m, m + M, m + 2M, ...: a batch split over devices in
    contiguous blocks then gives every device a share of every microbatch.
    """

    def split(x):
        rows = x.shape[0]
        if rows % num_microbatches:
            raise ValueError(
                f"batch size {rows} is not divisible by num_microbatches={num_microbatches}"
            )
        x = x.reshape(rows // num_microbatches, num_microbatches, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    learning_rate: optax.Schedule,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
    loss_normalizing_factor: float | str | None = None,
    num_microbatches: int = 1,
    trainable_params: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """Gradients of the batch loss (accumulated over microbatches), one optimizer update.

    trainable_params: a regex over parameter paths; the others are frozen (their updates
    are the optimizer's to zero, `peft.freeze_except`) and get no gradient at all: the
    loss sees them through `stop_gradient`, so their weight-gradient matmuls are never
    computed (LoRA, prompt tuning) and `grad_norm` is the trainable parameters'.

    A non-finite loss or gradient norm leaves params and optimizer state unchanged
    and counts the step in `skipped_steps`; whether to stop is the caller's choice.
    """
    step, params = state["step"], state["params"]
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
    if model.config.dropout_rate == 0.0:
        dropout_rng = None
    weights, factor = normalizing_weights(
        batch["decoder_loss_weights"], batch.get("decoder_segment_ids"), loss_normalizing_factor
    )
    batch = {**batch, "weights": weights}
    loss_of = functools.partial(
        microbatch_loss, model=model, z_loss=z_loss, smoothing=label_smoothing,
        per_sequence=loss_normalizing_factor == AVERAGE_PER_SEQUENCE,
    )  # fmt: skip
    if trainable_params:
        labels = peft.trainable_labels(params, trainable_params)

        def loss_fn(params, *args):
            params = jax.tree.map(
                lambda p, label: p if label == peft.TRAIN else jax.lax.stop_gradient(p),
                params,
                labels,
            )
            return loss_of(params, *args)

    else:
        loss_fn = loss_of
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    if num_microbatches <= 1:
        (loss, (z_total, correct, num_tokens, token_total)), grads = grad_fn(
            params, batch, factor, dropout_rng
        )
    else:
        micro = _split_microbatches(batch, num_microbatches)

        def accumulate(carry, inputs):
            index, microbatch = inputs
            rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
            (m_loss, m_aux), m_grads = grad_fn(params, microbatch, factor, rng)
            grads_sum, sums = carry
            grads_sum = jax.tree.map(jnp.add, grads_sum, m_grads)
            sums = jax.tree.map(jnp.add, sums, (m_loss, *m_aux))
            return (grads_sum, sums), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        init = (zeros, tuple(jnp.zeros((), jnp.float32) for _ in range(5)))
        indices = jnp.arange(num_microbatches)
        (grads, (loss, z_total, correct, num_tokens, token_total)), _ = jax.lax.scan(
            accumulate, init, (indices, micro)
        )

    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = optimizer.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    # A finite loss and gradient can still give a non-finite update (a bad learning rate).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    new_state = {
        "step": step + 1,
        "params": keep(new_params, params),
        "opt_state": keep(new_opt_state, state["opt_state"]),
        "rng": state["rng"],
        "skipped_steps": state["skipped_steps"] + (~finite).astype(jnp.int32),
    }
    metrics = {
        "loss": loss,
        # t5x's `loss` is summed over target tokens (unless LOSS_NORMALIZING_FACTOR
        # divides it); the per-token mean reads the same whatever the batch holds.
        "loss_per_token": token_total / jnp.maximum(num_tokens, 1.0),
        "z_loss": z_total,
        "accuracy": correct / jnp.maximum(num_tokens, 1.0),
        "num_target_tokens": num_tokens,
        "grad_norm": grad_norm,
        "learning_rate": jnp.asarray(learning_rate(step), jnp.float32),
        "nonfinite": ~finite,
        "skipped_steps": new_state["skipped_steps"],
    }
    return new_state, metrics


def eval_step(params, batch: Batch, *, model: nn.Module) -> dict[str, jax.Array]:
    """Teacher-forced sums over a batch (combine across batches, then divide).

    Rows whose `decoder_loss_weights` are all 0 are padding and count nowhere.
    `sequences_correct` counts rows whose every target token is the argmax: exactly
    the rows greedy decoding reproduces (each greedy step then sees the true prefix).
    """
    logits = logits_for(model, params, batch, None)
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    targets = batch["decoder_target_tokens"]
    total, _, correct = cross_entropy_with_z_loss(logits, targets, weights, z_loss=0.0)
    token_ok = (jnp.argmax(logits, axis=-1) == targets) | (weights == 0)
    real_rows = jnp.any(weights > 0, axis=-1)
    return {
        "loss_sum": total,
        "correct_tokens": correct,
        "num_tokens": jnp.sum(weights),
        "sequences_correct": jnp.sum(jnp.all(token_ok, axis=-1) & real_rows).astype(jnp.float32),
        "num_sequences": jnp.sum(real_rows).astype(jnp.float32),
    }
