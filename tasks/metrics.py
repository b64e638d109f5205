"""Metric functions as the T5 paper's code computes them.

Every function follows seqio's convention `metric_fn(targets, predictions) -> {name: value}`
over the postprocessed targets and predictions of one task, and reports percentages
(0..100) under T5's metric names, so `metrics.json` reads like the T5 paper's tables.

`glue_average` combines per-task results the way T5's eval_utils does.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import sacrebleu
import scipy.stats
import sklearn.metrics
from rouge_score import rouge_scorer

MetricFn = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]


# ---------------------------------------------------------------- classification


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    return {"accuracy": 100 * float(sklearn.metrics.accuracy_score(targets, predictions))}


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    return {
        "matthews_corrcoef": 100 * float(sklearn.metrics.matthews_corrcoef(targets, predictions))
    }


def f1_score_with_invalid(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Binary F1 where a prediction that is neither 0 nor 1 (an unparseable label,
    postprocessed to -1) counts as wrong: it is replaced by the opposite of its target."""
    targets = np.asarray(targets)
    predictions = np.array(predictions)
    invalid = (predictions != 0) & (predictions != 1)
    predictions[invalid] = 1 - targets[invalid]
    return {"f1": 100 * float(sklearn.metrics.f1_score(targets, predictions))}


def mean_multiclass_f1(num_classes: int) -> MetricFn:
    """Macro-averaged F1 over classes 0..num_classes-1 (CB uses 3), as `mean_<n>class_f1`."""

    def metric_fn(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
        score = sklearn.metrics.f1_score(
            targets, predictions, labels=list(range(num_classes)), average="macro"
        )
        return {f"mean_{num_classes}class_f1": 100 * float(score)}

    metric_fn.__name__ = f"mean_{num_classes}class_f1"
    return metric_fn


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    return {"pearson_corrcoef": 100 * float(scipy.stats.pearsonr(targets, predictions)[0])}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    return {"spearman_corrcoef": 100 * float(scipy.stats.spearmanr(targets, predictions)[0])}


# ---------------------------------------------------------------- question answering


def normalize_squad(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lower case, drop ASCII punctuation, drop
    the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = frozenset(string.punctuation)


def _exact_match(gold: str, prediction: str) -> float:
    return float(gold == prediction)


def _token_f1(gold: str, prediction: str) -> float:
    gold_tokens, predicted_tokens = gold.split(), prediction.split()
    common = collections.Counter(gold_tokens) & collections.Counter(predicted_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """SQuAD exact match and F1 (percent), each the max over an example's gold answers.

    targets: one list of gold answers per example (a single string is one answer).
    """
    if len(targets) != len(predictions):
        raise ValueError(f"squad: {len(targets)} targets but {len(predictions)} predictions")
    em, f1 = [], []
    for golds, prediction in zip(targets, predictions, strict=True):
        golds = [golds] if isinstance(golds, str) else list(golds)
        golds = [normalize_squad(g) for g in golds]
        prediction = normalize_squad(prediction)
        em.append(max(_exact_match(g, prediction) for g in golds))
        f1.append(max(_token_f1(g, prediction) for g in golds))
    return {"em": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}


# ---------------------------------------------------------------- generation


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/Lsum F-measure (percent) averaged over examples, without stemming as T5.

    T5 reports the median of a bootstrap over examples; we report the plain mean
    (deterministic, equal to it within the bootstrap's noise).
    """
    keys = ("rouge1", "rouge2", "rougeLsum")
    scorer = rouge_scorer.RougeScorer(list(keys))
    totals = dict.fromkeys(keys, 0.0)
    for target, prediction in zip(targets, predictions, strict=True):
        # rougeLsum splits summaries into sentences at newlines.
        scores = scorer.score(
            target=target.replace(" . ", " .\n"), prediction=prediction.replace(" . ", " .\n")
        )
        for key in keys:
            totals[key] += scores[key].fmeasure
    n = max(len(targets), 1)
    return {key: 100 * totals[key] / n for key in keys}


def bleu(
    targets: Sequence[str] | Sequence[Sequence[str]], predictions: Sequence[str]
) -> dict[str, float]:
    """Corpus BLEU with sacrebleu's international tokenisation, as T5 reports it.

    targets: one reference per example, or one list of references per example.
    """
    if targets and not isinstance(targets[0], str):
        # Per-example lists of references -> sacrebleu's per-reference streams.
        references = [list(stream) for stream in zip(*targets, strict=True)]
    else:
        references = [list(targets)]
    score = sacrebleu.corpus_bleu(
        list(predictions),
        references,
        smooth_method="exp",
        smooth_value=0.0,
        force=False,
        lowercase=False,
        tokenize="intl",
        use_effective_order=False,
    )
    return {"bleu": float(score.score)}


# ---------------------------------------------------------------- SuperGLUE specials


def multirc_f1_over_all_answers(
    targets: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """MultiRC F1a: binary F1 over every (question, answer) pair."""
    return f1_score_with_invalid([t["value"] for t in targets], [p["value"] for p in predictions])


def multirc_exact_match(
    targets: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """MultiRC EM: a question scores 100 only if every one of its answers is labelled
    right; the mean over questions (grouped by `group`)."""
    by_question: dict[Any, tuple[list, list]] = collections.defaultdict(lambda: ([], []))
    for target, prediction in zip(targets, predictions, strict=True):
        gold, predicted = by_question[target["group"]]
        gold.append(target["value"])
        predicted.append(prediction["value"])
    scores = [100 * float(np.array_equal(g, p)) for g, p in by_question.values()]
    return {"exact_match": float(np.mean(scores))}


def record(
    targets: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """ReCoRD: SQuAD EM/F1 over the answer set, counting each (passage, query) once
    (training duplicates a query per answer; evaluation keeps its first copy)."""
    seen: set = set()
    golds, predicted = [], []
    for target, prediction in zip(targets, predictions, strict=True):
        if target["group"] in seen:
            continue
        seen.add(target["group"])
        golds.append(target["value"])
        predicted.append(prediction["value"])
    return squad(golds, predicted)


# ---------------------------------------------------------------- GLUE average

GLUE_AVERAGE_EXCLUDED = ("wnli", "ax")


def glue_average(metrics_by_task: Mapping[str, Mapping[str, float]]) -> float:
    """The GLUE score as T5 computes it: average each task's metrics (e.g. MRPC's F1 and
    accuracy), then average over tasks. MNLI matched and mismatched form one task;
    WNLI, AX and non-GLUE tasks are left out.

    metrics_by_task: {"glue_cola_v002": {"matthews_corrcoef": 61.2}, ...} — task names
    as registered (`glue_<name>_v002`).
    Raises ValueError when no GLUE task with metrics is present.
    """
    per_group: dict[str, list[float]] = collections.defaultdict(list)
    for task, metrics in metrics_by_task.items():
        name = _glue_benchmark(task)
        if name is None or name in GLUE_AVERAGE_EXCLUDED or not metrics:
            continue
        group = "mnli" if name.startswith("mnli") else name
        per_group[group].extend(float(v) for v in metrics.values())
    if not per_group:
        raise ValueError(
            f"glue_average: no GLUE task (glue_<name>_v002, WNLI/AX excluded) among "
            f"{sorted(metrics_by_task)}"
        )
    return float(np.mean([np.mean(values) for values in per_group.values()]))


def _glue_benchmark(task_name: str) -> str | None:
    match = re.fullmatch(r"glue_(\w+?)_v\d+", task_name)
    return match.group(1) if match else None
