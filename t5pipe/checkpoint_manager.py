"""Training checkpoints: orbax `CheckpointManager` over `MODEL_DIR/checkpoints/<step>`.

Each `<step>` folder has the layout of `t5pipe.checkpoint_format` (a `state` item with
params, opt_state, step, rng, skipped_steps, and a `meta` item with model config
and vocabulary), so it is itself a checkpoint `t5pipe eval/infer` can read.

Crash safety: orbax writes a save into `<step>.orbax-checkpoint-tmp*` and
renames it when complete (`commit_success.txt` inside), so a process killed
mid-save leaves the previous `<step>` folders intact. On start,
`remove_incomplete` warns about and deletes anything that is not a complete
checkpoint.

Retention: the last `keep` checkpoints, plus the best by an eval metric when
`best_metric` is set (its value at the most recent eval before each save).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import gin
import jax
import orbax.checkpoint as ocp

from t5pipe.checkpoint_format import META_ITEM, STATE_ITEM, is_checkpoint, resolve_path
from t5pipe.errors import UserInputError

log = logging.getLogger(__name__)

CHECKPOINTS_SUBDIR = "checkpoints"
COMMIT_MARKER = "commit_success.txt"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When a training run saves and what it starts from.

    period: steps between saves (CHECKPOINT_PERIOD); keep: the last N (CHECKPOINTS_TO_KEEP,
    None: all), plus the best by `best_metric` (an eval metric, `best_mode` 'max'/'min');
    async_save: write in a background thread. initial_checkpoint_path
    (INITIAL_CHECKPOINT_PATH): parameters to start from when MODEL_DIR has no checkpoint;
    allow_partial_initial_checkpoint: initialise the parameters it lacks randomly;
    initial_prompt_path: a saved soft prompt to load (prompt tuning).
    """

    period: int = 1000
    keep: int | None = None
    best_metric: str | None = None
    best_mode: str = "max"
    async_save: bool = True
    initial_checkpoint_path: str | None = None
    allow_partial_initial_checkpoint: bool = False
    initial_prompt_path: str | None = None

    def __post_init__(self):
        if isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 1:
            raise UserInputError(f"CHECKPOINT_PERIOD={self.period!r}: expected a whole number >= 1")
        if self.keep is not None and (not isinstance(self.keep, int) or self.keep < 1):
            raise UserInputError(
                f"CHECKPOINTS_TO_KEEP={self.keep!r}: expected a whole number >= 1, or None "
                "(keep all)"
            )
        if self.best_mode not in ("max", "min"):
            raise UserInputError(
                f"CheckpointConfig.best_mode={self.best_mode!r}: expected 'max' or 'min'"
            )


def checkpoints_dir(model_dir: str | Path) -> Path:
    """MODEL_DIR/checkpoints, local (made absolute) or remote (gs://... kept as is)."""
    return resolve_path(model_dir) / CHECKPOINTS_SUBDIR


def is_complete(step_dir: Path) -> bool:
    return (
        re.fullmatch(r"\d+", step_dir.name) is not None
        and is_checkpoint(step_dir)
        and ((step_dir / COMMIT_MARKER).exists() or (step_dir / "_CHECKPOINT_METADATA").exists())
    )


def complete_checkpoints(model_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in MODEL_DIR/checkpoints, oldest first."""
    directory = checkpoints_dir(model_dir)
    if not directory.is_dir():
        return []
    found = [(int(e.name), e) for e in directory.iterdir() if e.is_dir() and is_complete(e)]
    return sorted(found, key=lambda item: item[0])


def latest_checkpoint(model_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in MODEL_DIR/checkpoints, if any."""
    found = complete_checkpoints(model_dir)
    return found[-1][1] if found else None


def remove_incomplete(directory: Path) -> list[Path]:
    """Deletes (with a warning) every entry of `directory` that is not a complete checkpoint.

    Only the primary process deletes; the others just report.
    """
    if not directory.is_dir():
        return []
    removed = []
    for entry in sorted(directory.iterdir()):
        if entry.is_dir() and is_complete(entry):
            continue
        if entry.name.startswith("."):
            continue
        log.warning(
            "skipping incomplete checkpoint %s (a save was interrupted); deleting it", entry
        )
        removed.append(entry)
        if jax.process_index() == 0:
            if entry.is_dir():
                entry.rmtree(missing_ok=True)
            else:
                entry.unlink(missing_ok=True)
    return removed


def make_manager(model_dir: str | Path, config: CheckpointConfig) -> ocp.CheckpointManager:
    """A manager that keeps the last `config.keep` (None: all) and the best by
    `config.best_metric`."""
    directory = checkpoints_dir(model_dir)
    remove_incomplete(directory)
    policies: list[Any] = []
    if config.keep is not None:
        policies.append(ocp.checkpoint_managers.LatestN(config.keep))
    if config.best_metric is not None and config.keep is not None:
        metric = config.best_metric
        policies.append(
            ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda metrics: metrics[metric],
                reverse=config.best_mode == "min",
                n=1,
                keep_checkpoints_without_metrics=False,
            )
        )
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=config.async_save,
        preservation_policy=(
            ocp.checkpoint_managers.AnyPreservationPolicy(policies) if policies else None
        ),
        create=True,
    )
    return ocp.CheckpointManager(directory, options=options, item_names=(STATE_ITEM, META_ITEM))


def save(
    manager: ocp.CheckpointManager,
    state: dict[str, Any],
    meta: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> int:
    """Starts an (asynchronous) save of `state` at its step; returns the step."""
    step = int(jax.device_get(state["step"]))
    if step in manager.all_steps():
        return step
    manager.save(
        step,
        args=ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave(meta)}
        ),
        metrics=metrics,
        force=True,
    )
    return step


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> dict[str, Any]:
    """The state saved at `step`, placed and typed like `abstract_state` (ShapeDtypeStructs)."""
    restored = manager.restore(
        step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state)})
    )
    return restored[STATE_ITEM]
