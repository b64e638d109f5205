"""`t5pipe train`: pretrain or fine-tune on a seqio task or mixture, configured by gin.

    t5pipe train --gin_file=runs/quickstart.gin --gin.MODEL_DIR=/tmp/t5pipe_quickstart

The run gin files (`runs/pretrain.gin`, `runs/finetune.gin`) bind `t5pipe.train.train`
and its config objects through t5x's macros; see the README for the macros.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from typing import Any

from t5pipe import distributed, gin_setup


def _parse_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="t5pipe train",
        description="Train or fine-tune T5 (gin-configured; t5x flags and macro names).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gin_setup.add_gin_flags(parser)
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        help="import to register tasks (repeatable; the current folder is searched last)",
    )
    distributed.add_distributed_flags(parser)
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="check the configuration (t5x gin files too) and exit; reads no data, writes nothing",
    )
    parser.add_argument(
        "--with_optimizer_state",
        action="store_true",
        help="continue the initial checkpoint's optimizer state too (continued pretraining; "
        "t5x's Adafactor state, factored as t5x does); binds train.with_optimizer_state",
    )
    rest, dot_bindings = gin_setup.split_gin_dot_flags(argv)
    args = parser.parse_args(rest)
    if args.with_optimizer_state:
        dot_bindings.append("CheckpointConfig.with_optimizer_state = True")
    if not args.gin_file and not args.gin_bindings and not dot_bindings:
        parser.error("give at least one --gin_file (e.g. --gin_file=runs/quickstart.gin)")
    return args, dot_bindings


def configure(argv: list[str]) -> tuple[argparse.Namespace, gin_setup.ParsedGin]:
    """Parses flags and gin files (the registered tasks and configurables known first)."""
    args, dot_bindings = _parse_flags(argv)
    distributed.initialize(args)
    return args, gin_setup.parse_command_gin(args, dot_bindings)


def main(argv: list[str]) -> int:
    _quiet_libraries()
    args, parsed = configure(argv)
    if args.dry_run:
        from t5pipe import dry_run

        dry_run.print_report("t5pipe train", dry_run.train_report(), parsed)
        return 0
    from t5pipe.train import train

    started = time.monotonic()
    summary = gin_setup.call(train, "train")
    _print_final(summary, time.monotonic() - started)
    return 0


def _quiet_libraries() -> None:
    """t5pipe's own log lines as plain text; the libraries' levels are `t5pipe.startup`'s."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("seqio").setLevel(logging.WARNING)


def _print_final(summary: dict[str, Any], wall_seconds: float) -> None:
    import jax

    from t5pipe.train_logging import format_duration

    if jax.process_index() != 0:
        return
    print(f"finished at step {summary['step']}; checkpoint {summary['checkpoint']}")
    for name, value in summary["eval"].items():
        task, metric = name.rsplit("/", 1)
        if not metric.startswith("teacher_forced_"):
            print(f"held-out {task} validation {metric} (decoded): {value:.4g}")
    for name, value in summary["eval"].items():
        task, metric = name.rsplit("/", 1)
        if metric == "teacher_forced_exact_match":
            print(
                f"held-out {task} validation exact match: {100 * value:.1f}% "
                "(every target token the model's first choice = what greedy decoding returns)"
            )
    rate = summary.get("tokens_per_second", math.nan)
    speed = f"{rate:.0f} tokens/s" if math.isfinite(rate) else "no step timed"
    best = summary.get("best")
    best_text = (
        f"best {best['metric']} {best['value']:.4g} at step {best['step']} ({best['checkpoint']})"
        if best
        else "best: none (no evaluation metric to rank checkpoints by)"
    )
    print(
        f"summary: step {summary['step']} in {format_duration(wall_seconds)} wall, {speed}; "
        f"{best_text}"
    )
