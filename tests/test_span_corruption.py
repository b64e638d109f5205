"""Span corruption on real text: T5's noise statistics and lengths, and lossless
reconstruction of the original tokens from inputs + targets."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5pipe.tasks import span_corruption
from t5pipe.tasks.features import t5_output_features
from t5pipe.tasks.sources import examples_source

EOS = 1
TOP_SENTINEL = 32099  # <extra_id_0> in T5's 32100-id vocabulary
NUM_SENTINELS = 100


def is_sentinel(token: int) -> bool:
    return TOP_SENTINEL - NUM_SENTINELS < token <= TOP_SENTINEL


def resolve(inputs: list[int], targets: list[int]) -> list[int]:
    """Puts each sentinel's target span back where the sentinel stands in the inputs."""
    spans, current = {}, None
    for token in targets:
        if is_sentinel(token):
            current = spans.setdefault(token, [])
        else:
            assert current is not None, "targets must start with a sentinel"
            current.append(token)
    tokens = []
    for token in inputs:
        tokens.extend(spans.pop(token) if is_sentinel(token) else [token])
    # The trailing target sentinel closes the last span and marks nothing.
    assert all(not span for span in spans.values()), spans
    return tokens


@pytest.fixture(scope="module")
def documents(data_dir):
    lines = (data_dir / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n")
    lines = [line for line in lines if line.strip()]
    return lines[:10_000]


def test_lengths_hit_t5_arithmetic():
    assert span_corruption.random_spans_helper(512) == (568, 114)
    for inputs_length in (64, 128, 256, 512, 1024):
        tokens, targets = span_corruption.random_spans_helper(inputs_length)
        noise = round(tokens * 0.15)
        spans = round(noise / 3)
        assert tokens - noise + spans + 1 == inputs_length  # inputs exactly filled
        assert noise + spans + 1 == targets


def test_noise_mask_is_alternating_spans_starting_with_non_noise():
    for length, seed in [(568, 1), (100, 2), (7, 3), (1, 4)]:
        seeds = tf.constant([[seed, 0], [seed, 1]], tf.int32)
        mask = span_corruption.random_spans_noise_mask(tf.constant(length), seeds).numpy()
        assert mask.shape == (length,)
        if length >= 2:
            assert not mask[0] and mask[-1]  # non-noise first, noise last
            assert mask.sum() == min(max(round(length * 0.15), 1), length - 1)


def test_span_corruption_over_10000_documents(documents, spm_path, monkeypatch):
    monkeypatch.setenv("T5PIPE_VOCAB", spm_path)
    vocab = seqio.SentencePieceVocabulary(spm_path, extra_ids=100)
    task = seqio.Task(
        "test_span_corruption_shakespeare",
        source=examples_source(lambda split: [{"text": d} for d in documents], ["train"], "text"),
        preprocessors=span_corruption.span_corruption_preprocessors(),
        output_features=t5_output_features(vocab),
    )
    dataset = task.get_dataset(
        {"inputs": 512, "targets": 114}, split="train", shuffle=False, seed=7
    )
    examples = list(dataset.as_numpy_iterator())

    reconstructed, noise_tokens, noise_spans, total_tokens = [], 0, 0, 0
    full_segments = 0
    for example in examples:
        inputs, targets = example["inputs"].tolist(), example["targets"].tolist()
        assert inputs[-1] == EOS and targets[-1] == EOS
        inputs, targets = inputs[:-1], targets[:-1]
        assert EOS not in inputs and EOS not in targets
        sentinels = [t for t in inputs if is_sentinel(t)]
        # Sentinels count down from the top of the vocabulary, in order.
        assert sentinels == list(range(TOP_SENTINEL, TOP_SENTINEL - len(sentinels), -1))
        tokens = resolve(inputs, targets)
        reconstructed.extend(tokens)
        total_tokens += len(tokens)
        noise_spans += len(sentinels)
        noise_tokens += sum(not is_sentinel(t) for t in targets)
        if len(tokens) == 568:
            full_segments += 1
            assert (len(inputs) + 1, len(targets) + 1) == (512, 114)  # packed lengths hit

    original = [token for document in documents for token in vocab.encode(document)]
    assert reconstructed == original  # nothing lost, nothing reordered
    density, mean_span = noise_tokens / total_tokens, noise_tokens / noise_spans
    print(f"{len(examples)} examples, noise density {density:.4f}, mean span {mean_span:.3f}")
    assert abs(density - 0.15) <= 0.01
    assert abs(mean_span - 3.0) <= 0.1
    # Documents are concatenated 128 at a time, so only the last segment of each group
    # may fall short of 568 tokens.
    groups = -(-len(documents) // span_corruption.CONCAT_BATCH_SIZE)
    assert len(examples) - full_segments <= groups

    # Different seeds give different corruption of the same text.
    other = next(
        task.get_dataset(
            {"inputs": 512, "targets": 114}, split="train", shuffle=False, seed=8
        ).as_numpy_iterator()
    )
    assert not np.array_equal(other["inputs"], examples[0]["inputs"])


def test_short_targets_length_is_an_error(documents, spm_path):
    vocab = seqio.SentencePieceVocabulary(spm_path, extra_ids=100)
    dataset = tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant([[5, 6, 7]])})
    with pytest.raises(ValueError, match=r"targets.*= 100 is too short.*need targets of 114"):
        span_corruption.span_corruption(
            dataset, {"inputs": 512, "targets": 100}, t5_output_features(vocab)
        )
