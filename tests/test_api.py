"""The notebook API: load once, predict / score / classify; checked against Hugging Face."""

import numpy as np
import pytest
from hf_testlib import hf_log_likelihood
from testlib import INPUTS, hf_greedy_texts

from t5pipe import api


def test_load_predict_score_classify(byte_checkpoint):
    path, hf = byte_checkpoint
    model = api.load(path, batch_size=3)

    predictions = model.predict(INPUTS, max_decode_length=10)
    assert predictions == hf_greedy_texts(hf, INPUTS, 10)
    beams = model.predict(
        INPUTS[:2], method="beam", num_beams=3, num_decodes=3, max_decode_length=6
    )
    assert [len(b) for b in beams] == [3, 3]
    scored = model.predict(INPUTS[:2], max_decode_length=6, with_scores=True)
    assert set(scored[0][0]) == {"text", "score", "log_prob"}

    targets = ["Hallo.", "nothing", "a summary", "x"]
    np.testing.assert_allclose(
        model.score(INPUTS, targets), hf_log_likelihood(hf, INPUTS, targets), atol=1e-4
    )

    labels = ["yes", "no", "maybe"]
    chosen = model.classify(INPUTS, labels)
    for text, label in zip(INPUTS, chosen, strict=True):
        expected = hf_log_likelihood(hf, [text] * 3, labels)
        assert label == labels[int(np.argmax(expected))]


def test_one_string_is_a_clear_error(byte_checkpoint):
    model = api.load(byte_checkpoint[0])
    with pytest.raises(TypeError, match="got one string"):
        model.predict("hello")
