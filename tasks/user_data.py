"""Tasks and mixtures over your own files, registered with seqio like the built-in ones.

    from t5pipe.tasks import user_data

    # 1. supervised: TSV (with a header row) or JSONL, text built from templates
    user_data.supervised_task(
        "my_nli",
        files={"train": "data/train.tsv", "validation": "data/dev.tsv"},
        inputs_template="nli premise: {premise} hypothesis: {hypothesis}",
        targets_template="{label}",
        metrics=["accuracy", "f1"],
        label_names=["contradiction", "entailment"],
    )

    # 2. pretraining: span corruption over plain text (one document per line)
    user_data.text_pretraining_task("my_corpus", files={"train": "corpus/*.txt"})

    # 3. pretraining: UL2's mixture of denoisers (R, X, S; see ul2.py) over plain text
    user_data.ul2_pretraining_task("my_corpus_ul2", files={"train": "corpus/*.txt"})

    # 4. a mixture: tasks with sampling rates (numbers), or equal rates
    user_data.mixture("my_mix", [("my_nli", 1.0), ("my_corpus", 3.0)])

Files are read when a dataset is first requested, not at registration, so a module of
such calls is cheap to import (drop it into `tasks/`, or `import` it from a gin file).
A malformed row raises `UserDataError` naming the file and line.
"""

from __future__ import annotations

import csv
import glob
import json
import random
import re
import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
import seqio
import tensorflow as tf

from t5pipe.errors import UserInputError
from t5pipe.tasks import metrics as metric_lib
from t5pipe.tasks import postprocessors, ul2
from t5pipe.tasks import templates as templating
from t5pipe.tasks.features import t5_output_features, text_to_text_preprocessors
from t5pipe.tasks.sources import DataNotFoundError, FunctionSource, examples_source
from t5pipe.tasks.span_corruption import (
    MEAN_NOISE_SPAN_LENGTH,
    NOISE_DENSITY,
    span_corruption_preprocessors,
)
from t5pipe.text_files import check_errors, check_utf8, read_utf8


class UserDataError(UserInputError, ValueError):
    """A user file or task definition is malformed; the message says where."""


Files = str | Sequence[str] | Mapping[str, str | Sequence[str]]

# Metric names a supervised task may ask for. Classification metrics compare class
# ids, so they need `label_names` ("accuracy" without them compares the texts);
# correlations compare numbers parsed from the text.
CLASSIFICATION_METRICS = {
    "accuracy": lambda labels: metric_lib.accuracy,
    "matthews_corrcoef": lambda labels: metric_lib.matthews_corrcoef,
    "f1": lambda labels: metric_lib.f1_score_with_invalid,
    "macro_f1": lambda labels: metric_lib.mean_multiclass_f1(len(labels)),
}
REGRESSION_METRICS = {
    "pearson_corrcoef": metric_lib.pearson_corrcoef,
    "spearman_corrcoef": metric_lib.spearman_corrcoef,
}
TEXT_METRICS = {
    "exact_match": metric_lib.accuracy,  # string equality, reported as "accuracy"
    "squad": metric_lib.squad,
    "rouge": metric_lib.rouge,
    "bleu": metric_lib.bleu,
}


def supervised_task(
    name: str,
    files: Files,
    inputs_template: str | None = None,
    targets_template: str | None = None,
    metrics: Sequence[str | Callable] = (),
    label_names: Sequence[str] | None = None,
    file_format: str | None = None,
    columns: Sequence[str] | None = None,
    vocabulary: seqio.Vocabulary | None = None,
    overwrite: bool = False,
    templates: Sequence[templating.Template] = (),
    template_rates: Sequence[float] = (),
) -> seqio.Task:
    """Registers a text-to-text task read from TSV or JSONL files.

    files: {split: path or glob or list of them}; a bare path/list means {"train": ...}.
    inputs_template / targets_template: str.format templates over the row's fields
      (TSV header names, or JSONL keys), e.g. "summarize: {article}" and "{summary}".
    metrics: names from CLASSIFICATION_METRICS / REGRESSION_METRICS / TEXT_METRICS, or
      seqio metric functions metric_fn(targets, predictions) -> {name: value}.
    label_names: the classes' target texts (class id = position); required by the
      classification metrics, whose scores compare class ids (unknown text -> -1).
    file_format: "tsv" or "jsonl"; default from each file's suffix (.jsonl/.json -> jsonl).
    columns: names of the TSV columns when the files have no header row.
    templates / template_rates: several `templating.Template`s instead of
      inputs_template / targets_template; training samples among them by rate
      (see t5pipe.tasks.templates), other splits use the first.
    """
    split_files = _split_files(files, name)
    metric_fns, postprocess_fn = _metrics_and_postprocessor(name, metrics, label_names)
    task_args = dict(
        output_features=t5_output_features(vocabulary),
        postprocess_fn=postprocess_fn,
        metric_fns=metric_fns,
    )
    if templates:
        if inputs_template is not None or targets_template is not None:
            raise UserDataError(f"{name}: give templates or inputs/targets_template, not both")
        template_set = templating.TemplateSet(tuple(templates), tuple(template_rates))
        source = _rows_source(name, split_files, file_format, columns, template_set)
        tail = text_to_text_preprocessors()
        return templating.register_templated(
            name, source, template_set, tail, overwrite, **task_args
        )
    if inputs_template is None or targets_template is None:
        raise UserDataError(f"{name}: needs inputs_template and targets_template (or templates)")
    for template_name, template in (("inputs", inputs_template), ("targets", targets_template)):
        _template_fields(template, f"{name}: {template_name}_template")

    def read(split: str) -> list[dict[str, str]]:
        examples = []
        for path in _expand(split_files[split], name, split):
            for where, row in _read_rows(path, file_format, columns):
                examples.append(
                    {
                        "inputs": _render(inputs_template, row, where, "inputs_template"),
                        "targets": _render(targets_template, row, where, "targets_template"),
                    }
                )
        return examples

    return _add_task(
        name,
        overwrite,
        source=examples_source(read, list(split_files), name, _describe(split_files)),
        preprocessors=text_to_text_preprocessors(),
        **task_args,
    )


def _rows_source(name, split_files, file_format, columns, template_set):
    """A source of the files' rows as they are (every field as text), for templates."""
    used = {
        field
        for i, template in enumerate(template_set.templates)
        for part in (template.inputs, template.targets)
        for field in templating.template_fields(part, f"{name}: template {i}")
    }

    def read(split: str) -> list[dict[str, str]]:
        rows, fields = [], None
        for path in _expand(split_files[split], name, split):
            for where, row in _read_rows(path, file_format, columns):
                row = {key: _as_text(value) for key, value in row.items()}
                fields = fields or set(row)
                missing = sorted((used | fields) - set(row))
                if missing:
                    raise UserDataError(
                        f"{where}: the row lacks field(s) {missing} that the templates or "
                        f"the first row have (fields: {', '.join(row)})"
                    )
                rows.append({key: row[key] for key in sorted(fields)})
        return rows

    return examples_source(read, list(split_files), name, _describe(split_files))


@gin.configurable(allowlist=["errors"])
def text_pretraining_task(
    name: str,
    files: Files,
    document: str = "line",
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    vocabulary: seqio.Vocabulary | None = None,
    overwrite: bool = False,
    errors: str = "strict",
) -> seqio.Task:
    """Registers a span-corruption pretraining task over UTF-8 plain-text files.

    document: what one document is — "line" (each non-empty line; streamed, so corpora
      larger than memory work), "paragraph" (blocks separated by blank lines) or "file".
      Documents are concatenated and cut into segments so that inputs fill the
      requested length (see span_corruption.py).
    errors: "strict" (bytes that are not UTF-8 are an error naming file:line:column;
      streamed files are checked when the dataset is built) or "replace" (they become
      U+FFFD; gin: `text_pretraining_task.errors = 'replace'`, read when the task is
      registered).
    """
    if document not in ("line", "paragraph", "file"):
        raise UserDataError(f"{name}: document={document!r}; use 'line', 'paragraph' or 'file'")
    check_errors(errors, f"task {name}")
    split_files = _split_files(files, name)

    def read(split: str) -> list[dict[str, str]]:
        documents = []
        for path in _expand(split_files[split], name, split):
            text = _read_text(path, errors)
            pieces = [text] if document == "file" else re.split(r"\n\s*\n", text)
            documents += [{"text": " ".join(p.split())} for p in pieces if p.strip()]
        return documents

    def stream_lines(split: str, shuffle_files: bool, seed: int | None = None):
        paths = _expand(split_files[split], name, split)
        if shuffle_files:
            random.Random(seed).shuffle(paths)
        lines = tf.data.TextLineDataset(paths)
        if errors == "replace":
            lines = lines.map(_replace_non_utf8)
        else:
            for path in paths:
                _check_streamed_file(path)
        lines = lines.map(tf.strings.strip)
        return lines.filter(lambda line: tf.strings.length(line) > 0).map(lambda t: {"text": t})

    if document == "line":
        stream_lines.description = _describe(split_files)
        source = FunctionSource(stream_lines, splits=list(split_files))
    else:
        source = examples_source(read, list(split_files), name, _describe(split_files))
    options = {}
    if noise_density != NOISE_DENSITY or mean_noise_span_length != MEAN_NOISE_SPAN_LENGTH:
        options = dict(noise_density=noise_density, mean_noise_span_length=mean_noise_span_length)
    return _add_task(
        name,
        overwrite,
        source=source,
        preprocessors=span_corruption_preprocessors(**options),
        output_features=t5_output_features(vocabulary),
        metric_fns=[],
    )


@gin.configurable(allowlist=["errors"])
def ul2_pretraining_task(
    name: str,
    files: Files,
    document: str = "line",
    denoisers: Sequence[ul2.Denoiser] = ul2.UL2_DENOISERS,
    mode_tokens: bool = True,
    vocabulary: seqio.Vocabulary | None = None,
    overwrite: bool = False,
    errors: str = "strict",
) -> seqio.Task:
    """Registers a UL2 pretraining task (mixture of denoisers) over UTF-8 text files.

    files / document / errors: as `text_pretraining_task`. denoisers: `ul2.Denoiser`s with their
    rates (default the paper's seven: see ul2.py); mode_tokens: start the inputs with
    [NLU] / [NLG] / [S2S]. The vocabulary needs sentinel ids (T5's has 100).
    """
    denoisers = ul2.check_denoisers(denoisers, where=name)
    # The same source as a span-corruption text task; only the objective differs.
    text_task = text_pretraining_task(
        name, files, document, vocabulary=vocabulary, overwrite=overwrite, errors=errors
    )
    seqio.TaskRegistry.remove(name)
    vocabulary = text_task.output_features["targets"].vocabulary
    return _add_task(
        name,
        False,
        source=text_task.source,
        preprocessors=ul2.ul2_preprocessors(
            vocabulary, denoisers=denoisers, mode_tokens=mode_tokens
        ),
        output_features=text_task.output_features,
        metric_fns=[],
    )


def mixture(
    name: str,
    tasks: Sequence[str | tuple[str, float]],
    default_rate: float = 1.0,
    overwrite: bool = False,
) -> seqio.Mixture:
    """Registers a mixture of registered tasks (or mixtures): each entry is a name
    (sampled at `default_rate`) or (name, rate); rates are relative weights."""
    entries = []
    for entry in tasks:
        task, rate = (entry, default_rate) if isinstance(entry, str) else entry
        if task not in seqio.TaskRegistry.names() and task not in seqio.MixtureRegistry.names():
            raise UserDataError(f"mixture {name}: no task or mixture named {task!r} is registered")
        if not rate >= 0:
            raise UserDataError(f"mixture {name}: rate {rate!r} for {task} must be >= 0")
        entries.append((task, float(rate)))
    if overwrite and name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, entries)


# ---------------------------------------------------------------- helpers


def _add_task(name: str, overwrite: bool, **task_args) -> seqio.Task:
    if name in seqio.TaskRegistry.names():
        if not overwrite:
            raise UserDataError(f"task {name!r} is already registered (pass overwrite=True)")
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(name, **task_args)


def _split_files(files: Files, name: str) -> dict[str, list[str]]:
    if isinstance(files, str | Path):
        files = {"train": [files]}
    elif not isinstance(files, Mapping):
        files = {"train": list(files)}
    result = {}
    for split, paths in files.items():
        result[split] = [str(paths)] if isinstance(paths, str | Path) else [str(p) for p in paths]
        if not result[split]:
            raise UserDataError(f"{name}: split {split!r} lists no files")
    return result


def _describe(split_files: dict[str, list[str]]) -> str:
    return "files " + "; ".join(f"{split}: {', '.join(p)}" for split, p in split_files.items())


def _expand(patterns: list[str], name: str, split: str) -> list[str]:
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        paths += [p for p in matches if Path(p).is_file()]
        if not any(Path(p).is_file() for p in matches):
            raise DataNotFoundError(f"{name} {split}: no file matches {pattern}")
    return paths


_REPLACE_HINT = (
    ", or read it with errors='replace' (bytes that are not UTF-8 become U+FFFD): "
    "text_pretraining_task(..., errors='replace'), or in gin "
    "text_pretraining_task.errors = 'replace'"
)


def _read_text(path: str, errors: str | None = None) -> str:
    """errors: None for TSV/JSONL (strict, no other way offered), else the task's."""
    try:
        return read_utf8(path, errors or "strict", _REPLACE_HINT if errors else "")
    except UserInputError as error:
        raise UserDataError(error.message) from None


# (path, size, mtime) of streamed files found to be UTF-8: a run builds a dataset per
# input shard, and each build would otherwise read the corpus again.
_CHECKED: set[tuple[str, int, int]] = set()


def _check_streamed_file(path: str) -> None:
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _CHECKED:
        return
    try:
        check_utf8(path, _REPLACE_HINT)
    except UserInputError as error:
        raise UserDataError(error.message) from None
    _CHECKED.add(key)


def _replace_non_utf8(line: tf.Tensor) -> tf.Tensor:
    return tf.strings.unicode_transcode(
        line, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
    )


def _read_rows(path: str, file_format: str | None, columns: Sequence[str] | None):
    """Yields ("file:line", {field: value}) for each record of a TSV or JSONL file."""
    file_format = file_format or ("jsonl" if Path(path).suffix in (".jsonl", ".json") else "tsv")
    text = _read_text(path)
    lines = text.lstrip("\ufeff").split("\n")
    if file_format == "jsonl":
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserDataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise UserDataError(f"{path}:{number}: expected a JSON object, got {row!r:.60}")
            yield f"{path}:{number}", row
    elif file_format == "tsv":
        # csv refuses fields over 128 KiB by default; no field is longer than its line.
        longest = max(map(len, lines), default=0)
        csv.field_size_limit(max(csv.field_size_limit(), longest))
        rows = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = list(columns) if columns else None
        for number, row in enumerate(rows, start=1):
            if not row or row == [""]:
                continue
            if header is None:
                header = row
                continue
            if len(row) != len(header):
                raise UserDataError(
                    f"{path}:{number}: {len(row)} tab-separated fields, expected "
                    f"{len(header)} ({', '.join(header)})"
                )
            yield f"{path}:{number}", dict(zip(header, row, strict=True))
    else:
        raise UserDataError(f"{path}: file_format={file_format!r}; use 'tsv' or 'jsonl'")


def _template_fields(template: str, where: str) -> list[str]:
    try:
        return [field for _, field, _, _ in string.Formatter().parse(template) if field]
    except ValueError as error:
        raise UserDataError(f"{where}: bad template {template!r} ({error})") from None


def _render(template: str, row: Mapping[str, Any], where: str, template_name: str) -> str:
    try:
        return template.format_map({key: _as_text(value) for key, value in row.items()})
    except KeyError as error:
        raise UserDataError(
            f"{where}: {template_name} uses field {error.args[0]!r}, which this row lacks "
            f"(fields: {', '.join(map(str, row))})"
        ) from None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _metrics_and_postprocessor(
    name: str, metrics: Sequence[str | Callable], label_names: Sequence[str] | None
):
    metric_fns, kinds = [], set()
    for metric in metrics:
        if callable(metric):
            metric_fns.append(metric)
        elif metric == "accuracy" and not label_names:
            metric_fns.append(metric_lib.accuracy)  # exact string match
            kinds.add("text")
        elif metric in CLASSIFICATION_METRICS:
            if not label_names:
                raise UserDataError(f"{name}: metric {metric!r} needs label_names")
            metric_fns.append(CLASSIFICATION_METRICS[metric](label_names))
            kinds.add("classification")
        elif metric in REGRESSION_METRICS:
            metric_fns.append(REGRESSION_METRICS[metric])
            kinds.add("regression")
        elif metric in TEXT_METRICS:
            metric_fns.append(TEXT_METRICS[metric])
            kinds.add("text")
        else:
            known = sorted({**CLASSIFICATION_METRICS, **REGRESSION_METRICS, **TEXT_METRICS})
            raise UserDataError(f"{name}: unknown metric {metric!r}; known: {', '.join(known)}")
    if len(kinds) > 1:
        raise UserDataError(
            f"{name}: metrics {list(metrics)} mix {sorted(kinds)} scoring; a task's "
            f"predictions are postprocessed one way — split it into two tasks"
        )
    if "classification" in kinds:
        return metric_fns, postprocessors.label_postprocessor(label_names)
    if "regression" in kinds:
        return metric_fns, postprocessors.string_to_float
    return metric_fns, None
