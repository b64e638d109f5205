"""Hugging Face tokenizer files <-> seqio vocabularies, for import and export.

Import: DIR/spiece.model, or Gemma's DIR/tokenizer.model (extra ids from
tokenizer_config.json, else 100 when they fit the embedding: T5 and Flan-T5 yes, mT5
no) or ByT5's byte vocabulary (tokenizer_config names ByT5Tokenizer, or no tokenizer
at all and a byte-sized embedding); --vocab /
--extra_ids override the guess. Export: spiece.model + tokenizer_config.json +
special_tokens_map.json, or a ByT5Tokenizer config for the byte vocabulary, which
transformers' AutoTokenizer reads; T5Gemma and T5Gemma 2 get tokenizer.model and a
GemmaTokenizer config (pad 0, eos 1, bos 2) instead.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from t5pipe.hf.tensor_io import ConversionError

SPM_FILE = "spiece.model"
GEMMA_SPM_FILE = "tokenizer.model"
GEMMA_FAMILIES = ("t5gemma", "t5gemma2")  # Gemma's SentencePiece and special tokens
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# ByT5: 3 special ids, then the 256 byte values; any further rows are extra ids.
BYTE_VOCAB_BASE = 3 + 256


def say(message: str) -> None:
    import sys

    print(f"[t5pipe convert] {message}", file=sys.stderr, flush=True)


def detect_vocabulary(hf_dir: Path, config, vocab: str | None = None, extra_ids: int | None = None):
    """The seqio vocabulary of a Hugging Face folder (see the module docstring)."""
    import seqio

    from t5pipe.vocabularies import byt5_vocabulary

    tokenizer_config = {}
    if (hf_dir / TOKENIZER_CONFIG).is_file():
        tokenizer_config = json.loads((hf_dir / TOKENIZER_CONFIG).read_text())
    tokenizer_class = str(tokenizer_config.get("tokenizer_class") or "")

    if vocab == "byte" or (vocab is None and tokenizer_class.startswith("ByT5")):
        return byt5_vocabulary(extra_ids=extra_ids or 0)
    spm_path = Path(vocab) if vocab else hf_dir / SPM_FILE
    if not vocab and not spm_path.is_file() and (hf_dir / GEMMA_SPM_FILE).is_file():
        spm_path = hf_dir / GEMMA_SPM_FILE
    if vocab and not spm_path.is_file():
        raise ConversionError(f"--vocab {vocab}: not 'byte' and no such SentencePiece model file")
    if not spm_path.is_file():
        has_tokenizer = tokenizer_config or (hf_dir / "tokenizer.json").is_file()
        if not has_tokenizer and BYTE_VOCAB_BASE <= config.vocab_size <= BYTE_VOCAB_BASE + 125:
            say(f"no tokenizer in {hf_dir} and vocab_size {config.vocab_size}: ByT5 bytes")
            return byt5_vocabulary(extra_ids=extra_ids or 0)
        raise ConversionError(
            f"{hf_dir} has no {SPM_FILE} (tokenizer class {tokenizer_class or 'unknown'}); "
            "pass --vocab PATH/TO/spiece.model, or --vocab byte for ByT5"
        )
    if extra_ids is None:
        extra_ids = tokenizer_config.get("extra_ids")
    if extra_ids is None:
        # T5's 32000 pieces + 100 sentinels fit its 32128 rows; mT5's model file
        # already holds its sentinels (250100 pieces in 250112 rows).
        pieces = seqio.SentencePieceVocabulary(str(spm_path)).vocab_size
        extra_ids = 100 if pieces + 100 <= config.vocab_size else 0
    vocabulary = seqio.SentencePieceVocabulary(str(spm_path.absolute()), extra_ids=extra_ids)
    if vocabulary.vocab_size > config.vocab_size:
        raise ConversionError(
            f"{spm_path}: the vocabulary has {vocabulary.vocab_size} ids ({extra_ids} extra ids) "
            f"but the model's embedding has only {config.vocab_size} rows (config.json "
            "vocab_size); pass --extra_ids or --vocab"
        )
    return vocabulary


def tokenizer_files(vocabulary_spec: dict[str, Any], config) -> dict[str, bytes]:
    """File name -> contents of the tokenizer files transformers' AutoTokenizer reads."""
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    kind = vocabulary_spec.get("kind")
    if kind == "sentencepiece" and getattr(config, "family", "t5") in GEMMA_FAMILIES:
        special = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>",
                   "pad_token": "<pad>"}  # fmt: skip
        tokenizer_config = {"tokenizer_class": "GemmaTokenizer", **special}
        files = {GEMMA_SPM_FILE: _spm_model(vocabulary_spec)}
    elif kind == "sentencepiece":
        model = _spm_model(vocabulary_spec)
        extra_ids = int(vocabulary_spec.get("extra_ids", 0))
        special["additional_special_tokens"] = [f"<extra_id_{i}>" for i in range(extra_ids)]
        tokenizer_config = {"tokenizer_class": "T5Tokenizer", "extra_ids": extra_ids, **special}
        files = {SPM_FILE: model}
    elif kind == "byte":
        # HF's ByT5Tokenizer counts every row past the bytes as an extra id.
        extra_ids = max(config.vocab_size - BYTE_VOCAB_BASE, 0)
        tokenizer_config = {"tokenizer_class": "ByT5Tokenizer", "extra_ids": extra_ids, **special}
        files = {}
    else:
        raise ConversionError(f"checkpoint vocabulary {vocabulary_spec} cannot be exported")
    files[TOKENIZER_CONFIG] = _json_bytes(tokenizer_config)
    files[SPECIAL_TOKENS_MAP] = _json_bytes(special)
    return files


def _spm_model(vocabulary_spec: dict[str, Any]) -> bytes:
    """The SentencePiece model file a checkpoint's vocabulary spec embeds (or names)."""
    if vocabulary_spec.get("model_b64"):
        return base64.b64decode(vocabulary_spec["model_b64"])
    from t5pipe.vocabularies import vocabulary_from_spec

    return vocabulary_from_spec(vocabulary_spec).sp_model


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()
