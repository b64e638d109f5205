"""The jitted train step: memorisation, microbatching equivalence, non-finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from testlib import tiny_config
from train_testlib import fixed_batch, jitted_step, make_state

from t5pipe import train_step as train_step_module
from t5pipe.model import T5
from t5pipe.optimizers import adafactor, constant_schedule


def test_tiny_model_memorises_a_fixed_batch_within_200_steps():
    config = tiny_config()
    schedule = constant_schedule(1e-2)
    optimizer = adafactor(learning_rate=schedule)
    step = jitted_step(T5(config), optimizer, schedule)
    state = make_state(config, optimizer)
    batch = fixed_batch(batch=8, vocab=config.vocab_size, pad_from=[8, 8, 6, 8, 5, 8, 8, 7])
    losses = []
    for _ in range(200):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    print(
        f"memorisation: loss {losses[0]:.3f} -> {losses[-1]:.4f} "
        f"({losses[-1] / losses[0]:.2%}); first below 10% at step "
        f"{next(i + 1 for i, v in enumerate(losses) if v < 0.1 * losses[0])}"
    )
    assert min(losses) < 0.1 * losses[0]
    assert losses[-1] < 0.1 * losses[0]
    assert float(metrics["accuracy"]) > 0.95


@pytest.mark.parametrize("normalizer", [None, "NUM_REAL_TARGET_TOKENS", "AVERAGE_PER_SEQUENCE"])
def test_microbatching_equals_full_batch(normalizer):
    config = tiny_config()
    schedule = constant_schedule(1e-2)
    optimizer = adafactor(learning_rate=schedule)
    model = T5(config)
    batch = fixed_batch(batch=8, vocab=config.vocab_size, pad_from=[8, 3, 6, 8, 5, 8, 2, 7])
    results = {}
    for microbatches in (1, 4):
        step = jitted_step(
            model,
            optimizer,
            schedule,
            loss_normalizing_factor=normalizer,
            num_microbatches=microbatches,
        )
        state, metrics = step(make_state(config, optimizer), batch)
        results[microbatches] = (state, metrics)
    (full_state, full_metrics), (micro_state, micro_metrics) = results[1], results[4]
    names = ("loss", "loss_per_token", "z_loss", "accuracy", "grad_norm", "num_target_tokens")
    for name in names:
        np.testing.assert_allclose(micro_metrics[name], full_metrics[name], rtol=2e-5, err_msg=name)
    # One identical update: the new parameters agree to float rounding.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        micro_state["params"],
        full_state["params"],
    )


def test_loss_per_token_and_accuracy_do_not_depend_on_the_normalizer():
    """Per real target token, whatever LOSS_NORMALIZING_FACTOR weighs the gradient with
    (AVERAGE_PER_SEQUENCE's weights are 1 / length): the same state, the same batch."""
    config = tiny_config()
    schedule = constant_schedule(1e-2)
    optimizer = adafactor(learning_rate=schedule)
    batch = fixed_batch(batch=8, vocab=config.vocab_size, pad_from=[8, 3, 6, 8, 5, 8, 2, 7])
    found = {}
    for normalizer in (None, "NUM_REAL_TARGET_TOKENS", "AVERAGE_PER_SEQUENCE", 37.0):
        step = jitted_step(T5(config), optimizer, schedule, loss_normalizing_factor=normalizer)
        _, metrics = step(make_state(config, optimizer), batch)
        found[normalizer] = (float(metrics["loss_per_token"]), float(metrics["accuracy"]))
    summed = found[None][0] * float(np.sum(np.asarray(batch["decoder_loss_weights"]) > 0))
    assert summed > found[None][0]  # a mean over several tokens
    for normalizer, (per_token, accuracy) in found.items():
        np.testing.assert_allclose(per_token, found[None][0], rtol=1e-6, err_msg=str(normalizer))
        np.testing.assert_allclose(accuracy, found[None][1], rtol=1e-6, err_msg=str(normalizer))


def test_nonfinite_loss_leaves_state_unchanged_and_counts(monkeypatch):
    config = tiny_config()
    schedule = constant_schedule(1e-2)
    optimizer = adafactor(learning_rate=schedule)
    original = train_step_module.microbatch_loss
    marker = config.vocab_size - 1  # a token only the poisoned batch holds

    def poisoned(params, batch, factor, rng, **kwargs):
        loss, aux = original(params, batch, factor, rng, **kwargs)
        return loss * jnp.where(jnp.any(batch["encoder_input_tokens"] == marker), jnp.nan, 1.0), aux

    monkeypatch.setattr(train_step_module, "microbatch_loss", poisoned)
    step = jitted_step(T5(config), optimizer, schedule)
    batch = fixed_batch(vocab=marker)  # tokens in [2, marker)
    bad_batch = {
        **batch,
        "encoder_input_tokens": batch["encoder_input_tokens"].at[0, 0].set(marker),
    }
    state, metrics = step(make_state(config, optimizer), batch)
    assert not bool(metrics["nonfinite"])
    before = jax.tree.map(np.asarray, state)
    state, metrics = step(state, bad_batch)
    assert bool(metrics["nonfinite"]) and int(state["skipped_steps"]) == 1
    assert int(state["step"]) == 2
    jax.tree.map(np.testing.assert_array_equal, state["params"], before["params"])
    jax.tree.map(np.testing.assert_array_equal, state["opt_state"], before["opt_state"])
    state, metrics = step(state, batch)
    assert not bool(metrics["nonfinite"]) and int(state["skipped_steps"]) == 1


def test_frozen_parameters_get_no_gradient_computation():
    """With trainable_params, the trainable parameters' update is the one the full
    gradient gives, the frozen ones stay as they were, and the compiled step does fewer
    FLOPs (the frozen kernels' weight-gradient matmuls are gone)."""
    from t5pipe.peft import freeze_except

    config = tiny_config()
    schedule = constant_schedule(1e-2)
    trainable = "^decoder/layers_1/|^logits_dense"
    params = make_state(config, adafactor(learning_rate=schedule))["params"]
    optimizer = freeze_except(adafactor(learning_rate=schedule), params, trainable)
    batch = fixed_batch(batch=8, vocab=config.vocab_size, pad_from=[8, 3, 6, 8, 5, 8, 2, 7])
    found = {}
    for regex in (None, trainable):
        step = jitted_step(T5(config), optimizer, schedule, trainable_params=regex)
        state = make_state(config, optimizer)
        flops = step.lower(state, batch).compile().cost_analysis()
        flops = (flops[0] if isinstance(flops, list) else flops)["flops"]
        found[regex] = (step(state, batch)[0]["params"], flops)
    (full, full_flops), (restricted, restricted_flops) = found[None], found[trainable]
    jax.tree.map(np.testing.assert_array_equal, restricted, full)  # the same update
    jax.tree.map(np.testing.assert_array_equal, restricted["encoder"], params["encoder"])
    assert restricted_flops < 0.9 * full_flops, (restricted_flops, full_flops)
