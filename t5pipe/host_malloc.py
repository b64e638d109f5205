"""glibc malloc settings for XLA:CPU, applied by re-executing the command once.

An XLA:CPU executable allocates its temporary buffers afresh on every call; for a
t5_1_1 small training step (batch 8, 128/32) that is one ~0.9 GB arena plus the
optimizer's per-leaf buffers. glibc serves every block over 32 MiB with its own `mmap`
and returns it with `munmap`, and the arenas of XLA's worker threads cannot hold such
blocks at all, so each step faults ~0.9 GB of fresh zeroed pages in again: about
200,000 page faults and half a second of kernel time per 1.9 s step on the 2-core
development CPU. With

    MALLOC_MMAP_MAX_=0          no mmap'd blocks: everything comes from the heap
    MALLOC_ARENA_MAX=1          one heap for all threads (thread arenas cap blocks at 64 MiB)
    MALLOC_TRIM_THRESHOLD_=2^40 freed heap memory is kept for the next step

the step reuses the same pages: ~1 page fault per step, the step 11% faster
(benchmarks/README.md). The cost is a higher resident peak (freed blocks stay mapped).

glibc reads these variables once, when the process starts, so setting them from Python
is too late (calling `mallopt` at run time, after start-up, does not give the same
effect); `reexec_with_cpu_malloc` therefore re-executes the same command line with
them set (values already in the environment win), before any heavy library is
loaded. Only on a host without accelerators (GPU/TPU device nodes, or JAX_PLATFORMS
naming another platform first): host memory of accelerator jobs is left to glibc's
defaults. T5PIPE_CPU_MALLOC=0 turns it off.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Mapping

SWITCH = "T5PIPE_CPU_MALLOC"
SETTINGS = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_TRIM_THRESHOLD_": str(2**40),
}
# Device nodes of accelerators JAX would use: NVIDIA GPUs (and WSL's), TPUs (v4 and
# earlier as /dev/accel*, later generations through VFIO).
_ACCELERATOR_NODES = ("/dev/nvidia[0-9]*", "/dev/dxg", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def cpu_only_host(environ: Mapping[str, str]) -> bool:
    """Whether JAX will run on the CPU: no accelerator device nodes, and JAX_PLATFORMS
    (when set) names cpu first."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms and platforms.split(",")[0].strip() != "cpu":
        return False
    if platforms.startswith("cpu"):
        return True
    return not any(glob.glob(pattern) for pattern in _ACCELERATOR_NODES)


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether this process should re-execute itself with `SETTINGS`: a CPU-only host,
    not switched off, and some setting not yet in the environment (the re-executed
    process has them all; a value the user set is never replaced)."""
    if environ.get(SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if all(name in environ for name in SETTINGS):
        return False
    return cpu_only_host(environ)


def reexec_with_cpu_malloc() -> None:
    """Replaces this process by the same command line with `SETTINGS` in its
    environment, when `wanted`. Call it first thing in a process's entry point, before
    any thread or heavy import exists; it does not return when it re-executes."""
    if not wanted(os.environ):
        return
    environ = {**SETTINGS, **os.environ}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
