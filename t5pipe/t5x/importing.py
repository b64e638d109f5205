"""t5x checkpoints <-> self-describing t5pipe checkpoints (`t5pipe convert --from_t5x`,
`--to_t5x`).

    import_t5x(T5X_DIR, CKPT, gin_files=[MODEL.gin], vocab=...)   # writes CKPT
    export_t5x(CKPT, T5X_DIR)                                      # T5X format

The model config comes from the gin files named, else from the run's `config.gin`
(t5x writes it into MODEL_DIR, the parent of `checkpoint_<step>`), else from the
checkpoint's shapes; the vocabulary from `vocab`, else from gin's VOCABULARY. The
checkpoint's step travels with the parameters, so INITIAL_CHECKPOINT_PATH=CKPT starts
at it, as t5x would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import seqio

from t5pipe import checkpoint_format, gin_setup, gin_state
from t5pipe.errors import UserInputError
from t5pipe.model_config import T5Config
from t5pipe.t5x import convert
from t5pipe.t5x.checkpoints import T5xCheckpoint, open_checkpoint

RUN_CONFIG = "config.gin"


def run_config_file(checkpoint: T5xCheckpoint) -> Path | None:
    """The t5x run's config.gin beside the checkpoint folder, when it has one (local)."""
    candidate = Path(os.fspath(checkpoint.directory)).parent / RUN_CONFIG
    return (
        candidate if "://" not in os.fspath(checkpoint.directory) and candidate.is_file() else None
    )


def model_from_gin(files: list[str]) -> tuple[T5Config, seqio.Vocabulary | None]:
    """(MODEL, VOCABULARY or None) as the gin files define them; the live gin config
    (a command's own) is as it was afterwards."""
    with gin_state.isolated():
        gin_setup.parse(files, warn_unused=False)
        return live_model_and_vocabulary()


def live_model_and_vocabulary() -> tuple[T5Config, seqio.Vocabulary | None]:
    """(MODEL, VOCABULARY or None) of the live gin config."""
    import gin

    config = gin.query_parameter("MODEL/gin.macro.value").scoped_configurable_fn()
    try:
        vocabulary = gin.query_parameter("VOCABULARY/gin.macro.value")
    except ValueError:
        return config, None
    if isinstance(vocabulary, gin.config.ConfigurableReference):
        vocabulary = vocabulary.scoped_configurable_fn()
    return config, vocabulary


def _vocabulary(vocab: str | None, from_gin: seqio.Vocabulary | None, source: str):
    from t5pipe.vocabularies import byt5_vocabulary

    if vocab == "byte":
        return byt5_vocabulary()
    if vocab:
        if not Path(vocab).is_file():
            raise UserInputError(f"--vocab {vocab}: not 'byte' and no such SentencePiece file")
        return seqio.SentencePieceVocabulary(vocab)
    if from_gin is None:
        raise UserInputError(
            f"{source} names no vocabulary (VOCABULARY); pass --vocab SPM_FILE (or --vocab "
            "byte), or --gin_file with the model gin file that sets VOCABULARY"
        )
    return from_gin


def import_t5x(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    gin_files: list[str] | None = None,
    vocab: str | None = None,
    scan_layers: bool = False,
    overwrite: bool = False,
) -> Path:
    """Writes the t5x checkpoint at `path` as a t5pipe checkpoint at `out` (parameters and
    step); returns `out`."""
    from t5pipe.hf.convert import _check_checkpoint_target, _numpy_saved_without_copies
    from t5pipe.vocabularies import check_fits_model

    checkpoint = open_checkpoint(path)
    out = Path(os.path.abspath(os.fspath(out)))
    files = list(gin_files or [])
    run_config = run_config_file(checkpoint) if not files else None
    if run_config is not None:
        files = [str(run_config)]
    if files:
        config, gin_vocabulary = model_from_gin(files)
        source = ", ".join(files)
    else:
        config, gin_vocabulary = convert.t5config_from_t5x(checkpoint), None
        source = f"{checkpoint.directory} (no config.gin beside it, no --gin_file)"
    config = config.replace(scan_layers=scan_layers or config.scan_layers)
    vocabulary = _vocabulary(vocab, gin_vocabulary, source)
    check_fits_model(vocabulary, config.vocab_size)
    _check_checkpoint_target(out, overwrite)
    params, step = convert.read_t5x_params(checkpoint, config)
    state: dict[str, Any] = {"params": params, "step": np.asarray(step or 0, np.int32)}
    with _numpy_saved_without_copies():
        if out.exists() and overwrite:
            import shutil

            shutil.rmtree(out)
        checkpoint_format.save_checkpoint(
            out, state, config, vocabulary, source=f"t5x:{checkpoint.directory}"
        )
    return out


def export_t5x(checkpoint: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False):
    """Writes the t5pipe checkpoint's parameters and step in the T5X format at `out`."""
    import jax

    path = checkpoint_format.require_checkpoint(checkpoint, "--checkpoint")
    config = checkpoint_format.load_model_config(path)
    params = jax.tree.map(np.asarray, checkpoint_format.load_params(path))
    step = checkpoint_format.stored_step(path) or 0
    return convert.write_t5x_checkpoint(out, params, config, step, overwrite=overwrite)
