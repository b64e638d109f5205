"""What a training run writes into MODEL_DIR, and its console progress line.

    MODEL_DIR/config.gin        the operative gin config (what the run really used)
    MODEL_DIR/model-info.txt    parameter shapes, dtypes, logical axes, mesh partition specs
    MODEL_DIR/metrics.jsonl     one JSON object per logged step (train) and per eval
    MODEL_DIR/tensorboard/      TensorBoard events (train/* and eval/* scalars)

Only process 0 writes; the other processes of a multi-host run log nothing.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import gin
import jax

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.gin"
MODEL_INFO_FILE = "model-info.txt"
TENSORBOARD_SUBDIR = "tensorboard"


def is_primary() -> bool:
    return jax.process_index() == 0


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


class MetricsLog:
    """Appends metrics to metrics.jsonl and TensorBoard, and prints progress lines."""

    def __init__(self, model_dir: Path, total_steps: int):
        self.total_steps = total_steps
        self.primary = is_primary()
        self.started = time.time()
        self.start_step: int | None = None
        self._writer = None
        self._file = None
        if self.primary:
            self._file = (model_dir / METRICS_FILE).open("a", encoding="utf-8")  # noqa: SIM115
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(model_dir / TENSORBOARD_SUBDIR))

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
        if self.primary:
            self._file.close()
            self._writer.close()


def print_error(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
