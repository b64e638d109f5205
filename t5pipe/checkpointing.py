"""Training checkpoints: orbax `CheckpointManager` over `MODEL_DIR/checkpoints/<step>`.

Each `<step>` folder has the layout of `t5pipe.checkpoints` (a `state` item with
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

import logging
import re
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from t5pipe.checkpoints import META_ITEM, STATE_ITEM, is_checkpoint, resolve_path

log = logging.getLogger(__name__)

CHECKPOINTS_SUBDIR = "checkpoints"
COMMIT_MARKER = "commit_success.txt"


def checkpoints_dir(model_dir: str | Path) -> Path:
    """MODEL_DIR/checkpoints, local (made absolute) or remote (gs://... kept as is)."""
    return resolve_path(model_dir) / CHECKPOINTS_SUBDIR


def is_complete(step_dir: Path) -> bool:
    return (
        re.fullmatch(r"\d+", step_dir.name) is not None
        and is_checkpoint(step_dir)
        and ((step_dir / COMMIT_MARKER).exists() or (step_dir / "_CHECKPOINT_METADATA").exists())
    )


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


def make_manager(
    model_dir: str | Path,
    *,
    keep: int | None = 3,
    best_metric: str | None = None,
    best_mode: str = "max",
    async_save: bool = True,
) -> ocp.CheckpointManager:
    """A manager that keeps the last `keep` (None: all) and the best by `best_metric`."""
    directory = checkpoints_dir(model_dir)
    remove_incomplete(directory)
    policies: list[Any] = []
    if keep is not None:
        if keep < 1:
            raise ValueError(f"train.checkpoints_to_keep={keep} must be >= 1 (or None: keep all)")
        policies.append(ocp.checkpoint_managers.LatestN(keep))
    if best_metric is not None and keep is not None:
        if best_mode not in ("max", "min"):
            raise ValueError(f"train.best_checkpoint_mode={best_mode!r}: expected 'max' or 'min'")
        policies.append(
            ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda metrics: metrics[best_metric],
                reverse=best_mode == "min",
                n=1,
                keep_checkpoints_without_metrics=False,
            )
        )
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save,
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


def _flat(tree: Any) -> dict[str, Any]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def stored_param_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{param path: (shape, dtype)} of a checkpoint's params, read from metadata only."""
    metadata = ocp.StandardCheckpointer().metadata(resolve_path(path) / STATE_ITEM)
    tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata.tree
    if "params" not in tree:
        raise ValueError(f"checkpoint {path} holds no 'params' (items: {sorted(tree)})")
    return {name: (tuple(m.shape), str(m.dtype)) for name, m in _flat(tree["params"]).items()}


def load_initial_params(
    path: str | Path, abstract_params: Any, init_params: Any, *, allow_partial: bool = False
) -> tuple[Any, dict[str, list[str]]]:
    """Parameters from checkpoint `path`, cast and placed like `abstract_params`.

    Parameters the checkpoint lacks keep their `init_params` value, parameters
    the model lacks are ignored: both are listed in the returned report
    {"missing": [...], "unexpected": [...]}. Unless `allow_partial`, any missing
    parameter is an error; a shape mismatch always is (each one listed).
    """
    path = resolve_path(path)
    if not is_checkpoint(path):
        raise FileNotFoundError(
            f"INITIAL_CHECKPOINT_PATH={str(path)!r} is not a t5pipe checkpoint (expected "
            f"{STATE_ITEM}/ and {META_ITEM}/ inside); import a Hugging Face model with "
            "`t5pipe convert --from_hf DIR --out CKPT`"
        )
    stored = stored_param_shapes(path)
    wanted = _flat(abstract_params)
    missing = sorted(set(wanted) - set(stored))
    unexpected = sorted(set(stored) - set(wanted))
    mismatched = [
        f"{name}: checkpoint {stored[name][0]} vs model {tuple(wanted[name].shape)}"
        for name in sorted(set(wanted) & set(stored))
        if tuple(wanted[name].shape) != stored[name][0]
    ]
    if mismatched:
        raise ValueError(
            f"checkpoint {path} does not fit the model config: "
            f"{len(mismatched)} parameter shape(s) differ:\n  "
            + "\n  ".join(mismatched)
            + "\nUse the model gin file the checkpoint was trained with "
            "(its config is in the checkpoint's meta)."
        )
    if missing and not allow_partial:
        raise ValueError(
            f"checkpoint {path} lacks {len(missing)} parameter(s) of the model: {missing}"
            + (f"; it has {len(unexpected)} the model lacks: {unexpected}" if unexpected else "")
            + ". Set train.allow_partial_initial_checkpoint = True to initialise those randomly."
        )
    target = {name: leaf for name, leaf in wanted.items() if name in stored}
    restored_flat = _restore_subset(path, abstract_params, set(target))
    init_flat = _flat(init_params)
    merged = [restored_flat[name] if name in restored_flat else init_flat[name] for name in wanted]
    params = jax.tree.unflatten(jax.tree.structure(abstract_params), merged)
    return params, {"missing": missing, "unexpected": unexpected}


def _restore_subset(path: Path, abstract_params: Any, names: set[str]) -> dict[str, Any]:
    """Restores the named params (nested dicts of ShapeDtypeStructs as the target)."""
    item: dict[str, Any] = {}
    for name, leaf in _flat(abstract_params).items():
        if name not in names:
            continue
        node = item
        *parents, last = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    target = {"params": item}
    restored = checkpointer.restore(
        path,
        args=ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.PyTreeRestore(
                    item=target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,
                )
            }
        ),
    )
    return _flat(restored[STATE_ITEM]["params"])
