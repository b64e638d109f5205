"""What a training run writes into MODEL_DIR, its console progress line, and its rates.

    MODEL_DIR/config.gin        the operative gin config (what the run really used)
    MODEL_DIR/model-info.txt    parameter shapes, dtypes, logical axes, mesh partition specs
    MODEL_DIR/metrics.jsonl     one JSON object per logged step (train) and per eval
    MODEL_DIR/tensorboard/      TensorBoard events (train/* and eval/* scalars)

Only process 0 writes; the other processes of a multi-host run log nothing.
`check_writable` runs before a run writes anything; `Throughput` turns step times into
steps/s, tokens/s and MFU.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gin
import jax

from t5pipe import flops
from t5pipe.errors import UserInputError

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.gin"
MODEL_INFO_FILE = "model-info.txt"
TENSORBOARD_SUBDIR = "tensorboard"
# The per-token mean loss, logged beside t5x's summed `loss` (metrics.jsonl, TensorBoard).
LOSS_PER_TOKEN = "loss/token"


def is_primary() -> bool:
    return jax.process_index() == 0


def check_writable(model_dir: str | os.PathLike) -> None:
    """MODEL_DIR, or the nearest folder it would be created in, accepts new files.

    A probe file is created and removed; nothing that exists is changed. Remote
    paths (gs://...) are left to the first write.
    """
    text = os.fspath(model_dir)
    if "://" in text:
        return
    path = Path(text).absolute()
    existing, where = path, ""
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        where = "" if existing == path else f" (it would be created inside {existing})"
        if not existing.is_dir():
            raise UserInputError(
                f"MODEL_DIR={text!r} cannot be a folder: {existing} is a file. Choose another "
                "folder with --gin.MODEL_DIR=..."
            )
        handle, probe = tempfile.mkstemp(prefix=".t5pipe_write_probe_", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:  # no permission to look into, or to write in, the folder
        raise UserInputError(
            f"MODEL_DIR={text!r} is not writable{where}: {error.strerror}. Choose a folder you "
            "can write with --gin.MODEL_DIR=..., or give yourself write permission there."
        ) from None


class Throughput:
    """Steps/s, tokens/s and MFU between two logged steps (compilation excluded: the
    clock starts after the first step)."""

    def __init__(self, config, batch_size: int, lengths: dict[str, int], peak: float | None):
        self.step_flops = flops.train_flops_per_step(
            config, batch_size, lengths["inputs"], lengths["targets"]
        )
        self.tokens_per_step = batch_size * (lengths["inputs"] + lengths["targets"])
        self.peak = peak or flops.peak_flops_per_device()
        self._time: float | None = None
        self._step = 0
        self._first: tuple[float, int] | None = None

    def start(self, step: int) -> None:
        self._time, self._step = time.time(), step
        self._first = (self._time, step)

    def overall(self, step: int) -> float:
        """Tokens/s from `start` to `step` (nan when no step was timed)."""
        if self._first is None or step <= self._first[1]:
            return float("nan")
        first_time, first_step = self._first
        return (step - first_step) * self.tokens_per_step / max(time.time() - first_time, 1e-9)

    def measure(self, step: int) -> dict[str, float | None]:
        now = time.time()
        rate = float("nan")
        if self._time is not None and step > self._step:
            rate = (step - self._step) / max(now - self._time, 1e-9)
        self._time, self._step = now, step
        mfu = None
        if self.peak and self.step_flops and math.isfinite(rate):
            mfu = self.step_flops * rate / (self.peak * jax.device_count())
        return {
            "steps_per_second": rate,
            "tokens_per_second": rate * self.tokens_per_step,
            "mfu": mfu,
        }


def write_operative_config(model_dir: Path) -> None:
    if is_primary():
        (model_dir / CONFIG_FILE).write_text(gin.operative_config_str())


def write_model_info(model_dir: Path, text: str) -> None:
    if is_primary():
        (model_dir / MODEL_INFO_FILE).write_text(text + "\n")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _plain(value: Any) -> Any:
    """JSON-ready scalars; float32 values keep their exact value as Python floats."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf
    return value


def say(text: str) -> None:
    """A console line from the primary process."""
    if is_primary():
        print(text, flush=True)


def roll_back_metrics(path: Path, step: int) -> int:
    """Drops the rows of metrics.jsonl past `step` (a resumed run redoes those steps);
    rewritten atomically (temporary file + rename). Returns how many rows went."""
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row_step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            row_step = None  # a torn last line of a killed run goes too
            if line.endswith("\n"):
                kept.append(line)
            continue
        if not isinstance(row_step, int) or row_step <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    dropped = len(lines) - len(kept)
    if dropped or (lines and not lines[-1].endswith("\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


class MetricsLog:
    """Appends metrics to metrics.jsonl and TensorBoard, and prints progress lines.

    `start(step)` opens both at the step the run starts from: rows a previous run logged
    past it (steps it redoes after a resume) are removed from metrics.jsonl, and
    TensorBoard purges its events past it (`purge_step`)."""

    def __init__(self, model_dir: Path, total_steps: int):
        self.model_dir = model_dir
        self.total_steps = total_steps
        self.primary = is_primary()
        self.started = time.time()
        self.start_step: int | None = None
        self._writer = None
        self._file = None

    def start(self, step: int) -> None:
        if not self.primary:
            return
        path = self.model_dir / METRICS_FILE
        dropped = roll_back_metrics(path, step)
        if dropped:
            self.message(f"{path}: removed {dropped} row(s) past step {step}, which are redone")
        self._file = path.open("a", encoding="utf-8")  # noqa: SIM115
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(
            str(self.model_dir / TENSORBOARD_SUBDIR), purge_step=step + 1 if step else None
        )

    def write(self, step: int, metrics: dict[str, Any], prefix: str = "train") -> None:
        if not self.primary:
            return
        record = {"step": step, **({} if prefix == "train" else {"split": prefix})}
        record.update({name: _plain(value) for name, value in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in record.items():
            if name != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self._writer.add_scalar(f"{prefix}/{name}", value, step)
        self._writer.flush()

    def progress(self, step: int, metrics: dict[str, Any]) -> None:
        """Prints `step s/N loss ... ETA ...` to stdout."""
        if not self.primary:
            return
        if self.start_step is None:
            self.start_step = step
        steps_per_second = metrics.get("steps_per_second") or 0.0
        remaining = (self.total_steps - step) / steps_per_second if steps_per_second else math.inf
        print(
            f"step {step}/{self.total_steps}  loss {metrics['loss']:.4f}  "
            f"loss/token {metrics[LOSS_PER_TOKEN]:.4f}  "
            f"acc {metrics['accuracy']:.3f}  lr {metrics['learning_rate']:.3g}  "
            f"{metrics['tokens_per_second']:.0f} tok/s  {steps_per_second:.2f} steps/s  "
            f"elapsed {format_duration(time.time() - self.started)}  "
            f"ETA {format_duration(remaining)}",
            flush=True,
        )

    def message(self, text: str) -> None:
        if self.primary:
            print(text, flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._writer.close()


def print_error(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
