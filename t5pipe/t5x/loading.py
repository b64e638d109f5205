"""A t5x checkpoint used in place: what INITIAL_CHECKPOINT_PATH, `t5pipe eval/infer
--checkpoint` and `t5pipe.api.load` do with one (nothing is converted or written).

    config, vocabulary = model_and_vocabulary(checkpoint, gin_files, role)
    fit = check_fits(checkpoint, abstract_params, config, role)
    params = load_params(checkpoint, config, target)     # placed like `target`

A training run brings its own model config (the checkpoint must fit it); eval, infer
and the API take it, and the vocabulary, from gin: the model gin files named
(`api.load(..., gin_file=)`), else the command's own gin when it defines MODEL
(`--gin_file MODEL.gin`), else the t5x run's config.gin beside the checkpoint folder
(`t5pipe.t5x.importing.run_config_file`). t5x checkpoints carry no checksums: they
load unverified.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import seqio

from t5pipe import checkpoint_format, gin_state, pytrees
from t5pipe.errors import UserInputError
from t5pipe.model_config import T5Config
from t5pipe.t5x import convert, importing, mapping
from t5pipe.t5x.checkpoints import T5xCheckpoint


def model_and_vocabulary(
    checkpoint: T5xCheckpoint, gin_files: Sequence[str] = (), role: str = "--checkpoint"
) -> tuple[T5Config, seqio.Vocabulary]:
    """The model config and vocabulary of a t5x checkpoint, from gin (module docstring)."""
    from t5pipe.vocabularies import check_fits_model

    run_config = importing.run_config_file(checkpoint)
    if gin_files:
        config, vocabulary = importing.model_from_gin(list(gin_files))
        source = ", ".join(gin_files)
    elif gin_state.defined_by_user("MODEL"):
        config, vocabulary = importing.live_model_and_vocabulary()
        source = "the command's gin files (MODEL)"
    elif run_config is not None:
        config, vocabulary = importing.model_from_gin([str(run_config)])
        source = str(run_config)
    else:
        parent = checkpoint.directory.parent
        raise UserInputError(
            f"{role}: {checkpoint.directory} is a t5x checkpoint ({checkpoint.format} format) "
            f"and nothing says which model it holds: there is no {importing.RUN_CONFIG} "
            f"beside it (t5x writes one into the run's MODEL_DIR, here {parent}). Name the "
            "model gin file the run used, which also sets VOCABULARY: --gin_file MODEL.gin "
            "(t5x's own, e.g. t5x/examples/t5/t5_1_1/base.gin, or t5pipe's "
            "models/t5_1_1/base.gin). Or convert it once: `t5pipe convert --from_t5x "
            f"{checkpoint.directory} --out CKPT --gin_file MODEL.gin --vocab SPM_FILE`."
        )
    if vocabulary is None:
        raise UserInputError(
            f"{role}: {source} defines the model of the t5x checkpoint {checkpoint.directory} "
            "but no VOCABULARY; add a model gin file that sets it (--gin_file), or bind it, "
            "e.g. --gin.VOCABULARY=@seqio.SentencePieceVocabulary() "
            "--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file=SPM_FILE"
        )
    check_fits_model(vocabulary, config.vocab_size)
    return config, vocabulary


def stored_shapes(checkpoint: T5xCheckpoint, config: T5Config) -> dict[str, tuple[int, ...]]:
    """{t5pipe parameter name: shape} of the tree `load_params` builds for `config` (the
    scanned layout when `config.scan_layers`); a checkpoint whose shapes do not fit
    `config` is an error listing each difference."""
    layout = convert.checked_layout(checkpoint, config)
    shapes = {}
    for entry in mapping.t5x_arrays(config, layout):
        for part in entry.parts:
            stack, *rest = part.path
            if config.scan_layers and rest and rest[0].startswith("layers_"):
                name = "/".join((stack, pytrees.SCAN_AXIS, *rest[1:]))
                shapes[name] = (mapping.stack_size(config, stack), *part.shape)
            else:
                shapes["/".join(part.path)] = tuple(part.shape)
    return shapes


def check_fits(
    checkpoint: T5xCheckpoint, abstract_params: Any, config: T5Config, role: str, **allowed
) -> checkpoint_format.Fit:
    """`checkpoint_format.check_fits` for a t5x checkpoint."""
    what = f"the t5x checkpoint {checkpoint.directory}"
    try:
        stored = stored_shapes(checkpoint, config)
    except UserInputError as error:
        raise UserInputError(f"{role}: {error.message}") from None
    return checkpoint_format.fit_of(stored, abstract_params, role, what, **allowed)


def load_params(checkpoint: T5xCheckpoint, config: T5Config, target: Any) -> Any:
    """The parameters `target` names (arrays or ShapeDtypeStructs, with shardings or
    not), read from the t5x checkpoint, cast to each leaf's dtype and placed like it.

    Each host array is dropped once it is placed, so the host holds the float32 tree
    once at most.
    """
    tree, _ = convert.read_t5x_params(checkpoint, config)
    host = pytrees.flatten(tree)
    del tree
    placed = {}
    for name, leaf in pytrees.flatten(target).items():
        array = np.asarray(host.pop(name), dtype=leaf.dtype)
        sharding = getattr(leaf, "sharding", None)
        placed[name] = (
            jax.make_array_from_callback(array.shape, sharding, lambda index, a=array: a[index])
            if sharding is not None
            else jax.numpy.asarray(array)
        )
        del array
    return pytrees.unflatten(placed)
