"""Scoring against Hugging Face's teacher-forced log-likelihood (independent reference)."""

import numpy as np
import pytest
import seqio
import torch
from hf_testlib import T5_1_0, T5_1_1, hf_model, hf_state
from testlib import tiny_config

from t5pipe.hf import t5 as hf_mapping
from t5pipe.scoring import make_score_fn, rank_classification, score_texts


def hf_log_likelihood(hf, enc, targets):
    """Sum over target tokens of log p(token), HF computing the logits (labels -100 = padding)."""
    labels = torch.tensor(np.where(targets == 0, -100, targets), dtype=torch.long)
    with torch.no_grad():
        logits = hf(
            input_ids=torch.tensor(enc, dtype=torch.long),
            attention_mask=torch.tensor((enc != 0).astype(np.int64)),
            labels=labels,
        ).logits
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    picked = torch.gather(log_probs, -1, labels.clamp(min=0)[..., None])[..., 0]
    return (picked * (labels != -100)).sum(-1).numpy()


@pytest.mark.parametrize("family", [T5_1_0, T5_1_1], ids=["t5_1_0", "t5_1_1"])
def test_scores_equal_transformers_log_likelihood(family):
    config = tiny_config(**family)
    hf = hf_model(config)
    params = hf_mapping.params_from_hf(hf_state(hf).items(), config)
    rng = np.random.default_rng(0)
    enc_lengths, dec_lengths = rng.integers(1, 14, 12), rng.integers(1, 10, 12)
    enc = rng.integers(2, config.vocab_size, (12, 14)) * (np.arange(14) < enc_lengths[:, None])
    targets = rng.integers(2, config.vocab_size, (12, 10)) * (np.arange(10) < dec_lengths[:, None])
    ours = make_score_fn(config)(params, enc.astype(np.int32), targets.astype(np.int32))
    np.testing.assert_allclose(np.asarray(ours), hf_log_likelihood(hf, enc, targets), atol=1e-4)


def test_text_scores_and_rank_classification(spm_path):
    vocabulary = seqio.SentencePieceVocabulary(spm_path)
    config = tiny_config(**T5_1_1, vocab_size=32128)
    hf = hf_model(config)
    params = hf_mapping.params_from_hf(hf_state(hf).items(), config)
    inputs = ["rte sentence1: A cat sat. sentence2: An animal sat.", "cola sentence: Me go home.",
              "translate English to German: Hello"]  # fmt: skip
    labels = ["entailment", "not_entailment", "acceptable"]  # a new, made-up label set

    chosen, scores = rank_classification(params, config, vocabulary, inputs, labels, batch_size=4)
    assert scores.shape == (3, 3)
    for i, text in enumerate(inputs):
        enc = np.asarray([[*vocabulary.encode(text), 1]])
        for j, label in enumerate(labels):
            target = np.asarray([[*vocabulary.encode(label), 1]])
            np.testing.assert_allclose(
                scores[i, j], hf_log_likelihood(hf, enc, target)[0], atol=1e-4
            )
        assert chosen[i] == labels[int(np.argmax(scores[i]))]
    # Batching and padding to buckets do not change a score.
    alone = score_texts(params, config, vocabulary, inputs[:1], labels[1:2], batch_size=1)
    np.testing.assert_allclose(alone[0], scores[0, 1], atol=1e-5)


def test_bad_input_is_reported():
    vocabulary = seqio.ByteVocabulary()
    config = tiny_config(vocab_size=384)
    with pytest.raises(ValueError, match="2 inputs but 1 targets"):
        score_texts({}, config, vocabulary, ["a", "b"], ["x"])
    with pytest.raises(ValueError, match="at least two labels"):
        rank_classification({}, config, vocabulary, ["a"], ["yes"])
