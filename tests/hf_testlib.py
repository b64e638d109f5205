"""Hugging Face references for the tests: random-weight transformers T5 models with
t5pipe's shapes, their weights, and batches with padding and mixed lengths."""

import numpy as np
import seqio
import torch
import transformers
from testlib import tiny_config

from t5pipe.hf import t5 as hf_mapping

BATCH, ENC_LEN, DEC_LEN = 4, 13, 9
ENC_LENGTHS = [13, 7, 10, 3]  # padding and different lengths
DEC_LENGTHS = [9, 4, 6, 2]

T5_1_0 = dict(feed_forward_proj="relu", tie_word_embeddings=True)
T5_1_1 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def hf_model(config):
    """A random-weight HF model with `config`'s shapes (untied output layer when asked)."""
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**hf_mapping.t5config_to_hf(config))
    ).eval()
    if not config.tie_word_embeddings:
        # transformers >= 5 ties the output layer at construction; T5.1.1 has its own.
        hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.lm_head.weight) * 0.05)
    return hf


def hf_state(hf):
    return {k: v.detach().numpy() for k, v in hf.state_dict().items()}


def batch(vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, vocab_size, (BATCH, ENC_LEN))
    targets = rng.integers(2, vocab_size, (BATCH, DEC_LEN))
    enc_mask = np.arange(ENC_LEN)[None] < np.array(ENC_LENGTHS)[:, None]
    dec_mask = np.arange(DEC_LEN)[None] < np.array(DEC_LENGTHS)[:, None]
    return enc * enc_mask, targets * dec_mask, enc_mask, dec_mask


def relative_error(ours, ref, mask):
    ours, ref = np.asarray(ours)[mask], np.asarray(ref)[mask]
    return np.linalg.norm(ours - ref) / np.linalg.norm(ref)


def mixed_length_inputs(vocab_size, n, max_length=16, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length + 1, n)
    tokens = rng.integers(2, vocab_size, (n, max_length))
    return (tokens * (np.arange(max_length)[None] < lengths[:, None])).astype(np.int32)


def confident_t5_1_1():
    """A T5.1.1 model whose output layer has trained-like scale, so that next-token
    distributions are peaked (with HF's 0.05 test scale they are nearly uniform, and
    4-beam search then often prunes the greedy path)."""
    config = tiny_config(**T5_1_1)
    hf = hf_model(config)
    torch.manual_seed(1)
    hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.lm_head.weight))
    return config, hf, hf_mapping.params_from_hf(hf_state(hf).items(), config)


def hf_logits(hf, enc, enc_mask, dec_in) -> np.ndarray:
    """transformers' logits [batch, target, vocab] for token arrays [batch, length]."""
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc_mask.astype(np.int64)),
            decoder_input_ids=torch.tensor(dec_in),
        )
    return out.logits.numpy()


def hf_log_likelihood(hf, inputs, targets):
    """transformers' log p(target + EOS | input) per pair of byte-vocabulary texts."""
    vocabulary = seqio.ByteVocabulary()
    scores = []
    for text, target in zip(inputs, targets, strict=True):
        ids = torch.tensor([[*vocabulary.encode(text), 1]])
        labels = torch.tensor([[*vocabulary.encode(target), 1]])
        with torch.no_grad():
            logits = hf(input_ids=ids, labels=labels).logits
        log_probs = torch.log_softmax(logits.double(), -1)
        scores.append(torch.gather(log_probs, -1, labels[..., None]).sum().item())
    return np.asarray(scores)
