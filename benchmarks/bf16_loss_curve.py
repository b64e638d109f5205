"""Does bfloat16 training follow float32's loss curve? Same model, same initial weights,
same batches, float32 vs bfloat16 activations (parameters and optimizer state stay
float32 either way), `--steps` steps of the real `train_step` with t5pipe's Adafactor.

    python -m benchmarks.bf16_loss_curve --steps 200 --out bf16_curve.json

The batch stream is real text read as bytes (default ../shared/data/text/tinyshakespeare.txt):
row r of step s is a window of the file at an offset drawn from a fixed seed; the
encoder reads `--input_length` bytes, the decoder predicts the next `--target_length`
(token id = byte + 3, so ids 0-2 stay pad/EOS/unknown). The model is a small T5.1.1
(gated GELU) so that 2 x 200 steps take minutes on a CPU.

Reports the loss per target token: the final loss of each (the last step's, and the
mean of the last 10), their relative difference, the largest relative difference over
the curve after the first 10 steps, and whether either curve diverged (a non-finite
loss, or a final loss above the first).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from t5pipe import optimizers, partitioning
from t5pipe.gin_setup import model_config_from_gin
from t5pipe.model import T5, init_params
from t5pipe.train_step import init_train_state, train_step

DEFAULT_TEXT = Path(__file__).resolve().parents[1] / "../shared/data/text/tinyshakespeare.txt"
BYTE_OFFSET = 3  # ids 0, 1, 2: pad, EOS, unknown
SMALL_MODEL = dict(
    vocab_size=384, d_model=256, d_kv=32, num_heads=8, d_ff=1024,
    num_encoder_layers=4, num_decoder_layers=4, dropout_rate=0.0,
)  # fmt: skip


def byte_batches(text: bytes, steps: int, batch_size: int, input_length: int, target_length: int):
    """`steps` host batches [batch, length] each (EncDecFeatureConverter's unpacked layout)
    of byte windows of `text`, offsets from a fixed seed."""
    data = np.frombuffer(text, np.uint8).astype(np.int32) + BYTE_OFFSET
    window = input_length + target_length
    if len(data) <= window:
        raise SystemExit(f"--text_file: needs more than {window} bytes, has {len(data)}")
    rng = np.random.default_rng(0)
    for _ in range(steps):
        starts = rng.integers(0, len(data) - window, batch_size)
        rows = np.stack([data[s : s + window] for s in starts])
        targets = rows[:, input_length:]
        yield {
            "encoder_input_tokens": rows[:, :input_length],
            "decoder_input_tokens": np.concatenate(
                [np.zeros((batch_size, 1), np.int32), targets[:, :-1]], 1
            ),
            "decoder_target_tokens": targets,
            "decoder_loss_weights": np.ones_like(targets),
        }


def loss_curve(config, batches, learning_rate: float) -> tuple[list[float], float]:
    """Per-step losses of training `config` from seed-0 weights on `batches`; -> (losses,
    seconds of the steps after the first, which compiles)."""
    mesh = partitioning.create_mesh()
    rules = partitioning.logical_axis_rules("standard")
    model = T5(config)
    schedule = optimizers.constant_schedule(learning_rate)
    optimizer = optimizers.adafactor(schedule)
    step = jax.jit(
        functools.partial(train_step, model=model, optimizer=optimizer, learning_rate=schedule),
        donate_argnums=0,
    )
    losses, start = [], None
    with partitioning.activation_rules(mesh, rules):
        params = jax.jit(lambda rng: init_params(config, rng))(jax.random.PRNGKey(0))
        state = init_train_state(params, optimizer, seed=0)
        for i, batch in enumerate(batches):
            state, metrics = step(state, batch)
            # The step's loss is a sum over target tokens (no normalizing factor).
            losses.append(float(metrics["loss"]) / batch["decoder_loss_weights"].sum())
            if i == 0:
                start = time.perf_counter()
    return losses, time.perf_counter() - start


def compare(reference: list[float], other: list[float], skip: int = 10) -> dict:
    """Agreement of two loss curves of equal length."""
    ref, oth = np.asarray(reference), np.asarray(other)
    tail = min(10, len(ref))
    final_ref, final_oth = ref[-tail:].mean(), oth[-tail:].mean()
    relative = np.abs(oth - ref) / np.abs(ref)
    return {
        "final_loss": {"float32": ref[-1], "bfloat16": oth[-1]},
        "final_relative_difference": abs(oth[-1] - ref[-1]) / abs(ref[-1]),
        "last10_mean_loss": {"float32": final_ref, "bfloat16": final_oth},
        "last10_mean_relative_difference": abs(final_oth - final_ref) / abs(final_ref),
        "max_relative_difference_after_step_10": float(relative[skip:].max())
        if len(ref) > skip
        else None,
        "diverged": {
            name: bool(not np.all(np.isfinite(c)) or c[-1] >= c[0])
            for name, c in (("float32", ref), ("bfloat16", oth))
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bf16_loss_curve", description=__doc__
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--input_length", type=int, default=64)
    parser.add_argument("--target_length", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-2)
    parser.add_argument("--text_file", default=str(DEFAULT_TEXT))
    args = parser.parse_args(argv)
    text = Path(args.text_file).read_bytes()
    base = model_config_from_gin(["models/t5_1_1/small.gin"]).replace(**SMALL_MODEL)
    curves, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        print(f"[{dtype}] {args.steps} steps ...", file=sys.stderr, flush=True)
        batches = byte_batches(
            text, args.steps, args.batch_size, args.input_length, args.target_length
        )
        curves[dtype], seconds[dtype] = loss_curve(
            base.replace(dtype=dtype), batches, args.learning_rate
        )
    report = {
        "settings": vars(args),
        "model": SMALL_MODEL,
        **compare(curves["float32"], curves["bfloat16"]),
        "seconds_after_first_step": seconds,
        "curves": curves,
    }
    Path(args.out).write_text(json.dumps(report, indent=2, default=float) + "\n")
    summary = {k: v for k, v in report.items() if k not in ("curves", "settings", "model")}
    print(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
