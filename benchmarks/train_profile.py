"""Where a training step's time goes, per XLA op: forward, gradient, optimizer.

    python -m benchmarks.train_profile --model small --batch_size 8 --input_length 128 \\
        --target_length 32 --steps 3 --out train_profile.json

Runs the benchmark's training step (benchmarks.train_speed: the real `train_step`,
t5pipe's Adafactor, state donated) `--warmup` times, then `--steps` times under
`jax.profiler.trace` (a Perfetto trace, kept under `--trace_dir`). Every op event of
the trace (XLA:CPU's thunk executor records one per HLO instruction it runs) is matched
to its instruction in the compiled module and classed by the JAX operation it came
from: `transpose(jvp(...))` is the gradient, `jvp(...)` the forward, the rest the
optimizer update and bookkeeping. Reports milliseconds per step by class and the
`--top` costliest instructions with their shapes and JAX op names.

Ops of one thunk may overlap on the threads of the CPU device, so class totals can
exceed the step's wall time; compare them with each other, not with the clock.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

import jax

from benchmarks import train_speed
from t5pipe import input_pipeline, optimizers, partitioning, train_state
from t5pipe.model import T5
from t5pipe.train_step import init_train_state, train_step

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+) ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (result shape, JAX op name) of a compiled module's text."""
    table = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            op_name = _OP_NAME.search(line)
            table[match.group(1)] = (match.group(2), op_name.group(1) if op_name else "")
    return table


def phase(op_name: str) -> str:
    if "transpose(jvp(" in op_name:
        return "gradient"
    if "jvp(" in op_name:
        return "forward"
    return "optimizer and other"


def op_events(trace_dir: str) -> list[tuple[str, float]]:
    """(HLO op, microseconds) of every op event in the newest Perfetto trace under trace_dir."""
    files = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))
    if not files:
        raise SystemExit(f"no Perfetto trace under {trace_dir}")
    with gzip.open(files[-1]) as handle:
        trace = json.load(handle)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [
        (event["args"]["hlo_op"], float(event["dur"]))
        for event in events
        if event.get("ph") == "X" and "hlo_op" in event.get("args", {})
    ]


def profile(args) -> dict:
    from benchmarks.run import config_overrides, load_model_config

    overrides = {**config_overrides(args.config), "dropout_rate": 0.0, "dtype": args.dtype}
    config = load_model_config(args.model, overrides)
    mesh = partitioning.create_mesh()
    rules = partitioning.logical_axis_rules("standard")
    optimizer = train_speed.make_optimizer("adafactor", 1e-3)
    step_fn = functools.partial(
        train_step,
        model=T5(config),
        optimizer=optimizer,
        learning_rate=optimizers.constant_schedule(1e-3),
    )
    shardings = train_state.state_layout(config, optimizer, 0, mesh, rules).shardings
    batch_sharding = partitioning.batch_sharding(mesh, rules)
    host = train_speed.random_batch(
        config, args.batch_size, args.input_length, args.target_length, 0
    )
    params = train_speed.sharded_params(config, mesh, rules)
    with partitioning.activation_rules(mesh, rules):
        state = jax.jit(lambda p: init_train_state(p, optimizer, seed=0), out_shardings=shardings)(
            params
        )
        jitted = jax.jit(step_fn, donate_argnums=0)
        batch = input_pipeline.to_global(host, batch_sharding)
        compiled = jitted.lower(state, batch).compile()
        for _ in range(args.warmup):
            state, _ = compiled(state, batch)
        jax.block_until_ready(state)
        with jax.profiler.trace(args.trace_dir, create_perfetto_trace=True):
            for _ in range(args.steps):
                state, metrics = compiled(state, batch)
                jax.block_until_ready((state, metrics))

    table = instructions(compiled.as_text())
    by_phase: dict[str, float] = collections.Counter()
    by_op: dict[str, float] = collections.Counter()
    unmatched = 0.0
    for name, micros in op_events(args.trace_dir):
        if name not in table:
            unmatched += micros
            continue
        by_phase[phase(table[name][1])] += micros
        by_op[name] += micros
    per_step = 1e-3 / args.steps  # microseconds in total -> milliseconds per step
    top = [
        {"op": name, "shape": table[name][0], "jax_op": table[name][1], "ms": us * per_step}
        for name, us in by_op.most_common(args.top)
    ]
    return {
        "settings": vars(args),
        "ms_per_step": {key: us * per_step for key, us in sorted(by_phase.items())},
        "unmatched_ms_per_step": unmatched * per_step,
        "top": top,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="small", help="a t5_1_1 size or a gin file")
    parser.add_argument(
        "--config", action="append", default=[], metavar="FIELD=VALUE", help="T5Config override"
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--input_length", type=int, default=128)
    parser.add_argument("--target_length", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--trace_dir", default=None, help="default: a new temporary folder")
    args = parser.parse_args(argv)
    args.trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="t5pipe_profile_")
    report = profile(args)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "settings"}, indent=2))
    print(f"trace: {args.trace_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
