"""Training-step speed of t5pipe: the real `train_step`, jitted as the trainer does.

Parameters and optimizer state are placed as `t5pipe.train` places them
(`train_state.state_layout`: logical-axis rules on a mesh over every current device);
the state is donated; host batches go through `input_pipeline.to_global` each step,
as in training. The step must compile
exactly once (a recompilation between steps is a bug: it would cost a compile per
step in a real run); `measure_train_step` raises if it does not.

Batches are random tokens at the full lengths, unpacked, so that every position is
real work and the FLOP count (t5pipe.flops) is exact.
"""

from __future__ import annotations

import contextlib
import functools
import time

import jax
import numpy as np
import optax

from benchmarks.measure import (
    compile_log,
    peak_device_memory_bytes,
    peak_host_memory_bytes,
    summarize,
)
from t5pipe import flops, input_pipeline, lora, optimizers, partitioning, peft, train_state
from t5pipe.model import T5, abstract_params, init_params
from t5pipe.model_config import T5Config
from t5pipe.train_step import init_train_state, train_step

STEP_NAME = "t5pipe_train_step"  # the jitted function's name, as compilation logs show it


def random_batch(
    config: T5Config, batch_size: int, input_length: int, target_length: int, seed: int
) -> dict[str, np.ndarray]:
    """A host batch in EncDecFeatureConverter's unpacked layout, [batch, length] each,
    every token real (ids 2.. vocab: no padding, no EOS)."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(2, config.vocab_size, (batch_size, input_length), dtype=np.int32)
    targets = rng.integers(2, config.vocab_size, (batch_size, target_length), dtype=np.int32)
    decoder_inputs = np.concatenate(
        [np.full((batch_size, 1), config.decoder_start_token_id, np.int32), targets[:, :-1]], 1
    )
    return {
        "encoder_input_tokens": inputs,
        "decoder_input_tokens": decoder_inputs,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": np.ones((batch_size, target_length), np.int32),
    }


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """t5pipe's Adafactor (T5 defaults: factored, parameter-scaled, update clipping 1.0) or
    AdamW (global-norm clipping 1.0), at a fixed learning rate."""
    schedule = optimizers.constant_schedule(learning_rate)
    if name == "adafactor":
        return optimizers.adafactor(schedule)
    if name == "adamw":
        return optimizers.adamw(schedule)
    raise ValueError(f"--optimizer={name!r}: expected 'adafactor' or 'adamw'")


def adapters(lora_config: lora.LoraConfig | None):
    """The context models are traced in: LoRA adapters attached, or nothing."""
    return lora.attach(lora_config) if lora_config is not None else contextlib.nullcontext()


def sharded_params(config: T5Config, mesh, rules, seed: int = 0, lora_config=None):
    """Random parameters (with LoRA adapters when `lora_config` is given), created
    directly in their mesh placement."""
    with adapters(lora_config):
        _, logical_specs = abstract_params(config)
        shardings = partitioning.logical_to_sharding(logical_specs, mesh, rules)
        init = jax.jit(lambda rng: init_params(config, rng), out_shardings=shardings)
        with partitioning.activation_rules(mesh, rules):
            return init(jax.random.PRNGKey(seed))


def tree_size(tree) -> int:
    return int(sum(leaf.size for leaf in jax.tree.leaves(tree)))


def tree_bytes(tree) -> int:
    return int(sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree)))


def measure_train_step(
    config: T5Config,
    params,
    *,
    batch_size: int,
    input_length: int,
    target_length: int,
    optimizer_name: str,
    learning_rate: float,
    steps: int,
    warmup: int,
    mesh,
    rules,
    peak_flops: float,
    lora_config: lora.LoraConfig | None = None,
) -> dict:
    """Times `steps` training steps after `warmup` (the first of which compiles).

    -> step time (median), tokens/second (input + target tokens), target tokens/second,
    examples/second, MFU against `peak_flops` (FLOP/s of all the devices used), compile
    time, compilations, peak memory, trainable parameters, state and optimizer-state bytes.

    With `lora_config`, `params` must hold its adapters (`sharded_params(...,
    lora_config=...)`): only they train, as `t5pipe.train` trains them (the base frozen
    by `peft.freeze_except`, the step traced under `lora.attach`); FLOPs and MFU still
    count the base model's training step.
    """
    model = T5(config)
    optimizer = make_optimizer(optimizer_name, learning_rate)
    trainable = None
    if lora_config is not None:
        trainable = lora.TRAINABLE
        optimizer = peft.freeze_except(optimizer, params, trainable)
    step_fn = functools.partial(
        train_step,
        model=model,
        optimizer=optimizer,
        learning_rate=optimizers.constant_schedule(learning_rate),
        trainable_params=trainable,  # as the trainer: no gradient for the frozen base
    )

    def t5pipe_train_step(state, batch):
        return step_fn(state, batch)

    if lora_config is not None:
        t5pipe_train_step = lora.with_lora(t5pipe_train_step, lora_config)
    batch_sharding = partitioning.batch_sharding(mesh, rules)
    host_batches = [
        random_batch(config, batch_size, input_length, target_length, seed) for seed in range(4)
    ]
    # The trainer's placement: optimizer leaves shaped like a parameter follow it.
    with adapters(lora_config):
        state_shardings = train_state.state_layout(config, optimizer, 0, mesh, rules).shardings
    with partitioning.activation_rules(mesh, rules):
        state = jax.jit(
            lambda p: init_train_state(p, optimizer, seed=0), out_shardings=state_shardings
        )(params)
        jitted = jax.jit(
            t5pipe_train_step,
            in_shardings=(state_shardings, batch_sharding),
            out_shardings=(state_shardings, partitioning.replicated(mesh)),
            donate_argnums=0,
        )
        times = []
        with compile_log() as log:
            for i in range(warmup + steps):
                start = time.perf_counter()
                host_batch = host_batches[i % len(host_batches)]
                batch = input_pipeline.to_global(host_batch, batch_sharding)
                state, metrics = jitted(state, batch)
                jax.block_until_ready((state, metrics))
                times.append(time.perf_counter() - start)
        loss = float(metrics["loss"])

    compilations = log.count(STEP_NAME)
    if compilations != 1:
        raise RuntimeError(
            f"the training step compiled {compilations} times in {warmup + steps} steps "
            "(expected exactly once: something in the state or batch changes shape, dtype, "
            "sharding or weak type between steps)"
        )
    labels = peft.trainable_labels(state["params"], trainable or ".")
    trained = [x for x, label in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(labels),
                                     strict=True) if label == peft.TRAIN]  # fmt: skip
    memory = {
        "trainable_parameters": int(sum(x.size for x in trained)),
        "state_bytes": tree_bytes(state),
        "optimizer_state_bytes": tree_bytes(state["opt_state"]),
    }
    del state
    timed = times[warmup:]
    step_s = summarize(timed)["median_s"]
    tokens = batch_size * (input_length + target_length)
    step_flops = flops.train_flops_per_step(config, batch_size, input_length, target_length)
    return {
        "step_time": summarize(timed),
        "first_step_s": times[0],
        "compile_s": log.seconds.get(STEP_NAME, 0.0),
        "compilations": compilations,
        "jit_cache_size": jitted._cache_size() if hasattr(jitted, "_cache_size") else None,
        "tokens_per_second": tokens / step_s,
        "target_tokens_per_second": batch_size * target_length / step_s,
        "examples_per_second": batch_size / step_s,
        "flops_per_step": step_flops,
        "flops_per_second": step_flops / step_s,
        "mfu": step_flops / step_s / peak_flops,
        "final_loss": loss,
        "peak_device_memory_bytes": peak_device_memory_bytes(),
        "peak_host_memory_bytes": peak_host_memory_bytes(),
        **memory,
    }
