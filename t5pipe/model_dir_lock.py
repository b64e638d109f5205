"""One writer per MODEL_DIR: `t5pipe train` holds `MODEL_DIR/t5pipe-train.lock` while it runs.

The lock file records the holder (host, pid, start time) and is created with exclusive
create (`O_EXCL`), so of two runs started together exactly one gets it; the other stops
with exit code 2 naming the holder, before it has changed anything. A lock whose holder
is a dead process on this host (a killed run) is taken over, with a message. Only process
0 of a multi-process run takes it.

On remote MODEL_DIRs (gs://...) object stores give no exclusive create through epath; the
lock there is best effort (written when absent, checked again after writing) and is not
tested here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from pathlib import Path

import jax

from t5pipe.errors import UserInputError

LOCK_FILE = "t5pipe-train.lock"


@dataclasses.dataclass(frozen=True)
class Lock:
    """A held lock: its file and when it was taken (seconds since the epoch)."""

    path: Path | None
    start_time: float

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Removes the lock file if it is still this process's."""
        if self.path is None:
            return
        try:
            if _read(self.path).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass


def _record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start_time": time.time()}


def _read(path) -> dict:
    return json.loads(path.read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("start_time", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {started}"


def acquire(model_dir, say=print) -> Lock:
    """Takes MODEL_DIR's lock, or raises UserInputError naming the run that holds it."""
    if jax.process_index() != 0:
        return Lock(None, time.time())
    path = model_dir / LOCK_FILE
    if "://" in os.fspath(model_dir):
        return _acquire_remote(path)
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        record = _record()
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            _take_over_if_stale(Path(path), say)
            continue
        with os.fdopen(handle, "w") as out:
            json.dump(record, out)
        return Lock(Path(path), record["start_time"])
    raise UserInputError(f"could not take the lock {path}: it keeps being re-created")


def _take_over_if_stale(path: Path, say) -> None:
    """Removes the lock of a dead holder on this host; raises if the holder may live."""
    try:
        holder = json.loads(path.read_text())
        pid, host = int(holder["pid"]), str(holder["host"])
    except FileNotFoundError:
        return  # released meanwhile: try again
    except (OSError, ValueError, KeyError, TypeError):
        raise UserInputError(
            f"{path} exists but is not a t5pipe lock this version can read. If no "
            "`t5pipe train` is running on this MODEL_DIR, delete that file and rerun."
        ) from None
    mine = host == socket.gethostname() and pid == os.getpid()  # left by an earlier call
    if host == socket.gethostname() and (mine or not _alive(pid)):
        say(f"taking over the lock {path}: its holder ({_describe(holder)}) is no longer running")
        path.unlink(missing_ok=True)
        return
    raise UserInputError(
        f"MODEL_DIR {path.parent} is in use by another `t5pipe train` ({_describe(holder)}; "
        f"lock file {path}). Wait for it to finish, stop it, or use another MODEL_DIR; if "
        "that run is gone (e.g. its machine died), delete the lock file and rerun."
    )


def _acquire_remote(path) -> Lock:
    record = _record()
    if path.exists():
        holder = json.loads(path.read_text())
        raise UserInputError(
            f"MODEL_DIR {path.parent} is in use by another `t5pipe train` "
            f"({_describe(holder)}; lock file {path}). If that run is gone, delete the lock "
            "file and rerun."
        )
    path.write_text(json.dumps(record))
    if json.loads(path.read_text()) != record:  # a writer raced us: the last one wins
        raise UserInputError(f"MODEL_DIR {path.parent}: another run took the lock {path}")
    return Lock(path, record["start_time"])
