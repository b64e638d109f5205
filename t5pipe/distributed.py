"""Multi-process start-up, shared by every `t5pipe` command.

Every process of a multi-host job runs the same command; before it touches a device,
`initialize` joins it to the others with `jax.distributed.initialize`:

    --coordinator_address HOST:PORT --process_count N --process_index I
        all three given (bare GPU clusters, CPU tests): initialise with them. On CPU the
        processes need gloo for cross-process collectives, so it is switched on first.
    SLURM job step with SLURM_NTASKS > 1 (srun), or a Cloud TPU VM:
        `jax.distributed.initialize()` with no arguments; JAX reads the peers from SLURM's
        variables or the TPU VM's metadata (a single-host TPU VM becomes one process).
    anything else: one process on one host, nothing to do.

T5PIPE_DISTRIBUTED=off turns the auto-detection off (the flags still work), for a single
process inside a multi-task SLURM allocation, say.

Commands call, at the start of main():

    parser = argparse.ArgumentParser(...)
    distributed.add_distributed_flags(parser)
    args = parser.parse_args(argv)
    distributed.initialize(args)
"""

from __future__ import annotations

import argparse
import glob
import os
from collections.abc import Mapping

FLAG_NAMES = ("coordinator_address", "process_count", "process_index")

# The variables JAX's SLURM detection reads (jax._src.clusters.slurm_cluster); inside an
# `srun` step all are set.
_SLURM_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)

_initialized_by: str | None = None


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """t5x's multi-process flags; give all three or none (then the platform is asked)."""
    group = parser.add_argument_group(
        "multi-process (give all three, or none to auto-detect on TPU VMs and SLURM)"
    )
    group.add_argument(
        "--coordinator_address",
        default=None,
        metavar="HOST:PORT",
        help="address of process 0's coordinator service, e.g. 10.0.0.2:1234",
    )
    group.add_argument(
        "--process_count",
        type=int,
        default=None,
        metavar="N",
        help="number of processes in the job",
    )
    group.add_argument(
        "--process_index",
        type=int,
        default=None,
        metavar="I",
        help="this process's index, 0 .. N-1",
    )


def validate_distributed_flags(args: argparse.Namespace) -> bool:
    """True when the flags ask for an explicit multi-process start, False when none is
    given; raises SystemExit naming the flag when they are partial or inconsistent."""
    values = {name: getattr(args, name, None) for name in FLAG_NAMES}
    given = [name for name, value in values.items() if value is not None]
    if not given:
        return False
    if len(given) < len(FLAG_NAMES):
        missing = [name for name in FLAG_NAMES if name not in given]
        raise SystemExit(
            "error: multi-process flags need all of --coordinator_address, --process_count "
            f"and --process_index; got {_flags(given)} but not {_flags(missing)}"
        )
    _check_address(values["coordinator_address"])
    count, index = values["process_count"], values["process_index"]
    if count < 1:
        raise SystemExit(f"error: --process_count={count} must be at least 1")
    if not 0 <= index < count:
        raise SystemExit(
            f"error: --process_index={index} must be in 0 .. {count - 1} (--process_count={count})"
        )
    return True


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """'slurm' or 'tpu' when JAX can find this job's processes by itself, else None."""
    environ = os.environ if environ is None else environ
    if environ.get("T5PIPE_DISTRIBUTED", "auto").lower() in ("off", "0", "false", "no"):
        return None
    if all(name in environ for name in _SLURM_VARIABLES):
        try:
            tasks = int(environ["SLURM_NTASKS"])
        except ValueError:
            raise SystemExit(
                f"error: SLURM_NTASKS={environ['SLURM_NTASKS']!r} is not a number"
            ) from None
        if tasks > 1:
            return "slurm"
    if _on_cloud_tpu_vm():
        return "tpu"
    return None


def initialize(args: argparse.Namespace) -> str | None:
    """Joins this process to the others, once. Returns how: 'flags', 'slurm', 'tpu', or
    None for a single process (then nothing was done)."""
    global _initialized_by
    import jax  # here, not at the top: `t5pipe COMMAND --help` stays fast

    explicit = validate_distributed_flags(args)
    if _initialized_by is not None:
        return _initialized_by
    if explicit:
        # gloo gives CPU devices cross-process collectives; it changes nothing for GPU/TPU.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.process_count,
            process_id=args.process_index,
        )
        _initialized_by = "flags"
        return _initialized_by
    cluster = detect_cluster()
    if cluster is not None:
        jax.distributed.initialize()
        _initialized_by = cluster
    return cluster


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(
            f"error: --coordinator_address={address!r} is not HOST:PORT (e.g. 10.0.0.2:1234)"
        )


def _flags(names: list[str]) -> str:
    return ", ".join(f"--{name}" for name in names)


def _on_cloud_tpu_vm() -> bool:
    """TPU chips attached and libtpu installed: JAX's own test, made when jax is imported
    and the one its TPU cluster detection uses."""
    try:
        from jax._src import cloud_tpu_init
    except ImportError:  # a private module; if it moves, look for TPU device files instead
        return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))
    return bool(cloud_tpu_init.running_in_cloud_tpu_vm)
