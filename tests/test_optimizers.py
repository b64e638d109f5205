"""Schedules give t5x's values; Adafactor and AdamW both train a tiny T5."""

import math

import jax
import numpy as np
import pytest
from testlib import tiny_config
from train_testlib import fixed_batch, jitted_step, make_state

from t5pipe.model import T5
from t5pipe.optimizers import (
    adafactor,
    adamw,
    constant_schedule,
    cosine_schedule,
    linear_schedule,
    rsqrt_schedule,
)


def test_rsqrt_schedule_is_t5x_constant_times_rsqrt_decay():
    schedule = rsqrt_schedule(base_learning_rate=1.0, warmup_steps=10_000)
    for step in (0, 1, 5000, 10_000):
        assert float(schedule(step)) == pytest.approx(0.01)
    for step in (40_000, 250_000, 1_000_000):
        assert float(schedule(step)) == pytest.approx(1 / math.sqrt(step), rel=1e-6)


def test_constant_linear_cosine_schedules():
    assert float(constant_schedule(1e-3)(12345)) == pytest.approx(1e-3)
    warm = constant_schedule(1e-3, warmup_steps=100)
    assert float(warm(50)) == pytest.approx(5e-4) and float(warm(500)) == pytest.approx(1e-3)
    linear = linear_schedule(1e-3, warmup_steps=10, decay_steps=110)
    assert float(linear(10)) == pytest.approx(1e-3)
    assert float(linear(60)) == pytest.approx(5e-4, rel=1e-5)
    assert float(linear(110)) == pytest.approx(0.0, abs=1e-9)
    cosine = cosine_schedule(1e-3, warmup_steps=0, decay_steps=100)
    assert float(cosine(50)) == pytest.approx(5e-4, rel=1e-5)
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-9)


def test_adafactor_state_is_factored_without_momentum():
    params = {"w": np.zeros((256, 128), np.float32), "b": np.zeros((64,), np.float32)}
    state = adafactor(learning_rate=0.01).init(params)
    leaves = {tuple(x.shape) for x in jax.tree.leaves(state)}
    # A [256, 128] matrix keeps a row and a column statistic, never a full second moment.
    assert (256,) in leaves and (128,) in leaves and (256, 128) not in leaves


@pytest.mark.parametrize("make_optimizer", [adafactor, adamw], ids=["adafactor", "adamw"])
def test_optimizer_trains_tiny_model(make_optimizer):
    config = tiny_config()
    schedule = constant_schedule(1e-2 if make_optimizer is adafactor else 3e-3)
    optimizer = make_optimizer(learning_rate=schedule)
    step = jitted_step(
        T5(config), optimizer, schedule, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS"
    )
    state = make_state(config, optimizer)
    batch = fixed_batch(vocab=config.vocab_size)
    losses = []
    for _ in range(40):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses


def test_global_norm_clipping_applies_before_the_optimizer():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)).astype(np.float32)}
    grads = {"w": 100 * rng.normal(size=(4, 3)).astype(np.float32)}
    norm = float(np.sqrt(np.sum(grads["w"] ** 2)))
    clipped = {"w": grads["w"] * (0.5 / norm)}
    # eps=1 makes Adam's update depend on the gradient's scale, so clipping shows.
    with_clip = adamw(learning_rate=0.1, eps=1.0, global_norm_clip=0.5)
    without = adamw(learning_rate=0.1, eps=1.0, global_norm_clip=None)
    updates, _ = with_clip.update(grads, with_clip.init(params), params)
    expected, _ = without.update(clipped, without.init(params), params)
    unclipped, _ = without.update(grads, without.init(params), params)
    np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-5)
    assert not np.allclose(updates["w"], unclipped["w"], rtol=1e-2)


@pytest.mark.parametrize("schedule", [None, 0.01], ids=["schedule", "constant"])
def test_adafactor_matches_optax_chain_over_100_steps(schedule):
    # The folded update against optax.adafactor itself (T5's settings), on a factored
    # 3-D kernel, a factored matrix, a too-small matrix and a vector.
    import optax

    rate = constant_schedule(0.01, warmup_steps=20) if schedule is None else schedule
    shapes = {"q": (256, 4, 32), "wo": (200, 256), "small": (64, 100), "scale": (256,)}
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    ours, ref = adafactor(learning_rate=rate), optax.adafactor(rate, decay_rate=0.8)
    ours_p, ref_p = params, params
    ours_s, ref_s = ours.init(params), ref.init(params)
    update_ours, update_ref = jax.jit(ours.update), jax.jit(ref.update)
    for _ in range(100):
        grads = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
        u, ours_s = update_ours(grads, ours_s, ours_p)
        ours_p = optax.apply_updates(ours_p, u)
        u, ref_s = update_ref(grads, ref_s, ref_p)
        ref_p = optax.apply_updates(ref_p, u)
    assert jax.tree.structure(ours_s) == jax.tree.structure(ref_s)
    for a, b in zip(
        jax.tree.leaves((ours_p, ours_s)), jax.tree.leaves((ref_p, ref_s)), strict=True
    ):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.max(np.abs(a - b)) <= 1e-6 * max(np.max(np.abs(b)), 1e-30)
    assert not np.allclose(ours_p["q"], params["q"])  # it did train
