"""Helpers shared by the training tests: fixed batches, a jitted step, gin'd runs."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from testlib import REPO_ROOT  # noqa: F401 (re-exported for the training tests)

from t5pipe.model import init_params, shift_right
from t5pipe.train_step import init_train_state, train_step


def fixed_batch(batch=8, input_length=12, target_length=8, vocab=100, seed=0, pad_from=None):
    """A random unpacked batch of token ids in [2, vocab); rows may end in padding."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(2, vocab, (batch, input_length)).astype(np.int32)
    targets = rng.integers(2, vocab, (batch, target_length)).astype(np.int32)
    weights = np.ones_like(targets, np.float32)
    if pad_from is not None:
        for row, start in enumerate(pad_from):
            targets[row, start:] = 0
            weights[row, start:] = 0
            inputs[row, start + 2 :] = 0
    return {
        "encoder_input_tokens": jnp.asarray(inputs),
        "decoder_target_tokens": jnp.asarray(targets),
        "decoder_input_tokens": shift_right(jnp.asarray(targets)),
        "decoder_loss_weights": jnp.asarray(weights),
    }


def make_state(config, optimizer, seed=0):
    params = init_params(config, jax.random.PRNGKey(seed))
    return init_train_state(params, optimizer, seed)


def jitted_step(model, optimizer, schedule, **kwargs):
    return jax.jit(
        functools.partial(
            train_step, model=model, optimizer=optimizer, learning_rate=schedule, **kwargs
        )
    )


def read_metrics(model_dir, split=None):
    """metrics.jsonl records: train ones (no "split") by default, or those of `split`."""
    records = [json.loads(line) for line in (Path(model_dir) / "metrics.jsonl").open()]
    return [r for r in records if r.get("split") == split]


def train_command(*args) -> list[str]:
    return [sys.executable, "-m", "t5pipe.cli", "train", *args]


def subprocess_env(devices: int = 1) -> dict[str, str]:
    """The user's environment: one CPU device unless asked (no test XLA flags)."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_train(args, cwd, timeout=600, devices=1) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_command(*args),
        cwd=cwd,
        env=subprocess_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_in_process(model_dir, *bindings, gin_file="runs/quickstart.gin"):
    """`t5pipe train` inside this process (gin re-parsed); returns train()'s summary."""
    from t5pipe import gin_setup
    from t5pipe.commands.train import configure
    from t5pipe.train import train

    configure([f"--gin_file={gin_file}", f"--gin.MODEL_DIR={model_dir}", *bindings])
    return gin_setup.call(train, "train")


# Small and fast: a few steps of the quickstart's tiny model on the built-in task.
FAST = (
    "--gin.BATCH_SIZE=8",
    "--gin.STATS_PERIOD=1",
    "--gin.EVAL_PERIOD=None",
    "--gin.train.eval_with_decoding=False",
    "--gin.train.async_checkpointing=True",
)
