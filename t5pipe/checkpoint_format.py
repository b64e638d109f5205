"""Self-describing checkpoint directories (orbax), and whether one fits a model.

Layout of a checkpoint directory CKPT (also each `MODEL_DIR/checkpoints/<step>`,
written by the training `CheckpointManager` with the same item names):

    CKPT/state/   orbax StandardSave of {"params": ..., and in training checkpoints
                  "opt_state", "step", ...}
    CKPT/meta/    orbax JsonSave: {"format": 1, "model_config": T5Config.to_dict(),
                  "vocabulary": vocabulary spec, ...}

`t5pipe eval/infer` need nothing but CKPT. `check_fits` is the one comparison of a
checkpoint's parameters with a model's (resume, INITIAL_CHECKPOINT_PATH, conversion).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import seqio
from etils import epath

from t5pipe import checkpoint_integrity, pytrees
from t5pipe.errors import UserInputError, first_line
from t5pipe.model_config import T5Config
from t5pipe.models import config_from_dict
from t5pipe.vocabularies import check_vocabulary, vocabulary_from_spec, vocabulary_to_spec

STATE_ITEM = "state"
META_ITEM = "meta"
FORMAT_VERSION = 1
# Config fields that say how a model runs, not what it is: they may differ from the
# checkpoint's without the parameters changing.
RUNTIME_FIELDS = ("dtype", "dropout_rate", "scan_layers", "remat_policy", "attention_impl")


def resolve_path(path: str | os.PathLike) -> epath.Path:
    """A path orbax accepts: absolute when local, untouched when remote (gs://...)."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def make_meta(config: T5Config, vocabulary: seqio.Vocabulary, **extra: Any) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "model_config": config.to_dict(),
        "vocabulary": vocabulary_to_spec(vocabulary),
        **extra,
    }


def save_checkpoint(
    path: str | Path,
    state: dict[str, Any],
    config: T5Config,
    vocabulary: seqio.Vocabulary,
    **extra_meta: Any,
) -> None:
    """Writes `state` (a pytree with at least "params") and its description to `path`."""
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    checkpointer.save(
        resolve_path(path),
        args=ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardSave(state),
                META_ITEM: ocp.args.JsonSave(make_meta(config, vocabulary, **extra_meta)),
            }
        ),
    )


def is_checkpoint(path: str | Path) -> bool:
    path = resolve_path(path)
    return (path / STATE_ITEM).is_dir() and (path / META_ITEM).exists()


def require_checkpoint(path: str | Path, role: str = "checkpoint") -> epath.Path:
    """`path` as an epath, or an error saying that it is not a t5pipe checkpoint and what
    it is (`t5pipe.checkpoint_paths.locate` also loads MODEL_DIRs and t5x checkpoints)."""
    resolved = resolve_path(path)
    if not is_checkpoint(resolved):
        from t5pipe import checkpoint_paths  # says what is there instead

        raise UserInputError(checkpoint_paths.why_not(path, role))
    return resolved


def read_meta(path: str | Path) -> dict[str, Any]:
    path = require_checkpoint(path)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        restored = checkpointer.restore(
            path, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()})
        )
    except (ValueError, UnicodeDecodeError, TypeError) as error:  # JSONDecodeError is one
        raise UserInputError(
            f"{path / META_ITEM / 'metadata'}: not the JSON a t5pipe checkpoint records "
            f"({type(error).__name__}: {str(error)[:200]}); the file is damaged. Use another "
            "checkpoint."
        ) from None
    if not isinstance(restored[META_ITEM], dict):
        raise UserInputError(
            f"{path / META_ITEM / 'metadata'}: expected a JSON object; the file is damaged"
        )
    return restored[META_ITEM]


def load_model_config(path: str | Path):
    """The checkpoint's model config, of the family its meta records (T5 without one)."""
    return config_from_dict(read_meta(path)["model_config"])


def load_vocabulary(path: str | Path) -> seqio.Vocabulary:
    """The vocabulary the checkpoint records, checked to load (a file that is not a
    SentencePiece model is an error naming the checkpoint)."""
    spec = read_meta(path)["vocabulary"]
    vocabulary = vocabulary_from_spec(spec)
    copy = " (a copy of the file embedded in meta/)" if spec.get("model_b64") else ""
    fix = (
        f"{path}/{META_ITEM}/metadata records the vocabulary as {spec.get('path')}{copy}: put "
        "the SentencePiece model the checkpoint was trained with there, or convert the "
        "checkpoint again with the right --vocab"
    )
    check_vocabulary(vocabulary, f"checkpoint {path} (the vocabulary its meta/ records)", fix)
    return vocabulary


def load_state(path: str | Path, target: Any | None = None) -> dict[str, Any]:
    """Restores the state pytree; `target` (arrays or ShapeDtypeStructs with
    shardings) sets the dtype and placement of each leaf."""
    path = resolve_path(path)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    args = ocp.args.StandardRestore(target) if target is not None else ocp.args.StandardRestore()
    return checkpointer.restore(path, args=ocp.args.Composite(**{STATE_ITEM: args}))[STATE_ITEM]


def load_params(path: str | Path, target: Any | None = None) -> Any:
    """Only the parameters of a checkpoint (training checkpoints carry more).

    `target` (nested dicts of arrays or ShapeDtypeStructs, optionally with shardings, for
    all or some of the parameters) sets the dtype and placement of each restored leaf.
    """
    path = resolve_path(path)
    if target is None:
        return load_state(path)["params"]
    return _restore_subtrees(path, {"params": target})["params"]


def load_subtree(path: str | Path, name: str, target: Any) -> Any:
    """One top-level entry of the state (e.g. "opt_state"), shaped and placed like `target`."""
    return _restore_subtrees(resolve_path(path), {name: target})[name]


def _restore_subtrees(path: Path, item: dict[str, Any]) -> dict[str, Any]:
    """Only the top-level entries of the state item that `item` names, shaped by it."""
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    restored = checkpointer.restore(
        path,
        args=ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True,
                )
            }
        ),
    )
    return restored[STATE_ITEM]


def state_metadata(path: str | Path) -> dict[str, Any]:
    """The state item's tree of array metadata (shapes, dtypes), no array read."""
    checkpoint_integrity.check_state_metadata(resolve_path(path) / STATE_ITEM)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns about metadata files it can do without
    try:
        metadata = ocp.StandardCheckpointer().metadata(resolve_path(path) / STATE_ITEM)
    finally:
        absl_logger.setLevel(level)
    return metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata.tree


def stored_param_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{param name: shape} of a checkpoint's params, read from its metadata only."""
    tree = state_metadata(path)
    if "params" not in tree:
        raise UserInputError(f"checkpoint {path} holds no 'params' (items: {sorted(tree)})")
    return pytrees.shapes(tree["params"])


def stored_step(path: str | Path) -> int | None:
    """The training step a checkpoint's state records (training checkpoints, t5x
    imports), or None when it holds parameters only (a Hugging Face import)."""
    path = resolve_path(path)
    if "step" not in state_metadata(path):
        return None
    return int(_restore_subtrees(path, {"step": np.zeros((), np.int32)})["step"])


# ------------------------------------------------------------------ fitting a model


@dataclasses.dataclass(frozen=True)
class Fit:
    """How a checkpoint's parameters line up with a model's: names in neither both."""

    missing: tuple[str, ...]  # in the model, not in the checkpoint
    unexpected: tuple[str, ...]  # in the checkpoint, not in the model


def shape_differences(
    wanted: dict[str, tuple[int, ...]],
    stored: dict[str, tuple[int, ...]],
    *,
    allow_missing: bool = False,
    allow_unexpected: bool = False,
    what: str = "checkpoint",
) -> list[str]:
    """One line per parameter that differs: '<name>: model (..), checkpoint (..)'."""
    problems = [
        f"{name}: model {wanted[name]}, {what} {stored[name]}"
        for name in sorted(set(wanted) & set(stored))
        if wanted[name] != stored[name]
    ]
    if not allow_missing:
        problems += [
            f"{name}: model {wanted[name]}, not in the {what}"
            for name in sorted(set(wanted) - set(stored))
        ]
    if not allow_unexpected:
        problems += [
            f"{name}: not in the model, {what} {stored[name]}"
            for name in sorted(set(stored) - set(wanted))
        ]
    return problems


def check_fits(
    path: str | Path,
    abstract_params: Any,
    config: T5Config,
    role: str,
    *,
    allow_missing: bool = False,
    allow_unexpected: bool = False,
) -> Fit:
    """Every parameter of the model (`abstract_params`: shapes) is in the checkpoint with
    the same shape, else one UserInputError listing each difference (path, model shape,
    checkpoint shape) and the config fields that differ.

    role: how the user gave the path (e.g. "INITIAL_CHECKPOINT_PATH=...").
    """
    require_checkpoint(path, role)
    try:
        stored = stored_param_shapes(path)
    except UserInputError:
        raise
    except Exception as error:  # noqa: BLE001 - unreadable metadata is the user's to fix
        raise UserInputError(
            f"{role}: cannot read the parameter shapes of {path} ({first_line(error)})"
        ) from None
    return fit_of(
        stored, abstract_params, role, f"the checkpoint {path}",
        lambda: _config_differences(path, config),
        allow_missing=allow_missing, allow_unexpected=allow_unexpected,
    )  # fmt: skip


def fit_of(
    stored: dict[str, tuple[int, ...]],
    abstract_params: Any,
    role: str,
    what: str,
    hint: Callable[[], str] = str,
    *,
    allow_missing: bool = False,
    allow_unexpected: bool = False,
) -> Fit:
    """`check_fits` for a checkpoint's {param name: shape} (`what` names it; `hint()`,
    asked only when they differ, adds a sentence about its config)."""
    wanted = pytrees.shapes(abstract_params)
    problems = shape_differences(
        wanted, stored, allow_missing=allow_missing, allow_unexpected=allow_unexpected
    )
    if problems:
        extra = sorted(set(stored) - set(wanted)) if allow_unexpected else []
        also = (
            f" The checkpoint also holds {len(extra)} parameter(s) the model lacks: "
            + ", ".join(extra[:10])
            + "."
            if extra
            else ""
        )
        raise UserInputError(
            f"{role}: {what} does not fit the model config "
            f"({len(problems)} parameter(s) differ).{hint()} "
            "Use the model gin file the checkpoint was trained with, or set "
            "train.allow_partial_initial_checkpoint = True to initialise missing ones "
            "randomly. The differences: " + "; ".join(problems) + "." + also
        )
    return Fit(
        missing=tuple(sorted(set(wanted) - set(stored))),
        unexpected=tuple(sorted(set(stored) - set(wanted))),
    )


def _config_differences(path: str | Path, config: T5Config) -> str:
    """' The checkpoint's model config has d_model=64 (this run: 32), ...', best effort."""
    try:
        stored = read_meta(path)["model_config"]
    except Exception:  # noqa: BLE001 - the hint is optional; the shapes say enough
        return ""
    wanted = config.to_dict()
    changed = [
        f"{key}={stored[key]!r} (this run: {wanted[key]!r})"
        for key in sorted(set(stored) & set(wanted))
        if stored[key] != wanted[key] and key not in RUNTIME_FIELDS
    ]
    return f" The checkpoint's model config has {', '.join(changed)}." if changed else ""


def load_initial_params(path: str | Path, abstract_params: Any, init_params: Any, fit: Fit) -> Any:
    """The checkpoint's parameters, cast and placed like `abstract_params`; those the
    checkpoint lacks (`fit.missing`, allowed by `check_fits`) keep their `init_params`."""
    return merge_initial_params(
        lambda target: load_params(path, target), abstract_params, init_params, fit
    )


def merge_initial_params(load, abstract_params: Any, init_params: Any, fit: Fit) -> Any:
    """`load(target)` (the stored parameters `target` names, placed like it) with the
    parameters the checkpoint lacks (`fit.missing`) taken from `init_params`."""
    wanted = pytrees.flatten(abstract_params)
    target = pytrees.unflatten({n: leaf for n, leaf in wanted.items() if n not in fit.missing})
    restored = pytrees.flatten(load(target))
    initial = pytrees.flatten(init_params)
    merged = [restored[name] if name in restored else initial[name] for name in wanted]
    return jax.tree.unflatten(jax.tree.structure(abstract_params), merged)
