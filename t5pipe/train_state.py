"""A run's train state: its shapes and shardings, and where it starts from.

    StateLayout    the abstract state (ShapeDtypeStructs carrying shardings) and shardings
    plan_start     resume from MODEL_DIR's latest checkpoint, start from
                   INITIAL_CHECKPOINT_PATH (at its step, as t5x does), or start fresh;
                   each checkpoint is checked against the model before anything is
                   written
    start_state    the state that plan says: restored, or initialised (then the initial
                   checkpoint's parameters and a saved prompt swapped in)

The state itself is the plain dict of `t5pipe.train_step` (step, params, opt_state,
rng, skipped_steps).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from t5pipe import (
    checkpoint_format,
    checkpoint_integrity,
    checkpoint_manager,
    checkpoint_paths,
    initial_optimizer,
    lora,
    partitioning,
    peft,
    pytrees,
)
from t5pipe.checkpoint_manager import CheckpointConfig
from t5pipe.errors import UserInputError
from t5pipe.model_config import T5Config
from t5pipe.models import abstract_params, init_params
from t5pipe.train_step import init_train_state

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """abstract: the state as ShapeDtypeStructs with shardings (what orbax restores into);
    shardings: its NamedShardings; param_specs: the parameters' logical PartitionSpecs."""

    abstract: Any
    shardings: Any
    param_specs: Any


def state_layout(
    config: T5Config, optimizer: optax.GradientTransformation, seed: int, mesh, rules
) -> StateLayout:
    """Params by their logical specs; optimizer leaves derived from their parameter's
    (`partitioning.state_logical_specs`); counters and rng replicated."""
    _, param_specs = abstract_params(config)
    shapes = jax.eval_shape(_init_fn(config, optimizer, seed), jax.random.PRNGKey(seed))
    specs = partitioning.state_logical_specs(shapes, shapes["params"], param_specs)
    shardings = partitioning.logical_to_sharding(specs, mesh, rules)
    abstract = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        shapes,
        shardings,
    )
    return StateLayout(abstract, shardings, param_specs)


def _init_fn(config: T5Config, optimizer: optax.GradientTransformation, seed: int):
    return lambda rng: init_train_state(init_params(config, rng), optimizer, seed)


RUN_START_KEY = "run_start_step"  # checkpoint meta: the step the run began at


@dataclasses.dataclass(frozen=True)
class Start:
    """Where a run's state comes from: 'resume' (MODEL_DIR's latest checkpoint),
    'initial' (INITIAL_CHECKPOINT_PATH's parameters) or 'fresh'.

    step: the state's step at start (as in t5x, an initial checkpoint's own step, 0 when
    it carries none, e.g. a Hugging Face import); run_start: the step this run began at
    (the initial checkpoint's step), from which its data position counts.
    """

    kind: str
    path: Path | None = None
    fit: checkpoint_format.Fit | None = None
    step: int = 0
    run_start: int = 0
    source: checkpoint_paths.Checkpoint | None = None  # 'initial': what `path` holds
    optimizer_view: str | None = None
    with_optimizer_state: bool = False

    def data_position(self, step: int) -> int:
        """Batches of the run's data already trained on when the state is at `step`."""
        return step - self.run_start

    def describe(self, train_steps: int) -> str:
        """One line: which start happened and what the step counts."""
        to_go = f"to step {train_steps} ({train_steps - self.step} steps to run"
        if self.kind == "resume":
            return (
                f"resuming from {self.path} at step {self.step} {to_go}); this run began at "
                f"step {self.run_start}, so its data continues at batch "
                f"{self.data_position(self.step)}"
            )
        if self.kind == "initial" and self.step:
            return (
                f"starting at step {self.step}, the step of the initial checkpoint {self.path},"
                f" {to_go}; TRAIN_STEPS counts the checkpoint's steps, as in t5x); schedules "
                "continue from that step, the data starts at the task's first batch"
            )
        if self.kind == "initial":
            return (
                f"starting at step 0 from the initial checkpoint {self.path}, which carries no "
                f"step (parameters only, e.g. a Hugging Face import), {to_go})"
            )
        return f"starting from scratch at step 0 {to_go})"


def plan_start(model_dir: str | Path, checkpoint: CheckpointConfig, config: T5Config) -> Start:
    """Decides where the state comes from and checks that checkpoint against the model
    config (every parameter present, same shapes) before anything is written."""
    shapes, _ = abstract_params(config)
    latest = _newest_readable(model_dir)
    initial = checkpoint.initial_checkpoint_path
    if latest is not None:
        if initial:
            log.warning(
                "INITIAL_CHECKPOINT_PATH=%s is ignored: MODEL_DIR already has checkpoint %s, "
                "and training resumes from it (use a new MODEL_DIR to start from %s)",
                initial, latest, initial,
            )  # fmt: skip
        fit = checkpoint_format.check_fits(
            latest, shapes, config, f"MODEL_DIR={model_dir} (resuming from its latest checkpoint)"
        )
        # Checkpoints of runs that predate the record began at step 0.
        meta = checkpoint_format.read_meta(latest)
        run_start = int(meta.get(RUN_START_KEY, 0))
        view = initial_optimizer.recorded_view(meta)
        return Start(
            "resume", Path(latest), fit, int(Path(latest).name), run_start, optimizer_view=view
        )
    if initial:
        role = f"INITIAL_CHECKPOINT_PATH={initial}"
        source = checkpoint_paths.locate(initial, role)  # t5pipe or t5x, a MODEL_DIR's latest
        fit = source.check_fits(shapes, config, role, allow_missing=True, allow_unexpected=True)
        partial = checkpoint.allow_partial_initial_checkpoint
        if not partial and not all(_starts_fresh(name) for name in fit.missing):
            # Raises, listing every difference (the run's own new parameters left out).
            own = {n for n in fit.missing if _starts_fresh(n)}
            kept = pytrees.unflatten(
                {n: v for n, v in pytrees.flatten(shapes).items() if n not in own}
            )
            source.check_fits(kept, config, role, allow_unexpected=True)
        step = source.stored_step() or 0
        carried = checkpoint.with_optimizer_state
        view = initial_optimizer.optimizer_view(source) if carried else None
        return Start("initial", source.path, fit, step, step, source, view, carried)
    if checkpoint.with_optimizer_state:
        raise UserInputError(
            f"{initial_optimizer.ROLE} needs an initial checkpoint to take the optimizer "
            "state from: set INITIAL_CHECKPOINT_PATH"
        )
    return Start("fresh")


def _newest_readable(model_dir: str | Path) -> Path | None:
    """The newest complete checkpoint whose metadata (meta/, state/_METADATA) reads, to
    check the model against; the restore reports the newer damaged ones and falls back
    past them. With none readable, the newest (whose check then says what is wrong)."""
    found = checkpoint_manager.complete_checkpoints(model_dir)
    for _, path in reversed(found):
        try:
            checkpoint_integrity.check_state_metadata(path / checkpoint_format.STATE_ITEM)
            checkpoint_format.read_meta(path)
        except UserInputError as error:
            log.warning("%s (an older checkpoint is tried)", error)
            continue
        return path
    return found[-1][1] if found else None


# Parameters a run adds to the model it starts from, so a checkpoint never has them:
# the soft prompt of prompt tuning and LoRA adapters. They start from their init.
_FRESH = re.compile(rf"^prompt$|{lora.TRAINABLE}")


def _starts_fresh(name: str) -> bool:
    return bool(_FRESH.search(name))


def schedules_at(opt_state: Any, step) -> Any:
    """`opt_state` with the step counters of its learning-rate schedules set to `step`,
    so that they continue from an initial checkpoint's step. The moment estimates'
    counters stay at 0: their bias corrections belong to the (fresh) statistics."""

    def reset(node):
        if isinstance(node, optax.ScaleByScheduleState):
            return node._replace(count=jnp.asarray(step, node.count.dtype))
        return node

    return jax.tree.map(
        reset, opt_state, is_leaf=lambda node: isinstance(node, optax.ScaleByScheduleState)
    )


def start_state(
    start: Start,
    layout: StateLayout,
    config: T5Config,
    optimizer: optax.GradientTransformation,
    seed: int,
    manager,
    checkpoint: CheckpointConfig,
    say=print,
) -> dict[str, Any]:
    """The state `start` describes, placed like `layout`."""
    if start.kind == "resume":
        state = checkpoint_manager.restore_newest_good(manager, layout.abstract, say)
        if state is None:
            raise UserInputError(
                f"no checkpoint in {start.path.parent} can be read (each one's reason is "
                "above); move them out of that folder to start afresh, or fix them"
            )
        say(f"restored {start.path.parent / str(int(jax.device_get(state['step'])))}")
        return state
    init = jax.jit(_init_fn(config, optimizer, seed), out_shardings=layout.shardings)
    state = init(jax.random.PRNGKey(seed))
    if start.kind == "initial":
        for kind in ("missing", "unexpected"):
            names = getattr(start.fit, kind)
            if names:
                say(f"initial checkpoint: {len(names)} {kind} parameter(s): " + ", ".join(names))
        params = start.source.load_initial_params(
            layout.abstract["params"], state["params"], start.fit, config
        )
        opt_init = jax.jit(
            lambda p: schedules_at(optimizer.init(p), start.step),
            out_shardings=layout.shardings["opt_state"],
        )
        step = jax.device_put(jnp.asarray(start.step, jnp.int32), layout.shardings["step"])
        opt_state = (
            initial_optimizer.load(start, optimizer, layout, config)
            if start.with_optimizer_state
            else opt_init(params)
        )
        state = {**state, "step": step, "params": params, "opt_state": opt_state}
    if checkpoint.initial_prompt_path:
        params = peft.merge_prompt(
            state["params"], peft.load_prompt(checkpoint.initial_prompt_path)
        )
        state = {**state, "params": jax.device_put(params, layout.shardings["params"])}
    return state
