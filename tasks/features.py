"""The output features every T5 task shares: "inputs" and "targets" in the T5 vocabulary."""

from __future__ import annotations

import seqio

from t5pipe.vocabularies import t5_vocabulary


def t5_output_features(vocabulary: seqio.Vocabulary | None = None) -> dict[str, seqio.Feature]:
    """{"inputs", "targets"}, both ending in EOS; "inputs" may be absent (language modelling).

    vocabulary: default T5's SentencePiece vocabulary, resolved on first use (gin
    `t5_vocabulary.path`, else $T5PIPE_VOCAB, else t5x's GCS path).
    """
    vocabulary = vocabulary or t5_vocabulary()
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }


def text_to_text_preprocessors(*formatting) -> list:
    """T5's standard tail after text formatting: tokenize, cache point, EOS after trimming."""
    return [
        *formatting,
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        seqio.preprocessors.append_eos_after_trim,
    ]
