"""Training checkpoints: orbax `CheckpointManager` over `MODEL_DIR/checkpoints/<step>`.

Each `<step>` folder has the layout of `t5pipe.checkpoint_format` (a `state` item with
params, opt_state, step, rng, skipped_steps, and a `meta` item with model config
and vocabulary), so it is itself a checkpoint `t5pipe eval/infer` can read.

Crash safety: orbax writes a save into `<step>.orbax-checkpoint-tmp*` and
renames it when complete (`commit_success.txt` inside), so a process killed
mid-save leaves the previous `<step>` folders intact. On start,
`remove_incomplete` deletes only orbax's own temporary folders (`<step>.orbax-checkpoint-
tmp*`) that this process created or that are older than the MODEL_DIR lock (a writer that
died); everything else that is not a complete checkpoint (a user's `60.bak`, notes, a
`<step>` whose `meta/` is missing) is listed once and left alone, and orbax never sees it:
`_CompleteSteps` hides it, so retention never deletes it and a save over it is skipped.
The run's own `best` file (`t5pipe.best_checkpoint`) is not listed.

Retention: the last `keep` checkpoints, plus the best by an eval metric when
`best_metric` is set (its value at the eval of the saved step, stored in the
checkpoint's metadata).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import re
from pathlib import Path
from typing import Any

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp

from t5pipe import checkpoint_integrity, input_state
from t5pipe.checkpoint_format import META_ITEM, STATE_ITEM, is_checkpoint, read_meta, resolve_path
from t5pipe.errors import T5pipeError, UserInputError

log = logging.getLogger(__name__)

CHECKPOINTS_SUBDIR = "checkpoints"
COMMIT_MARKER = "commit_success.txt"
BEST_RECORD = "best"  # the run's own JSON record of its best checkpoint (t5pipe.best_checkpoint)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When a training run saves and what it starts from.

    period: steps between saves (CHECKPOINT_PERIOD); keep: the last N (CHECKPOINTS_TO_KEEP,
    None: all), plus the best by `best_metric` (an eval metric, `best_mode` 'max'/'min');
    async_save: write in a background thread. initial_checkpoint_path
    (INITIAL_CHECKPOINT_PATH): parameters to start from when MODEL_DIR has no checkpoint;
    allow_partial_initial_checkpoint: initialise the parameters it lacks randomly;
    initial_prompt_path: a saved soft prompt to load (prompt tuning);
    with_optimizer_state: also take the initial checkpoint's optimizer state (continued
    pretraining; t5x's Adafactor state included, `t5pipe.initial_optimizer`).
    """

    period: int = 1000
    keep: int | None = None
    best_metric: str | None = None
    best_mode: str = "max"
    async_save: bool = True
    initial_checkpoint_path: str | None = None
    allow_partial_initial_checkpoint: bool = False
    initial_prompt_path: str | None = None
    with_optimizer_state: bool = False

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


TMP_MARKER = ".orbax-checkpoint-tmp"


def remove_incomplete(directory: Path, older_than: float | None = None) -> list[Path]:
    """Deletes orbax temporary folders a dead writer left behind; lists everything else.

    A temporary folder is deleted when it is older than `older_than` (the start time of
    this run's MODEL_DIR lock: no live writer can still be filling it). Anything else that
    is not a complete checkpoint is reported once and kept. Only the primary process
    deletes. Returns the deleted paths.
    """
    if not directory.is_dir():
        return []
    removed, kept = [], []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".") or (entry.is_dir() and is_complete(entry)):
            continue
        if entry.name == BEST_RECORD and not entry.is_dir():
            continue  # the run's own record, not a user's file
        if TMP_MARKER in entry.name and entry.is_dir() and _older(entry, older_than):
            log.warning("deleting %s: a save that was interrupted left it", entry)
            removed.append(entry)
            if jax.process_index() == 0:
                entry.rmtree(missing_ok=True)
        else:
            kept.append(entry)
    if kept:
        log.warning(
            "%s holds entries that are not complete checkpoints; they are skipped and left "
            "alone: %s",
            directory,
            "; ".join(f"{e.name} ({_why_not_complete(e)})" for e in kept),
        )
    return removed


def _older(entry: Path, than: float | None) -> bool:
    if than is None:
        return False
    try:
        return entry.stat().mtime < than
    except OSError:
        return False


def _why_not_complete(entry: Path) -> str:
    if not entry.is_dir():
        return "a file"
    if TMP_MARKER in entry.name:
        return "a save in progress, or newer than this run's lock"
    if re.fullmatch(r"\d+", entry.name) is None:
        return "not a step number"
    if (entry / STATE_ITEM).is_dir() and not (entry / META_ITEM).exists():
        return f"{STATE_ITEM}/ present but {META_ITEM}/ missing"
    return "not committed"


@dataclasses.dataclass(frozen=True)
class _CompleteSteps:
    """orbax's standard step names, but only complete checkpoints are found: orbax's
    retention then never deletes, and its restore never reads, anything else."""

    inner: Any = dataclasses.field(default_factory=ocp.step.standard_name_format)

    def build_name(self, step: int) -> str:
        return self.inner.build_name(step)

    def find_all(self, base_path):
        return (m for m in self.inner.find_all(base_path) if is_complete(Path(m.path)))

    def find_step(self, base_path, step: int):
        metadata = self.inner.find_step(base_path, step)
        if not is_complete(Path(metadata.path)):
            raise ValueError(f"no complete checkpoint for step {step} in {base_path}")
        return metadata


def make_manager(
    model_dir: str | Path, config: CheckpointConfig, lock_time: float | None = None
) -> ocp.CheckpointManager:
    """A manager that keeps the last `config.keep` (None: all) and the best by
    `config.best_metric`; orbax tmp folders older than `lock_time` are removed."""
    directory = checkpoints_dir(model_dir)
    remove_incomplete(directory, lock_time)
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
        step_name_format=_CompleteSteps(),
    )
    return ocp.CheckpointManager(directory, options=options, handler_registry=_handlers())


class _MetaHandler(ocp.JsonCheckpointHandler):
    """orbax's JSON item handler; a `PendingMeta` is resolved (its checksums computed)
    where the item is written: in an asynchronous save, the save's background thread."""

    async def _save_fn(self, x, directory):
        if isinstance(x, checkpoint_integrity.PendingMeta):
            x = x.resolve()
        return await super()._save_fn(x, directory)


def _handlers() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
        registry.add(STATE_ITEM, args, ocp.StandardCheckpointHandler())
    for args in (ocp.args.JsonSave, ocp.args.JsonRestore):
        registry.add(META_ITEM, args, _MetaHandler())
    registry.add(input_state.ITEM, input_state.InputSave, input_state.InputHandler())
    return registry


def save(
    manager: ocp.CheckpointManager,
    state: dict[str, Any],
    meta: dict[str, Any],
    metrics: dict[str, float] | None = None,
    data_position: input_state.Snapshot | None = None,
) -> int:
    """Starts an (asynchronous) save of `state` at its step, with this process's
    `data_position` (the training stream's, taken at this step) when given; returns the
    step."""
    step = int(jax.device_get(state["step"]))
    if step in manager.all_steps():
        return step
    occupied = Path(manager.directory) / str(step)
    if occupied.exists():  # not a complete checkpoint (else orbax would list it): not ours
        log.warning("not saving step %d: %s exists and is left alone", step, occupied)
        return step
    pending = checkpoint_integrity.PendingMeta(meta, state)  # hashed by the save's thread
    items = {STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave(pending)}
    if data_position is not None:
        items[input_state.ITEM] = input_state.InputSave(data_position)
    manager.save(
        step,
        args=ocp.args.Composite(**items),
        metrics=metrics,
        force=True,
    )
    return step


def restore(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any, say=None
) -> dict[str, Any]:
    """The state saved at `step`, placed and typed like `abstract_state` (ShapeDtypeStructs),
    and verified against its checksums (raises `CorruptCheckpoint`; one `say` line when
    it has none)."""
    path = Path(manager.directory) / str(step)
    checkpoint_integrity.check_state_metadata(path / STATE_ITEM)  # names a garbled _METADATA
    restored = manager.restore(
        step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state)})
    )
    checkpoint_integrity.verify(restored[STATE_ITEM], read_meta(path), path, say=say)
    return restored[STATE_ITEM]


def restore_newest_good(manager, abstract_state: Any, say, agree=None) -> dict[str, Any] | None:
    """The newest checkpoint that restores and verifies on every process; a corrupt or
    unreadable newer one is reported (which and why) and kept, set aside as
    `<step>.corrupt` (by process 0) so that this run can save that step again. None when
    no checkpoint restores (then none is moved).

    Each process reads its own shards, so one may fail where another succeeds: `agree`
    (default `all_processes_agree`, a collective) turns this process's verdict on a
    step into the verdict of all, and every process takes the same step.
    """
    agree = agree or all_processes_agree
    directory = Path(manager.directory)
    bad = []
    state = None
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored, why = restore(manager, step, abstract_state, say=say), None
        except Exception as error:  # noqa: BLE001 - any failure to read means: not this one
            restored, why = None, checkpoint_integrity.clean_reason(error)
        if agree(why is None):
            state = restored
            break
        bad.append(step)
        why = why or "another process cannot read or verify its part"
        say(f"checkpoint {directory / str(step)} cannot be used ({why}); trying an older one")
    if state is None:
        return None  # nothing moved: the run stops, and MODEL_DIR stays as it was
    for step in bad:
        aside = _aside_name(directory, step)
        if jax.process_index() == 0:
            (directory / str(step)).rename(aside)
        say(f"kept the unusable checkpoint {directory / str(step)} as {aside} (not deleted)")
    if bad:
        _all_processes_reach("t5pipe_checkpoints_set_aside")  # renamed before reloading
        manager.reload()
        say(f"falling back to checkpoint {directory / str(int(state['step']))}")
    return state


def all_processes_agree(ok: bool) -> bool:
    """True when `ok` holds on every process (a collective: all must call it)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    verdicts = multihost_utils.process_allgather(np.asarray(ok, np.int32))
    return bool(np.all(np.asarray(verdicts)))


def _all_processes_reach(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _aside_name(directory: Path, step: int) -> Path:
    aside = directory / f"{step}.corrupt"
    number = 1
    while aside.exists():
        number += 1
        aside = directory / f"{step}.corrupt{number}"
    return aside


def newest_verified(manager, abstract_state: Any) -> tuple[int | None, bool]:
    """(the newest step whose checkpoint restores and matches its checksums, whether it
    has checksums at all); (None, False) when none does. Reads each candidate back."""
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state)}),
            )
            path = Path(manager.directory) / str(step)
            meta = read_meta(path)
            bad = checkpoint_integrity.mismatches(restored[STATE_ITEM], meta)
        except Exception:  # noqa: BLE001 - unreadable: not a checkpoint to point to
            continue
        if not bad:
            return step, bad is not None
    return None, False


class SaveFailed(T5pipeError):
    """A checkpoint save failed (disk full, I/O error): the run stops, exit code 1."""


def save_failed(manager, step: int | None, error: BaseException) -> SaveFailed:
    """The one message for a failed save: which step, why, and the checkpoint still intact."""
    cause = _os_error(error)
    why = f"{cause.strerror or cause}" if cause is not None else f"{type(error).__name__}: {error}"
    if cause is not None and cause.errno == errno.ENOSPC:
        why += " (disk full)"
    directory = Path(manager.directory)
    intact = [found for found in sorted(int(e.name) for e in directory.iterdir()
              if e.is_dir() and is_complete(e)) if found != step]  # fmt: skip
    previous = (
        f"the previous checkpoint {directory / str(intact[-1])} is intact"
        if intact
        else "no earlier checkpoint exists"
    )
    at = f"at step {step} " if step is not None else ""
    return SaveFailed(
        f"saving the checkpoint {at}into {directory} failed: {why[:300]}. Training stopped; "
        f"{previous}. Free space (or fix the disk) and rerun the same command to resume."
    )


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind `error` (its causes, contexts and exception groups)."""
    seen, todo = set(), [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        todo.extend([current.__cause__, current.__context__])
        todo.extend(getattr(current, "exceptions", ()))
    return None
