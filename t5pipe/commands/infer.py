"""`t5pipe infer`: decode inputs from a text file, stdin or a task split into JSONL.

    t5pipe infer --checkpoint CKPT --input_file inputs.txt --output_file out.jsonl
    echo "translate English to German: Hello" | t5pipe infer --checkpoint CKPT
    t5pipe infer --checkpoint CKPT --task glue_rte_v002 --split validation --output_file out.jsonl
    ... --gin.DecodingOptions.method="'beam'" --gin.DecodingOptions.num_decodes=4

Text input: one input per line (blank lines are inputs too, so line i of the input is
line i of the output). Each output line:
    {"inputs": ..., "prediction": best decode (text),
     "decodes": [{"text", "score", "log_prob"}, ...] best first}
plus "targets" for task splits. Without --output_file, lines go to stdout.
With --adapter DIR (repeatable), each input gives one line per adapter, in the order
given, each with "adapter": DIR.
"""

from __future__ import annotations

import argparse
import sys

from t5pipe import distributed, gin_setup

FLAGS = {
    "checkpoint_path": "--checkpoint",
    "input_file": "--input_file",
    "output_file": "--output_file",
    "mixture_or_task_name": "--task",
    "split": "--split",
    "max_examples": "--max_examples",
    "batch_size": "--batch_size",
    "adapter_paths": "--adapter",
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="t5pipe infer", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint folder (CHECKPOINT_PATH)")
    parser.add_argument("--input_file", help="one input per line; '-' or absent: stdin")
    parser.add_argument("--output_file", help="JSONL output; absent: stdout")
    parser.add_argument("--task", help="decode a task split instead (MIXTURE_OR_TASK_NAME)")
    parser.add_argument("--split", help="task split (default validation)")
    parser.add_argument("--max_examples", type=int, help="only the first N examples of the split")
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        help="import to register tasks (repeatable; the current folder is searched last)",
    )
    parser.add_argument("--batch_size", type=int, help="inputs per decoding batch")
    parser.add_argument(
        "--adapter",
        action="append",
        metavar="DIR",
        help="LoRA adapter merged onto the checkpoint (repeatable: each input is decoded once "
        "per adapter, lines marked 'adapter'): a t5pipe adapter folder, a Hugging Face PEFT "
        "folder or a LoRA run's checkpoint",
    )
    gin_setup.add_gin_flags(parser)
    distributed.add_distributed_flags(parser)
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="check the configuration (t5x gin files too) and exit; reads no data, writes nothing",
    )
    rest, dot_bindings = gin_setup.split_gin_dot_flags(argv)
    args = parser.parse_args(rest)
    distributed.initialize(args)
    parsed = gin_setup.parse_command_gin(args, dot_bindings)
    from t5pipe.decoding import DecodingOptions
    from t5pipe.inference import infer

    explicit = {
        "checkpoint_path": args.checkpoint,
        "input_file": args.input_file,
        "output_file": args.output_file,
        "mixture_or_task_name": args.task,
        "split": args.split,
        "max_examples": args.max_examples,
        "batch_size": args.batch_size,
        "adapter_paths": tuple(args.adapter) if args.adapter else None,
        "decoding": DecodingOptions(),
    }
    if args.dry_run:
        from t5pipe import dry_run

        given = {k: v for k, v in explicit.items() if v is not None}
        dry_run.print_report("t5pipe infer", dry_run.infer_report(given), parsed)
        return 0
    count = gin_setup.call(infer, "infer", explicit, FLAGS)
    where = f" into {args.output_file}" if args.output_file else ""
    times = f" ({len(args.adapter)} adapters, one line each)" if args.adapter else ""
    print(f"decoded {count // len(args.adapter or [None])} inputs{times}{where}", file=sys.stderr)
    return 0
