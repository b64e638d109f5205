"""`t5pipe eval`: decode (or rank-classify) a task's split and compute the task's own metrics.

    t5pipe eval --checkpoint CKPT --task glue_rte_v002 --output_dir DIR
    t5pipe eval --gin_file runs/eval.gin --gin.MODEL_DIR=... --gin.MIXTURE_OR_TASK_NAME=...

Writes into the output folder (path printed last):
    metrics.json               {task: {metric: value}} (+ "glue_average" with GLUE tasks)
    <task>.predictions.jsonl   one line per example: inputs, targets, prediction (texts),
                               targets_postprocessed, prediction_postprocessed (what the
                               metric functions saw)
    <task>.per_class.txt       precision/recall/F1 per class (classification tasks)
    events.out.tfevents.*      TensorBoard scalars "eval/<task>/<metric>" at the checkpoint step
With `--model_dir` every checkpoint under MODEL_DIR/checkpoints/<step> (or only the
latest) is evaluated into DIR/step_<step>/.

`run_evaluation` is the library entry the trainer calls during training.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
import jax
import numpy as np
import seqio

from t5pipe import checkpoints, distributed, gin_setup, partitioning
from t5pipe.decoding import DecodingOptions, make_decode_fn
from t5pipe.model import abstract_params
from t5pipe.model_config import T5Config
from t5pipe.scoring import bucket_length, make_score_fn, pad_batch, rank_classification

MAX_CLASSES_FOR_TABLE = 50


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How predictions are made.

    rank_classification: score every label and predict the likeliest instead of decoding;
        labels come from `labels`, else from the task's label postprocessor
        (`label_classes`, as the GLUE tasks have). Works zero-shot on new label sets.
    """

    rank_classification: bool = False
    labels: tuple[str, ...] | None = None


# ----------------------------------------------------------------------------- data


def to_python(value: Any) -> Any:
    """numpy / bytes values of seqio examples and postprocessor outputs -> JSON-able."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [to_python(v) for v in value.tolist()] if value.ndim else to_python(value.item())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [to_python(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_python(v) for k, v in value.items()}
    return value


def task_examples(task: seqio.Task, split: str, max_examples: int | None) -> list[dict]:
    """The split's preprocessed, tokenized examples (untruncated, unshuffled) as numpy dicts."""
    if split not in task.splits:
        raise ValueError(f"task {task.name!r} has no split {split!r}; it has {list(task.splits)}")
    dataset = task.get_dataset(
        sequence_length=None, split=split, shuffle=False, num_epochs=1, use_cached=False
    )
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    return list(dataset.as_numpy_iterator())


def global_batch(array: np.ndarray, mesh, rules) -> jax.Array:
    """Host array (the same on every process) -> a jax.Array split like activations' batch."""
    if mesh is None:
        return jax.numpy.asarray(array)
    sharding = partitioning.batch_sharding(mesh, rules)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def to_host(array: jax.Array) -> np.ndarray:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def batch_multiple(mesh, rules) -> int:
    """Batches must split evenly over the mesh axes that `batch` maps to."""
    if mesh is None:
        return 1
    spec = partitioning.batch_sharding(mesh, rules).spec[0]
    axes = spec if isinstance(spec, tuple) else (spec,) if spec else ()
    return math.prod(mesh.shape[axis] for axis in axes)


def decode_texts(vocabulary: seqio.Vocabulary, tokens: np.ndarray) -> list[str]:
    """Token rows [n, length] -> texts, each cut at its first EOS."""
    texts = []
    for row in np.asarray(tokens):
        ids = row.tolist()
        if vocabulary.eos_id in ids:
            ids = ids[: ids.index(vocabulary.eos_id)]
        texts.append(vocabulary.decode([i for i in ids if i != 0]))
    return texts


# ----------------------------------------------------------------------------- one task


def _progress(iterable, total: int, description: str):
    if jax.process_index() != 0:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, unit="batch", file=sys.stderr)


def predict_task(
    params,
    config: T5Config,
    vocabulary: seqio.Vocabulary,
    task: seqio.Task,
    examples: list[dict],
    *,
    feature_lengths: Mapping[str, int] | None,
    batch_size: int,
    mesh,
    rules,
) -> tuple[list[str], np.ndarray | None]:
    """Prediction texts for `examples` and, when the task has score metrics, the
    log-likelihood of each target [n]."""
    lengths = dict(feature_lengths or {})
    max_inputs = max(len(ex["inputs"]) for ex in examples)
    input_length = bucket_length(min(max_inputs, lengths.get("inputs", max_inputs)))
    max_targets = max(len(ex["targets"]) for ex in examples)
    target_length = lengths.get("targets", max_targets)
    multiple = batch_multiple(mesh, rules)
    batch_size = -(-batch_size // multiple) * multiple
    options = EvalOptions()

    encoder_rows = [ex["inputs"][:input_length] for ex in examples]
    if options.rank_classification:
        labels = options.labels or getattr(task.postprocessor, "keywords", {}).get("label_classes")
        if not labels:
            raise ValueError(
                f"EvalOptions.rank_classification: task {task.name!r} has no label_classes in "
                "its postprocessor; bind EvalOptions.labels"
            )
        inputs = [to_python(ex["inputs_pretokenized"]) for ex in examples]
        predictions, _ = rank_classification(
            params, config, vocabulary, inputs, labels, batch_size=batch_size,
            max_input_length=input_length, mesh=mesh, rules=rules,
        )  # fmt: skip
    else:
        decode_fn = make_decode_fn(
            config, DecodingOptions().replace(max_decode_length=target_length), mesh, rules
        )
        predictions = []
        starts = range(0, len(examples), batch_size)
        for start in _progress(starts, len(starts), f"decoding {task.name}"):
            rows = encoder_rows[start : start + batch_size]
            tokens = to_host(
                decode_fn(
                    params, global_batch(pad_batch(rows, input_length, batch_size), mesh, rules)
                ).tokens[:, 0]
            )
            predictions.extend(decode_texts(vocabulary, tokens[: len(rows)]))

    scores = None
    if task.score_metric_fns:
        score_fn = make_score_fn(config, mesh, rules)
        target_rows = [ex["targets"][:target_length] for ex in examples]
        parts = []
        for start in range(0, len(examples), batch_size):
            enc = pad_batch(encoder_rows[start : start + batch_size], input_length, batch_size)
            dec = pad_batch(target_rows[start : start + batch_size], target_length, batch_size)
            result = score_fn(
                params, global_batch(enc, mesh, rules), global_batch(dec, mesh, rules)
            )
            parts.append(to_host(result)[: len(target_rows[start : start + batch_size])])
        scores = np.concatenate(parts)
    return predictions, scores


def _metric_value(value: Any) -> Any:
    """Metric fns may return seqio metric objects (Scalar, Text, ...) or numbers."""
    value = getattr(value, "value", value)
    return float(value) if isinstance(value, int | float | np.number) else to_python(value)


def compute_metrics(
    task: seqio.Task, targets: Sequence[Any], predictions: Sequence[Any], scores=None
) -> dict[str, Any]:
    """The task's own metric functions on postprocessed targets and predictions."""
    metrics: dict[str, Any] = {}
    for metric_fn in task.predict_metric_fns:
        metrics.update(metric_fn(list(targets), list(predictions)))
    if scores is not None:
        for metric_fn in task.score_metric_fns:
            metrics.update(metric_fn(list(targets), np.asarray(scores)))
    return {name: _metric_value(value) for name, value in metrics.items()}


def evaluate_task(
    params, config, vocabulary, task: seqio.Task, *, split, feature_lengths, batch_size,
    mesh, rules, max_examples,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """-> (metrics, prediction rows) for one task."""
    examples = task_examples(task, split, max_examples)
    if not examples:
        raise ValueError(f"task {task.name!r} split {split!r} has no examples")
    texts, scores = predict_task(
        params, config, vocabulary, task, examples, feature_lengths=feature_lengths,
        batch_size=batch_size, mesh=mesh, rules=rules,
    )  # fmt: skip
    rows, targets, predictions = [], [], []
    for example, text in zip(examples, texts, strict=True):
        target_text = to_python(example.get("targets_pretokenized", b""))
        target = task.postprocess_fn(target_text, example=example, is_target=True)
        prediction = task.postprocess_fn(text, example=example, is_target=False)
        targets.append(target)
        predictions.append(prediction)
        rows.append(
            {
                "inputs": to_python(example.get("inputs_pretokenized", b"")),
                "targets": target_text,
                "prediction": text,
                "targets_postprocessed": to_python(target),
                "prediction_postprocessed": to_python(prediction),
            }
        )
    return compute_metrics(task, targets, predictions, scores), rows


def evaluation_tasks(task_or_mixture: str, split: str) -> list[seqio.Task]:
    """The (sub)tasks of a task or mixture that have metrics and the split."""
    try:
        found = seqio.get_mixture_or_task(task_or_mixture)
    except ValueError as error:
        raise ValueError(
            f"unknown task or mixture {task_or_mixture!r} (is its module imported? "
            "`t5pipe tasks` lists the registered ones)"
        ) from error
    tasks = [
        task
        for task in seqio.get_subtasks(found)
        if (task.predict_metric_fns or task.score_metric_fns) and split in task.splits
    ]
    if not tasks:
        raise ValueError(
            f"{task_or_mixture!r} has no task with metric functions and split {split!r}"
        )
    return tasks


def run_evaluation(
    params,
    config: T5Config,
    vocabulary: seqio.Vocabulary,
    task_or_mixture: str,
    *,
    split: str = "validation",
    feature_lengths: Mapping[str, int] | None = None,
    batch_size: int = 32,
    mesh=None,
    rules=None,
    max_examples: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluates `params` on every task of `task_or_mixture` with metrics.

    Decoding follows the gin-configurable `DecodingOptions` (max_decode_length becomes the
    targets feature length, else the longest target); `EvalOptions` switches to rank
    classification. Returns {"metrics": {task: {metric: value}},
    "predictions": {task: [{"inputs", "targets", "prediction", ...}]}}.
    """
    results: dict[str, dict[str, Any]] = {"metrics": {}, "predictions": {}}
    for task in evaluation_tasks(task_or_mixture, split):
        metrics, rows = evaluate_task(
            params, config, vocabulary, task, split=split, feature_lengths=feature_lengths,
            batch_size=batch_size, mesh=mesh, rules=rules, max_examples=max_examples,
        )  # fmt: skip
        results["metrics"][task.name] = metrics
        results["predictions"][task.name] = rows
    return results


# ----------------------------------------------------------------------------- outputs


def with_glue_average(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from t5pipe.tasks.metrics import glue_average

    if not any(re.fullmatch(r"glue_\w+_v\d+", name) for name in metrics):
        return dict(metrics)
    try:
        return {**metrics, "glue_average": glue_average(metrics)}
    except ValueError:  # only WNLI / AX present: nothing to average
        return dict(metrics)


def per_class_table(
    rows: list[dict[str, Any]], label_names: Sequence[str] | None = None
) -> str | None:
    """Precision/recall/F1 per class, when targets are a small set of labels (else None)."""
    from sklearn.metrics import precision_recall_fscore_support

    targets = [row["targets_postprocessed"] for row in rows]
    predictions = [row["prediction_postprocessed"] for row in rows]
    if not all(isinstance(t, int | str) and not isinstance(t, bool) for t in targets):
        return None
    classes = sorted(set(targets), key=str)
    if len(classes) > MAX_CLASSES_FOR_TABLE:
        return None
    # Predictions outside the label set (e.g. -1 for unparseable text) count as misses.
    predictions = [p if p in classes else "<invalid>" for p in map(_hashable, predictions)]
    precision, recall, f1, support = precision_recall_fscore_support(
        [str(t) for t in targets], [str(p) for p in predictions],
        labels=[str(c) for c in classes], zero_division=0,
    )  # fmt: skip
    lines = [f"{'class':<24}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for i, label in enumerate(classes):
        name = str(label)
        if label_names and isinstance(label, int) and 0 <= label < len(label_names):
            name = f"{label} ({label_names[label]})"
        lines.append(
            f"{name:<24}{precision[i]:>10.4f}{recall[i]:>10.4f}{f1[i]:>10.4f}{int(support[i]):>10d}"
        )
    return "\n".join(lines)


def _hashable(value: Any) -> Any:
    return value if isinstance(value, int | str | float) else str(value)


def write_results(
    results: dict[str, dict[str, Any]],
    output_dir: str | Path,
    step: int = 0,
    label_names: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Writes metrics.json, <task>.predictions.jsonl, <task>.per_class.txt and TensorBoard
    scalars into `output_dir` (process 0 only); returns the metrics written."""
    metrics = with_glue_average(results["metrics"])
    if jax.process_index() != 0:
        return metrics
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    for task, rows in results["predictions"].items():
        with open(output_dir / f"{task}.predictions.jsonl", "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        table = per_class_table(rows, (label_names or {}).get(task))
        if table:
            (output_dir / f"{task}.per_class.txt").write_text(table + "\n")
            print(f"{task}: per-class precision / recall / F1\n{table}\n")
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(output_dir)) as writer:
        for task, values in metrics.items():
            if isinstance(values, int | float):
                writer.add_scalar(f"eval/{task}", values, step)
                continue
            for name, value in values.items():
                if isinstance(value, int | float):
                    writer.add_scalar(f"eval/{task}/{name}", value, step)
    return metrics


# ----------------------------------------------------------------------------- command


def checkpoints_to_evaluate(
    checkpoint_path: str | None, model_dir: str | None, all_checkpoints: bool
) -> list[tuple[int, Path]]:
    """(step, path) pairs: one checkpoint, or MODEL_DIR/checkpoints/<step> (all or latest)."""
    if checkpoint_path:
        path = Path(checkpoint_path)
        step = int(path.name) if path.name.isdigit() else 0
        checkpoints.read_meta(path)  # clear error when it is not a checkpoint
        return [(step, path)]
    if not model_dir:
        raise ValueError("t5pipe eval needs --checkpoint CKPT or --model_dir MODEL_DIR")
    folder = Path(model_dir) / "checkpoints"
    found = sorted(
        (int(p.name), p)
        for p in folder.glob("*")
        if p.name.isdigit() and checkpoints.is_checkpoint(p)
    )
    if not found:
        raise FileNotFoundError(f"no checkpoints under {folder} (expected {folder}/<step>/)")
    return found if all_checkpoints else found[-1:]


def load_for_inference(path: Path, mesh, rules):
    """(params placed on `mesh`, config, vocabulary) from a self-describing checkpoint.

    Training-only settings (dropout, remat) are switched off.
    """
    config = checkpoints.load_model_config(path).replace(dropout_rate=0.0, remat_policy="none")
    shapes, specs = abstract_params(config)
    shardings = partitioning.logical_to_sharding(specs, mesh, rules)
    target = jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        shapes,
        shardings,
    )
    params = checkpoints.load_params(path, target)
    return params, config, checkpoints.load_vocabulary(path)


def _label_names(tasks: Sequence[seqio.Task]) -> dict[str, Sequence[str]]:
    """Class names of label tasks, from their postprocessor's `label_classes`."""
    names = {}
    for task in tasks:
        classes = getattr(task.postprocessor, "keywords", {}).get("label_classes")
        if classes:
            names[task.name] = list(classes)
    return names


@gin.configurable
def evaluate(
    mixture_or_task_name: str = gin.REQUIRED,
    checkpoint_path: str | None = None,
    model_dir: str | None = None,
    output_dir: str | None = None,
    all_checkpoints: bool = False,
    split: str = "validation",
    task_feature_lengths: Mapping[str, int] | None = None,
    batch_size: int = 32,
    max_examples: int | None = None,
    mixture_or_task_module: str | None = None,
) -> Path:
    """Evaluates one checkpoint, or the latest / every one in MODEL_DIR -> the output folder."""
    if mixture_or_task_module:
        importlib.import_module(mixture_or_task_module)
    found = checkpoints_to_evaluate(checkpoint_path, model_dir, all_checkpoints)
    if output_dir is None:
        if not model_dir:
            raise ValueError("t5pipe eval needs --output_dir DIR (or --model_dir: MODEL_DIR/eval)")
        output_dir = str(Path(model_dir) / "eval")
    output_dir = Path(output_dir).absolute()
    mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
    label_names = _label_names(evaluation_tasks(mixture_or_task_name, split))
    for step, path in found:
        params, config, vocabulary = load_for_inference(path, mesh, rules)
        results = run_evaluation(
            params, config, vocabulary, mixture_or_task_name, split=split,
            feature_lengths=task_feature_lengths, batch_size=batch_size, mesh=mesh, rules=rules,
            max_examples=max_examples,
        )  # fmt: skip
        target = output_dir if len(found) == 1 else output_dir / f"step_{step}"
        metrics = write_results(results, target, step, label_names)
        if len(found) > 1:  # one TensorBoard run over all steps
            write_results({"metrics": results["metrics"], "predictions": {}}, output_dir, step)
        print(f"step {step}: {json.dumps(metrics, sort_keys=True)}")
    return output_dir


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
    gin_setup.add_gin_flags(parser)
    distributed.add_distributed_flags(parser)
    rest, dot_bindings = gin_setup.split_gin_dot_flags(argv)
    return parser.parse_args(rest), dot_bindings


def main(argv: list[str]) -> int:
    args, dot_bindings = _parse_flags(argv)
    distributed.initialize(args)
    gin_setup.parse_command_gin(args, dot_bindings)
    overrides = {
        "checkpoint_path": args.checkpoint,
        "model_dir": args.model_dir,
        "mixture_or_task_name": args.task,
        "output_dir": args.output_dir,
        "split": args.split,
        "batch_size": args.batch_size,
        "max_examples": args.max_examples,
    }
    overrides = {name: value for name, value in overrides.items() if value is not None}
    if args.all_checkpoints:
        overrides["all_checkpoints"] = True
    from t5pipe import preflight  # bad input (issue 8) stops here, before any loading

    preflight.check_decode_config(evaluate, "evaluate", overrides)
    try:
        output_dir = evaluate(**overrides)
    except (ValueError, FileNotFoundError) as error:
        print(f"t5pipe eval: error: {error}", file=sys.stderr)
        return 2
    print(output_dir)
    return 0
