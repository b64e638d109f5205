"""t5x checkpoints <-> t5pipe trees: the library behind importing and exporting them.

    params, step = read_t5x_params(path, config)          # numpy tree, t5pipe layout
    opt_state = read_t5x_optimizer_state(path, config, optimizer, params)
    write_t5x_checkpoint(out, params, config, step)       # T5X format, t5x reads it

`path` is anything `t5pipe.t5x.checkpoints.open_checkpoint` opens (a checkpoint_<step>
folder of either format, or a t5x MODEL_DIR). The config must fit the checkpoint's
shapes (`t5config_from_t5x` reads one off them); `config.scan_layers` chooses the
layout of the returned tree.

Memory: arrays are read and converted one at a time (orbax: in groups of
`orbax_batch_bytes`), so an import holds the parameters once plus the array in hand.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from etils import epath

from t5pipe.errors import UserInputError
from t5pipe.model_config import T5Config
from t5pipe.t5x import checkpoints, mapping
from t5pipe.t5x.checkpoints import T5xCheckpoint, open_checkpoint

TARGET = "target/"
PARAM_STATES = "state/param_states/"


def _opened(path_or_checkpoint, step: int | None) -> T5xCheckpoint:
    if isinstance(path_or_checkpoint, T5xCheckpoint):
        return path_or_checkpoint
    return open_checkpoint(path_or_checkpoint, step)


def target_shapes(checkpoint: T5xCheckpoint) -> dict[str, tuple[int, ...]]:
    """{parameter name below `target/`: shape}."""
    return {
        name.removeprefix(TARGET): checkpoint.shape(name)
        for name in checkpoint.names()
        if name.startswith(TARGET)
    }


def t5config_from_t5x(path_or_checkpoint, step: int | None = None, **overrides) -> T5Config:
    """The `T5Config` a t5x checkpoint's shapes imply (see `mapping.t5config_from_shapes`)."""
    checkpoint = _opened(path_or_checkpoint, step)
    try:
        return mapping.t5config_from_shapes(target_shapes(checkpoint), **overrides)
    except (KeyError, ValueError, TypeError) as e:
        raise UserInputError(f"{checkpoint.directory}: cannot read a T5 config off it: {e}") from e


def checked_layout(checkpoint: T5xCheckpoint, config: T5Config) -> mapping.T5xLayout:
    """The checkpoint's layout, once its shapes are known to fit `config`."""
    shapes = target_shapes(checkpoint)
    try:
        layout = mapping.detect_layout(shapes)
    except ValueError as e:
        raise UserInputError(f"{checkpoint.directory}: {e}") from e
    problems = mapping.shape_mismatches(shapes, config, layout)
    if problems:
        raise UserInputError(
            f"{checkpoint.directory} ({checkpoint.format} format) does not fit the model config "
            f"(d_model={config.d_model}, num_heads={config.num_heads}, d_kv={config.d_kv}, "
            f"d_ff={config.d_ff}, layers={config.num_encoder_layers}+"
            f"{config.num_decoder_layers}, vocab_size={config.vocab_size}, "
            f"feed_forward_proj={config.feed_forward_proj!r}, "
            f"tie_word_embeddings={config.tie_word_embeddings}): {'; '.join(problems)}"
        )
    return layout


def iter_t5x_params(
    checkpoint: T5xCheckpoint, config: T5Config
) -> Iterator[tuple[mapping.Path, np.ndarray]]:
    """(unscanned t5pipe path, float32 array) for every parameter, one t5x array at a time.

    A relative position table that a scalable_t5 checkpoint keeps per layer comes
    once per layer (t5pipe has one per stack).
    """
    layout = checked_layout(checkpoint, config)
    plan = mapping.t5x_arrays(config, layout)
    names = [TARGET + entry.name for entry in plan]
    for entry, (_, array) in zip(plan, checkpoint.read_many(names), strict=True):
        array = array.astype(np.float32, copy=False)
        for part, layer in mapping.split_layers(array, entry, layout):
            # Slices of a stacked array are copied, so that it can go once split.
            yield part.path, np.ascontiguousarray(layer) if entry.stacked else layer
        del array


class _Assembler:
    """Builds a t5pipe tree leaf by leaf, stacking layers when `config.scan_layers`."""

    def __init__(self, config: T5Config, source: str):
        self.config, self.source, self.tree, self.seen = config, source, {}, set()

    def put(self, path: mapping.Path, array: np.ndarray) -> None:
        if path in self.seen:  # a per-layer copy of a table t5pipe holds once per stack
            if not np.array_equal(mapping.leaf(self.tree, path, self.config), array):
                raise UserInputError(
                    f"{self.source}: the layers of the {path[0]} have different relative "
                    "position tables (t5x scalable_t5 layout); t5pipe's T5 shares one per "
                    "stack, as T5 does, so this checkpoint is a different model"
                )
            return
        self.seen.add(path)
        if self.config.scan_layers and len(path) > 1 and path[1].startswith("layers_"):
            n = mapping.stack_size(self.config, path[0])
            stack = self.tree.setdefault(path[0], {}).setdefault("layers", {})
            *parents, last = path[2:]
            node = stack
            for key in parents:
                node = node.setdefault(key, {})
            if last not in node:
                node[last] = np.empty((n, *array.shape), np.float32)
            node[last][int(path[1].removeprefix("layers_"))] = array
            return
        node = self.tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = array


def read_t5x_params(
    path_or_checkpoint, config: T5Config, step: int | None = None
) -> tuple[dict[str, Any], int | None]:
    """(t5pipe parameter tree of float32 numpy arrays, the checkpoint's step)."""
    checkpoint = _opened(path_or_checkpoint, step)
    assembler = _Assembler(config, str(checkpoint.directory))
    for path, array in iter_t5x_params(checkpoint, config):
        assembler.put(path, array)
    return assembler.tree, checkpoint.step


def read_t5x_param_states(checkpoint: T5xCheckpoint) -> dict[str, dict[str, np.ndarray]]:
    """{t5x parameter name: {slot: array}} of t5x's Adafactor state (slots v_row, v_col,
    v, m; unused ones are t5x's [1] placeholders)."""
    names = [name for name in checkpoint.names() if name.startswith(PARAM_STATES)]
    states: dict[str, dict[str, np.ndarray]] = {}
    for name, array in checkpoint.read_many(names):
        param, _, slot = name.removeprefix(PARAM_STATES).rpartition("/")
        states.setdefault(param, {})[slot] = array
    return states


def read_t5x_optimizer_state(
    path_or_checkpoint, config: T5Config, optimizer, params, step: int | None = None
):
    """The state of `optimizer` (an optax Adafactor, as `t5pipe.optimizers.adafactor`
    builds it, optionally inside `optimizer_state.factor_like_t5x`) holding the t5x
    checkpoint's Adafactor statistics and step. `params`: the t5pipe tree (arrays or
    ShapeDtypeStructs) the optimizer runs on."""
    from t5pipe.t5x import optimizer_state

    checkpoint = _opened(path_or_checkpoint, step)
    layout = checked_layout(checkpoint, config)
    states = read_t5x_param_states(checkpoint)
    if not states:
        raise UserInputError(
            f"{checkpoint.directory} holds no optimizer state (no state/param_states/); "
            "start the optimizer afresh"
        )
    try:
        return optimizer_state.optax_state_from_t5x(
            states, checkpoint.step or 0, optimizer, params, config, layout
        )
    except ValueError as e:
        raise UserInputError(f"{checkpoint.directory}: {e}") from e


# ---------------------------------------------------------------------------
# Writing


def _check_target(out: epath.Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise UserInputError(f"{out} exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not checkpoints.is_t5x_checkpoint(out) or not (out / checkpoints.MSGPACK_FILE).exists():
        raise UserInputError(
            f"{out} is not empty and not a T5X-format checkpoint ({entries[:5]}); refusing "
            "to write into it"
        )
    if not overwrite:
        raise UserInputError(f"{out} already holds a t5x checkpoint; pass overwrite=True")


def _inline_slot(slot: str, array: np.ndarray) -> bool:
    """Whether t5x keeps an Adafactor slot inline in the msgpack: the factored v_row and
    v_col (they are not partitioned) and the [1] placeholders of unused slots."""
    return slot in ("v_row", "v_col") or array.shape == (1,)


def write_t5x_checkpoint(
    path: str | os.PathLike,
    params: Mapping[str, Any],
    config: T5Config,
    step: int,
    *,
    scanned: bool = False,
    param_states: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    overwrite: bool = False,
    chunk_bytes: int = checkpoints.CHUNK_BYTES,
) -> epath.Path:
    """Writes a T5X-format checkpoint folder at `path` (t5x names it checkpoint_<step>).

    `scanned=False` writes the `t5x/examples/t5` layout, `True` scalable_t5's scanned
    one. `param_states`: t5x Adafactor state by t5x parameter name (as
    `read_t5x_param_states` returns it, or `optimizer_state.t5x_param_states_from_optax`
    makes it); without it the checkpoint holds the parameters and the step only.
    Locally the folder is written beside `path` and renamed into place when complete.
    """
    if config.prompt_length:
        raise UserInputError(
            f"the model has a {config.prompt_length}-vector soft prompt, which t5x's T5 cannot hold"
        )
    layout = mapping.SCANNED if scanned else mapping.UNSCANNED
    out = checkpoints._path(path)
    _check_target(out, overwrite)
    remote = "://" in os.fspath(out)
    staging = out if remote else out.parent / f".{out.name}.writing-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        tree: dict[str, Any] = {}
        for entry in mapping.t5x_arrays(config, layout):
            layers = [mapping.leaf(params, part.path, config) for part in entry.parts]
            array = mapping.join_layers(layers, entry, layout)
            name = TARGET + entry.name
            tree[name] = checkpoints.write_array(staging, name, array, chunk_bytes)
            del layers, array
        tree["state/step"] = np.asarray(step, np.int32)
        for param, slots in (param_states or {}).items():
            for slot, array in slots.items():
                name = f"{PARAM_STATES}{param}/{slot}"
                array = np.asarray(array)
                tree[name] = (
                    array
                    if _inline_slot(slot, array)
                    else checkpoints.write_array(staging, name, array, chunk_bytes)
                )
        checkpoints.write_msgpack(staging, checkpoints.unflatten(tree))
    except BaseException:
        if not remote:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if not remote:
        _swap_in(staging, out)
    return out


def _swap_in(staging: epath.Path, out: epath.Path) -> None:
    """Renames the finished folder into place, replacing (after the checks) an old one."""
    if out.exists() and any(out.iterdir()):
        retired = out.parent / f".{out.name}.replaced-{os.getpid()}"
        out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired)
    else:
        if out.exists():
            out.rmdir()
        staging.rename(out)
