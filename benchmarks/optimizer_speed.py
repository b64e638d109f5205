"""The Adafactor update alone: t5pipe's folded update against optax's chain, on a
model's parameter shapes, each jitted with the state donated as in training.

    python -m benchmarks.optimizer_speed --model small --steps 10

Gradients and parameters are random; the figure is seconds per `update` plus
`apply_updates`, the part of a training step the optimizer owns.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
import optax

from benchmarks.measure import summarize
from t5pipe import optimizers
from t5pipe.model import abstract_params


def measure_update(transform: optax.GradientTransformation, shapes, steps: int) -> dict:
    """Seconds per jitted (update, apply_updates), after one compiling call."""
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
    grads = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
    params, grads = jax.device_put((params, grads))
    state = transform.init(params)

    def step(params, state, grads):
        updates, state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    params, state = jax.block_until_ready(step(params, state, grads))
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        params, state = jax.block_until_ready(step(params, state, grads))
        seconds.append(time.perf_counter() - start)
    return summarize(seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.optimizer_speed")
    parser.add_argument("--model", default="small", help="t5_1_1 size or gin file")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    from benchmarks.run import load_model_config

    shapes, _ = abstract_params(load_model_config(args.model, {}))
    rate = optimizers.constant_schedule(1e-3)
    report = {
        "parameters": sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)),
        "t5pipe_adafactor": measure_update(optimizers.adafactor(rate), shapes, args.steps),
        "optax_adafactor": measure_update(optax.adafactor(rate), shapes, args.steps),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
