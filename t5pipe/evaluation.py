"""Evaluation: decode (or rank-classify) a task's split and compute the task's own metrics.

    run_evaluation    every task (with metrics) of a task or mixture -> metrics, predictions
    evaluate_task     one task, from one read of its split: predictions, metrics and,
                      for the trainer, teacher-forced loss / token accuracy / exact match
    evaluate          the `t5pipe eval` entry: checkpoint(s) -> output folder

Inputs are cut by seqio to TASK_FEATURE_LENGTHS when given (EOS kept last), else they
are as long as the longest; decoding runs to the targets length, else to the longest
target. Padding is bucketed to powers of two (few compilations) and never changes what
the model sees.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from t5pipe import checkpoint_manager, checkpoint_paths, input_pipeline, partitioning, vocabularies
from t5pipe.decoding import DecodingOptions
from t5pipe.errors import UserInputError
from t5pipe.eval_outputs import check_output_dir, to_python, write_results
from t5pipe.inference import (
    decode_texts,
    decode_token_rows,
    global_batch,
    load_for_inference,
    padded_length,
    to_host,
)
from t5pipe.model import T5
from t5pipe.model_config import T5Config
from t5pipe.progress import progress
from t5pipe.scoring import make_score_fn, pad_batch, rank_classification
from t5pipe.train_step import eval_step


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How predictions are made.

    rank_classification: score every label and predict the likeliest instead of decoding;
        labels come from `labels`, else from the task's label postprocessor
        (`label_classes`, as the GLUE tasks have). Works zero-shot on new label sets.
    labels: the texts to score: a tuple (each one a prediction text as it is), or a
        verbalizer mapping the words the model scores onto the task's classes, e.g.
        `{'terrible': 'negative', 'great': 'positive'}` on glue_sst2_v002 (the
        prediction is then the chosen word's class, so the task's own metrics apply;
        several words may name one class, every class needs one).
    """

    rank_classification: bool = False
    labels: tuple[str, ...] | Mapping[str, str] | None = None

    def __post_init__(self):
        labels = self.labels
        if labels is None:
            return
        texts = list(labels.items()) if isinstance(labels, Mapping) else labels
        flat = [x for pair in texts for x in pair] if isinstance(labels, Mapping) else texts
        if isinstance(labels, str) or not all(isinstance(x, str) for x in flat):
            raise UserInputError(
                f"EvalOptions.labels={labels!r}: expected a tuple of label texts or a "
                "mapping {word: class}, e.g. {'terrible': 'negative', 'great': 'positive'}"
            )
        frozen = dict(labels) if isinstance(labels, Mapping) else tuple(labels)
        object.__setattr__(self, "labels", frozen)


def label_classes(task: seqio.Task) -> tuple[str, ...] | None:
    """The class names a classification task's postprocessor maps texts onto, if any."""
    classes = getattr(task.postprocessor, "keywords", {}).get("label_classes")
    return tuple(classes) if classes else None


def rank_labels(task: seqio.Task, options: EvalOptions) -> dict[str, str]:
    """{text the model scores: prediction text} for rank classification on `task`.

    Without `options.labels`, the task's classes themselves. Label texts that are not
    the task's classes (which its postprocessor would turn into invalid predictions)
    and verbalizers that miss a class or name one the task lacks are refused.
    """
    classes = label_classes(task)
    labels = options.labels
    where = f"EvalOptions.labels on task {task.name!r}"
    if labels is None:
        if not classes:
            raise UserInputError(
                f"EvalOptions.rank_classification: task {task.name!r} has no label_classes in "
                "its postprocessor; bind EvalOptions.labels"
            )
        return {label: label for label in classes}
    if isinstance(labels, Mapping):
        if not classes:
            raise UserInputError(
                f"{where}: a mapping onto classes, but the task has no label classes; give "
                "the texts to score as a tuple instead"
            )
        missing = [c for c in classes if c not in labels.values()]
        unknown = sorted(set(labels.values()) - set(classes))
        if missing or unknown:
            problems = [f"no word for {missing}"] if missing else []
            problems += [f"{unknown} not among them"] if unknown else []
            raise UserInputError(
                f"{where}: the mapping's classes {sorted(set(labels.values()))} are not the "
                f"task's classes {list(classes)} ({'; '.join(problems)}); the words scored "
                f"were {list(labels)}"
            )
        return dict(labels)
    if classes and not set(labels) <= set(classes):
        hint = ""
        if len(labels) == len(classes):
            hint = f", e.g. {dict(zip(labels, classes, strict=True))}"
        raise UserInputError(
            f"{where}: {list(labels)} are not the task's classes {list(classes)}, so its "
            "postprocessor would mark every prediction invalid; map the words onto the "
            f"classes with a mapping {{word: class}}{hint}"
        )
    return {label: label for label in labels}


def evaluation_tasks(task_or_mixture: str, split: str) -> list[seqio.Task]:
    """The (sub)tasks of a task or mixture that have metrics and the split."""
    found = input_pipeline.get_task(task_or_mixture)
    tasks = [
        task
        for task in input_pipeline.leaf_tasks(found)
        if (task.predict_metric_fns or task.score_metric_fns) and split in task.splits
    ]
    if not tasks:
        raise UserInputError(
            f"{task_or_mixture!r} has no task with metric functions and split {split!r}"
        )
    return tasks


@dataclasses.dataclass(frozen=True)
class Batching:
    """Where and how big evaluation batches are: padded to a multiple of the mesh's
    data-parallel size."""

    batch_size: int
    mesh: Any = None
    rules: Any = None

    def __post_init__(self):
        multiple = partitioning.data_parallel_size(self.mesh, self.rules)
        object.__setattr__(self, "batch_size", partitioning.round_up(self.batch_size, multiple))


# ----------------------------------------------------------------------------- one task


def _lengths_of(examples: Sequence[Mapping[str, Any]], lengths: Mapping[str, int] | None):
    """(input limit or None, decode/target length) for a split read with `lengths`."""
    lengths = dict(lengths or {})
    longest_target = max(len(ex["targets"]) for ex in examples)
    return lengths.get("inputs"), lengths.get("targets", longest_target)


def predict_task(
    params,
    config: T5Config,
    vocabulary: seqio.Vocabulary,
    task: seqio.Task,
    examples: list[dict],
    *,
    feature_lengths: Mapping[str, int] | None,
    batching: Batching,
    decoding: DecodingOptions,
    options: EvalOptions,
) -> tuple[list[str], list[dict[str, Any]] | None]:
    """(prediction texts, per-example extras or None) for `examples` (read with
    `feature_lengths`). Rank classification's extras: {"rank_scores": {word: log p},
    "label_word": the likeliest word}; its prediction is that word's class."""
    input_limit, target_length = _lengths_of(examples, feature_lengths)
    if options.rank_classification:
        verbalizer = rank_labels(task, options)
        words = list(verbalizer)
        inputs = [to_python(ex["inputs_pretokenized"]) for ex in examples]
        chosen, scores = rank_classification(
            params, config, vocabulary, inputs, words, batch_size=batching.batch_size,
            max_input_length=input_limit, mesh=batching.mesh, rules=batching.rules,
        )  # fmt: skip
        extras = [
            {"rank_scores": dict(zip(words, map(float, row), strict=True)), "label_word": word}
            for word, row in zip(chosen, scores, strict=True)
        ]
        return [verbalizer[word] for word in chosen], extras
    decoding = decoding.replace(max_decode_length=target_length)
    rows = [ex["inputs"] for ex in examples]
    batches = decode_token_rows(
        params, config, rows, decoding, batch_size=batching.batch_size, mesh=batching.mesh,
        rules=batching.rules, max_length=input_limit,
    )  # fmt: skip
    total = -(-len(rows) // batching.batch_size)
    predictions = []
    for tokens, _, _ in _progress(batches, total, f"decoding {task.name}"):
        predictions.extend(decode_texts(vocabulary, tokens[:, 0]))
    return predictions, None


def score_task(params, config, examples, feature_lengths, batching: Batching) -> np.ndarray:
    """log p(targets | inputs) of each example [n] (for score metrics)."""
    input_limit, target_length = _lengths_of(examples, feature_lengths)
    score_fn = make_score_fn(config, batching.mesh, batching.rules)
    parts = []
    for start in range(0, len(examples), batching.batch_size):
        chunk = examples[start : start + batching.batch_size]
        input_length = padded_length([ex["inputs"] for ex in chunk], input_limit)
        enc = pad_batch([ex["inputs"] for ex in chunk], input_length, batching.batch_size)
        dec = pad_batch([ex["targets"] for ex in chunk], target_length, batching.batch_size)
        mesh, rules = batching.mesh, batching.rules
        result = score_fn(params, global_batch(enc, mesh, rules), global_batch(dec, mesh, rules))
        parts.append(to_host(result)[: len(chunk)])
    return np.concatenate(parts)


def teacher_forced_metrics(
    params, config: T5Config, examples, feature_lengths, batching: Batching
) -> dict[str, float]:
    """Loss per target token, token accuracy and the share of examples whose every target
    token is the model's first choice (exactly the examples greedy decoding gets right)."""
    step = _jitted_eval_step(config)
    input_limit, target_length = _lengths_of(examples, feature_lengths)
    sums = None
    with partitioning.activation_rules(batching.mesh, batching.rules):
        for start in range(0, len(examples), batching.batch_size):
            chunk = examples[start : start + batching.batch_size]
            input_length = padded_length([ex["inputs"] for ex in chunk], input_limit)
            batch = input_pipeline.teacher_forced_batch(
                chunk, input_length, target_length, batching.batch_size
            )
            batch = {k: global_batch(v, batching.mesh, batching.rules) for k, v in batch.items()}
            out = step(params, batch)
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = {k: float(v) for k, v in jax.device_get(sums).items()}
    tokens, sequences = max(sums["num_tokens"], 1.0), max(sums["num_sequences"], 1.0)
    return {
        "teacher_forced_loss": sums["loss_sum"] / tokens,
        "teacher_forced_token_accuracy": sums["correct_tokens"] / tokens,
        "teacher_forced_exact_match": sums["sequences_correct"] / sequences,
    }


@functools.lru_cache(maxsize=16)
def _jitted_eval_step(config: T5Config):
    return jax.jit(functools.partial(eval_step, model=T5(config)))


def _progress(iterable, total: int, description: str):
    if jax.process_index() != 0:
        return iterable
    return progress(iterable, total, description, stream=sys.stderr)


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
    params, config, vocabulary, task: seqio.Task, *, split, feature_lengths, batching,
    max_examples, decoding, options, teacher_forced: bool = False, with_decoding: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """-> (metrics, prediction rows) for one task, from one read of its split."""
    examples = input_pipeline.read_split(task, split, feature_lengths, max_examples)
    metrics: dict[str, Any] = {}
    if teacher_forced:
        metrics.update(teacher_forced_metrics(params, config, examples, feature_lengths, batching))
    if not with_decoding:
        return metrics, []
    texts, extras = predict_task(
        params, config, vocabulary, task, examples, feature_lengths=feature_lengths,
        batching=batching, decoding=decoding, options=options,
    )  # fmt: skip
    scores = None
    if task.score_metric_fns:
        scores = score_task(params, config, examples, feature_lengths, batching)
    rows, targets, predictions = [], [], []
    for i, (example, text) in enumerate(zip(examples, texts, strict=True)):
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
                **(extras[i] if extras else {}),
            }
        )
    metrics.update(compute_metrics(task, targets, predictions, scores))
    return metrics, rows


def run_evaluation(
    params,
    config: T5Config,
    vocabulary: seqio.Vocabulary,
    task_or_mixture: str,
    *,
    decoding: DecodingOptions,
    options: EvalOptions,
    batching: Batching,
    split: str = "validation",
    feature_lengths: Mapping[str, int] | None = None,
    max_examples: int | None = None,
    teacher_forced: bool = False,
    with_decoding: bool = True,
) -> dict[str, dict[str, Any]]:
    """Evaluates `params` on every task of `task_or_mixture` with metrics.

    Returns {"metrics": {task: {metric: value}}, "predictions": {task: [{"inputs",
    "targets", "prediction", ...}]}}.
    """
    results: dict[str, dict[str, Any]] = {"metrics": {}, "predictions": {}}
    for task in evaluation_tasks(task_or_mixture, split):
        metrics, rows = evaluate_task(
            params, config, vocabulary, task, split=split, feature_lengths=feature_lengths,
            batching=batching, max_examples=max_examples, decoding=decoding, options=options,
            teacher_forced=teacher_forced, with_decoding=with_decoding,
        )  # fmt: skip
        results["metrics"][task.name] = metrics
        results["predictions"][task.name] = rows
    return results


# ----------------------------------------------------------------------------- t5pipe eval


def checkpoints_to_evaluate(
    checkpoint_path: str | None, model_dir: str | None, all_checkpoints: bool
) -> list[tuple[int, Any]]:
    """(step, checkpoint) pairs: the one `--checkpoint` names (`checkpoint_paths.locate`:
    t5pipe or t5x, a MODEL_DIR's latest), or MODEL_DIR/checkpoints/<step> (all or latest)."""
    if checkpoint_path:
        checkpoint = checkpoint_paths.locate(checkpoint_path, "--checkpoint")
        return [(checkpoint.step or 0, checkpoint)]
    if not model_dir:
        raise UserInputError("t5pipe eval needs --checkpoint CKPT or --model_dir MODEL_DIR")
    found = checkpoint_manager.complete_checkpoints(model_dir)
    if not found:
        folder = checkpoint_manager.checkpoints_dir(model_dir)
        raise UserInputError(f"no checkpoints under {folder} (expected {folder}/<step>/)")
    return found if all_checkpoints else found[-1:]


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
    *,
    decoding: DecodingOptions,
    options: EvalOptions,
) -> Path:
    """Evaluates one checkpoint, or the latest / every one in MODEL_DIR -> the output folder."""
    input_pipeline.import_task_modules(mixture_or_task_module, "MIXTURE_OR_TASK_MODULE")
    tasks = evaluation_tasks(mixture_or_task_name, split)
    if task_feature_lengths is not None:
        for task in tasks:
            input_pipeline.check_feature_lengths(task, task_feature_lengths)
    if options.rank_classification:
        for task in tasks:
            rank_labels(task, options)  # refuses label sets before anything is read
    found = checkpoints_to_evaluate(checkpoint_path, model_dir, all_checkpoints)
    if output_dir is None:
        if not model_dir:
            raise UserInputError(
                "t5pipe eval needs --output_dir DIR (or --model_dir: MODEL_DIR/eval)"
            )
        output_dir = str(Path(model_dir) / "eval")
    output_dir = Path(output_dir).absolute()
    check_output_dir(output_dir)
    mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
    batching = Batching(batch_size, mesh, rules)
    label_names = {task.name: label_classes(task) for task in tasks if label_classes(task)}
    for step, path in found:
        params, config, vocabulary = load_for_inference(path, mesh, rules)
        with vocabularies.checkpoint_default(vocabulary):  # the tasks read with its vocabulary
            results = run_evaluation(
                params, config, vocabulary, mixture_or_task_name, split=split,
                feature_lengths=task_feature_lengths, batching=batching,
                max_examples=max_examples, decoding=decoding, options=options,
            )  # fmt: skip
        target = output_dir if len(found) == 1 else output_dir / f"step_{step}"
        metrics = write_results(results, target, step, label_names)
        if len(found) > 1:  # one TensorBoard run over all steps
            write_results({"metrics": results["metrics"], "predictions": {}}, output_dir, step)
        print(f"step {step}: {json.dumps(metrics, sort_keys=True)}")
    return output_dir
