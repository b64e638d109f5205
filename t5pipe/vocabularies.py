"""Vocabularies (seqio objects) and their JSON description stored in checkpoints.

A vocabulary spec is a small dict, e.g.
    {"kind": "sentencepiece", "path": ".../spiece.model", "extra_ids": 100}
    {"kind": "byte"}
so that a checkpoint names the vocabulary it was trained with. Checkpoints
also embed the SentencePiece model itself (`spec["model_b64"]`) so they stay
usable where the original path is gone.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import gin
import seqio

from t5pipe.errors import UserInputError, first_line

# Where t5x's configs point; users without GCS access set T5PIPE_VOCAB or gin-bind `path`.
T5_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
MT5_SPM_PATH = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
VOCAB_ENV = "T5PIPE_VOCAB"
# gs:// reads go through this host; one short connection attempt tells whether it can be
# reached before TensorFlow's GCS client starts its own retries.
GCS_HOST = ("storage.googleapis.com", 443)
GCS_PROBE_SECONDS = 3.0

# The vocabulary of the checkpoint being evaluated or decoded with (`checkpoint_default`).
_checkpoint_vocabulary: list[seqio.SentencePieceVocabulary] = []
# What they resolve to outside `checkpoint_default`: a run's model checkpoint's own
# vocabulary (`stand_in_for_t5`), or None for T5's.
_stand_in: list[seqio.SentencePieceVocabulary | None] = [None]


def default_spm_path() -> str:
    """T5's default vocabulary file: $T5PIPE_VOCAB, then the gin binding of
    `t5_vocabulary.path`, then t5x's gs:// path."""
    return os.environ.get(VOCAB_ENV) or _bound_t5_path() or T5_SPM_PATH


def how_to_set_t5_vocabulary() -> str:
    """The ways to point t5pipe at T5's SentencePiece model, in the order they are read."""
    return (
        f"Point t5pipe at T5's spiece.model: set {VOCAB_ENV}=/path/to/spiece.model (read "
        "first), or bind --gin.t5_vocabulary.path=/path/to/spiece.model (or "
        "`t5_vocabulary.path = '...'` in a gin file), or give this host access to "
        f"{T5_SPM_PATH} (network and Google Cloud credentials)"
    )


@contextlib.contextmanager
def checkpoint_default(vocabulary: seqio.Vocabulary):
    """Within it, tasks' default T5 vocabularies resolve to `vocabulary` (a checkpoint's
    own, usually its embedded copy) when that is a SentencePiece one: a checkpoint is
    self-describing, so evaluating or decoding with it needs no vocabulary setting."""
    pinned = isinstance(vocabulary, seqio.SentencePieceVocabulary)
    if pinned:
        _checkpoint_vocabulary.append(vocabulary)
    try:
        yield
    finally:
        if pinned:
            _checkpoint_vocabulary.pop()


def stand_in_for_t5(vocabulary: seqio.SentencePieceVocabulary | None) -> None:
    """From now on (in this process) tasks' default T5 vocabularies read `vocabulary`'s
    model file and sentinel count; None restores T5's. A training run of a model with its
    own vocabulary (T5Gemma's Gemma SentencePiece, embedded in its checkpoint) so trains
    on the same tasks (`t5pipe.model_vocabulary`)."""
    _stand_in[0] = vocabulary


def _pinned() -> seqio.SentencePieceVocabulary | None:
    return _checkpoint_vocabulary[-1] if _checkpoint_vocabulary else _stand_in[0]


def is_t5_default(vocabulary: seqio.Vocabulary) -> bool:
    """Whether `vocabulary` is T5's default (`t5_vocabulary()` given no path)."""
    return isinstance(vocabulary, DeferredSentencePieceVocabulary) and not vocabulary.__dict__.get(
        "_explicit_path"
    )


@functools.lru_cache(maxsize=1)
def gcs_reachable() -> bool:
    """One TCP connection attempt to GCS (a few seconds at most, once per process). Behind
    an HTTPS proxy the answer is left to TensorFlow's own client."""
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True
    try:
        socket.create_connection(GCS_HOST, timeout=GCS_PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def require_reachable(path: str, fix: str) -> None:
    """A gs:// file whose host cannot be reached: one message now, instead of TensorFlow's
    retries and traceback later."""
    if str(path).startswith("gs://") and not gcs_reachable():
        host = GCS_HOST[0]
        raise UserInputError(
            f"the vocabulary file {path} cannot be read: {host} cannot be reached from this "
            f"host (no network). {fix}."
        )


@gin.configurable
def t5_vocabulary(path: str | None = None, extra_ids: int = 100) -> seqio.SentencePieceVocabulary:
    """T5's English SentencePiece vocabulary (32000 pieces + 100 sentinels = 32100 ids).

    Without `path` the file is chosen on first use, not now: task modules build
    their output features at import time, before gin files and `T5PIPE_VOCAB`
    are necessarily in place.
    """
    if path:
        return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
    return DeferredSentencePieceVocabulary(extra_ids=extra_ids)


class DeferredSentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """A SentencePiece vocabulary whose model file is resolved when read: the vocabulary
    of the checkpoint in use (`checkpoint_default`), else `default_spm_path()`
    ($T5PIPE_VOCAB, the gin binding `t5_vocabulary.path`, t5x's gs:// default).

    It compares equal to (and pickles as) a plain SentencePieceVocabulary over the
    resolved file.
    """

    def __init__(self, extra_ids: int = 100):
        super().__init__(None, extra_ids=extra_ids)

    # seqio stores the path in `_sentencepiece_model_file`; resolve it on read.
    @property
    def _sentencepiece_model_file(self) -> str:
        if self.__dict__.get("_explicit_path"):
            return self.__dict__["_explicit_path"]
        if _pinned() is not None:
            return _pinned().sentencepiece_model_file
        return default_spm_path()

    @_sentencepiece_model_file.setter
    def _sentencepiece_model_file(self, value: str | None) -> None:
        self.__dict__["_explicit_path"] = value

    # The sentinel count goes with the file: a checkpoint's own vocabulary brings its own.
    @property
    def _extra_ids(self) -> int:
        if not self.__dict__.get("_explicit_path") and _pinned() is not None:
            return _pinned().extra_ids
        return self.__dict__.get("_own_extra_ids", 0)

    @_extra_ids.setter
    def _extra_ids(self, value: int) -> None:
        self.__dict__["_own_extra_ids"] = value

    def _model_context(self):
        # seqio keeps the loaded model; a new resolution (another checkpoint, a changed
        # setting) loads the file it now names.
        path = self._sentencepiece_model_file
        if self.__dict__.get("_loaded_from") != (path, self._extra_ids):
            require_reachable(path, how_to_set_t5_vocabulary())
            self._model = None
            self.__dict__["_loaded_from"] = (path, self._extra_ids)
        return super()._model_context()

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_explicit_path", None)
        state.pop("_loaded_from", None)
        state.pop("_own_extra_ids", None)
        state["_sentencepiece_model_file"] = self._sentencepiece_model_file
        state["_extra_ids"] = self._extra_ids
        return state

    def __setstate__(self, state):
        state = dict(state)
        state["_explicit_path"] = state.pop("_sentencepiece_model_file", None)
        state["_own_extra_ids"] = state.pop("_extra_ids", 0)
        super().__setstate__(state)


def _bound_t5_path() -> str | None:
    """The gin binding of `t5_vocabulary.path`, macros (`%VOCAB_PATH`) resolved."""
    try:
        value = gin.query_parameter("t5_vocabulary.path")
    except (ValueError, KeyError):
        return None
    if isinstance(value, gin.config.ConfigurableReference):
        value = value.scoped_configurable_fn()  # a macro reference: its value
    return value


@gin.configurable
def mt5_vocabulary(path: str = MT5_SPM_PATH, extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
    """mT5's 250k multilingual vocabulary (its model file already holds 100 sentinels)."""
    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


@gin.configurable
def byt5_vocabulary(extra_ids: int = 0) -> seqio.ByteVocabulary:
    """ByT5: UTF-8 bytes offset by 3 special ids."""
    return seqio.ByteVocabulary(extra_ids=extra_ids)


def check_vocabulary(vocabulary: seqio.Vocabulary, where: str, fix: str | None = None) -> None:
    """A SentencePiece vocabulary's model file exists and loads, else an error naming
    the file and how to point t5pipe at the right one (`fix`, else the gin bindings)."""
    if not isinstance(vocabulary, seqio.SentencePieceVocabulary):
        return
    path = vocabulary.sentencepiece_model_file
    if fix is None and isinstance(vocabulary, DeferredSentencePieceVocabulary):
        fix = how_to_set_t5_vocabulary()
    elif fix is None:
        fix = (
            "Fix the path given to the vocabulary (its gin binding, e.g. "
            "t5_vocabulary.path or mt5_vocabulary.path)"
        )
    try:
        require_reachable(path, fix)
        vocabulary.tokenizer  # noqa: B018 - loading the model is the check
    except UserInputError as error:
        raise UserInputError(f"{where}: {error.message}") from None
    except Exception as error:  # noqa: BLE001 - any failure to load means unusable
        local = "://" not in str(path)
        problem = (
            "does not exist"
            if local and not Path(path).exists()
            else f"cannot be read as a SentencePiece model ({first_line(error)})"
        )
        raise UserInputError(f"{where}: the vocabulary file {path} {problem}. {fix}.") from None


def check_fits_model(vocabulary: seqio.Vocabulary, vocab_size: int) -> None:
    """Every token id of `vocabulary` indexes the model's embedding of `vocab_size` rows."""
    if vocabulary.vocab_size > vocab_size:
        raise UserInputError(
            f"the vocabulary has {vocabulary.vocab_size} ids but T5Config.vocab_size is "
            f"{vocab_size}: tokens would index past the embedding. Use the model gin "
            "file that matches the task's vocabulary, or raise T5Config.vocab_size."
        )


def vocabulary_to_spec(vocab: seqio.Vocabulary, embed_model: bool = True) -> dict[str, Any]:
    if isinstance(vocab, seqio.ByteVocabulary):
        return {"kind": "byte", "extra_ids": vocab.extra_ids}
    if isinstance(vocab, seqio.SentencePieceVocabulary):
        spec = {
            "kind": "sentencepiece",
            "path": vocab.sentencepiece_model_file,
            "extra_ids": vocab.extra_ids,
        }
        if embed_model:
            # The file as written: `vocab.sp_model` already holds the extra ids, and
            # loading that with `extra_ids` again fails ("already defined").
            import tensorflow as tf  # seqio reads model files (local or gs://) this way

            with tf.io.gfile.GFile(vocab.sentencepiece_model_file, "rb") as f:
                spec["model_b64"] = base64.b64encode(f.read()).decode("ascii")
        return spec
    raise TypeError(f"cannot describe vocabulary of type {type(vocab).__name__}")


def vocabulary_from_spec(spec: dict[str, Any]) -> seqio.Vocabulary:
    kind = spec.get("kind")
    if kind == "byte":
        return seqio.ByteVocabulary(extra_ids=spec.get("extra_ids", 0))
    if kind == "sentencepiece":
        path = spec["path"]
        embedded = spec.get("model_b64")
        if embedded and not _exists(path):
            path = _materialise(base64.b64decode(embedded))
        return seqio.SentencePieceVocabulary(path, extra_ids=spec.get("extra_ids", 0))
    raise ValueError(f"unknown vocabulary kind {kind!r} in {spec}")


def _exists(path: str) -> bool:
    if "://" in path:
        return False  # prefer the embedded copy to a network round trip
    return Path(path).is_file()


def _materialise(model: bytes) -> str:
    """Writes an embedded SentencePiece model to a content-addressed cache file."""
    cache = Path(os.environ.get("T5PIPE_CACHE", Path.home() / ".cache" / "t5pipe")) / "vocab"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{hashlib.sha256(model).hexdigest()[:16]}.model"
    if not target.exists():
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(model)
        tmp.replace(target)
    return str(target)
