"""The best checkpoint of a training run by an eval metric: `MODEL_DIR/checkpoints/best`.

A small JSON file (not a symlink: it also names the metric and its value, and works on
any file system):

    {"step": 400, "metric": "glue_sst2_v002/accuracy", "value": 91.2, "mode": "max",
     "checkpoint": "/runs/sst2/checkpoints/400"}

The run writes it when an evaluation at a step that is saved beats or equals the best so
far (`mode` 'max' or 'min'), replacing it atomically: on a tie the later step wins, as in
retention (orbax's BestN keeps the latest of equal values, so an earlier one may be
deleted). A resumed run reads it back, so a later value as good replaces it and a worse
one does not. A record whose checkpoint is gone (a
save that never completed) counts as none.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from t5pipe import checkpoint_manager


def path(model_dir: str | Path) -> Path:
    return checkpoint_manager.checkpoints_dir(model_dir) / checkpoint_manager.BEST_RECORD


def read(model_dir: str | Path) -> dict[str, Any] | None:
    """The record, when it is readable and its checkpoint exists, else None."""
    try:
        record = json.loads(path(model_dir).read_text(encoding="utf-8"))
        step = int(record["step"])
        record["value"] = float(record["value"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    folder = checkpoint_manager.checkpoints_dir(model_dir) / str(step)
    return record if checkpoint_manager.is_complete(folder) else None


def _write(model_dir: Path, record: dict[str, Any]) -> None:
    target = path(model_dir)
    tmp = target.with_name(f".{target.name}.tmp")  # a dot name: never listed as foreign
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)


class Tracker:
    """Keeps the record of one run: `offer` each saved step's eval results."""

    def __init__(self, model_dir: Path, metric: str | None, mode: str, primary: bool = True):
        self.model_dir, self.metric, self.mode, self.primary = model_dir, metric, mode, primary
        found = read(model_dir) if metric else None
        # A record by another metric or direction (the run's settings changed) is replaced.
        same = found is not None and (found["metric"], found.get("mode", "max")) == (metric, mode)
        self.best: dict[str, Any] | None = found if same else None

    def offer(self, step: int, results: dict[str, float]) -> dict[str, Any] | None:
        """Records `step` when its value of the metric beats or equals the best (ties go
        to the later step, the one retention keeps); returns the new record, or None when
        it does not (or the results lack the metric)."""
        value = results.get(self.metric) if self.metric else None
        if value is None or not math.isfinite(value):
            return None
        if self.best is not None:
            best = self.best["value"]
            if not (value >= best if self.mode == "max" else value <= best):
                return None
        folder = checkpoint_manager.checkpoints_dir(self.model_dir) / str(step)
        self.best = {
            "step": step,
            "metric": self.metric,
            "value": float(value),
            "mode": self.mode,
            "checkpoint": str(folder),
        }
        if self.primary:
            _write(self.model_dir, self.best)
        return self.best

    def describe(self) -> str:
        """The log line naming the best checkpoint."""
        best = self.best
        return (
            f"best checkpoint so far: {best['checkpoint']} ({best['metric']} {best['value']:.4g}"
            f"); recorded in {path(self.model_dir)}"
        )


def ranked_by(checkpoint: Any, evaluation: Any) -> Any:
    """CheckpointConfig ranking checkpoints by its `best_metric`, else by the EvalConfig's
    early stopping metric: the best one is then recorded here and kept by retention."""
    if checkpoint.best_metric or not evaluation.early_stopping_metric:
        return checkpoint
    return dataclasses.replace(
        checkpoint,
        best_metric=evaluation.early_stopping_metric,
        best_mode=evaluation.early_stopping_mode,
    )
