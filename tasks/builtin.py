"""Synthetic tasks built into the package: no download, no data files.

`builtin_reverse_v001`: "reverse: kqzmf" -> "fmzqk". Strings of 4-10 lowercase
letters, byte vocabulary (ByT5's), so a tiny model learns it in minutes on a
CPU: the quickstart's task (gin/runs/quickstart.gin).
`builtin_sort_v001`: "sort: kqzmf" -> "fkmqz", the same strings sorted.
`builtin_mixture_v001`: both, in equal proportions (for mixture and packing tests).

Every example is a pure function of (split, index), drawn with TensorFlow's
stateless RNG, so splits are identical run to run and on every machine:
train 200,000 examples, validation and test 1,000 each, from different seeds.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

from t5pipe.tasks.metrics import accuracy
from t5pipe.tasks.sources import FunctionSource
from t5pipe.vocabularies import byt5_vocabulary

REVERSE_TASK = "builtin_reverse_v001"
SORT_TASK = "builtin_sort_v001"
MIXTURE = "builtin_mixture_v001"
SPLIT_SIZES = {"train": 200_000, "validation": 1_000, "test": 1_000}
_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
MIN_LETTERS, MAX_LETTERS = 4, 10


def letter_examples(split: str, operation: str) -> tf.data.Dataset:
    """{"inputs": "<operation>: <letters>", "targets": <letters reversed or sorted>}."""
    split_seed = tf.constant(_SPLIT_SEEDS[split], tf.int64)
    transform = {"reverse": lambda x: tf.reverse(x, [0]), "sort": tf.sort}[operation]

    def example(index):
        seed = tf.stack([split_seed, index])
        length = tf.random.stateless_uniform([], seed, MIN_LETTERS, MAX_LETTERS + 1, dtype=tf.int32)
        letters = tf.random.stateless_uniform(
            [MAX_LETTERS], seed + tf.constant([0, 1 << 40], tf.int64), 0, 26, dtype=tf.int32
        )[:length] + ord("a")
        return {
            "inputs": tf.strings.join(
                [f"{operation}: ", tf.strings.unicode_encode(letters, "UTF-8")]
            ),
            "targets": tf.strings.unicode_encode(transform(letters), "UTF-8"),
        }

    return tf.data.Dataset.range(SPLIT_SIZES[split]).map(
        example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def _dataset_fn(operation: str):
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
        del shuffle_files, seed  # one in-memory "file"; the task shuffles examples itself
        return letter_examples(split, operation)

    return dataset_fn


def _byte_features() -> dict[str, seqio.Feature]:
    vocabulary = byt5_vocabulary()
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }


def _register() -> None:
    for name, operation in ((REVERSE_TASK, "reverse"), (SORT_TASK, "sort")):
        if name in seqio.TaskRegistry.names():
            continue
        seqio.TaskRegistry.add(
            name,
            source=FunctionSource(
                _dataset_fn(operation), splits=tuple(SPLIT_SIZES), num_input_examples=SPLIT_SIZES
            ),
            preprocessors=[
                seqio.preprocessors.tokenize,
                seqio.CacheDatasetPlaceholder(),
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features=_byte_features(),
            metric_fns=[accuracy],  # exact match of the whole string, in percent
        )
    if MIXTURE not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(MIXTURE, [REVERSE_TASK, SORT_TASK], default_rate=1.0)


_register()
