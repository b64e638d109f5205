"""T5's span-corruption objective (seqio ships none), as a seqio preprocessor.

A token sequence is split into alternating non-noise / noise spans (15% of tokens are
noise, spans average 3 tokens, the first span is non-noise and the last is noise).
Inputs keep the non-noise tokens with each noise span replaced by one sentinel;
targets hold each noise span after the same sentinel:

    tokens   a b c D E f g H I J k         (upper case = noise)
    inputs   a b c <X0> f g <X1> k
    targets  <X0> D E <X1> H I J <X2>      (<X2>: the sentinel for the trailing span)

Sentinels count down from the top of the vocabulary: <X0> = vocab_size - 1 (32099,
"<extra_id_0>", for T5's vocabulary), <X1> = 32098, ...

Lengths: raw token segments are cut so that after corruption and EOS the inputs are
exactly the requested length; for inputs 512 that is 568 raw tokens -> 512 inputs /
114 targets (`random_spans_helper`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import seqio
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
MAX_CHUNK_TOKENS = 65536  # one random chunk per document at most, as T5
CONCAT_BATCH_SIZE = 128  # documents concatenated before splitting, to reduce padding


def _span_counts(
    num_tokens: int,
    noise_density: float,
    mean_noise_span_length: float,
    max_spans: int | None = None,
) -> tuple[int, int]:
    """(noise tokens, noise spans) as `random_spans_noise_mask` counts them: in float32,
    rounding half to even, at least one of each, at most `max_spans` spans."""
    length = max(num_tokens, 2)
    num_noise = int(np.round(np.float32(length) * np.float32(noise_density)))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = int(np.round(np.float32(num_noise) / np.float32(mean_noise_span_length)))
    num_spans = max(num_spans, 1)
    if max_spans is not None:
        num_spans = min(num_spans, max_spans)
    return num_noise, num_spans


def random_spans_helper(
    inputs_length: int,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    max_spans: int | None = None,
) -> tuple[int, int]:
    """(raw tokens per segment, targets length) such that corrupting a full segment
    gives inputs of exactly `inputs_length` (one sentinel per span, plus EOS), with at
    most `max_spans` spans per segment (the sentinels the vocabulary has).

    >>> random_spans_helper(512)
    (568, 114)
    """

    def lengths(tokens: int) -> tuple[int, int]:
        num_noise, num_spans = _span_counts(
            tokens, noise_density, mean_noise_span_length, max_spans
        )
        return tokens - num_noise + num_spans + 1, num_noise + num_spans + 1

    tokens = inputs_length - 1
    while lengths(tokens + 1)[0] <= inputs_length:
        tokens += 1
    _, targets_length = lengths(tokens)
    # At density 0.5 T5 trims a token so that targets do not exceed the inputs.
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens -= 1
        targets_length -= 1
    return tokens, targets_length


def _random_segmentation(
    num_items: tf.Tensor, num_segments: tf.Tensor, seed: tf.Tensor
) -> tf.Tensor:
    """Lengths of `num_segments` non-empty segments partitioning `num_items`, uniformly
    at random. [num_segments] int32."""
    starts_segment = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
    starts_segment = tf.random.experimental.stateless_shuffle(starts_segment, seed=seed)
    segment_ids = tf.cumsum(tf.pad(starts_segment, [[1, 0]]))
    return tf.math.segment_sum(tf.ones_like(segment_ids), segment_ids)


def random_spans_noise_mask(
    length: tf.Tensor,
    seeds: tf.Tensor,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    max_spans: int | tf.Tensor | None = None,
) -> tf.Tensor:
    """[length] bool, True on noise tokens: round(length * density) noise tokens (at
    least 1, at most length - 1) in round(noise / mean_span) spans (at least 1, at most
    `max_spans`), interleaved with as many non-noise spans, non-noise first.

    seeds: [2, 2] int32 stateless seeds. The density, span length and `max_spans` may
    be scalar tensors (chosen per example).
    """
    original_length = length
    length = tf.maximum(length, 2)  # room for one noise and one non-noise token
    num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
    num_noise = tf.clip_by_value(num_noise, 1, length - 1)
    num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32)
    num_spans = tf.maximum(num_spans, 1)
    if max_spans is not None:
        num_spans = tf.minimum(num_spans, max_spans)
    noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, seeds[1])
    span_lengths = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
    span_starts = tf.cumsum(span_lengths)[:-1]
    is_span_start = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts, length)
    span_index = tf.cumsum(is_span_start)
    return tf.equal(span_index % 2, 1)[:original_length]


def replace_spans_with_sentinels(
    tokens: tf.Tensor, mask: tf.Tensor, top_sentinel: int
) -> tf.Tensor:
    """Each run of masked tokens -> one sentinel (top_sentinel, top_sentinel - 1, ...)."""
    previous_masked = tf.pad(mask[:-1], [[1, 0]])
    first_of_span = mask & ~previous_masked
    sentinels = top_sentinel + 1 - tf.cumsum(tf.cast(first_of_span, tokens.dtype))
    tokens = tf.where(first_of_span, sentinels, tokens)
    return tf.boolean_mask(tokens, ~(mask & previous_masked))


@seqio.map_over_dataset(num_seeds=1)
def select_random_chunk(x, seed, max_length: int):
    tokens = x["targets"]
    num_chunks = (tf.size(tokens) + max_length - 1) // max_length
    start = max_length * tf.random.stateless_uniform(
        [], seed=seed, minval=0, maxval=num_chunks, dtype=tf.int32
    )
    return {"targets": tokens[start : start + max_length]}


def concatenate_documents(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Concatenates the tokens of each `batch_size` consecutive documents."""
    dataset = dataset.padded_batch(batch_size, padded_shapes={"targets": [None]})

    def flatten(x):
        tokens = tf.reshape(x["targets"], [-1])
        return {"targets": tf.boolean_mask(tokens, tokens != 0)}  # drop padding (id 0)

    return dataset.map(flatten, AUTOTUNE)


def _split_into_segments(dataset: tf.data.Dataset, segment_length: int) -> tf.data.Dataset:
    """Cuts each token sequence into segments of `segment_length` (the last one shorter)."""

    def split(x):
        tokens = x["targets"]
        n = tf.size(tokens)
        num_segments = (n + segment_length - 1) // segment_length
        padding = num_segments * segment_length - n
        segments = tf.reshape(tf.pad(tokens, [[0, padding]]), [-1, segment_length])
        lengths = tf.concat(
            [tf.fill([num_segments - 1], segment_length), [segment_length - padding]], axis=0
        )
        return {"targets": segments, "length": lengths}

    dataset = dataset.map(split, AUTOTUNE).unbatch()
    return dataset.map(lambda x: {"targets": x["targets"][: x["length"]]}, AUTOTUNE)


def span_corruption(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None,
    output_features: Mapping[str, seqio.Feature],
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    merge_examples_to_reduce_padding: bool = True,
) -> tf.data.Dataset:
    """Tokenized documents {"targets": [n] int} -> {"inputs", "targets"} span-corrupted
    segments sized for sequence_length["inputs"] (default 512). Goes after
    seqio.preprocessors.tokenize and before append_eos_after_trim.

    Raises ValueError when sequence_length["targets"] cannot hold the targets.
    """
    inputs_length = (sequence_length or {}).get("inputs") or 512
    segment_length, targets_length = random_spans_helper(
        inputs_length, noise_density, mean_noise_span_length
    )
    if (
        sequence_length
        and sequence_length.get("targets")
        and sequence_length["targets"] < targets_length
    ):
        raise ValueError(
            f"span_corruption: task_feature_lengths['targets'] = {sequence_length['targets']} "
            f"is too short: inputs of {inputs_length} need targets of {targets_length} "
            f"(noise_density={noise_density}, mean_noise_span_length={mean_noise_span_length})"
        )
    top_sentinel = output_features["targets"].vocabulary.vocab_size - 1

    dataset = dataset.map(lambda x: {"targets": x["targets"]}, AUTOTUNE)
    dataset = dataset.filter(lambda x: tf.size(x["targets"]) > 0)
    dataset = select_random_chunk(dataset, max_length=MAX_CHUNK_TOKENS)
    if merge_examples_to_reduce_padding:
        dataset = concatenate_documents(dataset, CONCAT_BATCH_SIZE)
    dataset = _split_into_segments(dataset, segment_length)

    @seqio.map_over_dataset(num_seeds=1)
    def corrupt(x, seed):
        tokens = x["targets"]
        seeds = tf.random.experimental.stateless_split(seed, 2)
        noise = random_spans_noise_mask(
            tf.size(tokens), seeds, noise_density, mean_noise_span_length
        )
        return {
            "inputs": replace_spans_with_sentinels(tokens, noise, top_sentinel),
            "targets": replace_spans_with_sentinels(tokens, ~noise, top_sentinel),
        }

    return corrupt(dataset)


@dataclasses.dataclass(frozen=True)
class SpanCorruption:
    """`span_corruption` as a seqio preprocessor that also says which targets length it
    needs: t5pipe asks every preprocessor of a task for `required_target_length` to check
    TASK_FEATURE_LENGTHS before training (and knows such a task truncates nothing)."""

    noise_density: float = NOISE_DENSITY
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
    merge_examples_to_reduce_padding: bool = True
    # Filled in by seqio, which sets these fields of dataclass preprocessors.
    sequence_length: Mapping[str, int] | None = None
    output_features: Mapping[str, seqio.Feature] | None = None

    def __call__(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        return span_corruption(
            dataset,
            self.sequence_length,
            self.output_features,
            noise_density=self.noise_density,
            mean_noise_span_length=self.mean_noise_span_length,
            merge_examples_to_reduce_padding=self.merge_examples_to_reduce_padding,
        )

    def required_target_length(self, inputs_length: int) -> int:
        """The targets length that corrupting `inputs_length` tokens produces."""
        return random_spans_helper(inputs_length, self.noise_density, self.mean_noise_span_length)[
            1
        ]

    def describe(self) -> str:
        return (
            f"span corruption (noise density {self.noise_density}, mean span "
            f"{self.mean_noise_span_length})"
        )


def span_corruption_preprocessors(**options) -> list:
    """The preprocessor list of a span-corruption task over a "text" feature: tokenize,
    cache point, corrupt, EOS. options: `SpanCorruption`'s fields."""
    return [
        lambda ds: ds.map(lambda x: {"targets": x["text"]}, AUTOTUNE),
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        SpanCorruption(**options),
        seqio.preprocessors.append_eos_after_trim,
    ]
