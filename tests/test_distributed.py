"""Multi-process start-up flags: validation, auto-detection, and the call they make.

jax.distributed.initialize is replaced by a recorder: initialising it for real would tie
this test process to a coordinator (the two-process run is tested end to end elsewhere).
"""

import argparse

import jax
import pytest
from jax._src.clusters import ClusterEnv, SlurmCluster

from t5pipe import distributed

SLURM_STEP = {  # what `srun` sets for task 11 of 2 nodes x 8 GPUs
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_NODELIST": "gpu[007-008]",
    "SLURM_NTASKS": "16",
    "SLURM_PROCID": "11",
    "SLURM_LOCALID": "3",
}


@pytest.fixture
def calls(monkeypatch):
    """Records jax.config.update and jax.distributed.initialize calls, in order."""
    recorded = []
    monkeypatch.setattr(distributed, "_initialized_by", None)
    monkeypatch.setattr(jax.config, "update", lambda name, value: recorded.append((name, value)))
    monkeypatch.setattr(
        jax.distributed, "initialize", lambda **kwargs: recorded.append(("initialize", kwargs))
    )
    for name in [*SLURM_STEP, "T5PIPE_DISTRIBUTED"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_on_cloud_tpu_vm", lambda: False)
    return recorded


def parse(argv):
    parser = argparse.ArgumentParser(prog="t5pipe train")
    distributed.add_distributed_flags(parser)
    return parser.parse_args(argv)


def test_explicit_flags_initialise_with_them_and_gloo_first(calls):
    args = parse(["--coordinator_address=127.0.0.1:4321", "--process_count=2", "--process_index=1"])
    assert distributed.initialize(args) == "flags"
    assert calls == [
        ("jax_cpu_collectives_implementation", "gloo"),
        (
            "initialize",
            {"coordinator_address": "127.0.0.1:4321", "num_processes": 2, "process_id": 1},
        ),
    ]


def test_initialises_only_once(calls):
    args = parse(["--coordinator_address=host:1", "--process_count=2", "--process_index=0"])
    distributed.initialize(args)
    assert distributed.initialize(args) == "flags"
    assert [call for call in calls if call[0] == "initialize"] == [
        ("initialize", {"coordinator_address": "host:1", "num_processes": 2, "process_id": 0})
    ]


@pytest.mark.parametrize(
    "argv, given, missing",
    [
        (
            ["--coordinator_address=h:1"],
            "--coordinator_address",
            "--process_count, --process_index",
        ),
        (["--process_count=2"], "--process_count", "--coordinator_address, --process_index"),
        (
            ["--process_index=0", "--process_count=2"],
            "--process_count, --process_index",
            "--coordinator_address",
        ),
    ],
)
def test_partial_flags_are_an_error_naming_what_is_missing(calls, argv, given, missing):
    with pytest.raises(SystemExit, match=f"got {given} but not {missing}"):
        distributed.initialize(parse(argv))
    assert calls == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--process_count=2", "--process_index=2"], r"--process_index=2 must be in 0 \.\. 1"),
        (["--process_count=2", "--process_index=-1"], r"--process_index=-1 must be in 0 \.\. 1"),
        (["--process_count=0", "--process_index=0"], "--process_count=0 must be at least 1"),
    ],
)
def test_inconsistent_counts_are_an_error(calls, argv, message):
    with pytest.raises(SystemExit, match=message):
        distributed.initialize(parse(["--coordinator_address=h:1", *argv]))
    assert calls == []


@pytest.mark.parametrize(
    "address", ["localhost", "localhost:", ":1234", "h:port", "h:0", "h:65536"]
)
def test_bad_coordinator_address_is_an_error(calls, address):
    argv = [f"--coordinator_address={address}", "--process_count=2", "--process_index=0"]
    with pytest.raises(SystemExit, match="is not HOST:PORT"):
        distributed.initialize(parse(argv))
    assert calls == []


def test_ipv6_coordinator_address_is_accepted(calls):
    args = parse(["--coordinator_address=[::1]:1234", "--process_count=1", "--process_index=0"])
    assert distributed.initialize(args) == "flags"


def test_non_integer_count_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        parse(["--process_count=two"])
    assert "--process_count: invalid int value: 'two'" in capsys.readouterr().err


def test_single_host_does_nothing(calls):
    assert distributed.initialize(parse([])) is None
    assert calls == []


def test_this_cpu_machine_is_not_a_tpu_vm():
    assert distributed._on_cloud_tpu_vm() is False


def test_slurm_step_with_several_tasks_auto_detects(calls, monkeypatch):
    for name, value in SLURM_STEP.items():
        monkeypatch.setenv(name, value)
    assert distributed.initialize(parse([])) == "slurm"
    assert calls == [("initialize", {})]


def test_jax_reads_the_same_slurm_step_as_one_process_per_gpu(monkeypatch):
    """What the no-argument initialize() will use: JAX's own SLURM detection must agree
    with ours, and must give each task the GPU numbered by its SLURM_LOCALID, which is why
    launch/slurm runs one process per GPU."""
    for name, value in SLURM_STEP.items():
        monkeypatch.setenv(name, value)
    assert SlurmCluster.is_env_present()
    address, count, index, local_devices = ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, 300
    )
    assert address.startswith("gpu007:")
    assert (count, index, list(local_devices)) == (16, 11, [3])


@pytest.mark.parametrize(
    "change",
    [
        {"SLURM_NTASKS": "1"},  # one task: nothing to join
        {"SLURM_STEP_NODELIST": None},  # the batch script itself, outside srun
        {"T5PIPE_DISTRIBUTED": "off"},  # turned off by the user
    ],
)
def test_slurm_without_several_tasks_in_a_step_does_nothing(calls, monkeypatch, change):
    for name, value in {**SLURM_STEP, **change}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert distributed.initialize(parse([])) is None
    assert calls == []


def test_bad_slurm_task_count_is_an_error(calls, monkeypatch):
    for name, value in {**SLURM_STEP, "SLURM_NTASKS": "many"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match="SLURM_NTASKS='many' is not a number"):
        distributed.initialize(parse([]))


def test_tpu_vm_auto_detects(calls, monkeypatch):
    monkeypatch.setattr(distributed, "_on_cloud_tpu_vm", lambda: True)
    assert distributed.initialize(parse([])) == "tpu"
    assert calls == [("initialize", {})]


def test_explicit_flags_win_over_the_environment(calls, monkeypatch):
    for name, value in SLURM_STEP.items():
        monkeypatch.setenv(name, value)
    args = parse(["--coordinator_address=10.0.0.2:9999", "--process_count=4", "--process_index=3"])
    assert distributed.initialize(args) == "flags"
    assert calls[-1] == (
        "initialize",
        {"coordinator_address": "10.0.0.2:9999", "num_processes": 4, "process_id": 3},
    )
