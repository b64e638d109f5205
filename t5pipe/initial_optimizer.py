"""An initial checkpoint's optimizer state carried into a run: continued pretraining
(`CheckpointConfig.with_optimizer_state`, `train.with_optimizer_state`, `t5pipe train
--with_optimizer_state`).

    view = optimizer_view(source)             # T5X_VIEW for a t5x checkpoint (plan_start)
    tx = in_view(optimizer, start, config)    # factored as t5x factors, or as is
    check(start, tx, layout)                  # before MODEL_DIR is written
    opt_state = load(start, tx, layout, config)

A t5x checkpoint's Adafactor state (`state/param_states/`) only reproduces t5x's next
update when the optimizer sees the parameters as t5x does (`t5pipe.t5x.optimizer_state
.factor_like_t5x`): one [embed, heads * kv] matrix per attention kernel and layer. Such a
run records `optimizer_view: t5x` in each checkpoint's meta, so that its resumes, and
runs started from its checkpoints, build the same optimizer (its state has that shape).
A t5pipe checkpoint's own `opt_state` is restored as it was saved (checked against its
checksums), into the optimizer the run builds, which must be the one that saved it.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from t5pipe import checkpoint_format, checkpoint_integrity, checkpoint_paths, pytrees
from t5pipe.errors import UserInputError

T5X_VIEW = "t5x"
META_KEY = "optimizer_view"  # checkpoint meta: T5X_VIEW, or absent (t5pipe's own tree)
ROLE = "--with_optimizer_state (train.with_optimizer_state)"


def recorded_view(meta: dict[str, Any] | None) -> str | None:
    """The optimizer view a t5pipe checkpoint's meta records (None: t5pipe's own)."""
    return (meta or {}).get(META_KEY)


def meta(view: str | None) -> dict[str, Any]:
    """What a run's checkpoints record of its optimizer view."""
    return {META_KEY: view} if view else {}


def optimizer_view(source: checkpoint_paths.Checkpoint) -> str | None:
    """The view the optimizer must take to continue from `source`'s optimizer state."""
    if source.kind == checkpoint_paths.T5X:
        return T5X_VIEW
    return recorded_view(source.meta())


def in_view(optimizer: optax.GradientTransformation, start, config, lora_config=None):
    """`optimizer`, run on t5x's view of the parameters when `start.optimizer_view` is
    T5X_VIEW. LoRA cannot take an initial optimizer state: only the adapters train and
    they start afresh."""
    if start.with_optimizer_state and lora_config is not None:
        raise UserInputError(
            f"{ROLE} with LoRA (train.lora_config): only the adapters train and they start "
            f"afresh, so there is no optimizer state to carry over from {start.path}; drop one"
        )
    if start.optimizer_view != T5X_VIEW:
        return optimizer
    from t5pipe.model_config import T5Config
    from t5pipe.t5x.optimizer_state import factor_like_t5x

    if not isinstance(config, T5Config):
        raise UserInputError(
            f"{ROLE}: t5x's optimizer state belongs to a T5 model; this run's model is "
            f"{type(config).__name__}"
        )
    return factor_like_t5x(optimizer, config)


def check(start, optimizer, layout) -> None:
    """Refuses, before anything is written, what `load` could not do: a checkpoint
    without optimizer state, or an optimizer that cannot hold it."""
    path = start.path
    if start.source.kind == checkpoint_paths.T5X:
        _check_t5x(start.source, optimizer, layout, path)
        return
    stored = _stored_opt_state_shapes(path)
    wanted = pytrees.shapes(layout.abstract["opt_state"])
    if stored != wanted:
        differ = sorted(set(stored) ^ set(wanted)) or [
            name for name in wanted if stored[name] != wanted[name]
        ]
        raise UserInputError(
            f"{ROLE}: the optimizer state in {path} is not the state of this run's optimizer "
            f"({len(stored)} arrays there, {len(wanted)} here; first differences: "
            f"{differ[:4]}). Configure the optimizer (train.optimizer and its settings, "
            "train.trainable_params) as the run that saved it did, or start it afresh "
            "without --with_optimizer_state"
        )


def _t5x_checkpoint(source):
    from t5pipe.t5x.checkpoints import open_checkpoint

    return open_checkpoint(source.path)


def _check_t5x(source, optimizer, layout, path) -> None:
    names = _t5x_checkpoint(source).names()
    if not any(name.startswith("state/param_states/") for name in names):
        raise UserInputError(_no_state(path, "no state/param_states/ (t5x's Adafactor state)"))
    abstract = jax.eval_shape(optimizer.init, layout.abstract["params"])
    kinds = jax.tree.leaves(abstract, is_leaf=lambda node: isinstance(node, optax.FactoredState))
    if not any(isinstance(node, optax.FactoredState) for node in kinds):
        raise UserInputError(
            f"{ROLE}: {path} holds t5x's Adafactor state, which only an Adafactor can "
            "continue (train.optimizer = @adafactor)"
        )


def _no_state(path, what: str) -> str:
    return (
        f"{ROLE}: the initial checkpoint {path} carries no optimizer state ({what}); it "
        "holds parameters only (e.g. a Hugging Face import or a converted checkpoint). "
        "Start the optimizer afresh without --with_optimizer_state, or name a checkpoint "
        "of a training run"
    )


def _stored_opt_state_shapes(path) -> dict[str, tuple[int, ...]]:
    tree = checkpoint_format.state_metadata(path)
    if "opt_state" not in tree:
        raise UserInputError(_no_state(path, f"its state holds {sorted(tree)}"))
    return pytrees.shapes(tree["opt_state"])


def load(start, optimizer, layout, config) -> Any:
    """The initial checkpoint's optimizer state, as `optimizer`'s and placed like
    `layout`; its step counters are the checkpoint's (t5x's Adafactor counts from its
    step, so the first update is the one t5x makes next)."""
    abstract = layout.abstract["opt_state"]
    if start.source.kind == checkpoint_paths.T5X:
        from t5pipe.t5x import convert

        host = convert.read_t5x_optimizer_state(
            _t5x_checkpoint(start.source), config, optimizer, layout.abstract["params"]
        )
        return jax.tree.map(
            lambda x, leaf: jax.device_put(np.asarray(x, leaf.dtype), leaf.sharding),
            host,
            abstract,
        )
    restored = checkpoint_format.load_subtree(start.path, "opt_state", abstract)
    checkpoint_integrity.verify({"opt_state": restored}, start.source.meta(), start.path)
    return restored
