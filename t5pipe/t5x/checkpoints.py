"""t5x's two on-disk checkpoint formats: find, detect, read array by array, write.

A t5x training run writes `MODEL_DIR/checkpoint_<step>/` in one of two formats:

T5X format (`t5x.checkpoints.Checkpointer`):

    checkpoint_<step>/checkpoint     msgpack (flax.serialization) of
        {"version": 3, "optimizer": {"target": params, "state": {"step": ...,
         "param_states": optimizer state}}}
        where each partitioned array is replaced by the JSON of its TensorStore spec
        (driver zarr, kvstore path relative to the folder, e.g.
        "target.encoder.layers_0.attention.query.kernel") and small unpartitioned
        ones (the step, Adafactor's factored v_row/v_col) are stored inline.
    checkpoint_<step>/target.<path>/ and state.param_states.<path>/
        zarr arrays; one chunk per shard when a multi-device run wrote them.

Orbax format (`t5x.checkpoints.OrbaxCheckpointManagerInterface`):

    checkpoint_<step>/state/    orbax PyTree (OCDBT) of the same state dict
    checkpoint_<step>/dataset/  data iterator (optional)

Arrays are named by their '/'-joined path in the state dict ("target/encoder/...",
"state/step"). Paths may be local or remote (`gs://...`): files go through
`etils.epath`, arrays through TensorStore kvstore specs built from the path.
Nothing here imports t5x.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from etils import epath

from t5pipe.errors import UserInputError

T5X_FORMAT, ORBAX_FORMAT = "t5x", "orbax"
MSGPACK_FILE = "checkpoint"
ORBAX_STATE_ITEM = "state"
ORBAX_METADATA_FILE = "_METADATA"
# t5x writes version 3 since 2021 (bfloat16 stored natively, not as uint16).
MSGPACK_VERSION = 3
# t5x's chunk size target for the arrays one host writes whole.
CHUNK_BYTES = 64 * 1024 * 1024
# t5x writes gs:// specs with this bucket and puts in the real one when it reads.
DUMMY_BUCKET = "t5x-dummy-bucket"
_STEP_DIR = re.compile(r"checkpoint_(\d+)$")


def _path(path: str | os.PathLike) -> epath.Path:
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def kvstore_spec(directory: epath.Path, relative: str) -> dict[str, Any]:
    """The TensorStore kvstore of `relative` inside `directory` (local or gs://)."""
    text = os.fspath(directory)
    if text.startswith("gs://"):
        bucket, _, prefix = text.removeprefix("gs://").partition("/")
        return {"driver": "gcs", "bucket": bucket, "path": f"{prefix.rstrip('/')}/{relative}"}
    return {"driver": "file", "path": os.path.join(text, relative)}


def _is_ts_spec(value: Any) -> bool:
    return isinstance(value, dict) and "driver" in value and "metadata" in value


def _flatten(tree: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """('/'-joined path, leaf) pairs; TensorStore spec dicts are leaves, None is skipped."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if _is_ts_spec(value):
            yield name, value
        elif isinstance(value, Mapping):
            yield from _flatten(value, name + "/")
        elif value is not None:
            yield name, value


def _as_list(value: Any) -> list:
    """A JSON list, also when a flax state dict turned it into {"0": ..., "1": ...}."""
    if isinstance(value, Mapping):
        return [value[str(i)] for i in range(len(value))]
    return list(value)


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class T5xCheckpoint:
    """One step of a t5x checkpoint, read array by array.

    `names()` lists the state dict's arrays ('/'-joined, e.g.
    "target/encoder/layers_0/attention/query/kernel", "state/step"); `read(name)`
    returns one as numpy; `read_many(names)` streams several.
    """

    format: str
    directory: epath.Path  # the checkpoint_<step> folder

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[self._known(name)]

    def dtype(self, name: str) -> np.dtype:
        return self._dtypes[self._known(name)]

    def nbytes(self, name: str) -> int:
        return math.prod(self.shape(name)) * self.dtype(name).itemsize

    def _known(self, name: str) -> str:
        if name not in self._shapes:
            raise KeyError(f"{self.directory}: no array {name!r} in the checkpoint")
        return name

    @property
    def step(self) -> int | None:
        """The training step the checkpoint holds (`state/step`), else its folder's number."""
        if "state/step" in self._shapes:
            return int(np.asarray(self.read("state/step")).reshape(()))
        match = _STEP_DIR.search(self.directory.name)
        return int(match.group(1)) if match else None

    def read(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def read_many(self, names: Iterable[str]) -> Iterator[tuple[str, np.ndarray]]:
        for name in names:
            yield name, self.read(name)


class MsgpackCheckpoint(T5xCheckpoint):
    """The T5X format: a msgpack `checkpoint` file plus zarr arrays beside it."""

    format = T5X_FORMAT

    def __init__(self, directory: epath.Path):
        from flax import serialization

        self.directory = directory
        path = directory / MSGPACK_FILE
        try:
            contents = serialization.msgpack_restore(path.read_bytes())
        except Exception as e:  # msgpack raises several types for a damaged file
            raise UserInputError(f"{path}: not a t5x msgpack checkpoint file ({e})") from e
        if not isinstance(contents, Mapping):
            raise UserInputError(f"{path}: not a t5x msgpack checkpoint file")
        # Version 0 (early flax checkpoints) holds the state dict at the top level.
        self.version = int(contents.get("version", 0))
        state = contents.get("optimizer", contents) if self.version else contents
        self._entries = dict(_flatten(state))
        self._shapes, self._dtypes = {}, {}
        for name, value in self._entries.items():
            if _is_ts_spec(value):
                self._shapes[name] = tuple(_as_list(value["metadata"]["shape"]))
                dtype = value.get("dtype") or value["metadata"].get("dtype")
                self._dtypes[name] = _numpy_dtype(dtype)
            else:
                self._entries[name] = value = np.asarray(value)
                self._shapes[name], self._dtypes[name] = value.shape, value.dtype

    def read(self, name: str) -> np.ndarray:
        value = self._entries[self._known(name)]
        if not _is_ts_spec(value):
            return value
        import tensorstore as ts

        spec = {k: v for k, v in value.items() if k not in ("kvstore", "path", "metadata")}
        # The array's folder: kvstore.path (tensorstore >= 0.1.14), a top-level "path"
        # (older specs, and t5x's gs:// specs before normalisation), or both joined.
        parts = (value.get("kvstore", {}).get("path", ""), value.get("path", ""))
        relative = "/".join(p.strip("/") for p in parts if p)
        spec["kvstore"] = kvstore_spec(self.directory, relative)
        # As t5x: chunking and compression are read from the array's own .zarray.
        spec["metadata"] = {"shape": list(self._shapes[name])}
        if self._dtypes[name] == np.dtype(np.uint16) and self.version < 3:
            raise UserInputError(
                f"{self.directory}: {name} is stored as uint16 (t5x checkpoint version "
                f"{self.version}); rewrite it with a current t5x, which stores bfloat16"
            )
        try:
            store = ts.open(spec, open=True, read=True, context=_ts_context()).result()
            array = store.read().result()
        except (ValueError, RuntimeError) as e:  # tensorstore's errors for missing/bad data
            raise UserInputError(
                f"{self.directory}: cannot read {name} from {relative}/ ({e})"
            ) from e
        if tuple(array.shape) != self._shapes[name]:
            raise UserInputError(
                f"{self.directory}: {name} has shape {list(array.shape)} on disk but "
                f"{list(self._shapes[name])} in {MSGPACK_FILE}"
            )
        return np.asarray(array)


class OrbaxCheckpoint(T5xCheckpoint):
    """t5x's Orbax format: an orbax PyTree under `checkpoint_<step>/state/`."""

    format = ORBAX_FORMAT

    def __init__(self, directory: epath.Path, state_dir: epath.Path, batch_bytes: int):
        import orbax.checkpoint as ocp

        self.directory, self._state_dir, self._batch_bytes = directory, state_dir, batch_bytes
        try:
            metadata = ocp.PyTreeCheckpointHandler().metadata(state_dir)
        except (FileNotFoundError, ValueError) as e:
            raise UserInputError(f"{state_dir}: not a readable orbax checkpoint ({e})") from e
        tree = getattr(metadata, "tree", metadata)
        self._metadata = dict(_flatten_orbax(tree))
        self._shapes = {name: tuple(m.shape) for name, m in self._metadata.items()}
        self._dtypes = {name: np.dtype(m.dtype) for name, m in self._metadata.items()}

    def read(self, name: str) -> np.ndarray:
        return next(iter(self.read_many([name])))[1]

    def read_many(self, names: Iterable[str]) -> Iterator[tuple[str, np.ndarray]]:
        """Restores `names` in groups of about `batch_bytes` (one orbax call per group)."""
        group, size = [], 0
        for name in names:
            group.append(self._known(name))
            size += self.nbytes(name)
            if size >= self._batch_bytes:
                yield from self._restore(group)
                group, size = [], 0
        if group:
            yield from self._restore(group)

    def _restore(self, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        import orbax.checkpoint as ocp

        item, restore_args = {}, {}
        for name in names:
            *parents, last = name.split("/")
            node, args = item, restore_args
            for key in parents:
                node, args = node.setdefault(key, {}), args.setdefault(key, {})
            node[last] = self._metadata[name]
            args[last] = ocp.RestoreArgs(restore_type=np.ndarray)
        checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
        restored = checkpointer.restore(
            self._state_dir,
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
        )
        for name in names:
            node = restored
            for key in name.split("/"):
                node = node[key]
            yield name, np.asarray(node)


def _flatten_orbax(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten_orbax(value, name + "/")
        elif value is not None and hasattr(value, "shape"):
            yield name, value


def _ts_context():
    import tensorstore as ts

    return ts.Context({"file_io_concurrency": {"limit": 128}})


def _is_t5pipe_checkpoint(path: epath.Path) -> bool:
    # t5pipe's own format also has an orbax `state/`, next to a `meta/` item.
    return (path / "meta").exists()


def _checkpoint_file_kind(path: epath.Path) -> str:
    with path.open("rb") as f:
        head = f.read(21)
    return "tf" if head == b"model_checkpoint_path" else "msgpack"


def _step_dirs(path: epath.Path) -> dict[int, epath.Path]:
    steps = {}
    for child in path.iterdir():
        match = _STEP_DIR.fullmatch(child.name)
        if match and child.is_dir():
            steps[int(match.group(1))] = child
    return steps


def open_checkpoint(
    path: str | os.PathLike, step: int | None = None, *, orbax_batch_bytes: int = 256 << 20
) -> T5xCheckpoint:
    """Opens a t5x checkpoint: a `checkpoint_<step>` folder, its `checkpoint` file or
    `state/` folder, or a t5x MODEL_DIR (then `step`, default the latest).

    Raises UserInputError saying what the path holds when it is not one.
    """
    path = _path(path)
    if path.name == MSGPACK_FILE and path.is_file():
        path = path.parent
    if (
        path.name == ORBAX_STATE_ITEM
        and (path / ORBAX_METADATA_FILE).exists()
        and not _is_t5pipe_checkpoint(path.parent)
    ):
        return OrbaxCheckpoint(path.parent, path, orbax_batch_bytes)
    if not path.is_dir():
        raise UserInputError(f"{path}: no such t5x checkpoint folder")
    if (path / MSGPACK_FILE).is_file() and not (path / ORBAX_METADATA_FILE).exists():
        if _checkpoint_file_kind(path / MSGPACK_FILE) == "tf":
            raise UserInputError(
                f"{path} is a TensorFlow (Mesh TF) T5 checkpoint, not a t5x one; convert it "
                "with t5x's checkpoint importer first"
            )
        return MsgpackCheckpoint(path)
    state = path / ORBAX_STATE_ITEM
    if state.is_dir() and not _is_t5pipe_checkpoint(path):
        return OrbaxCheckpoint(path, state, orbax_batch_bytes)
    steps = _step_dirs(path)
    if steps:
        chosen = max(steps) if step is None else step
        if chosen not in steps:
            raise UserInputError(
                f"{path} has no checkpoint_{chosen}/; its steps are {sorted(steps)}"
            )
        return open_checkpoint(steps[chosen], orbax_batch_bytes=orbax_batch_bytes)
    entries = sorted(p.name for p in path.iterdir())[:8]
    raise UserInputError(
        f"{path} is not a t5x checkpoint: expected a `{MSGPACK_FILE}` msgpack file (T5X "
        f"format), a `{ORBAX_STATE_ITEM}/` orbax folder (t5x's Orbax format) or "
        f"checkpoint_<step>/ folders; found {entries}"
    )


def is_t5x_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a t5x checkpoint (either format) or a t5x MODEL_DIR with one."""
    try:
        path = _path(path)
        if not path.exists():
            return False
        if path.is_dir() and _is_t5pipe_checkpoint(path):
            return False
        open_checkpoint(path)
    except UserInputError:
        return False
    return True


# ---------------------------------------------------------------------------
# Writing the T5X format


def chunk_shape(shape: tuple[int, ...], itemsize: int, target_bytes: int) -> list[int]:
    """A chunk shape dividing `shape` evenly, at most `target_bytes` where possible:
    the largest dimension is divided by its smallest factor until the chunk fits."""
    chunk = list(shape) or []
    while chunk and math.prod(chunk) * itemsize > target_bytes:
        axis = max(range(len(chunk)), key=lambda i: chunk[i])
        if chunk[axis] == 1:
            break
        factor = next(f for f in range(2, chunk[axis] + 1) if chunk[axis] % f == 0)
        chunk[axis] //= factor
    return [max(1, n) for n in chunk]


def array_folder(name: str) -> str:
    """The folder t5x gives an array: its path with dots, "target.encoder.layers_0..."."""
    return name.replace("/", ".")


def write_array(
    directory: epath.Path, name: str, array: np.ndarray, chunk_bytes: int = CHUNK_BYTES
) -> dict[str, Any]:
    """Writes one array as t5x does (zarr, gzip) and returns the spec for the msgpack."""
    import tensorstore as ts

    array = np.ascontiguousarray(array)
    folder = array_folder(name)
    remote = os.fspath(directory).startswith("gs://")
    spec = {
        "driver": "zarr",
        "dtype": array.dtype.name,
        "kvstore": (
            {"driver": "gcs", "bucket": DUMMY_BUCKET, "path": folder}
            if remote
            else {"driver": "file", "path": folder}
        ),
        "metadata": {
            "compressor": {"id": "gzip"},
            "shape": list(array.shape),
            "chunks": chunk_shape(array.shape, array.dtype.itemsize, chunk_bytes),
        },
    }
    absolute = {**spec, "kvstore": kvstore_spec(directory, folder)}
    store = ts.open(absolute, create=True, open=True, context=_ts_context()).result()
    store.write(array).result()
    return spec


def write_msgpack(directory: epath.Path, tree: Mapping[str, Any]) -> None:
    """Writes the `checkpoint` file (last: t5x finds a checkpoint only once it exists)."""
    from flax import serialization

    blob = serialization.msgpack_serialize({"version": MSGPACK_VERSION, "optimizer": tree})
    (directory / MSGPACK_FILE).write_bytes(blob)


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, last = name.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return tree
