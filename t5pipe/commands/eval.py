"""`t5pipe eval`: decode (or rank-classify) a task's split and compute the task's metrics.

    t5pipe eval --checkpoint CKPT --task glue_rte_v002 --output_dir DIR
    t5pipe eval --model_dir MODEL_DIR --task glue_cola_v002        # -> MODEL_DIR/eval
    t5pipe eval --gin_file runs/eval.gin --gin.CHECKPOINT_PATH=... --gin.MIXTURE_OR_TASK_NAME=...

Writes metrics.json, <task>.predictions.jsonl, <task>.per_class.txt and TensorBoard
events into the output folder, whose path is the last line printed
(`t5pipe.eval_outputs`). Decoding follows `DecodingOptions`, rank classification
`EvalOptions` (gin).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from t5pipe import distributed, gin_setup

FLAGS = {
    "checkpoint_path": "--checkpoint",
    "model_dir": "--model_dir",
    "mixture_or_task_name": "--task",
    "output_dir": "--output_dir",
    "split": "--split",
    "batch_size": "--batch_size",
    "max_examples": "--max_examples",
}


def _parse_flags(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="t5pipe eval", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="a checkpoint folder (CHECKPOINT_PATH)")
    parser.add_argument("--model_dir", help="evaluate MODEL_DIR/checkpoints/<step> (the latest)")
    parser.add_argument("--all_checkpoints", action="store_true", help="every step, not the latest")
    parser.add_argument("--task", help="task or mixture name (MIXTURE_OR_TASK_NAME)")
    parser.add_argument("--output_dir", help="where results go")
    parser.add_argument("--split", help="dataset split (default validation)")
    parser.add_argument("--batch_size", type=int, help="examples per decoding batch")
    parser.add_argument("--max_examples", type=int, help="evaluate only the first N per task")
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        help="import to register tasks (repeatable; the current folder is searched last)",
    )
    gin_setup.add_gin_flags(parser)
    distributed.add_distributed_flags(parser)
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="check the configuration (t5x gin files too) and exit; reads no data, writes nothing",
    )
    rest, dot_bindings = gin_setup.split_gin_dot_flags(argv)
    return parser.parse_args(rest), dot_bindings


def main(argv: list[str]) -> int:
    args, dot_bindings = _parse_flags(argv)
    distributed.initialize(args)
    parsed = gin_setup.parse_command_gin(args, dot_bindings)
    from t5pipe.decoding import DecodingOptions
    from t5pipe.evaluation import EvalOptions, evaluate

    explicit = {
        "checkpoint_path": args.checkpoint,
        "model_dir": args.model_dir,
        "mixture_or_task_name": args.task,
        "output_dir": args.output_dir,
        "split": args.split,
        "batch_size": args.batch_size,
        "max_examples": args.max_examples,
        "all_checkpoints": True if args.all_checkpoints else None,
        "decoding": DecodingOptions(),
        "options": EvalOptions(),
    }
    if args.dry_run:
        from t5pipe import dry_run

        given = {k: v for k, v in explicit.items() if v is not None}
        dry_run.print_report("t5pipe eval", dry_run.evaluate_report(given), parsed)
        return 0
    output_dir = gin_setup.call(evaluate, "evaluate", explicit, FLAGS)
    print(output_dir)
    return 0
