"""Progress of a long loop, fit for where the output goes.

On a terminal: a tqdm bar (redrawn in place with carriage returns). Anywhere else (a log
file, a pipe, a CI console): one plain line at each `every_percent` of the total, with
the rate and the time left, and never a carriage return, so logs stay readable.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")


def progress(
    iterable: Iterable[T],
    total: int,
    description: str,
    unit: str = "batch",
    stream: IO[str] | None = None,
    every_percent: int = 10,
) -> Iterable[T]:
    """`iterable`, reporting progress on `stream` (default stderr) as it is consumed."""
    stream = stream if stream is not None else sys.stderr
    if _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=description, unit=unit, file=stream)
    return _lines(iterable, total, description, unit, stream, every_percent)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _lines(
    iterable: Iterable[T], total: int, description: str, unit: str, stream, every_percent: int
) -> Iterator[T]:
    started = time.monotonic()
    next_percent = every_percent
    done = 0
    for item in iterable:
        yield item
        done += 1
        percent = 100 * done // total if total else 100
        if percent >= next_percent or done == total:
            stream.write(progress_line(description, done, total, time.monotonic() - started, unit))
            stream.write("\n")
            stream.flush()
            while next_percent <= percent:
                next_percent += every_percent


def progress_line(description: str, done: int, total: int, seconds: float, unit: str) -> str:
    """e.g. 'eval glue_rte_v002: 40% (4/10 batch), 2.50 batch/s, ETA 0m02s'."""
    from t5pipe.train_logging import format_duration

    rate = done / seconds if seconds > 0 else math.inf
    left = (total - done) / rate if rate and math.isfinite(rate) else 0.0
    percent = 100 * done // total if total else 100
    return (
        f"{description}: {percent}% ({done}/{total} {unit}), {rate:.2f} {unit}/s, "
        f"ETA {format_duration(left)}"
    )
