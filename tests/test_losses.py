"""Cross-entropy, z-loss, label smoothing and t5x's loss normalisation, against numpy."""

import numpy as np
import optax
import pytest

from t5pipe.losses import cross_entropy_with_z_loss, normalizing_weights


def _reference_token_losses(logits, targets, z_loss):
    """Per-token cross-entropy and z-loss in float64 numpy."""
    logits = np.asarray(logits, np.float64)
    log_z = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return log_z - picked, z_loss * log_z**2


@pytest.fixture
def example():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, (3, 5)).astype(np.int32)
    weights = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.float32)
    return logits, targets, weights


def test_cross_entropy_and_z_loss_match_numpy(example):
    logits, targets, weights = example
    total, z_total, correct = cross_entropy_with_z_loss(logits, targets, weights, z_loss=1e-4)
    ce, z = _reference_token_losses(logits, targets, 1e-4)
    np.testing.assert_allclose(total, np.sum((ce + z) * weights), rtol=1e-5)
    np.testing.assert_allclose(z_total, np.sum(z * weights), rtol=1e-5)
    expected_correct = np.sum((logits.argmax(-1) == targets) * weights)
    assert float(correct) == expected_correct


def test_label_smoothing_matches_optax(example):
    logits, targets, weights = example
    smoothing = 0.1
    total, _, _ = cross_entropy_with_z_loss(
        logits, targets, weights, z_loss=0.0, label_smoothing=smoothing
    )
    vocab = logits.shape[-1]
    # t5x spreads the smoothing mass over the other vocab-1 tokens, then removes the
    # entropy of that target distribution (so a perfect prediction scores 0).
    low = smoothing / (vocab - 1)
    soft = np.full(logits.shape, low, np.float64)
    np.put_along_axis(soft, targets[..., None], 1 - smoothing, -1)
    reference = optax.softmax_cross_entropy(logits.astype(np.float64), soft)
    entropy = -np.sum(soft * np.log(soft), -1)
    np.testing.assert_allclose(total, np.sum((reference - entropy) * weights), rtol=1e-5)


def test_normalizing_factors():
    weights = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    w, factor = normalizing_weights(weights, None, None)
    assert float(factor) == 1.0 and np.array_equal(w, weights)
    _, factor = normalizing_weights(weights, None, "NUM_REAL_TARGET_TOKENS")
    assert float(factor) == 5.0
    _, factor = normalizing_weights(weights, None, 233472)
    assert float(factor) == 233472.0
    with pytest.raises(ValueError, match="LOSS_NORMALIZING_FACTOR='TOKENS'"):
        normalizing_weights(weights, None, "TOKENS")


def test_average_per_sequence_weighs_packed_sequences_equally():
    # Row 0 packs a 3-token and a 1-token sequence; row 1 holds one 2-token sequence.
    weights = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], np.float32)
    segments = np.array([[1, 1, 1, 2, 0], [1, 1, 0, 0, 0]], np.int32)
    token_weights, factor = normalizing_weights(weights, segments, "AVERAGE_PER_SEQUENCE")
    np.testing.assert_allclose(
        token_weights, [[1 / 3, 1 / 3, 1 / 3, 1, 0], [0.5, 0.5, 0, 0, 0]], rtol=1e-6
    )
    assert float(factor) == pytest.approx(3.0)
    # The normalised loss is then the mean over sequences of each one's mean token loss.
    token_loss = np.array([[1.0, 2.0, 3.0, 4.0, 9.0], [5.0, 7.0, 9.0, 9.0, 9.0]])
    loss = np.sum(token_loss * token_weights) / factor
    assert loss == pytest.approx(np.mean([2.0, 4.0, 6.0]))
