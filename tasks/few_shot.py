"""k-shot variants of any text-to-text task: exemplars from its train split prepended.

    from t5pipe.tasks import few_shot

    few_shot.few_shot_task("glue_rte_v002", k=3)        # registers glue_rte_v002_3shot
    few_shot.few_shot_task("rte_instructions", k=2, template="entail")
    few_shot.resolve("glue_rte_v002_5shot")             # registers on first use by name

Every command finds `<task>_<k>shot` by name (`input_pipeline.get_task` registers it on
first use), and `t5pipe tasks show TASK --shots k --template T` prints its prompts.

Each example's inputs become

    <exemplar 1><separator>...<exemplar k><separator><the example's inputs>

with an exemplar `exemplar_format.format(inputs=..., targets=...)` of a train example,
all in the same template (a templated task's `template`, default its eval template;
otherwise the base task's own formatting). Exemplars are drawn without replacement
from the first `pool_size` train examples, in an order that is a pure function of
(the task's seed, the example's inputs text); a candidate whose inputs text equals the
example's (or an exemplar's already chosen) is skipped, and so is one that would make
the inputs longer than the input length asked of the dataset (counted in tokens with
EOS), so the prompt never exceeds it: an example may get fewer than k exemplars.
Targets, metrics and postprocessing are the base task's.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import seqio
import tensorflow as tf

from t5pipe.errors import UserInputError
from t5pipe.tasks import templates
from t5pipe.tasks.sources import FunctionSource

POOL_SIZE = 1024
NAME = re.compile(r"^(?P<base>.+)_(?P<k>\d+)shot$")


def text_examples(
    base: str, split: str, template: int | str | None, shuffle: bool = False, seed=None
) -> tf.data.Dataset:
    """Task `base`'s examples of `split` with text "inputs"/"targets", before tokenizing;
    a templated task's in one template (None: its eval template)."""
    if base in templates.TEMPLATED:
        raw, template_set = templates.TEMPLATED[base]
        index = template_set.eval_template if template is None else template_set.index(template)
        dataset = raw.get_dataset(split=split, shuffle=shuffle, seed=seed)
        return templates.render_dataset(dataset, template_set, f"{base} {split}", index)
    if template is not None:
        raise UserInputError(f"few-shot: task {base} has no templates to choose {template!r} from")
    task = seqio.get_mixture_or_task(base)
    text_steps, _ = templates.split_preprocessors(task)
    dataset = task.source.get_dataset(split=split, shuffle=shuffle, seed=seed)
    with seqio.utils.map_seed_manager(seed):
        for step in text_steps:
            step = seqio.utils.add_kwargs_to_transform(
                step, sequence_length=None, output_features=task.output_features
            )
            dataset = step(dataset)
    return dataset


class Assembler:
    """The few-shot preprocessor: seqio passes `sequence_length` and `output_features`."""

    def __init__(self, base, k, template, exemplar_format, separator, seed, pool_size):
        self.base, self.k, self.template, self.seed = base, k, template, seed
        self.exemplar_format, self.separator, self.pool_size = exemplar_format, separator, pool_size
        self._pool: list[tuple[str, str]] | None = None

    def pool(self) -> list[tuple[str, str]]:
        """(inputs text, exemplar text) of the first `pool_size` train examples."""
        if self._pool is None:
            dataset = text_examples(self.base, "train", self.template).take(self.pool_size)
            self._pool = []
            for example in dataset.as_numpy_iterator():
                inputs, targets = (example[f].decode("utf-8") for f in ("inputs", "targets"))
                exemplar = self.exemplar_format.format(inputs=inputs, targets=targets)
                self._pool.append((inputs, exemplar))
            if not self._pool:
                raise UserInputError(f"few-shot {self.base}: its train split has no examples")
        return self._pool

    def prompt(self, inputs: str, max_tokens: int | None, vocabulary, eos: int) -> str:
        """The few-shot inputs for one example's `inputs` text (see the module docstring)."""
        pool = self.pool()
        rng = np.random.default_rng([self.seed, zlib.crc32(inputs.encode("utf-8"))])
        chosen: list[str] = []
        seen = {inputs}
        # Candidates past a few dozen rarely fit when the first ones did not.
        for index in rng.permutation(len(pool))[: 4 * self.k + 32]:
            candidate_inputs, exemplar = pool[index]
            if candidate_inputs in seen:
                continue
            text = self.separator.join([*chosen, exemplar, inputs])
            if max_tokens is None or len(vocabulary.encode(text)) + eos <= max_tokens:
                chosen.append(exemplar)
                seen.add(candidate_inputs)
                if len(chosen) == self.k:
                    break
        return self.separator.join([*chosen, inputs])

    def __call__(self, dataset, sequence_length=None, output_features=None):
        if "inputs" not in dataset.element_spec or "inputs" not in output_features:
            raise UserInputError(f"few-shot {self.base}: the task has no text inputs to extend")
        feature = output_features["inputs"]
        max_tokens = (sequence_length or {}).get("inputs")
        eos = int(feature.add_eos)
        spec = dataset.element_spec

        def generate():
            for example in dataset.as_numpy_iterator():
                inputs = example["inputs"].decode("utf-8")
                text = self.prompt(inputs, max_tokens, feature.vocabulary, eos)
                yield {**example, "inputs": text.encode("utf-8")}

        return tf.data.Dataset.from_generator(generate, output_signature=spec)


def few_shot_task(
    base: str,
    k: int,
    template: int | str | None = None,
    name: str | None = None,
    exemplar_format: str = "{inputs} {targets}",
    separator: str = " ",
    seed: int = 0,
    pool_size: int = POOL_SIZE,
    overwrite: bool = False,
) -> seqio.Task:
    """Registers the k-shot variant of task `base` as `name` (default `<base>_<k>shot`).
    k=0: zero-shot, the examples as they are, in `template` (a templated task's)."""
    if base not in seqio.TaskRegistry.names():
        raise UserInputError(f"few-shot: no task named {base!r} is registered")
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 0):
        raise UserInputError(f"few-shot {base}: k={k!r} must be a whole number >= 0")
    templates.template_fields(exemplar_format, f"few-shot {base}: exemplar_format")
    name = name or f"{base}_{k}shot"
    if name in seqio.TaskRegistry.names():
        if not overwrite:
            return seqio.get_mixture_or_task(name)
        seqio.TaskRegistry.remove(name)
    base_task = seqio.get_mixture_or_task(base)
    if "train" not in base_task.splits:
        raise UserInputError(f"few-shot {base}: the task has no train split to draw from")
    _, tail = templates.split_preprocessors(base_task)
    # The prompt depends on the input length, so nothing before it can be cached.
    tail = [step for step in tail if not isinstance(step, seqio.CacheDatasetPlaceholder)]

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
        return text_examples(base, split, template, shuffle_files, seed)

    dataset_fn.__name__ = name
    assembler = Assembler(base, k, template, exemplar_format, separator, seed, pool_size)
    return seqio.TaskRegistry.add(
        name,
        source=FunctionSource(dataset_fn, splits=list(base_task.splits)),
        preprocessors=[assembler, *tail] if k else tail,
        output_features=base_task.output_features,
        postprocess_fn=base_task.postprocessor,
        metric_fns=list(base_task.metric_fns),
        shuffle_buffer_size=base_task.shuffle_buffer_size,
    )


def resolve(name: str) -> seqio.Task | None:
    """The task `<base>_<k>shot` (registered on first use), or None if `name` is not of
    that form over a registered base task."""
    match = NAME.match(name)
    if not match or match["base"] not in seqio.TaskRegistry.names():
        return None
    return few_shot_task(match["base"], int(match["k"]))
