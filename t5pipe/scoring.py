"""Teacher-forced scoring: the log-likelihood of given targets, and rank classification.

Rank classification scores every candidate label for every input and picks the
one the model finds most likely. It needs no decoding and works for any label
set — including labels the model was never fine-tuned on (zero-shot).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from t5pipe.model import shift_right
from t5pipe.model_config import T5Config
from t5pipe.models import model_for
from t5pipe.partitioning import activation_rules


def target_log_likelihood(
    params, config: T5Config, encoder_tokens: jax.Array, target_tokens: jax.Array
) -> jax.Array:
    """Per-example sum of log p(target token | inputs, previous targets).

    encoder_tokens [batch, enc_length], target_tokens [batch, dec_length], both 0-padded
    (the targets normally end in EOS, which is scored) -> float32 [batch]. Traceable.
    """
    decoder_inputs = shift_right(target_tokens, config.decoder_start_token_id)
    logits = model_for(config).apply({"params": params}, encoder_tokens, decoder_inputs)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_log_probs = jnp.take_along_axis(log_probs, target_tokens[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(target_tokens != config.pad_token_id, token_log_probs, 0.0), axis=1)


@functools.lru_cache(maxsize=16)
def _jitted_log_likelihood(config: T5Config):
    return jax.jit(functools.partial(target_log_likelihood, config=config))


def make_score_fn(config: T5Config, mesh=None, rules=None):
    """A compiled `fn(params, encoder_tokens, target_tokens) -> [batch]` log-likelihoods."""
    jitted = _jitted_log_likelihood(config)

    def run(params, encoder_tokens, target_tokens):
        if mesh is None:
            return jitted(params, encoder_tokens=encoder_tokens, target_tokens=target_tokens)
        with activation_rules(mesh, rules):
            return jitted(params, encoder_tokens=encoder_tokens, target_tokens=target_tokens)

    return run


def encode_texts(
    vocabulary: seqio.Vocabulary, texts: Sequence[str], max_length: int | None = None
) -> list[list[int]]:
    """Token ids of each text followed by EOS, truncated to `max_length` (EOS kept last)."""
    encoded = []
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"expected text, got {type(text).__name__}: {text!r}")
        ids = [*vocabulary.encode(text), vocabulary.eos_id]
        if max_length is not None and len(ids) > max_length:
            ids = [*ids[: max_length - 1], vocabulary.eos_id]
        encoded.append(ids)
    return encoded


def pad_batch(rows: Sequence[Sequence[int]], length: int, batch: int | None = None) -> np.ndarray:
    """int32 [batch or len(rows), length], 0-padded (extra rows all padding)."""
    out = np.zeros((batch or len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row[:length]
    return out


def bucket_length(length: int, minimum: int = 8) -> int:
    """The next power of two >= length: few distinct shapes, so few compilations."""
    return max(minimum, 1 << max(0, int(length) - 1).bit_length())


def score_texts(
    params,
    config: T5Config,
    vocabulary: seqio.Vocabulary,
    inputs: Sequence[str],
    targets: Sequence[str],
    *,
    batch_size: int = 32,
    max_input_length: int | None = None,
    max_target_length: int | None = None,
    mesh=None,
    rules=None,
) -> np.ndarray:
    """Log-likelihood of each target text (plus EOS) given its input text -> float32 [n]."""
    if len(inputs) != len(targets):
        raise ValueError(f"score: {len(inputs)} inputs but {len(targets)} targets")
    score_fn = make_score_fn(config, mesh, rules)
    enc = encode_texts(vocabulary, inputs, max_input_length)
    dec = encode_texts(vocabulary, targets, max_target_length)
    scores = []
    for start in range(0, len(enc), batch_size):
        enc_rows, dec_rows = enc[start : start + batch_size], dec[start : start + batch_size]
        enc_len = bucket_length(max(map(len, enc_rows)))
        dec_len = bucket_length(max(map(len, dec_rows)))
        result = score_fn(
            params,
            jnp.asarray(pad_batch(enc_rows, enc_len, batch_size)),
            jnp.asarray(pad_batch(dec_rows, dec_len, batch_size)),
        )
        scores.append(np.asarray(result)[: len(enc_rows)])
    return np.concatenate(scores) if scores else np.zeros((0,), np.float32)


def rank_classification(
    params,
    config: T5Config,
    vocabulary: seqio.Vocabulary,
    inputs: Sequence[str],
    labels: Sequence[str],
    **score_kwargs,
) -> tuple[list[str], np.ndarray]:
    """Picks, for each input, the label text with the highest log-likelihood.

    Returns (chosen label per input, scores float32 [num_inputs, num_labels]).
    """
    labels = list(labels)
    if len(labels) < 2:
        raise ValueError(f"rank classification needs at least two labels, got {labels}")
    pairs_inputs = [text for text in inputs for _ in labels]
    pairs_labels = labels * len(inputs)
    scores = score_texts(params, config, vocabulary, pairs_inputs, pairs_labels, **score_kwargs)
    scores = scores.reshape(len(inputs), len(labels))
    return [labels[i] for i in np.argmax(scores, axis=1)], scores
