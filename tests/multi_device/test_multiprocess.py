"""`t5pipe train` across two processes x 2 CPU devices (jax.distributed on 127.0.0.1, gloo).

A one-process, 4-device run reads the data as 2 input shards (`train.input_shards=2`),
so its global batches are exactly those of the two-process run (process p reads shard
p). The two-process run resumes from the one-process run's step-2 checkpoint (restore
across process counts), trains steps 3-4 with the same losses, and writes its step-4
checkpoint cooperatively; that checkpoint restores in this one process onto other
meshes with the parameters of the one-process run.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from t5pipe import checkpoint_manager, input_state, partitioning
from t5pipe.checkpoint_format import load_model_config, load_params
from t5pipe.model import abstract_params

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 420
TRAIN_FLAGS = [
    "--gin_file=runs/quickstart.gin",
    "--gin.TRAIN_STEPS=4",
    "--gin.BATCH_SIZE=8",
    "--gin.STATS_PERIOD=1",
    "--gin.EVAL_PERIOD=None",
    "--gin.CHECKPOINT_PERIOD=2",
    "--gin.CHECKPOINTS_TO_KEEP=None",
    "--gin.train.pack=True",  # shuffled and packed: batches differ unless really the same
    "--gin.train.async_checkpointing=False",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_train(model_dir: Path, processes: int, devices_per_process: int, *extra: str):
    """Runs `t5pipe train` as `processes` processes; kills them all if one fails or hangs."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
    }
    port = free_port()
    children = []
    for index in range(processes):
        distributed = (
            [
                f"--coordinator_address=127.0.0.1:{port}",
                f"--process_count={processes}",
                f"--process_index={index}",
            ]
            if processes > 1
            else []
        )
        command = [
            sys.executable,
            "-m",
            "t5pipe.cli",
            "train",
            *TRAIN_FLAGS,
            f"--gin.MODEL_DIR='{model_dir}'",
            *extra,
            *distributed,
        ]
        log = open(model_dir.parent / f"{model_dir.name}.{index}.log", "w")  # noqa: SIM115
        children.append(
            (
                subprocess.Popen(
                    command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
                ),
                log,
            )
        )
    try:
        for child, _ in children:
            child.wait(timeout=TIMEOUT_S)
    finally:
        for child, log in children:
            if child.poll() is None:
                child.kill()
                child.wait()
            log.close()
    for index, (child, log) in enumerate(children):
        assert child.returncode == 0, (
            f"process {index} of {processes} exited {child.returncode}:\n"
            + Path(log.name).read_text()[-4000:]
        )


def train_losses(model_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (model_dir / "metrics.jsonl").open()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and r.get("split") is None}


def restore_params(step_dir: Path, mesh_shape):
    """Params of a checkpoint, restored in this process onto a (data, fsdp, model) mesh."""
    config = load_model_config(step_dir)
    shapes, specs = abstract_params(config)
    mesh = partitioning.create_mesh(mesh_shape)
    shardings = partitioning.logical_to_sharding(specs, mesh, partitioning.logical_axis_rules())
    target = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        shapes,
        shardings,
    )
    params = load_params(step_dir, target)
    for leaf, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(shardings), strict=True):
        assert leaf.sharding == sharding
    return config, jax.device_get(params)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    one, two = root / "one_process", root / "two_processes"
    run_train(one, 1, 4, "--gin.train.input_shards=2")
    (two / "checkpoints").mkdir(parents=True)
    shutil.copytree(one / "checkpoints" / "2", two / "checkpoints" / "2")
    run_train(two, 2, 2)
    return one, two


def test_two_processes_train_with_the_one_process_losses(runs):
    one, two = runs
    one_losses, two_losses = train_losses(one), train_losses(two)
    assert sorted(one_losses) == [1, 2, 3, 4]
    assert sorted(two_losses) == [3, 4]  # resumed from the one-process step-2 checkpoint
    assert len(set(one_losses.values())) == 4  # different batches, different losses
    np.testing.assert_allclose(
        [two_losses[3], two_losses[4]], [one_losses[3], one_losses[4]], rtol=1e-5
    )
    log = (two.parent / f"{two.name}.0.log").read_text()
    assert "restored" in log and str(two / "checkpoints" / "2") in log
    # The one-process data position is not the two processes' own: they re-read to it.
    assert "saved by a run of another process count); re-reading the first 2 batches" in log


def test_each_process_saves_its_own_data_position(runs):
    _, two = runs
    folder = two / "checkpoints" / "4" / input_state.ITEM
    records = [json.loads((folder / f"process_{i}-of-2.json").read_text()) for i in range(2)]
    assert [r["position"] for r in records] == [4, 4]
    # Each process reads its own rows: different shards, different saved streams.
    assert [r["settings"]["shards"] for r in records] == [[2, 0, 4], [2, 4, 8]]
    assert records[0]["sha256"] != records[1]["sha256"]


def test_two_process_checkpoint_restores_in_one_process(runs):
    one, two = runs
    step_dir = two / "checkpoints" / "4"
    assert checkpoint_manager.is_complete(step_dir)
    config, on_data8 = restore_params(step_dir, (8, 1, 1))
    _, on_data2_model4 = restore_params(step_dir, (2, 1, 4))
    _, reference = restore_params(one / "checkpoints" / "4", (1, 8, 1))
    flat = jax.tree_util.tree_flatten_with_path(reference)[0]
    for (path, expected), a, b in zip(
        flat, jax.tree.leaves(on_data8), jax.tree.leaves(on_data2_model4), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
        np.testing.assert_allclose(
            a, expected, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path)
        )
    assert config.d_model == 64


def test_model_info_lists_every_parameter_with_its_partition_spec(runs):
    one, _ = runs
    info = (one / "model-info.txt").read_text().splitlines()
    config = load_model_config(one / "checkpoints" / "4")
    shapes, specs = abstract_params(config)
    lines = {line.split()[0]: line for line in info if "logical=" in line}
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    assert len(lines) == len(flat)
    for (path, leaf), spec in zip(
        flat,
        jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
        strict=True,
    ):
        name = "/".join(str(k.key) for k in path)
        assert f"logical={tuple(spec)}" in lines[name] and str(tuple(leaf.shape)) in lines[name]
    # The default `standard` rules on a 4-device (data 4) mesh.
    query = lines["encoder/layers_0/attention/query"]
    assert "mesh=('fsdp', 'model', None)" in query
    assert "mesh: {'data': 4, 'fsdp': 1, 'model': 1}" in info[-1]


def test_process_batch_rows_errors():
    mesh = partitioning.create_mesh((8, 1, 1))
    sharding = partitioning.batch_sharding(mesh, partitioning.logical_axis_rules())
    assert partitioning.process_batch_rows(sharding, 16) == (0, 16)
    assert partitioning.num_batch_blocks(sharding, 16) == 1
    with pytest.raises(ValueError, match="process 1 holds no device"):
        partitioning.process_batch_rows(sharding, 16, process_index=1)


def test_input_shards_fill_the_global_batch_in_shard_order():
    import seqio

    from t5pipe import input_pipeline
    from t5pipe.errors import UserInputError
    from t5pipe.input_pipeline import DataConfig
    from t5pipe.tasks.builtin import REVERSE_TASK

    mesh = partitioning.create_mesh((4, 1, 1), devices=jax.devices()[:4])
    sharding = partitioning.batch_sharding(mesh, partitioning.logical_axis_rules())
    lengths = {"inputs": 24, "targets": 12}

    def data(shards=None):
        return DataConfig(REVERSE_TASK, lengths, batch_size=8, input_shards=shards)

    two_shards = next(input_pipeline.train_batches(data(2), sharding=sharding))
    one_shard = next(input_pipeline.train_batches(data(), sharding=sharding))
    for index in range(2):  # what process `index` of a 2-process run reads
        expected = next(
            seqio.get_dataset(
                REVERSE_TASK,
                task_feature_lengths=lengths,
                dataset_split="train",
                shuffle=True,
                num_epochs=None,
                feature_converter=seqio.EncDecFeatureConverter(pack=True),
                shard_info=seqio.ShardInfo(index=index, num_shards=2),
                seed=0,
            )
            .batch(4)
            .as_numpy_iterator()
        )
        for name, rows in expected.items():
            np.testing.assert_array_equal(two_shards[name][4 * index : 4 * index + 4], rows)
    assert not np.array_equal(two_shards["encoder_input_tokens"], one_shard["encoder_input_tokens"])
    with pytest.raises(UserInputError, match=r"input_shards=3 does not fit BATCH_SIZE=8"):
        input_pipeline.train_batches(data(3), sharding=sharding)
