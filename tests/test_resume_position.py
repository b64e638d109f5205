"""A resume restores the training stream's saved position (no re-reading of the batches
before it) and stays bit-exact; where the saved position is unusable it re-reads."""

import json
import shutil

import jax
import numpy as np
import pytest
import tensorflow as tf
from etils import epath
from train_testlib import FAST, read_metrics, train_in_process

from t5pipe import checkpoint_manager, input_pipeline, input_state
from t5pipe.input_pipeline import DataConfig
from t5pipe.tasks import user_data
from t5pipe.vocabularies import byt5_vocabulary

TASK = "resume_position_text"
LENGTHS = {"inputs": 16, "targets": 8}


@pytest.fixture(scope="module", autouse=True)
def text_task(data_dir):
    """Span corruption, packed, over a real text file: shuffle buffers and packing
    state are what a saved position must carry."""
    user_data.text_pretraining_task(
        TASK,
        files={"train": str(data_dir / "text" / "tinyshakespeare.txt")},
        vocabulary=byt5_vocabulary(extra_ids=100),
        overwrite=True,
    )


def _data(**changes):
    return DataConfig(TASK, LENGTHS, batch_size=2, **changes)


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def _same(a, b):
    pairs = zip(a, b, strict=True)
    return all(x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x) for x, y in pairs)


@pytest.fixture(scope="module")
def saved_at_1000(tmp_path_factory):
    """The stream's position saved after 1,000 batches (as a checkpoint's `input` item
    holds it), and the 3 batches an uninterrupted stream yields next."""
    stream = input_pipeline.train_batches(_data())
    _take(stream, 1000)
    snapshot = stream.snapshot()
    expected = _take(stream, 3)
    folder = tmp_path_factory.mktemp("checkpoint") / input_state.ITEM
    input_state.InputHandler().save(epath.Path(folder), input_state.InputSave(snapshot))
    return folder, expected


def test_a_restored_stream_continues_the_uninterrupted_one(saved_at_1000):
    folder, expected = saved_at_1000
    said = []
    stream = input_pipeline.train_batches(
        _data(), start_step=1000, saved_position=folder, say=said.append
    )
    assert said == [] and stream.restored_from == folder and stream.position == 1000
    assert _same(_take(stream, 3), expected)


def test_an_unusable_saved_position_is_said_and_the_batches_are_re_read(saved_at_1000, tmp_path):
    folder, expected = saved_at_1000
    damaged = tmp_path / input_state.ITEM
    shutil.copytree(folder, damaged)
    data_file = next(damaged.glob("*.data-*"))
    content = bytearray(data_file.read_bytes())
    content[len(content) // 2] ^= 0xFF
    data_file.write_bytes(bytes(content))
    said = []
    stream = input_pipeline.train_batches(
        _data(), start_step=1000, saved_position=damaged, say=said.append
    )
    assert stream.restored_from is None and len(said) == 1
    assert "does not match its checksum" in said[0] and "re-reading the first 1000" in said[0]
    assert _same(_take(stream, 3), expected)  # re-read: the same batches


@pytest.mark.parametrize(
    ("data", "start", "folder", "why"),
    [
        ({"seed": 1}, 1000, None, "the data settings changed: seed"),
        ({}, 999, None, "it is at batch 1000, not 999"),
        ({}, 1000, "absent", "the checkpoint has no saved data position"),
    ],
)
def test_a_position_saved_for_other_settings_is_not_restored(
    saved_at_1000, monkeypatch, data, start, folder, why
):
    saved, _ = saved_at_1000
    saved = saved.parent / folder if folder else saved
    # Only the decision is under test here: nothing is re-read.
    monkeypatch.setattr(input_state, "_skip", lambda stream, count: None)
    said = []
    stream = input_pipeline.train_batches(
        _data(**data), start_step=start, saved_position=saved, say=said.append
    )
    assert stream.restored_from is None and len(said) == 1 and why in said[0], said


def test_a_position_tf_data_cannot_save_is_not_saved():
    """A Python generator's position is outside tf.data: no snapshot (resumes re-read)."""

    def dataset():
        return tf.data.Dataset.from_generator(
            lambda: iter(range(10)), output_signature=tf.TensorSpec((), tf.int64)
        ).map(lambda x: {"x": x})

    stream = input_state.open_stream(dataset, {}, 0, None)
    assert next(stream)["x"] == 0
    assert stream.snapshot() is None


def test_resume_at_step_1000_restores_the_position_and_repeats_the_run(tmp_path, capsys):
    """Trained 1,003 steps straight, and resumed from its step-1000 checkpoint: the
    resume restores the saved position (no re-reading), and steps 1001-1003 give the
    same loss and the same parameters, bit for bit."""
    args = (
        *FAST, f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", "--gin.train.pack=True",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=2",
        "--gin.STATS_PERIOD=1000",  # logs steps 1000 and 1003 (the mean of 1001-1003)
        "--gin.CHECKPOINT_PERIOD=1000", "--gin.CHECKPOINTS_TO_KEEP=None",
        "--gin.TRAIN_STEPS=1003",
    )  # fmt: skip
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    full = train_in_process(full_dir, *args)
    saved = checkpoint_manager.checkpoints_dir(full_dir) / "1000"
    record = json.loads((saved / input_state.ITEM / "process_0-of-1.json").read_text())
    assert record["position"] == 1000 and record["settings"]["mixture_or_task_name"] == TASK
    shutil.copytree(saved, checkpoint_manager.checkpoints_dir(resumed_dir) / "1000")
    capsys.readouterr()
    resumed = train_in_process(resumed_dir, *args)
    assert "re-reading" not in capsys.readouterr().out
    full_losses = {r["step"]: r["loss"] for r in read_metrics(full_dir)}
    resumed_losses = {r["step"]: r["loss"] for r in read_metrics(resumed_dir)}
    assert sorted(full_losses) == [1000, 1003] and sorted(resumed_losses) == [1003]
    assert resumed_losses[1003] == full_losses[1003]
    pairs = zip(
        jax.tree.leaves(jax.device_get(full["state"]["params"])),
        jax.tree.leaves(jax.device_get(resumed["state"]["params"])),
        strict=True,
    )
    assert all(np.array_equal(a, b) for a, b in pairs)
