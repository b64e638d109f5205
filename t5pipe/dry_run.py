"""`--dry_run` of train, eval and infer: everything checked that needs no data read.

After gin is parsed (t5x's names mapped by `t5pipe.gin_dialect`), a dry run builds
the command's config objects from the bindings (so every value is validated as a run
would), looks up the task and checks the lengths, and checks the paths it can check
without touching remote storage: local checkpoints and vocabulary files must exist;
`gs://...` ones are listed as "remote, not checked". Nothing is written, no data or
checkpoint is read. The report holds the mapping applied to t5x names, the checks,
and the operative gin config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import gin

from t5pipe import gin_setup
from t5pipe.errors import UserInputError

REMOTE = "remote, not checked"


def _is_remote(path: Any) -> bool:
    return "://" in str(path)


def checkpoint_line(role: str, path: Any) -> str:
    """`role: path (what it is)`, as `checkpoint_paths.locate` finds it (the same errors
    as the real run: a missing path names its nearest parent, a Hugging Face folder
    the convert to run); nothing is loaded."""
    if path in (None, ""):
        return f"{role}: none"
    if _is_remote(path):
        return f"{role}: {path} ({REMOTE})"
    from t5pipe import checkpoint_paths

    # locate's own note (a MODEL_DIR's latest, a t5x one unverified) is this line's.
    checkpoint = checkpoint_paths.locate(path, role, say=lambda line: None)
    step = "" if checkpoint.step is None else f", step {checkpoint.step}"
    where = "" if os.fspath(checkpoint.path) == os.fspath(path) else f" at {checkpoint.path}"
    return f"{role}: {path} ({checkpoint.kind} checkpoint{step}{where})"


def vocabulary_line(role: str, vocabulary: Any) -> str:
    """The vocabulary and whether its file was checked (a remote one is not read)."""
    import seqio

    from t5pipe import vocabularies

    if vocabulary is None:
        return f"{role}: the task's"
    if not isinstance(vocabulary, seqio.SentencePieceVocabulary):
        return f"{role}: {type(vocabulary).__name__} (no file)"
    path = vocabulary.sentencepiece_model_file
    if _is_remote(path):
        return f"{role}: SentencePiece {path} ({REMOTE})"
    vocabularies.check_vocabulary(vocabulary, role)
    return f"{role}: SentencePiece {path} ({vocabulary.vocab_size} ids, loaded)"


def _task_lines(name: Any, module: Any, lengths: Mapping[str, int] | None, split: str) -> list:
    from t5pipe import input_pipeline

    input_pipeline.import_task_modules(module, "MIXTURE_OR_TASK_MODULE")
    task = input_pipeline.get_task(name)
    if lengths:
        input_pipeline.check_feature_lengths(task, lengths)
    tasks = input_pipeline.tasks_with_split(task, split)
    lines = [f"task: {name} ({len(tasks)} task(s) with a {split!r} split; data not read)"]
    for leaf in tasks[:1]:
        vocabulary = leaf.output_features["targets"].vocabulary
        lines.append(vocabulary_line("task vocabulary", vocabulary))
    return lines


def _mesh_line() -> str:
    import jax

    try:
        shape = tuple(gin.query_parameter("create_mesh.mesh_shape"))
    except ValueError:
        shape = (-1, 1, 1)
    fixed = 1
    for size in shape:
        fixed *= size if size > 0 else 1
    have = jax.device_count()
    fits = "fits" if have % fixed == 0 else f"needs a multiple of {fixed} devices at run time"
    return f"mesh (data, fsdp, model): {shape}; this machine has {have} device(s): {fits}"


def train_report() -> list[str]:
    from t5pipe.train import check_steps, train

    arguments = gin_setup.resolved_arguments(train, "train")
    data, model = arguments["data"], arguments["model"]
    relative = arguments.get("train_steps_relative")
    check_steps(arguments["train_steps"], relative, arguments.get("stats_period", 1))
    steps = (
        arguments["train_steps"] if relative is None else f"the initial checkpoint's + {relative}"
    )
    fields = ", ".join(f"{k}={v!r}" for k, v in model.to_dict().items())
    arguments["optimization"].make_optimizer()  # builds (and so checks) the optimizer
    lines = [
        f"model: {type(model).__name__}({fields})",
        f"train steps: {steps}; batch {data.batch_size}; lengths {dict(data.task_feature_lengths)}",
        f"model dir: {arguments['model_dir']}"
        + (f" ({REMOTE})" if _is_remote(arguments["model_dir"]) else ""),
        *_task_lines(
            data.mixture_or_task_name,
            data.mixture_or_task_module,
            data.task_feature_lengths,
            "train",
        ),  # fmt: skip
        vocabulary_line("vocabulary", arguments.get("vocabulary")),
        checkpoint_line("initial checkpoint", arguments["checkpoint"].initial_checkpoint_path)
        + ("; its optimizer state too" if arguments["checkpoint"].with_optimizer_state else ""),
        f"optimizer: {_name(arguments['optimization'].optimizer) or 'adafactor'}; learning rate "
        f"{_name(arguments['optimization'].learning_rate)}; microbatches "
        f"{arguments['optimization'].num_microbatches}",
        _mesh_line(),
    ]
    return lines


def evaluate_report(explicit: Mapping[str, Any]) -> list[str]:
    from t5pipe.evaluation import evaluate

    arguments = {**gin_setup.resolved_arguments(evaluate, "evaluate", set(explicit)), **explicit}
    lines = _task_lines(arguments.get("mixture_or_task_name"),
                        arguments.get("mixture_or_task_module"),
                        arguments.get("task_feature_lengths"),
                        arguments.get("split") or "validation")  # fmt: skip
    path, model_dir = arguments.get("checkpoint_path"), arguments.get("model_dir")
    if not path and not model_dir:
        raise UserInputError("t5pipe eval needs --checkpoint CKPT or --model_dir MODEL_DIR")
    lines.append(checkpoint_line("checkpoint", path) if path else f"model dir: {model_dir}")
    lines.append(f"output dir: {arguments.get('output_dir') or '<model dir>/eval'}")
    return [*lines, _mesh_line()]


def infer_report(explicit: Mapping[str, Any]) -> list[str]:
    from t5pipe.inference import infer

    arguments = {**gin_setup.resolved_arguments(infer, "infer", set(explicit)), **explicit}
    lines = [checkpoint_line("checkpoint", arguments.get("checkpoint_path"))]
    task, source = arguments.get("mixture_or_task_name"), arguments.get("input_file")
    if task and source:
        raise UserInputError("t5pipe infer: give --input_file or --task, not both")
    if task:
        lines += _task_lines(task, arguments.get("mixture_or_task_module"), None,
                             arguments.get("split") or "validation")  # fmt: skip
    elif source not in (None, "-"):
        if not _is_remote(source) and not os.path.isfile(source):
            raise UserInputError(f"--input_file {source} does not exist")
        lines.append(f"inputs: {source}")
    else:
        lines.append("inputs: stdin")
    lines.append(f"output: {arguments.get('output_file') or 'stdout'}")
    return [*lines, _mesh_line()]


def _name(value: Any) -> str:
    if value is None:
        return ""
    return getattr(value, "__name__", None) or getattr(value, "__qualname__", None) or repr(value)


def print_report(title: str, lines: list[str], parsed: gin_setup.ParsedGin) -> None:
    """The dry run's report on stdout: checks, mapping, operative config."""
    print(f"{title} --dry_run: configuration checked; nothing read or written")
    for line in lines:
        print(f"  {line}")
    if parsed.dialect.entries:
        print(f"t5x names mapped ({len(parsed.dialect.entries)}):")
        print(parsed.dialect.summary())
    print("gin files: " + (", ".join(parsed.files) or "none"))
    print("operative gin config (after mapping):")
    print(gin.config_str())
