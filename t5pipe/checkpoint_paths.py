"""What a checkpoint path names: the one place that turns a path a user gave
(`--checkpoint`, INITIAL_CHECKPOINT_PATH, `api.load`) into a checkpoint to load, or
into an error (exit 2) saying what is there.

    checkpoint = locate(path, "--checkpoint")
    config, vocabulary = checkpoint.model_and_vocabulary()
    params = checkpoint.load_params(target, config)

What a path may be:

- a t5pipe checkpoint (`state/` and `meta/`, `t5pipe.checkpoint_format`), whose
  parameters are checked against their checksums as they load
  (`t5pipe.checkpoint_integrity`), as an initial checkpoint too; one of a LoRA run
  (its meta records `lora`) loads for a model without adapters with them merged into
  the kernels, so eval, infer and api score the adapted model;
- a MODEL_DIR (it has `checkpoints/`), or its `checkpoints/` folder: its latest
  complete checkpoint is used, said in one line;
- a t5x checkpoint, either format (`checkpoint_<step>/`, or a t5x MODEL_DIR: its
  latest), loaded in place (`t5pipe.t5x.loading`), said in one line with "unverified";
- anything else is an error: a path that does not exist (with its nearest existing
  parent, or the steps there are when it names a missing step), a Hugging Face folder
  (which `t5pipe convert --from_hf` to run), a folder that holds something else.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
from etils import epath

from t5pipe import checkpoint_format, checkpoint_integrity, checkpoint_manager, lora
from t5pipe.errors import UserInputError

T5PIPE, T5X = "t5pipe", "t5x"
_T5X_STEP = re.compile(r"checkpoint_(\d+)")
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint found at a user's path: `path` is the folder to load (the step folder
    when the user named a MODEL_DIR), `kind` T5PIPE or T5X, `step` its folder's step.

    gin_files: model gin files for a t5x checkpoint's config and vocabulary (else the
    command's gin, else the t5x run's config.gin).
    """

    path: epath.Path
    kind: str
    step: int | None = None
    gin_files: tuple[str, ...] = ()
    role: str = "--checkpoint"

    def _t5x(self):
        from t5pipe.t5x.checkpoints import open_checkpoint

        return open_checkpoint(self.path)

    def model_and_vocabulary(self):
        """(model config, vocabulary): a t5pipe checkpoint's own, a t5x one's from gin."""
        if self.kind == T5X:
            from t5pipe.t5x import loading

            return loading.model_and_vocabulary(self._t5x(), self.gin_files, self.role)
        return (
            checkpoint_format.load_model_config(self.path),
            checkpoint_format.load_vocabulary(self.path),
        )

    def check_fits(self, abstract_params: Any, config, role: str, **allowed):
        """`checkpoint_format.check_fits` (every model parameter there, same shapes)."""
        if self.kind == T5X:
            from t5pipe.t5x import loading

            return loading.check_fits(self._t5x(), abstract_params, config, role, **allowed)
        return checkpoint_format.check_fits(self.path, abstract_params, config, role, **allowed)

    def stored_step(self) -> int | None:
        """The training step the checkpoint holds (None: parameters only)."""
        if self.kind == T5X:
            return self._t5x().step
        return checkpoint_format.stored_step(self.path)

    def load_params(self, target: Any, config) -> Any:
        """The parameters `target` names, cast and placed like it (`config`: the model's,
        which lays out a t5x checkpoint's arrays). A t5pipe checkpoint's arrays are
        checked against the checksums in its meta (`CorruptCheckpoint`, exit 2, names
        the array; one "unverified" line when it records none); a t5x one has none
        (`locate` said so)."""
        if self.kind == T5X:
            from t5pipe.t5x import loading

            return loading.load_params(self._t5x(), config, target)
        meta = self.meta()
        try:
            params = checkpoint_format.load_params(self.path, target)
        except UserInputError:
            raise
        except Exception as error:  # noqa: BLE001 - TensorStore/orbax: a data file is damaged
            raise checkpoint_integrity.unreadable(self.path, error) from None
        checkpoint_integrity.verify({"params": params}, meta, self.path)
        lora_config = (meta or {}).get("lora")
        if lora_config and target is not None and not lora.split_adapter(target)[1]:
            params = self._merge_stored_adapter(params, lora.LoraConfig(**lora_config), meta)
        return params

    def _merge_stored_adapter(self, params, lora_config, meta) -> Any:
        """`params` with the LoRA adapters the checkpoint holds merged into their kernels,
        each leaf placed as it was loaded."""
        stored = checkpoint_format.stored_param_shapes(self.path)
        wanted = {
            name: jax.ShapeDtypeStruct(shape, "float32")
            for name, shape in stored.items()
            if re.search(lora.TRAINABLE, name)
        }
        adapter = checkpoint_format.load_params(self.path, lora.unflatten(wanted))
        checkpoint_integrity.verify({"params": adapter}, meta, self.path)
        merged = lora.merge(params, adapter, lora_config)
        return jax.tree.map(
            lambda new, old: jax.device_put(new, old.sharding) if hasattr(old, "sharding") else new,
            merged,
            params,
        )

    def load_initial_params(self, abstract_params, init_params, fit, config) -> Any:
        """`checkpoint_format.load_initial_params` for either kind."""
        return checkpoint_format.merge_initial_params(
            lambda target: self.load_params(target, config), abstract_params, init_params, fit
        )

    def meta(self) -> dict[str, Any] | None:
        """The t5pipe checkpoint's meta (its checksums), None for a t5x one (it has none)."""
        return checkpoint_format.read_meta(self.path) if self.kind == T5PIPE else None


def locate(
    path: str | os.PathLike | Checkpoint,
    role: str = "--checkpoint",
    *,
    gin_files: Sequence[str] = (),
    say: Callable[[str], None] = _to_stderr,
) -> Checkpoint:
    """The checkpoint `path` names (module docstring), or a UserInputError saying what
    is there. `role`: how the user gave it, e.g. "--checkpoint"."""
    if isinstance(path, Checkpoint):
        return path
    given = os.fspath(path)
    resolved = checkpoint_format.resolve_path(given)
    found = dict(role=role, gin_files=tuple(gin_files))
    if checkpoint_format.is_checkpoint(resolved):
        step = int(resolved.name) if resolved.name.isdigit() else None
        return Checkpoint(resolved, T5PIPE, step, **found)
    if not resolved.exists():
        raise UserInputError(_missing(given, resolved, role))
    model_dir = _model_dir(resolved)
    if model_dir is not None:
        return _latest(given, model_dir, role, found, say)
    from t5pipe.t5x.checkpoints import is_t5x_checkpoint, open_checkpoint

    t5x = open_checkpoint(resolved) if is_t5x_checkpoint(resolved) else None
    # A t5pipe checkpoint that lost its meta/ has t5x's Orbax layout, but no `target`.
    if t5x is not None and any(name.startswith("target/") for name in t5x.names()):
        latest = f" (its latest, {t5x.directory.name})" if t5x.directory.parent == resolved else ""
        say(
            f"{role}: {given} is a t5x checkpoint{latest}, {t5x.format} format, step "
            f"{t5x.step}: loading it directly, unverified (t5x checkpoints carry no checksums)"
        )
        return Checkpoint(t5x.directory, T5X, t5x.step, **found)
    raise UserInputError(_not_a_checkpoint(given, resolved, role))


def why_not(path: str | os.PathLike, role: str) -> str:
    """Why `path` is not a t5pipe checkpoint, where only one will do (e.g. `convert
    --to_t5x --checkpoint`): what is there instead."""
    given = os.fspath(path)
    resolved = checkpoint_format.resolve_path(given)
    if not resolved.exists():
        return _missing(given, resolved, role)
    model_dir = _model_dir(resolved)
    if model_dir is not None:
        return f"{role}: {given} is a MODEL_DIR, not one checkpoint; {_steps_line(model_dir)}"
    from t5pipe.t5x.checkpoints import is_t5x_checkpoint

    if is_t5x_checkpoint(resolved):
        return (
            f"{role}: {given} is a t5x checkpoint; here a t5pipe one is needed: "
            f"`t5pipe convert --from_t5x {given} --out CKPT` writes one"
        )
    return _not_a_checkpoint(given, resolved, role)


def _model_dir(path: epath.Path) -> epath.Path | None:
    """The MODEL_DIR `path` is (it has checkpoints/) or whose checkpoints/ folder it is."""
    if (path / checkpoint_manager.CHECKPOINTS_SUBDIR).is_dir():
        return path
    if path.name == checkpoint_manager.CHECKPOINTS_SUBDIR and not checkpoint_format.is_checkpoint(
        path.parent
    ):
        return path.parent
    return None


def _steps_line(model_dir: epath.Path) -> str:
    found = checkpoint_manager.complete_checkpoints(model_dir)
    if not found:
        return f"{checkpoint_manager.checkpoints_dir(model_dir)} holds no complete checkpoint"
    steps = ", ".join(str(step) for step, _ in found)
    return f"the complete checkpoints in {found[-1][1].parent} are steps {steps}"


def _latest(given: str, model_dir: epath.Path, role: str, found: dict, say) -> Checkpoint:
    complete = checkpoint_manager.complete_checkpoints(model_dir)
    if not complete:
        folder = checkpoint_manager.checkpoints_dir(model_dir)
        entries = _entries(folder)
        raise UserInputError(
            f"{role}: {given} is a MODEL_DIR, and {folder} holds no complete checkpoint yet "
            f"({entries}); train until it saves one, or name another checkpoint"
        )
    step, latest = complete[-1]
    say(
        f"{role}: {given} is a MODEL_DIR; using its latest complete checkpoint {latest} (step "
        f"{step}, checked against its checksums as it loads)"
        + (" (t5pipe eval --model_dir evaluates every one with --all_checkpoints)"
           if role == "--checkpoint" else "")
    )  # fmt: skip
    return Checkpoint(checkpoint_format.resolve_path(latest), T5PIPE, step, **found)


def _entries(folder: epath.Path, limit: int = 8) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return "unreadable"
    if not names:
        return "it is empty"
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return "it holds " + ", ".join(names[:limit]) + more


def _missing(given: str, path: epath.Path, role: str) -> str:
    """What to say about a path that does not exist: the steps that are there when it
    names a step, else its nearest existing parent and what that holds."""
    parent = path.parent
    if path.name.isdigit() and _model_dir(parent) is not None:
        return (
            f"{role}: {given} does not exist: there is no step {path.name}; "
            f"{_steps_line(_model_dir(parent))}"
        )
    match = _T5X_STEP.fullmatch(path.name)
    if match and parent.is_dir():
        from t5pipe.t5x.checkpoints import _step_dirs

        steps = sorted(_step_dirs(parent))
        if steps:
            return (
                f"{role}: {given} does not exist: the t5x run {parent} has no step "
                f"{match.group(1)}; its checkpoints are steps {', '.join(map(str, steps))}"
            )
    nearest = parent
    while not nearest.exists() and nearest.parent != nearest:
        nearest = nearest.parent
    return (
        f"{role}: {given} does not exist; the nearest existing folder is {nearest} "
        f"({_entries(nearest)})"
    )


def _not_a_checkpoint(given: str, path: epath.Path, role: str) -> str:
    """What to say about an existing path that is no checkpoint this module loads."""
    if path.is_file():
        folder = path.parent
        hint = (
            f"; give the folder {folder}"
            if checkpoint_format.is_checkpoint(folder) or _model_dir(folder) is not None
            else ""
        )
        return f"{role}: {given} is a file, not a checkpoint folder{hint}"
    if (path / "config.json").exists() and any((path / name).exists() for name in _HF_WEIGHTS):
        return (
            f"{role}: {given} is a Hugging Face model folder, not a t5pipe checkpoint; import "
            f"it once with `t5pipe convert --from_hf {given} --out CKPT` and pass CKPT"
        )
    if (path / checkpoint_format.STATE_ITEM).is_dir():
        return (
            f"{role}: {given} has a {checkpoint_format.STATE_ITEM}/ folder but no "
            f"{checkpoint_format.META_ITEM}/: an incomplete or damaged t5pipe checkpoint "
            "(a save that did not finish?); use another checkpoint"
        )
    return (
        f"{role}: {given} is not a checkpoint ({_entries(path)}); expected a t5pipe "
        f"checkpoint ({checkpoint_format.STATE_ITEM}/ and {checkpoint_format.META_ITEM}/), a "
        "MODEL_DIR (checkpoints/), or a t5x checkpoint (a `checkpoint` file or an orbax "
        "state/ folder); import a Hugging Face model with `t5pipe convert --from_hf DIR "
        "--out CKPT`"
    )
