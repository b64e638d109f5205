"""Evaluation inside a training run: when, on what, and when to stop early.

Every EVAL_PERIOD steps (and at the end) each task of the training mixture that has a
validation split is evaluated through `t5pipe.evaluation` from one read of that split:
teacher-forced loss, token accuracy and exact match, plus, with `with_decoding`, the
task's own metrics on decoded predictions (as `t5pipe eval` computes them). Results
are keyed "<task>/<metric>".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import gin
import seqio

from t5pipe import evaluation, input_pipeline
from t5pipe.decoding import DecodingOptions
from t5pipe.errors import UserInputError
from t5pipe.model_config import T5Config


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """period (EVAL_PERIOD; 0 or None: no evaluation), batch_size (default: BATCH_SIZE),
    max_examples per task, with_decoding (decode and compute the task's metrics besides
    the teacher-forced ones), early stopping on one of the "<task>/<metric>" results
    after `early_stopping_patience` evaluations without improvement, and how to decode
    (`decoding`) or rank-classify (`options`)."""

    period: int | None = 1000
    batch_size: int | None = None
    max_examples: int | None = None
    with_decoding: bool = True
    early_stopping_metric: str | None = None
    early_stopping_mode: str = "max"
    early_stopping_patience: int | None = None
    decoding: DecodingOptions = dataclasses.field(default_factory=DecodingOptions)
    options: evaluation.EvalOptions = dataclasses.field(default_factory=evaluation.EvalOptions)

    def __post_init__(self):
        if self.period is not None and (
            isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 0
        ):
            raise UserInputError(f"EVAL_PERIOD={self.period!r}: expected >= 0 (0 or None: no eval)")
        if self.early_stopping_metric and not self.period:
            raise UserInputError(
                "train.early_stopping_metric is set but EVAL_PERIOD is 0/None, so no evaluation "
                "would ever run: set EVAL_PERIOD, or unset the early stopping metric"
            )
        if self.early_stopping_mode not in ("max", "min"):
            raise UserInputError(
                f"train.early_stopping_mode={self.early_stopping_mode!r}: expected 'max' or 'min'"
            )


def check_options(config: EvalConfig, task_or_mixture: str) -> None:
    """Refuses rank-classification labels that do not fit an evaluated task
    (`evaluation.rank_labels`) before training starts, not at the first evaluation."""
    if not (config.period and config.with_decoding and config.options.rank_classification):
        return
    for task in input_pipeline.validation_tasks(task_or_mixture):
        evaluation.rank_labels(task, config.options)


@dataclasses.dataclass
class EarlyStopping:
    """Stops a run after `patience` evaluations in which `metric` did not improve."""

    metric: str
    mode: str = "max"
    patience: int = 1
    best: float | None = None
    evals_without_improvement: int = 0

    def update(self, results: Mapping[str, float], step: int) -> str | None:
        """Takes one evaluation's results; returns why to stop, or None to go on."""
        value = results.get(self.metric)
        if value is None:
            raise UserInputError(
                f"train.early_stopping_metric={self.metric!r} is not among the eval metrics "
                f"{sorted(results)}"
            )
        improved = self.best is None or (
            value > self.best if self.mode == "max" else value < self.best
        )
        if improved:
            self.best, self.evals_without_improvement = value, 0
            return None
        self.evals_without_improvement += 1
        if self.evals_without_improvement >= self.patience:
            return (
                f"early stop at step {step}: {self.metric} has not improved for "
                f"{self.patience} evaluations"
            )
        return None


class TrainEvaluator:
    """Evaluates the training state's parameters on the mixture's validation tasks."""

    def __init__(
        self,
        config: EvalConfig,
        task_or_mixture: str,
        lengths: Mapping[str, int],
        train_batch_size: int,
        model_config: T5Config,
        vocabulary: seqio.Vocabulary,
        mesh,
        rules,
    ):
        self.config = config
        self.tasks = input_pipeline.validation_tasks(task_or_mixture) if config.period else []
        self.lengths = dict(lengths)
        self.model_config = model_config.replace(dropout_rate=0.0)
        self.vocabulary = vocabulary
        self.batching = evaluation.Batching(config.batch_size or train_batch_size, mesh, rules)
        self.early_stopping = (
            EarlyStopping(
                config.early_stopping_metric,
                config.early_stopping_mode,
                config.early_stopping_patience,
            )
            if config.early_stopping_metric and config.early_stopping_patience
            else None
        )

    def due(self, step: int, last_step: int) -> bool:
        period = self.config.period
        return bool(self.tasks) and bool(period) and (step % period == 0 or step == last_step)

    def run(self, params: Any) -> dict[str, float]:
        results: dict[str, float] = {}
        for task in self.tasks:
            metrics, _ = evaluation.evaluate_task(
                params, self.model_config, self.vocabulary, task, split="validation",
                feature_lengths=self.lengths, batching=self.batching,
                max_examples=self.config.max_examples, decoding=self.config.decoding,
                options=self.config.options, teacher_forced=True,
                with_decoding=self.config.with_decoding and _has_metrics(task),
            )  # fmt: skip
            results.update(
                {f"{task.name}/{k}": float(v) for k, v in metrics.items() if _is_number(v)}
            )
        return results


def _has_metrics(task: seqio.Task) -> bool:
    return bool(task.predict_metric_fns or task.score_metric_fns)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
