"""Postprocessors: decoded text -> what the metric functions compare, as T5's code does.

seqio calls `postprocess_fn(output_or_target, example=..., is_target=...)` on each
decoded prediction (is_target=False) and on each example's target text
(is_target=True); `example` is the preprocessed example as numpy values (bytes for
strings).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def string_label_to_class_id(
    string_label: str,
    example: Mapping[str, Any] | None = None,
    is_target: bool = False,
    *,
    label_classes: Sequence[str],
    default: int = -1,
) -> int:
    """Label text -> its index in label_classes; anything else -> `default` (-1), which
    the F1 metrics count as wrong."""
    del example, is_target
    string_label = _text(string_label)
    return label_classes.index(string_label) if string_label in label_classes else default


def label_postprocessor(label_classes: Sequence[str]) -> Callable[..., int]:
    return functools.partial(string_label_to_class_id, label_classes=tuple(label_classes))


def string_to_float(
    string: str, example: Mapping[str, Any] | None = None, is_target: bool = False, default=-1.0
) -> float:
    """STS-B: "3.8" -> 3.8; text that is not a number -> -1."""
    del example, is_target
    try:
        return float(_text(string))
    except ValueError:
        return default


def qa(answer: str, example: Mapping[str, Any] | None = None, is_target: bool = False):
    """SQuAD: targets become the example's list of all gold answers (max over them)."""
    if is_target:
        return [_text(a) for a in example["answers"]]
    return _text(answer)


def multirc(string_label: str, example: Mapping[str, Any] | None = None, is_target: bool = False):
    """MultiRC: {"value": 0/1/-1} and, for targets, the question it belongs to."""
    result = {"value": string_label_to_class_id(string_label, label_classes=("False", "True"))}
    if is_target:
        result["group"] = int(example["idx/question"])
    return result


def record(answer: str, example: Mapping[str, Any] | None = None, is_target: bool = False):
    """ReCoRD: targets carry every gold entity and the (passage, query) they belong to."""
    if is_target:
        return {
            "value": [_text(a) for a in example["answers"]],
            "group": (int(example["idx/passage"]), int(example["idx/query"])),
        }
    return {"value": _text(answer)}


def wsc_simple(prediction: str, example: Mapping[str, Any] | None = None, is_target: bool = False):
    """WSC/DPR "simple": does the predicted referent name the candidate?

    Targets: the example's label (1 when the candidate is the pronoun's referent).
    Predictions: 1 when the predicted words and the candidate's (lower case,
    determiners dropped) contain one another and agree on having a possessive "'" —
    T5's lenient match.
    """
    if is_target:
        return int(example["label"])
    determiners = {"a", "an", "few", "her", "his", "each", "every", "many", "much", "my", "our",
                   "some", "that", "the", "their", "these", "this", "those", "which", "whose",
                   "your"}  # fmt: skip

    def clean(text: str) -> str:
        return " ".join(w for w in _text(text).strip().lower().split(" ") if w not in determiners)

    predicted = clean(prediction)
    referent = clean(example["targets_pretokenized"])
    if ("'" in predicted) != ("'" in referent):
        return 0
    predicted_words, referent_words = set(predicted.split(" ")), set(referent.split(" "))
    return int(predicted_words <= referent_words or referent_words <= predicted_words)
