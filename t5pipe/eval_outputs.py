"""What `t5pipe eval` writes into its output folder (process 0 only).

metrics.json               {task: {metric: value}} (+ "glue_average" with GLUE tasks)
<task>.predictions.jsonl   one line per example: inputs, targets, prediction (texts),
                           targets_postprocessed, prediction_postprocessed (what the
                           metric functions saw)
<task>.per_class.txt       precision/recall/F1 per class (classification tasks: those
                           with label classes; none for generation tasks)
events.out.tfevents.*      TensorBoard scalars "eval/<task>/<metric>" at the step
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from t5pipe.errors import UserInputError

MAX_CLASSES_FOR_TABLE = 50


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


def check_output_dir(output_dir: Path) -> None:
    """The folder (or the nearest existing one it would be created in) accepts files:
    checked before any decoding, so that results are never computed only to be lost.
    A probe file is created and removed; nothing that exists changes."""
    existing = Path(output_dir).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        handle, probe = tempfile.mkstemp(prefix=".t5pipe_write_probe_", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UserInputError(
            f"the eval output folder {output_dir} is not writable ({existing}: "
            f"{error.strerror}); choose another with --output_dir"
        ) from None


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
        names = (label_names or {}).get(task)
        # Only a classification task (one with label classes) has classes to report on.
        table = per_class_table(rows, names) if names else None
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
