"""How the benchmarks take their figures: wall-clock samples, compilations, memory.

Every timing is a list of per-call wall-clock seconds (each call waited on until its
results exist); figures report the median, so one slow call (another process on a
shared machine, a GC pause) does not move them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax


def summarize(seconds: list[float]) -> dict[str, Any]:
    """Median / min / max of per-call times, and the samples themselves."""
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "samples_s": [round(s, 6) for s in seconds],
    }


def time_calls(call: Callable[[], Any], repeats: int) -> list[float]:
    """Wall-clock seconds of `repeats` calls of `call`, each waited on (`block_until_ready`)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return times


def peak_host_memory_bytes() -> int:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_device_memory_bytes() -> int | None:
    """Largest `peak_bytes_in_use` over local devices; None where the backend keeps no
    statistics (CPU)."""
    peaks = []
    for device in jax.local_devices():
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


# jax_log_compiles messages (jax._src.dispatch / pxla), one set per compilation of `name`.
_TRACED = re.compile(r"Finished tracing \+? ?(?:transforming )?(\S+) for \w+ in ([\d.e-]+) sec")
_COMPILING = re.compile(r"Compiling (?:jit|pjit)\((\S+?)\) with global shapes")
_PHASE = re.compile(
    r"Finished (jaxpr to MLIR module conversion|XLA compilation) (?:of )?(?:jit|pjit)\((\S+?)\)"
    r" in ([\d.e-]+) sec"
)


class CompileLog(logging.Handler):
    """Counts XLA compilations per function name, with their tracing/lowering/compile time.

    Uses `jax_log_compiles`: jax logs one "Compiling jit(NAME) ..." line per
    compilation (a cache hit logs nothing), so the count is exactly the number of
    executables built for NAME.
    """

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.compilations: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if found := _COMPILING.search(message):
            name = found.group(1)
            self.compilations[name] = self.compilations.get(name, 0) + 1
        elif found := _TRACED.search(message):
            self._add(found.group(1), float(found.group(2)))
        elif found := _PHASE.search(message):
            self._add(found.group(2), float(found.group(3)))

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def count(self, name: str) -> int:
        return self.compilations.get(name, 0)


@contextlib.contextmanager
def compile_log() -> Iterator[CompileLog]:
    """Collects compilations while the block runs (and keeps jax's log lines off stderr)."""
    logger = logging.getLogger("jax")
    handler = CompileLog()
    previous = (jax.config.jax_log_compiles, logger.level, logger.propagate)
    jax.config.update("jax_log_compiles", True)
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)  # jax logs compilations at WARNING
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        jax.config.update("jax_log_compiles", previous[0])
        logger.setLevel(previous[1])
        logger.propagate = previous[2]
