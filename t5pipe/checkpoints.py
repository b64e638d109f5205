"""Self-describing checkpoint directories (orbax).

Layout of a checkpoint directory CKPT (also each `MODEL_DIR/checkpoints/<step>`,
written by an orbax `CheckpointManager` with the same item names):

    CKPT/state/   orbax StandardSave of {"params": ..., and in training checkpoints
                  "opt_state", "step", ...}
    CKPT/meta/    orbax JsonSave: {"format": 1, "model_config": T5Config.to_dict(),
                  "vocabulary": vocabulary spec, ...}

`t5pipe eval/infer` need nothing but CKPT.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
import seqio
from etils import epath

from t5pipe.model_config import T5Config
from t5pipe.vocabularies import vocabulary_from_spec, vocabulary_to_spec

STATE_ITEM = "state"
META_ITEM = "meta"
FORMAT_VERSION = 1


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


def read_meta(path: str | Path) -> dict[str, Any]:
    path = resolve_path(path)
    if not is_checkpoint(path):
        raise FileNotFoundError(
            f"{path} is not a t5pipe checkpoint (expected {STATE_ITEM}/ and {META_ITEM}/ inside); "
            "import a Hugging Face model with `t5pipe convert --from_hf DIR --out CKPT`"
        )
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    restored = checkpointer.restore(
        path, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()})
    )
    return restored[META_ITEM]


def load_model_config(path: str | Path) -> T5Config:
    return T5Config.from_dict(read_meta(path)["model_config"])


def load_vocabulary(path: str | Path) -> seqio.Vocabulary:
    return vocabulary_from_spec(read_meta(path)["vocabulary"])


def load_state(path: str | Path, target: Any | None = None) -> dict[str, Any]:
    """Restores the state pytree; `target` (arrays or ShapeDtypeStructs with
    shardings) sets the dtype and placement of each leaf."""
    path = resolve_path(path)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    args = ocp.args.StandardRestore(target) if target is not None else ocp.args.StandardRestore()
    return checkpointer.restore(path, args=ocp.args.Composite(**{STATE_ITEM: args}))[STATE_ITEM]


def load_params(path: str | Path, target: Any | None = None) -> Any:
    """Only the parameters of a checkpoint (training checkpoints carry more).

    `target` (arrays or ShapeDtypeStructs, optionally with shardings) sets the
    dtype and placement of each restored leaf.
    """
    path = resolve_path(path)
    if target is None:
        return load_state(path)["params"]
    item = {"params": target}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    restored = checkpointer.restore(
        path,
        args=ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.PyTreeRestore(
                    item=item, restore_args=restore_args, partial_restore=True
                )
            }
        ),
    )
    return restored[STATE_ITEM]["params"]
