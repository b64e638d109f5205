"""Natural-language instruction templates for any task, sampled in training as Flan does.

    from t5pipe.tasks import templates

    templates.templated_task(
        "rte_instructions",
        base="glue_rte_v002",             # its source's raw fields: sentence1, sentence2, label
        templates=[
            templates.Template("{sentence1}\nQuestion: does this imply that "
                               "\"{sentence2}\"? Answer:", name="imply"),
            templates.Template("Premise: {sentence1}\nHypothesis: {sentence2}\n"
                               "Does the premise entail the hypothesis?", name="entail"),
        ],
        rates=[3, 1],                     # relative; default equal
        label_names=["entailment", "not_entailment"],   # integer `label` -> "{label}" text
    )

A template is a `str.format` string over the raw example's scalar fields (strings,
numbers; an integer `label` reads as its name when `label_names` are given). In the
sampled splits (default: train) each example is rendered with one template drawn by
`rates`; the draws are a low-discrepancy sequence over the examples' positions from a
seed-dependent start, so the share of each template is its rate to within a few
examples in any run and the draws are a pure function of (seed, position). Other splits
use `eval_template`, so evaluation reads the same text every time. Targets, metrics
and postprocessing are the base task's (the default target template "{label}" keeps
label metrics working).

User tasks from files take templates directly: `user_data.supervised_task(...,
templates=[...], template_rates=[...])`. `t5pipe.tasks.few_shot` builds k-shot
variants in a chosen template.
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5pipe.errors import UserInputError
from t5pipe.tasks.sources import FunctionSource

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # the Weyl sequence step with the lowest discrepancy
UNLABELED = "<unk>"  # an integer label < 0 (test splits), as T5's GLUE preprocessor writes


@dataclasses.dataclass(frozen=True)
class Template:
    """inputs / targets: str.format templates over an example's fields; name: for
    reports and task names (default: the template's position)."""

    inputs: str
    targets: str = "{label}"
    name: str = ""


@dataclasses.dataclass(frozen=True)
class TemplateSet:
    """Several templates of one task and how training chooses among them.

    rates: relative sampling weights (default equal); eval_template: the index used in
    the splits not in `sampled_splits`; label_names: text of integer `label` fields.
    """

    templates: tuple[Template, ...]
    rates: tuple[float, ...] = ()
    eval_template: int = 0
    sampled_splits: tuple[str, ...] = ("train",)
    label_names: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.templates:
            raise UserInputError("a template set needs at least one template")
        rates = self.rates or (1.0,) * len(self.templates)
        if len(rates) != len(self.templates) or not all(r >= 0 for r in rates) or sum(rates) <= 0:
            raise UserInputError(
                f"template rates {list(self.rates)} must be {len(self.templates)} non-negative "
                "numbers, not all zero"
            )
        object.__setattr__(self, "rates", tuple(float(r) for r in rates))
        if not 0 <= self.eval_template < len(self.templates):
            raise UserInputError(
                f"eval_template={self.eval_template} is not one of the "
                f"{len(self.templates)} templates"
            )
        for i, template in enumerate(self.templates):
            for part in (template.inputs, template.targets):
                template_fields(part, f"template {self.template_name(i)}")

    def template_name(self, index: int) -> str:
        return self.templates[index].name or str(index)

    def index(self, template: int | str) -> int:
        """A template's position from its position or name."""
        if isinstance(template, int) and 0 <= template < len(self.templates):
            return template
        names = [self.template_name(i) for i in range(len(self.templates))]
        if template in names:
            return names.index(template)
        raise UserInputError(f"no template {template!r}; the templates are {names}")


def template_fields(template: str, where: str) -> list[str]:
    """The field names a template uses; only plain `{field}` placeholders are allowed."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise UserInputError(f"{where}: bad template {template!r} ({error})") from None
    fields = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field or spec or conversion:
            raise UserInputError(
                f"{where}: {template!r}: use plain {{field}} placeholders (field {field!r} "
                "has a format spec, a conversion or no name)"
            )
        fields.append(field)
    return fields


# ----------------------------------------------------------------------------- rendering


def _field_text(value: tf.Tensor, field: str, label_names: Sequence[str]) -> tf.Tensor:
    if value.dtype == tf.string:
        return value
    if value.dtype.is_integer and field == "label" and label_names:
        names = tf.constant(list(label_names))
        index = tf.clip_by_value(tf.cast(value, tf.int32), 0, len(label_names) - 1)
        return tf.where(value < 0, tf.constant(UNLABELED), tf.gather(names, index))
    if value.dtype.is_floating:
        return tf.strings.as_string(value, shortest=True)
    return tf.strings.as_string(value)


def renderer(
    template: str, label_names: Sequence[str], element_spec: Mapping, where: str
) -> Callable[[Mapping[str, tf.Tensor]], tf.Tensor]:
    """A traceable `example -> tf.string` for one template; checks its fields exist."""
    scalar = sorted(k for k, s in element_spec.items() if s.shape.rank == 0)
    pieces = list(string.Formatter().parse(template))
    for _, field, _, _ in pieces:
        if field is not None and field not in scalar:
            raise UserInputError(
                f"{where}: template {template!r} uses field {field!r}; the examples' scalar "
                f"fields are {scalar}"
            )

    def render(example):
        parts = []
        for literal, field, _, _ in pieces:
            if literal:
                parts.append(tf.constant(literal))
            if field is not None:
                parts.append(_field_text(example[field], field, label_names))
        return tf.strings.join(parts) if parts else tf.constant("")

    return render


def render_dataset(
    dataset: tf.data.Dataset,
    template_set: TemplateSet,
    where: str,
    template: int | None = None,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Adds "inputs" and "targets" rendered from each example's fields (others kept).

    template: that template for every example; None samples by `rates` (seed None -> 0).
    """
    spec = dataset.element_spec
    renders = [
        (
            renderer(t.inputs, template_set.label_names, spec, f"{where}, template {i}"),
            renderer(t.targets, template_set.label_names, spec, f"{where}, template {i}"),
        )
        for i, t in enumerate(template_set.templates)
    ]
    if template is not None:
        render_inputs, render_targets = renders[template]
        return dataset.map(
            lambda ex: {**ex, "inputs": render_inputs(ex), "targets": render_targets(ex)},
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    rates = np.asarray(template_set.rates) / sum(template_set.rates)
    bounds = tf.constant(np.cumsum(rates)[:-1], tf.float64)
    start = np.random.default_rng(0 if seed is None else seed).random()

    def sample(position, example):
        u = tf.math.floormod(start + tf.cast(position, tf.float64) * _GOLDEN, 1.0)
        chosen = tf.reduce_sum(tf.cast(u >= bounds, tf.int32))
        inputs = tf.stack([render(example) for render, _ in renders])
        targets = tf.stack([render(example) for _, render in renders])
        return {**example, "inputs": inputs[chosen], "targets": targets[chosen]}

    return dataset.enumerate().map(sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def templated_source(
    raw: seqio.DataSource, template_set: TemplateSet, name: str
) -> seqio.FunctionDataSource:
    """A source over `raw`'s examples with "inputs"/"targets" rendered by the templates."""

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
        dataset = raw.get_dataset(split=split, shuffle=shuffle_files, seed=seed)
        sampled = split in template_set.sampled_splits and len(template_set.templates) > 1
        fixed = None if sampled else template_set.eval_template
        return render_dataset(dataset, template_set, f"{name} {split}", fixed, seed)

    dataset_fn.__name__ = name
    return FunctionSource(dataset_fn, splits=list(raw.splits))


# ----------------------------------------------------------------------------- tasks

# Templated tasks by name: their raw source and templates (few-shot variants render
# exemplars and the evaluated example in one template).
TEMPLATED: dict[str, tuple[seqio.DataSource, TemplateSet]] = {}


def register_templated(
    name: str,
    raw: seqio.DataSource,
    template_set: TemplateSet,
    tail: Sequence,
    overwrite: bool = False,
    **task_args,
) -> seqio.Task:
    """Registers task `name` over `raw` rendered by `template_set`, then `tail` steps."""
    if name in seqio.TaskRegistry.names():
        if not overwrite:
            raise UserInputError(f"task {name!r} is already registered (pass overwrite=True)")
        seqio.TaskRegistry.remove(name)
    TEMPLATED[name] = (raw, template_set)
    return seqio.TaskRegistry.add(
        name,
        source=templated_source(raw, template_set, name),
        preprocessors=list(tail),
        **task_args,
    )


def split_preprocessors(task: seqio.Task) -> tuple[list, list]:
    """(text steps, tokenizing tail) of a task's preprocessors: the tail starts at the
    first tokenize step (or cache placeholder)."""
    steps = list(task.preprocessors)
    tokenizers = (seqio.preprocessors.tokenize, seqio.preprocessors.tokenize_and_append_eos)
    for i, step in enumerate(steps):
        function = getattr(step, "func", step)
        if function in tokenizers or isinstance(step, seqio.CacheDatasetPlaceholder):
            return steps[:i], steps[i:]
    raise UserInputError(f"task {task.name}: no tokenize step, so it has no text to template")


def templated_task(
    name: str,
    base: str,
    templates: Sequence[Template],
    rates: Sequence[float] = (),
    label_names: Sequence[str] = (),
    eval_template: int = 0,
    overwrite: bool = False,
) -> seqio.Task:
    """Registers `name`: task `base`'s raw examples rendered by `templates` (see the
    module docstring), then `base`'s tokenization; its metrics and postprocessor."""
    if base not in seqio.TaskRegistry.names():
        raise UserInputError(f"templated task {name}: no task named {base!r} is registered")
    base_task = seqio.get_mixture_or_task(base)
    template_set = TemplateSet(
        tuple(templates), tuple(rates), eval_template, label_names=tuple(label_names)
    )
    _, tail = split_preprocessors(base_task)
    return register_templated(
        name,
        base_task.source,
        template_set,
        tail,
        overwrite,
        output_features=base_task.output_features,
        postprocess_fn=base_task.postprocessor,
        metric_fns=list(base_task.metric_fns),
        shuffle_buffer_size=base_task.shuffle_buffer_size,
    )
