"""UL2's mixture of denoisers (Tay et al. 2022, "UL2: Unifying Language Learning
Paradigms"), as a seqio preprocessor beside T5's span corruption.

Each example is made by one denoiser, drawn at random with the configured rates:

- R (regular) and X (extreme) denoisers are span corruption (span_corruption.py's
  noise mask and sentinels) with their own noise density and mean span length; X means
  long spans (mean >= 12) or much noise (density >= 0.3), as the paper defines it;
- the S denoiser is prefix LM: the segment is split at a random point, the prefix is
  the inputs and the rest the targets (no sentinels).

With `mode_tokens`, the inputs start with the denoiser's mode token: [NLU] (R), [NLG]
(X) or [S2S] (S). They are text, encoded as the vocabulary encodes "[NLU] " (for T5's
SentencePiece model `▁[ N LU ]`, 4 ids), so writing "[NLU] " in front of an input at
fine-tuning or inference time gives the ids the model was pretrained with.

    tokens   a b c D E f g H I J               (upper case: noise)
    R / X    inputs  [NLU] a b c <X0> f g <X1>     targets <X0> D E <X1> H I J
    S        inputs  [S2S] a b c D E f             targets g H I J

Defaults against the paper (its section 3.1.2 and appendix code):

| denoiser | mean span | noise | mode  | rate | paper                                  |
|----------|-----------|-------|-------|------|----------------------------------------|
| R        | 3         | 15%   | [NLU] | 20%  | R: (mu=3, r=0.15), (mu=8, r=0.15)      |
| R        | 8         | 15%   | [NLU] | 20%  |                                        |
| X        | 3         | 50%   | [NLG] | 10%  | X: (3, 0.5), (8, 0.5), (64, 0.15),     |
| X        | 8         | 50%   | [NLG] | 10%  |    (64, 0.5)                           |
| X        | 64        | 15%   | [NLG] | 10%  |                                        |
| X        | 64        | 50%   | [NLG] | 10%  |                                        |
| S        | -         | 25%   | [S2S] | 20%  | S: (mu=L/4, r=0.25, one span)          |

- Rates: the paper's appendix function samples the denoisers uniformly unless given
  rates; the public seqio ports of it use R 40%, X 40% (each split evenly) and S 20%,
  the defaults here. Rates are relative weights, per example.
- S: the targets' share of a segment is uniform on (0, 2 * density], so it averages the
  paper's 25%; `Denoiser(0.5)` gives the appendix code's split (T5's prefix LM: the
  split point uniform over the whole segment).
- Spans are laid out as T5's (random segmentation, as the appendix code does).
- Where the paper's code differs, on purpose: (1) one stream, each segment's denoiser
  drawn at random, so every token is used once and the rates are shares of examples
  (the appendix code shards or copies the corpus per denoiser); (2) the mode token
  counts inside the inputs length (the appendix code adds it after sizing, so the
  inputs' last tokens are cut); (3) at most as many spans as the vocabulary has
  sentinels (its extra ids): at inputs 512 with T5's 100, the (3, 50%) denoiser makes
  100 spans of ~4 tokens instead of 127, whose last sentinels would be wordpieces; at
  inputs 1024 (3, 50%) and (8, 50%) both become 100 spans of ~9 tokens (a vocabulary
  with more extra ids keeps them apart).

Lengths: segments are cut so that a span denoiser's inputs are exactly the requested
length (mode token and EOS included); an S prefix is at most that long (the longest
fills it). `required_target_length(inputs_length)` is the longest targets any configured
denoiser makes — inputs 512 with the defaults and T5's vocabulary need targets 508,
1024 need 1020 (the 50%-noise denoisers) — and t5pipe checks
TASK_FEATURE_LENGTHS against it, so nothing is ever truncated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5pipe.errors import UserInputError
from t5pipe.tasks.span_corruption import (
    CONCAT_BATCH_SIZE,
    MAX_CHUNK_TOKENS,
    concatenate_documents,
    random_spans_helper,
    random_spans_noise_mask,
    replace_spans_with_sentinels,
    select_random_chunk,
)

AUTOTUNE = tf.data.AUTOTUNE
MODE_TOKENS = {"R": "[NLU]", "X": "[NLG]", "S": "[S2S]"}
# The paper's line between regular and extreme span corruption.
EXTREME_SPAN_LENGTH, EXTREME_NOISE_DENSITY = 12.0, 0.3


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """One denoiser of the mixture.

    noise_density: span corruption: the share of tokens masked; S (prefix LM): the mean
      share of the segment that goes to the targets (at most 0.5).
    mean_noise_span_length: span corruption's mean span; None makes the S denoiser.
    rate: relative weight among the denoisers (per example).
    """

    noise_density: float
    mean_noise_span_length: float | None = None
    rate: float = 1.0

    @property
    def kind(self) -> str:
        """The denoiser's class: R, X or S."""
        if self.mean_noise_span_length is None:
            return "S"
        extreme = (
            self.mean_noise_span_length >= EXTREME_SPAN_LENGTH
            or self.noise_density >= EXTREME_NOISE_DENSITY
        )
        return "X" if extreme else "R"

    def describe(self) -> str:
        if self.kind == "S":
            return f"S (prefix LM, {self.noise_density:.0%} targets)"
        return f"{self.kind} (span {self.mean_noise_span_length:g}, {self.noise_density:.0%})"


UL2_DENOISERS = (
    Denoiser(0.15, 3.0, rate=0.2),
    Denoiser(0.15, 8.0, rate=0.2),
    Denoiser(0.5, 3.0, rate=0.1),
    Denoiser(0.5, 8.0, rate=0.1),
    Denoiser(0.15, 64.0, rate=0.1),
    Denoiser(0.5, 64.0, rate=0.1),
    Denoiser(0.25, rate=0.2),
)


def check_denoisers(denoisers: Sequence[Denoiser], where: str = "UL2") -> tuple[Denoiser, ...]:
    """The denoisers as a tuple; a UserInputError naming the bad one otherwise."""
    denoisers = tuple(denoisers)
    if not denoisers or not all(isinstance(d, Denoiser) for d in denoisers):
        raise UserInputError(
            f"{where}: denoisers={denoisers!r}: expected a non-empty list of ul2.Denoiser"
        )
    for d in denoisers:
        problem = None
        if d.kind == "S" and not 0.0 < d.noise_density <= 0.5:
            problem = "the S denoiser's noise_density (the targets' mean share) must be in (0, 0.5]"
        elif d.kind != "S" and not 0.0 < d.noise_density < 1.0:
            problem = "noise_density must be in (0, 1)"
        elif d.mean_noise_span_length is not None and not d.mean_noise_span_length >= 1:
            problem = "mean_noise_span_length must be >= 1"
        elif not d.rate >= 0:
            problem = "rate must be >= 0"
        if problem:
            raise UserInputError(f"{where}: {d}: {problem}")
    if not sum(d.rate for d in denoisers) > 0:
        raise UserInputError(f"{where}: the denoisers' rates sum to 0; give one a rate > 0")
    return denoisers


def prefix_lm_max_targets(segment_length: int, noise_density: float) -> int:
    """The most targets tokens the S denoiser takes from a segment: round(2 * density *
    length) (float32, as the graph computes it), at least 1 and leaving a prefix token."""
    most = int(np.round(np.float32(2.0 * noise_density) * np.float32(segment_length)))
    return max(1, min(most, segment_length - 1))


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one denoiser fills the lengths: raw tokens per segment, the longest targets
    (EOS included), the span cap, and the mode-token ids."""

    segment_length: int
    targets_length: int
    max_spans: int
    mode_ids: tuple[int, ...]


def plan(
    denoisers: Sequence[Denoiser],
    inputs_length: int,
    vocabulary: seqio.Vocabulary,
    mode_tokens: bool,
) -> list[Plan]:
    """Each denoiser's `Plan` for inputs of `inputs_length` (EOS included)."""
    plans = []
    sentinels = vocabulary.extra_ids
    for d in denoisers:
        mode_ids = tuple(vocabulary.encode(MODE_TOKENS[d.kind] + " ")) if mode_tokens else ()
        budget = inputs_length - len(mode_ids)  # raw tokens + sentinels + EOS
        if budget < 3:
            raise UserInputError(
                f"UL2: inputs of {inputs_length} tokens leave {budget} after the "
                f"{d.kind} mode token ({len(mode_ids)} ids); TASK_FEATURE_LENGTHS['inputs'] "
                "needs at least 3 more than the mode token"
            )
        if d.kind == "S":
            segment = budget  # the longest prefix (budget - 1) + EOS fills the inputs
            targets = prefix_lm_max_targets(segment, d.noise_density) + 1
            plans.append(Plan(segment, targets, 0, mode_ids))
            continue
        if sentinels < 1:
            raise UserInputError(
                f"UL2: the {d.describe()} denoiser needs sentinel ids but the vocabulary "
                "reserves none (extra_ids=0); use one with extra ids, e.g. T5's (100) or "
                "byt5_vocabulary(extra_ids=125), ByT5's own layout"
            )
        segment, targets = random_spans_helper(
            budget, d.noise_density, d.mean_noise_span_length, max_spans=sentinels
        )
        plans.append(Plan(segment, targets, sentinels, mode_ids))
    return plans


def ul2_examples(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None,
    output_features: Mapping[str, seqio.Feature],
    denoisers: Sequence[Denoiser] = UL2_DENOISERS,
    mode_tokens: bool = True,
    merge_examples_to_reduce_padding: bool = True,
) -> tf.data.Dataset:
    """Tokenized documents {"targets": [n] int} -> {"inputs", "targets", "denoiser"
    (the index of the denoiser that made the example)}. Goes after
    seqio.preprocessors.tokenize and before append_eos_after_trim.

    Raises a UserInputError when sequence_length["targets"] cannot hold the targets.
    """
    denoisers = check_denoisers(denoisers)
    inputs_length = (sequence_length or {}).get("inputs") or 512
    vocabulary = output_features["targets"].vocabulary
    plans = plan(denoisers, inputs_length, vocabulary, mode_tokens)
    needed = max(p.targets_length for p in plans)
    targets_length = (sequence_length or {}).get("targets")
    if targets_length and targets_length < needed:
        raise UserInputError(
            f"UL2: task_feature_lengths['targets'] = {targets_length} is too short: inputs "
            f"of {inputs_length} need targets of {needed}"
        )

    dataset = dataset.map(lambda x: {"targets": x["targets"]}, AUTOTUNE)
    dataset = dataset.filter(lambda x: tf.size(x["targets"]) > 0)
    dataset = select_random_chunk(dataset, max_length=MAX_CHUNK_TOKENS)
    if merge_examples_to_reduce_padding:
        dataset = concatenate_documents(dataset, CONCAT_BATCH_SIZE)
    dataset = _segments_with_denoisers(dataset, denoisers, plans)
    return _denoise(dataset, denoisers, plans, top_sentinel=vocabulary.vocab_size - 1)


def _segments_with_denoisers(
    dataset: tf.data.Dataset, denoisers: tuple[Denoiser, ...], plans: list[Plan]
) -> tf.data.Dataset:
    """Token sequences -> consecutive segments {"targets": [segment] int, "denoiser": int},
    each segment's denoiser drawn with the rates and its length that denoiser's (the last
    segment of a sequence may be shorter)."""
    rates = np.array([d.rate for d in denoisers], np.float64)
    with np.errstate(divide="ignore"):  # a rate of 0: logit -inf, never drawn
        logits = tf.constant(np.log(rates / rates.sum())[None, :], tf.float32)  # [1, denoisers]
    lengths_by_denoiser = tf.constant([p.segment_length for p in plans], tf.int32)
    shortest = min(p.segment_length for p in plans)

    @seqio.map_over_dataset(num_seeds=1)
    def cut(x, seed):
        tokens = x["targets"]
        n = tf.size(tokens)
        most = n // shortest + 1  # enough segments to cover the sequence
        choices = tf.random.stateless_categorical(logits, most, seed, dtype=tf.int32)[0]
        lengths = tf.gather(lengths_by_denoiser, choices)
        starts = tf.cumsum(lengths, exclusive=True)
        used = starts < n
        choices, starts, lengths = choices[used], starts[used], lengths[used]
        lengths = tf.minimum(lengths, n - starts)
        return {
            "targets": tf.RaggedTensor.from_row_lengths(tokens, lengths),
            "denoiser": choices,
        }

    return cut(dataset).unbatch()


def _denoise(
    dataset: tf.data.Dataset,
    denoisers: tuple[Denoiser, ...],
    plans: list[Plan],
    top_sentinel: int,
) -> tf.data.Dataset:
    """{"targets": segment, "denoiser"} -> {"inputs", "targets", "denoiser"}."""
    densities = tf.constant([d.noise_density for d in denoisers], tf.float32)
    span_lengths = tf.constant([d.mean_noise_span_length or 1.0 for d in denoisers], tf.float32)
    max_spans = tf.constant([p.max_spans for p in plans], tf.int32)
    is_prefix_lm = tf.constant([d.kind == "S" for d in denoisers])
    mode_ids = tf.ragged.constant([list(p.mode_ids) for p in plans], dtype=tf.int32)

    @seqio.map_over_dataset(num_seeds=1)
    def denoise(x, seed):
        tokens, which = x["targets"], x["denoiser"]
        seeds = tf.random.experimental.stateless_split(seed, 3)
        length = tf.size(tokens)

        def span_corruption():
            noise = random_spans_noise_mask(
                length, seeds[:2], densities[which], span_lengths[which], max_spans[which]
            )
            return (
                replace_spans_with_sentinels(tokens, noise, top_sentinel),
                replace_spans_with_sentinels(tokens, ~noise, top_sentinel),
            )

        def prefix_lm():
            most = tf.cast(tf.round(2.0 * densities[which] * tf.cast(length, tf.float32)), tf.int32)
            most = tf.maximum(1, tf.minimum(most, length - 1))
            num_targets = tf.random.stateless_uniform(
                [], seed=seeds[2], minval=1, maxval=most + 1, dtype=tf.int32
            )
            split = length - tf.minimum(num_targets, length)
            return tokens[:split], tokens[split:]

        inputs, targets = tf.cond(is_prefix_lm[which], prefix_lm, span_corruption)
        inputs = tf.concat([mode_ids[which], inputs], axis=0)
        return {"inputs": inputs, "targets": targets, "denoiser": which}

    return denoise(dataset)


@dataclasses.dataclass(frozen=True)
class UL2Denoising:
    """`ul2_examples` as a seqio preprocessor that also says which targets length it
    needs (t5pipe asks every preprocessor of a task for `required_target_length`).

    vocabulary: the task's vocabulary, for `required_target_length` (the mode tokens'
    ids and the sentinel count), which runs before seqio fills `output_features`.
    """

    denoisers: tuple[Denoiser, ...] = UL2_DENOISERS
    mode_tokens: bool = True
    merge_examples_to_reduce_padding: bool = True
    vocabulary: seqio.Vocabulary | None = None
    # Filled in by seqio, which sets these fields of dataclass preprocessors.
    sequence_length: Mapping[str, int] | None = None
    output_features: Mapping[str, seqio.Feature] | None = None

    def __call__(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        dataset = ul2_examples(
            dataset,
            self.sequence_length,
            self.output_features,
            denoisers=self.denoisers,
            mode_tokens=self.mode_tokens,
            merge_examples_to_reduce_padding=self.merge_examples_to_reduce_padding,
        )
        return dataset.map(lambda x: {"inputs": x["inputs"], "targets": x["targets"]}, AUTOTUNE)

    def required_target_length(self, inputs_length: int) -> int:
        """The longest targets any of the denoisers makes from inputs of `inputs_length`."""
        from t5pipe.vocabularies import check_vocabulary

        vocabulary = self.vocabulary
        if vocabulary is None and self.output_features:
            vocabulary = self.output_features["targets"].vocabulary
        if vocabulary is None:
            raise ValueError("UL2Denoising.required_target_length needs `vocabulary`")
        check_vocabulary(vocabulary, "UL2 task vocabulary")
        plans = plan(check_denoisers(self.denoisers), inputs_length, vocabulary, self.mode_tokens)
        return max(p.targets_length for p in plans)

    def describe(self) -> str:
        return f"UL2 denoising ({', '.join(d.describe() for d in self.denoisers)})"


def ul2_preprocessors(vocabulary: seqio.Vocabulary, **options) -> list:
    """The preprocessor list of a UL2 task over a "text" feature: tokenize, cache point,
    denoise, EOS. vocabulary: the task's (for the lengths check); options:
    `UL2Denoising`'s fields."""
    return [
        lambda ds: ds.map(lambda x: {"targets": x["text"]}, AUTOTUNE),
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        UL2Denoising(vocabulary=vocabulary, **options),
        seqio.preprocessors.append_eos_after_trim,
    ]
