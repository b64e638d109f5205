"""Checksums of a checkpoint's arrays: written at save, compared after a restore.

A training save records, in the checkpoint's `meta` item, one checksum per array of the
state ({"params/encoder/...": crc}, keyed by the array's path in the state): CRC-32C when
`google_crc32c` is installed, else zlib's CRC-32 (`CHECKSUM_KIND` says which). It is taken
over the array's values as they are in memory, so a restore that reads back the same
values matches, and a flipped bit in a data file (which TensorStore would otherwise
return as a wrong value) does not. An asynchronous save hashes in its background thread
(`PendingMeta`); the training loop only copies the state to host memory.

A checkpoint is "verified" when every array restored from it has its recorded checksum.
Checkpoints without checksums (older t5pipe versions, t5x and Hugging Face imports) load
unverified, with one line saying so. Arrays that span several processes are not
fetched to one host to be hashed: multi-process runs record and check no checksums.
"""

from __future__ import annotations

import json
import sys
import zlib
from typing import Any

import jax
import numpy as np

from t5pipe.errors import UserInputError

try:
    import google_crc32c

    CHECKSUM_KIND = "crc32c"

    def _crc(data: memoryview) -> int:
        return google_crc32c.value(data)

except ImportError:
    CHECKSUM_KIND = "crc32"

    def _crc(data: memoryview) -> int:
        return zlib.crc32(data)


CHECKSUMS_KEY = "checksums"
KIND_KEY = "checksum_kind"


class CorruptCheckpoint(UserInputError):
    """A checkpoint's array does not have the checksum recorded when it was saved."""

    def __init__(self, path, array: str):
        super().__init__(
            f"checkpoint {path} fails verification: array {array} does not match the "
            "checksum recorded when it was saved (a data file of the checkpoint is corrupt). "
            "Use another checkpoint (e.g. the previous step's)."
        )
        self.path, self.array = path, array


def array_name(key_path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def _checksum(value) -> list:
    """[checksum, dtype]: an array restored in another dtype cannot be compared."""
    array = np.ascontiguousarray(np.asarray(value))
    return [_crc(memoryview(array.reshape(-1).view(np.uint8))), str(array.dtype)]


def checksums(tree: Any) -> dict[str, list] | None:
    """{array path: [checksum, dtype]} for every array of `tree`; None in multi-process
    runs."""
    if jax.process_count() > 1:
        return None
    return _host_checksums(jax.device_get(tree))


def _host_checksums(host_tree: Any) -> dict[str, list]:
    leaves = jax.tree_util.tree_flatten_with_path(host_tree)[0]
    return {array_name(path): _checksum(leaf) for path, leaf in leaves}


class PendingMeta:
    """A checkpoint's meta whose checksums are computed when `resolve` is called: in an
    asynchronous save, by the background thread that writes the meta item, so that the
    training loop only pays for a host copy of the state (the device buffers are
    donated to the next step, so the arrays must be copied before it runs)."""

    def __init__(self, meta: dict[str, Any], state: Any):
        self.meta = meta
        self._host = _host_copy(state) if jax.process_count() == 1 else None

    def resolve(self) -> dict[str, Any]:
        host, self._host = self._host, None  # the copy goes as soon as it is hashed
        if host is None:
            return self.meta
        return {**self.meta, CHECKSUMS_KEY: _host_checksums(host), KIND_KEY: CHECKSUM_KIND}


def _host_copy(tree: Any) -> Any:
    def own(leaf):
        leaf = np.asarray(leaf)
        # On CPU, device_get hands out views of the device buffers themselves.
        return leaf if leaf.flags.owndata else leaf.copy()

    return jax.tree.map(own, jax.device_get(tree))


def with_checksums(meta: dict[str, Any], state: Any) -> dict[str, Any]:
    """`meta` plus the checksums of `state`'s arrays, computed now."""
    return PendingMeta(meta, state).resolve()


def mismatches(tree: Any, meta: dict[str, Any], prefix: str = "") -> list[str] | None:
    """The paths of `tree`'s arrays (under `prefix` in the saved state) whose checksum
    differs from `meta`'s; None when `meta` records none (unverified)."""
    recorded = meta.get(CHECKSUMS_KEY)
    if recorded is None or meta.get(KIND_KEY) != CHECKSUM_KIND or jax.process_count() > 1:
        return None
    found = checksums(tree)
    bad = []
    for name, value in found.items():
        full = f"{prefix}{name}"
        expected = recorded.get(full)
        if expected is not None and expected[1] == value[1] and expected[0] != value[0]:
            bad.append(full)
    return bad


def verify(tree: Any, meta: dict[str, Any], path, prefix: str = "", say=None) -> bool:
    """Raises CorruptCheckpoint naming the first array that does not match; returns
    whether the checkpoint was verified (False: it has no checksums, which `say` or the
    log is told in one line)."""
    bad = mismatches(tree, meta, prefix)
    if bad is None:
        line = (
            f"checkpoint {path} records no checksums (an older t5pipe version, or a t5x / "
            "Hugging Face import): loaded unverified"
        )
        (say or _to_stderr)(line)
        return False
    if bad:
        raise CorruptCheckpoint(path, bad[0])
    return True


def clean_reason(error: BaseException) -> str:
    """A short reason for a failed restore: the corrupt array, or the error's first line."""
    if isinstance(error, CorruptCheckpoint):
        return f"array {error.array} does not match its checksum"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


STATE_METADATA_FILE = "_METADATA"  # orbax's record of the saved tree, in the state item


def check_state_metadata(state_dir) -> None:
    """Raises an error naming `state_dir/_METADATA` when that file (orbax's JSON record
    of the saved arrays) is present but not a JSON object: orbax itself reports such a
    file as a bare decode error, or as a missing attribute, naming no file."""
    file = state_dir / STATE_METADATA_FILE
    if not file.exists():
        return  # older orbax layouts have none; a restore reports what it misses
    try:
        value = json.loads(file.read_bytes())
        problem = None if isinstance(value, dict) else f"a JSON {type(value).__name__}"
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are both
        problem = f"{type(error).__name__}: {str(error)[:200]}"
    except OSError as error:
        problem = f"cannot be read: {error.strerror or error}"
    if problem is not None:
        raise UserInputError(
            f"{file}: not the JSON object orbax writes there ({problem}); the file is damaged, "
            "so the checkpoint's arrays cannot be read. Use another checkpoint (in a "
            "MODEL_DIR, move this one out of checkpoints/ to resume from the previous one)."
        )


def unreadable(path, error: BaseException) -> UserInputError:
    """The error for a checkpoint whose state cannot be read back (a damaged or missing
    data file, or a garbled state/_METADATA, which is then named)."""
    from etils import epath

    check_state_metadata(epath.Path(path) / "state")
    return UserInputError(
        f"checkpoint {path}: its arrays cannot be read ({clean_reason(error)}); a file under "
        f"{path}/state (its _METADATA or a data file) is damaged or missing. Use another "
        "checkpoint."
    )
