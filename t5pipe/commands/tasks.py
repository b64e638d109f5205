"""`t5pipe tasks`: what tasks exist and what the model will see.

    t5pipe tasks list [--filter glue]
        registered tasks and mixtures: name, where the data comes from, splits
    t5pipe tasks show NAME [--split validation] [-n 3] [--inputs_length 512 --targets_length 128]
                      [--template T] [--shots K]
        the first N examples after preprocessing: text, token ids and lengths; with
        --template/--shots, as the model reads them in template T with K exemplars
        (the task `NAME_Kshot` evaluates the same way)

Both take the common flags (--gin_file, --gin.NAME=VALUE, --tfds_data_dir, ...) and
`--module M` (repeatable) to import modules that register more tasks.
"""

from __future__ import annotations

import argparse
import sys

from t5pipe import gin_setup
from t5pipe.errors import UserInputError


def main(argv: list[str]) -> int:
    argv, dot_bindings = gin_setup.split_gin_dot_flags(argv)
    parser = argparse.ArgumentParser(
        prog="t5pipe tasks", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list registered tasks and mixtures")
    listing.add_argument("--filter", default="", help="only names containing this text")
    show = commands.add_parser("show", help="show preprocessed examples of a task or mixture")
    show.add_argument("name")
    show.add_argument("--split", default="validation")
    show.add_argument("-n", "--num_examples", type=int, default=3)
    show.add_argument("--inputs_length", type=int, default=None, help="truncate inputs to this")
    show.add_argument("--targets_length", type=int, default=None, help="truncate targets")
    show.add_argument(
        "--shots", type=int, default=None, metavar="K",
        help="K exemplars from the train split before each example (0: zero-shot)",
    )  # fmt: skip
    show.add_argument(
        "--template", default=None, metavar="T",
        help="a templated task's template, by position or name (default: its eval template)",
    )  # fmt: skip
    for sub in (listing, show):
        gin_setup.add_gin_flags(sub)
        sub.add_argument("--module", action="append", default=[], help="import to register tasks")
    args = parser.parse_args(argv)
    configured = args.module or args.gin_file or args.gin_bindings or dot_bindings
    if args.command == "list" and not configured:
        # Only the built-in tasks: t5pipe's own table, without loading seqio/TensorFlow.
        from t5pipe.task_catalog import MIXTURES, TASKS

        return _print_listing(TASKS, MIXTURES, args.filter)

    gin_setup.parse_command_gin(args, dot_bindings)
    import seqio

    if args.command == "list":
        tasks, mixtures = registered(seqio)
        return _print_listing(tasks, mixtures, args.filter)
    return _show(seqio, args)


def registered(seqio) -> tuple[list, list]:
    """What seqio has registered, as `t5pipe.task_catalog` lists it: tasks as
    (name, splits, source), mixtures as (name, ((task, rate), ...)), sorted by name."""
    from t5pipe.tasks.sources import describe_source

    tasks, mixtures = [], []
    for name in sorted(seqio.TaskRegistry.names()):
        task = seqio.get_mixture_or_task(name)
        tasks.append((name, tuple(task.splits), describe_source(task)))
    for name in sorted(seqio.MixtureRegistry.names()):
        mixture = seqio.get_mixture_or_task(name)
        rates = tuple((task.name, float(mixture.get_rate(task))) for task in mixture.tasks)
        mixtures.append((name, rates))
    return tasks, mixtures


def _print_listing(tasks, mixtures, name_filter: str) -> int:
    """One line per task (name, splits, source) and per mixture (name, task:rate, ...)."""
    rows = [("name", "kind", "splits", "source")]
    for name, splits, source in tasks:
        if name_filter in name:
            rows.append((name, "task", ",".join(splits), source))
    for name, rates in mixtures:
        if name_filter in name:
            text = ", ".join(f"{task}:{rate:g}" for task, rate in rates)
            rows.append((name, "mixture", "", text))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        print("  ".join([*cells, row[3]]))
    return 0


def _prompt_view(task, shots: int, template: str | None):
    """The `shots`-shot variant of `task` in `template` (a position or a name): what the
    model reads when evaluated that way (`t5pipe.tasks.few_shot`)."""
    from t5pipe.tasks import few_shot

    if shots < 0:
        raise UserInputError(f"--shots {shots}: expected a whole number >= 0")
    chosen = int(template) if template is not None and template.isdigit() else template
    suffix = "" if template is None else f"_template_{template}"
    name = f"{task.name}{suffix}_{shots}shot"
    return few_shot.few_shot_task(task.name, shots, template=chosen, name=name)


def _show(seqio, args) -> int:
    import numpy as np

    from t5pipe.input_pipeline import data_error, get_task

    provider = get_task(args.name, "t5pipe tasks show NAME")
    if args.shots is not None or args.template is not None:
        provider = _prompt_view(provider, args.shots or 0, args.template)
    lengths = None
    if args.inputs_length or args.targets_length:
        lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
        lengths = {key: value for key, value in lengths.items() if value}
    if args.split not in provider.splits:
        raise UserInputError(
            f"{args.name} has no split {args.split!r} (it has {', '.join(provider.splits)})"
        )
    try:
        dataset = provider.get_dataset(lengths, split=args.split, shuffle=False, seed=0)
        examples = list(dataset.take(args.num_examples).as_numpy_iterator())
    except (UserInputError, ValueError, OSError) as error:
        raise data_error(provider, args.split, error) from error
    features = provider.output_features
    for index, example in enumerate(examples):
        print(f"=== {provider.name} {args.split} example {index}")
        for key in ("inputs", "targets"):
            if key not in example:
                continue
            ids = np.asarray(example[key])
            text = example.get(f"{key}_pretokenized")
            if text is None:
                text = features[key].vocabulary.decode(ids.tolist())
            elif isinstance(text, bytes):
                text = text.decode("utf-8")
            print(f"{key} ({len(ids)} tokens): {text}")
            print(f"{key} ids: {ids.tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
