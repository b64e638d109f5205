"""Optimizers and learning-rate schedules (optax), gin-configurable.

Gin binds one optimizer constructor (uncalled: `train` passes it the schedule)
and one schedule, e.g.

    train.optimizer = @adafactor
    train.learning_rate = @rsqrt_schedule()
    rsqrt_schedule.base_learning_rate = 1.0
    rsqrt_schedule.warmup_steps = 10000

Defaults are T5's: Adafactor factored, decay rate 0.8, parameter-scale-relative
updates, update clipping at RMS 1.0, no momentum; the inverse-square-root
schedule with 10k warmup steps gives lr = 1 / sqrt(max(step, 10000)) = 0.01
during warmup (t5x's `constant * rsqrt_decay`).
"""

from __future__ import annotations

import dataclasses
import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax


@gin.configurable
def rsqrt_schedule(base_learning_rate: float = 1.0, warmup_steps: int = 10_000) -> optax.Schedule:
    """lr(step) = base / sqrt(max(step, warmup_steps)): constant for warmup, then 1/sqrt decay."""
    if warmup_steps <= 0:
        raise ValueError(f"rsqrt_schedule.warmup_steps={warmup_steps} must be positive")

    def schedule(step):
        return base_learning_rate * jnp.reciprocal(
            jnp.sqrt(jnp.maximum(jnp.asarray(step, jnp.float32), float(warmup_steps)))
        )

    return schedule


@gin.configurable
def constant_schedule(learning_rate: float = 1e-3, warmup_steps: int = 0) -> optax.Schedule:
    """A constant rate, optionally after a linear warmup from 0."""
    if warmup_steps <= 0:
        return optax.constant_schedule(learning_rate)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, learning_rate, warmup_steps),
            optax.constant_schedule(learning_rate),
        ],
        [warmup_steps],
    )


@gin.configurable
def linear_schedule(
    learning_rate: float = 1e-3,
    warmup_steps: int = 0,
    decay_steps: int = gin.REQUIRED,
    end_learning_rate: float = 0.0,
) -> optax.Schedule:
    """Linear warmup from 0, then linear decay to `end_learning_rate` at `decay_steps`."""
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1)),
            optax.linear_schedule(
                learning_rate, end_learning_rate, max(decay_steps - warmup_steps, 1)
            ),
        ],
        [max(warmup_steps, 1)],
    )


@gin.configurable
def cosine_schedule(
    learning_rate: float = 1e-3,
    warmup_steps: int = 0,
    decay_steps: int = gin.REQUIRED,
    end_learning_rate: float = 0.0,
) -> optax.Schedule:
    """Linear warmup from 0, then cosine decay to `end_learning_rate` at `decay_steps`."""
    return optax.warmup_cosine_decay_schedule(
        0.0,
        learning_rate,
        max(warmup_steps, 0),
        max(decay_steps, warmup_steps + 1),
        end_learning_rate,
    )


@gin.configurable
def adafactor(
    learning_rate: optax.ScalarOrSchedule,
    decay_rate: float = 0.8,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
    weight_decay_rate: float | None = None,
    global_norm_clip: float | None = None,
) -> optax.GradientTransformation:
    """Adafactor with T5's settings (Shazeer & Stern 2018; Mesh TF / t5x defaults).

    The same optimizer as `optax.adafactor` (its state too, so t5x state import and
    `factor_like_t5x` see what they expect), with each parameter's update written as
    one expression: the chain's stages (factored RMS, block-RMS clip, learning rate,
    parameter scale, sign) each materialise an update-sized array in optax, here the
    scalar factors are folded first and the gradient is read once more for the output.
    Momentum and weight decay keep optax's chain.
    """
    reference = optax.adafactor(
        learning_rate=learning_rate,
        min_dim_size_to_factor=min_dim_size_to_factor,
        decay_rate=decay_rate,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold,
        momentum=momentum,
        factored=factored,
        weight_decay_rate=weight_decay_rate,
    )
    if momentum is not None or weight_decay_rate is not None:
        return _with_clipping(reference, global_norm_clip)
    settings = _AdafactorSettings(
        decay_rate, multiply_by_parameter_scale, clipping_threshold, factored,
        min_dim_size_to_factor,
    )  # fmt: skip

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("adafactor needs the parameters (it scales by their RMS)")
        factored_state, *rest = state
        count = factored_state.count
        rate = 1.0 if learning_rate is None else learning_rate
        if callable(learning_rate):
            at = 0 if clipping_threshold is None else 1  # after the clip's empty state
            schedule_state = rest[at]
            rate = learning_rate(schedule_state.count)
            rest[at] = optax.ScaleByScheduleState(count=optax.safe_increment(schedule_state.count))
        leaves = jax.tree.map(
            lambda g, r, c, v, p: _adafactor_leaf(settings, g, r, c, v, p, count, rate),
            grads, factored_state.v_row, factored_state.v_col, factored_state.v, params,
        )  # fmt: skip
        pick = lambda i: jax.tree.map(lambda _, out: out[i], grads, leaves)  # noqa: E731
        new_state = optax.FactoredState(
            count=optax.safe_increment(count), v_row=pick(1), v_col=pick(2), v=pick(3)
        )
        return pick(0), (new_state, *rest)

    return _with_clipping(optax.GradientTransformation(reference.init, update), global_norm_clip)


@dataclasses.dataclass(frozen=True)
class _AdafactorSettings:
    decay_rate: float
    multiply_by_parameter_scale: bool
    clipping_threshold: float | None
    factored: bool
    min_dim_size_to_factor: int


def _factored_axes(shape, settings: _AdafactorSettings) -> tuple[int, int] | None:
    """optax's choice: the two largest axes (second largest, largest), when the
    second largest has at least min_dim_size_to_factor entries."""
    if not settings.factored or len(shape) < 2:
        return None
    order = np.argsort(shape)
    if shape[order[-2]] < settings.min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


def _adafactor_leaf(settings: _AdafactorSettings, grad, v_row, v_col, v, param, count, rate):
    """One parameter's (update, v_row, v_col, v); unused statistics stay [1] zeros."""
    dtype = param.dtype
    decay = 1.0 - jnp.asarray(count + 1, jnp.float32) ** (-settings.decay_rate)
    grad_sqr = jnp.square(grad) + 1e-30
    unused = jnp.zeros((1,), dtype)
    axes = _factored_axes(param.shape, settings)
    if axes is not None:
        d1, d0 = axes
        v_row = (decay * v_row + (1.0 - decay) * jnp.mean(grad_sqr, axis=d0)).astype(dtype)
        v_col = (decay * v_col + (1.0 - decay) * jnp.mean(grad_sqr, axis=d1)).astype(dtype)
        row_mean = jnp.mean(v_row, axis=d1 - 1 if d1 > d0 else d1, keepdims=True)
        row = jnp.expand_dims((v_row / row_mean) ** -0.5, d0)
        col = jnp.expand_dims(v_col**-0.5, d1)
        update, v = grad * row * col, unused
    else:
        v = (decay * v + (1.0 - decay) * grad_sqr).astype(dtype)
        update, v_row, v_col = grad * v**-0.5, unused, unused
    # The per-parameter scalars, folded into one multiplier of the update.
    scale = jnp.asarray(rate, dtype)
    if settings.clipping_threshold is not None:
        rms = jnp.sqrt(jnp.mean(jnp.square(update)))
        scale = scale / jnp.maximum(1.0, rms / settings.clipping_threshold)
    if settings.multiply_by_parameter_scale:
        scale = scale * jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(param))), 1e-3)
    return -scale * update, v_row, v_col, v


@gin.configurable
def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    global_norm_clip: float | None = 1.0,
) -> optax.GradientTransformation:
    """AdamW: Adam with decoupled weight decay, after optional global-norm clipping."""
    transform = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return _with_clipping(transform, global_norm_clip)


def _with_clipping(transform, global_norm_clip):
    if global_norm_clip is None:
        return transform
    if not (global_norm_clip > 0 and math.isfinite(global_norm_clip)):
        raise ValueError(f"global_norm_clip={global_norm_clip} must be a positive number")
    return optax.chain(optax.clip_by_global_norm(global_norm_clip), transform)


FACTORS = (
    "constant",
    "linear_warmup",
    "linear_decay",
    "rsqrt_decay",
    "rsqrt_normalized_decay",
    "decay_every",
    "cosine_decay",
)


@gin.configurable
def factor_schedule(
    factors: str = "constant * linear_warmup * rsqrt_decay",
    base_learning_rate: float = 0.5,
    warmup_steps: int = 1000,
    decay_factor: float = 0.5,
    steps_per_decay: int = 20_000,
    steps_per_cycle: int = 100_000,
    step_offset: int = 0,
    min_learning_rate: float = 1e-8,
) -> optax.Schedule:
    """t5x's `utils.create_learning_rate_scheduler`: the product of the named `factors`
    ('constant * rsqrt_decay', ...), floored at `min_learning_rate` (t5x gin files map
    onto it, so their schedules are the same function of the step)."""
    names = [name.strip() for name in factors.split("*")]
    unknown = [name for name in names if name not in FACTORS]
    if unknown:
        raise ValueError(f"factor_schedule.factors: unknown {unknown}; expected of {FACTORS}")

    def schedule(step):
        step = jnp.maximum(0.0, jnp.asarray(step, jnp.float32) - step_offset)
        rate = jnp.float32(1.0)
        for name in names:
            if name == "constant":
                rate = rate * base_learning_rate
            elif name == "linear_warmup":
                rate = rate * jnp.minimum(1.0, step / warmup_steps)
            elif name == "linear_decay":  # includes the warmup and the constant
                decayed = 1.0 + decay_factor * (warmup_steps - step)
                rate = rate * base_learning_rate * jnp.minimum(step / warmup_steps, decayed)
            elif name == "rsqrt_decay":
                rate = rate / jnp.sqrt(jnp.maximum(step, float(warmup_steps)))
            elif name == "rsqrt_normalized_decay":
                rate = rate * jnp.sqrt(float(warmup_steps))
                rate = rate / jnp.sqrt(jnp.maximum(step, float(warmup_steps)))
            elif name == "decay_every":
                rate = rate * decay_factor ** jnp.floor(step / steps_per_decay)
            else:  # cosine_decay: cycles of steps_per_cycle after the warmup
                progress = jnp.maximum(0.0, (step - warmup_steps) / float(steps_per_cycle))
                rate = rate * jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * (progress % 1.0))))
        return jnp.maximum(rate, min_learning_rate).astype(jnp.float32)

    return schedule
