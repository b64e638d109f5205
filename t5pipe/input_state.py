"""The training stream's position, saved with each checkpoint, so a resume at step k
costs the same for any k instead of re-reading the k batches before it.

    TrainStream   this process's batches (numpy dicts); `snapshot()` captures where it is
    open_stream   a stream at batch `position`: restored from a checkpoint's saved
                  position when that is usable, else by reading and dropping `position`
                  batches (exact too, one line says why)
    InputSave     the orbax item that writes the snapshots (`MODEL_DIR/checkpoints/<step>/
                  input/`)

Each process saves its own tf.data iterator state (`tf.train.Checkpoint` of the
iterator: the shuffle buffers, packing and prefetch state it holds) as
`input/process_<i>-of-<n>.{index,data-*}`, beside `process_<i>-of-<n>.json`: the
stream's settings, its position in batches and the sha256 of each file. A restore
uses it only when all of these match this run (same data settings, same process
count, files intact); otherwise it re-reads, as runs did before positions were saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
import tensorflow as tf

log = logging.getLogger(__name__)

ITEM = "input"  # the checkpoint item: MODEL_DIR/checkpoints/<step>/input
_PREFIX = "iterator"  # tf.train.Checkpoint's file prefix while a snapshot is taken


def process_name() -> str:
    """This process's file stem: a different process count never reads another's."""
    return f"process_{jax.process_index()}-of-{jax.process_count()}"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One process's saved position: the tf checkpoint's files by suffix (`index`,
    `data-00000-of-00001`) and the record (settings, position, checksums)."""

    files: Mapping[str, bytes]
    record: Mapping[str, Any]


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class TrainStream:
    """An endless iterator of numpy batches ([rows, length] per feature) whose position
    can be saved. `position`: batches handed out so far."""

    def __init__(self, iterator, settings: Mapping[str, Any], position: int = 0, restored=None):
        self._iterator = iterator
        self.settings = dict(settings)
        self.position = position
        self.restored_from: Path | None = restored  # the saved position it continues, if any
        self._unsaveable: str | None = None  # why snapshots fail, once known

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self._iterator)
        self.position += 1
        return {name: value.numpy() for name, value in batch.items()}

    def snapshot(self) -> Snapshot | None:
        """The current position, captured now (the stream moves on after). None when the
        pipeline holds state tf.data cannot save (e.g. a Python generator source): then
        a resume re-reads, and one warning says so."""
        if self._unsaveable is not None:
            return None
        folder = tempfile.mkdtemp(prefix="t5pipe-input-")
        try:
            tf.train.Checkpoint(iterator=self._iterator).write(f"{folder}/{_PREFIX}")
            files = {
                path.name[len(_PREFIX) + 1 :]: path.read_bytes()
                for path in Path(folder).iterdir()
                if path.name.startswith(_PREFIX + ".")
            }
        except (tf.errors.OpError, ValueError, TypeError) as error:
            self._unsaveable = str(error).strip().splitlines()[0][:200]
            log.warning(
                "the training data's position cannot be saved with checkpoints (%s); a "
                "resume will re-read the batches before its step",
                self._unsaveable,
            )
            return None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        record = {
            "settings": self.settings,
            "position": self.position,
            "sha256": {suffix: _sha256(content) for suffix, content in files.items()},
        }
        return Snapshot(files, record)


def stream_settings(data, split: str, shards: list[int]) -> dict[str, Any]:
    """What a saved position must have been saved with to be restored: the DataConfig
    (`data`) but for the task module and input_shards, the split, and `shards` ([count,
    first row, end row] of this process), which says what input_shards did."""
    settings = dataclasses.asdict(data)
    for key in ("mixture_or_task_module", "input_shards"):
        settings.pop(key)
    return {**settings, "split": split, "shards": list(shards)}


def _dataset_options() -> tf.data.Options:
    options = tf.data.Options()
    # State tf.data cannot save (a py_function, a generator) must fail the snapshot, not
    # be dropped silently: a restore would then continue from the wrong place.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.FAIL
    return options


def open_stream(
    make_dataset: Callable[[], tf.data.Dataset],
    settings: Mapping[str, Any],
    position: int,
    saved: Path | None,
    say: Callable[[str], None] | None = None,
) -> TrainStream:
    """The stream of the dataset `make_dataset()` builds, at batch `position`. With
    `saved` (a checkpoint's `input` folder) the position is restored from it when usable;
    else (the reason said in one `say` line) the first `position` batches are read and
    dropped, which gives the same stream.

    Each iterator is of a dataset built for it: a second iterator of one seeded dataset
    would be shuffled differently (tf.data reshuffles each iteration)."""

    def iterator():
        dataset = make_dataset().with_options(_dataset_options())
        return iter(dataset.prefetch(tf.data.AUTOTUNE))

    if saved is not None and position > 0:
        restoring = iterator()
        why = _restore(restoring, saved, settings, position)
        if why is None:
            return TrainStream(restoring, settings, position, restored=saved)
        (say or log.warning)(
            f"the data position saved in {saved} is not used ({why}); re-reading the "
            f"first {position} batches instead"
        )
    stream = TrainStream(iterator(), settings)
    _skip(stream, position)
    return stream


def _skip(stream: TrainStream, count: int) -> None:
    """Reads and drops `count` batches (as many as training used), unconverted."""
    for _ in range(count):
        next(stream._iterator)
    stream.position += count


def _restore(iterator, saved: Path, settings: Mapping[str, Any], position: int) -> str | None:
    """Restores `iterator` from `saved`; None when done, else why it was not."""
    name = process_name()
    record_path = saved / f"{name}.json"
    if not saved.exists():
        return "the checkpoint has no saved data position: it predates them"
    if not record_path.exists():
        return f"no {record_path.name}: it was saved by a run of another process count"
    try:
        record = json.loads(record_path.read_text())
        if record["settings"] != json.loads(json.dumps(dict(settings))):
            changed = sorted(
                key
                for key in set(record["settings"]) | set(settings)
                if record["settings"].get(key) != json.loads(json.dumps(settings.get(key)))
            )
            return f"the data settings changed: {', '.join(changed)}"
        if record["position"] != position:
            return f"it is at batch {record['position']}, not {position}"
        for suffix, digest in record["sha256"].items():
            if _sha256((saved / f"{name}.{suffix}").read_bytes()) != digest:
                return f"{name}.{suffix} does not match its checksum"
        tf.train.Checkpoint(iterator=iterator).read(str(saved / name)).assert_consumed()
    except (OSError, ValueError, KeyError, TypeError, AssertionError, tf.errors.OpError) as e:
        return f"it cannot be read: {str(e).strip().splitlines()[0][:200] if str(e) else e!r}"
    return None


# ----------------------------------------------------------------------------- orbax item


@dataclasses.dataclass
class InputSave(ocp.args.CheckpointArgs):
    """Save args of the `input` item: this process's snapshot."""

    snapshot: Snapshot


class InputHandler(ocp.CheckpointHandler):
    """Writes each process's snapshot into the item folder (every process its own files,
    before orbax commits the step); restores go through `open_stream`, not orbax."""

    def save(self, directory, args: InputSave) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        name = process_name()
        for suffix, content in args.snapshot.files.items():
            (directory / f"{name}.{suffix}").write_bytes(content)
        (directory / f"{name}.json").write_text(json.dumps(args.snapshot.record, indent=1))

    def restore(self, directory, args=None):
        raise NotImplementedError("a data position is restored by input_state.open_stream")

    def metadata(self, directory):
        return None

    def finalize(self, directory) -> None:
        pass

    def close(self) -> None:
        pass
