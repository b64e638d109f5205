"""Training checkpoints: round trip, resume, retention, initial checkpoints, crash leftovers."""

import json
import logging
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from testlib import tree_digest
from train_testlib import FAST, read_metrics, train_in_process

from t5pipe import best_checkpoint, checkpoint_manager, model_dir_lock
from t5pipe.checkpoint_format import (
    load_model_config,
    load_params,
    read_meta,
    save_checkpoint,
)
from t5pipe.checkpoint_manager import CheckpointConfig
from t5pipe.errors import UserInputError
from t5pipe.gin_setup import model_config_from_gin
from t5pipe.model import init_params
from t5pipe.model_config import T5Config
from t5pipe.vocabularies import byt5_vocabulary


def _assert_trees_equal(a, b):
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b)
    for (path, x), y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_round_trip_and_resume(tmp_path):
    model_dir = tmp_path / "run"
    summary = train_in_process(
        model_dir,
        *FAST,
        "--gin.TRAIN_STEPS=4",
        "--gin.CHECKPOINT_PERIOD=2",
        "--gin.CHECKPOINTS_TO_KEEP=None",
    )
    assert summary["train_step_compilations"] == 1
    ckpt_dir = checkpoint_manager.checkpoints_dir(model_dir)
    assert sorted(int(p.name) for p in ckpt_dir.iterdir()) == [2, 4]

    # Save -> restore: identical params and optimizer state.
    manager = checkpoint_manager.make_manager(model_dir, CheckpointConfig())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), summary["state"]
    )
    restored = checkpoint_manager.restore(manager, 4, abstract)
    manager.close()
    _assert_trees_equal(restored["params"], summary["state"]["params"])
    _assert_trees_equal(restored["opt_state"], summary["state"]["opt_state"])
    assert int(restored["step"]) == 4

    # Each step folder is a self-describing checkpoint for eval/infer.
    config = load_model_config(ckpt_dir / "4")
    assert config == model_config_from_gin(["models/tiny.gin"])  # the quickstart's model
    _assert_trees_equal(load_params(ckpt_dir / "4"), summary["state"]["params"])

    # Training resumed from the checkpoint continues at step 5.
    resumed = train_in_process(
        model_dir,
        *FAST,
        "--gin.TRAIN_STEPS=6",
        "--gin.CHECKPOINT_PERIOD=2",
        "--gin.CHECKPOINTS_TO_KEEP=None",
    )
    assert resumed["step"] == 6
    steps = [r["step"] for r in read_metrics(model_dir)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert sorted(int(p.name) for p in ckpt_dir.iterdir()) == [2, 4, 6]
    for name in ("config.gin", "model-info.txt", "metrics.jsonl"):
        assert (model_dir / name).is_file()
    assert "TRAIN_STEPS = 6" in (model_dir / "config.gin").read_text()
    assert any((model_dir / "tensorboard").iterdir())
    first = read_metrics(model_dir)[0]
    for key in (
        "loss",
        "accuracy",
        "z_loss",
        "learning_rate",
        "grad_norm",
        "tokens_per_second",
        "steps_per_second",
        "mfu",
    ):
        assert key in first


def test_keeps_last_k_deletes_only_its_leftovers_and_rolls_back_metrics(tmp_path, caplog, capsys):
    model_dir = tmp_path / "run"
    train_in_process(
        model_dir,
        *FAST,
        "--gin.TRAIN_STEPS=4",
        "--gin.CHECKPOINT_PERIOD=1",
        "--gin.CHECKPOINTS_TO_KEEP=2",
    )
    ckpt_dir = Path(checkpoint_manager.checkpoints_dir(model_dir))
    assert sorted(int(p.name) for p in ckpt_dir.iterdir()) == [3, 4]
    assert not (model_dir / model_dir_lock.LOCK_FILE).exists()  # released at the end

    # Leftovers of a killed writer: orbax's temporary folder (older than the next run's
    # lock), a stale lock, a logged row of a step whose checkpoint was never saved. And
    # the user's own things: copies, notes, a step folder whose meta/ went missing.
    (ckpt_dir / "5.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
    shutil.copytree(ckpt_dir / "4", ckpt_dir / "60.bak")
    shutil.copytree(ckpt_dir / "3", ckpt_dir / "my_best")
    (ckpt_dir / "notes.txt").write_text("step 3 looked best\n")
    shutil.copytree(ckpt_dir / "4", ckpt_dir / "6")
    shutil.rmtree(ckpt_dir / "6" / "meta")
    with (model_dir / "metrics.jsonl").open("a") as out:
        out.write('{"step": 5, "loss": 1.0}\n{"step": 6, "lo')  # torn by the kill
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"host": socket.gethostname(), "pid": dead.pid, "start_time": 1.0}
    (model_dir / model_dir_lock.LOCK_FILE).write_text(json.dumps(holder))
    user_files = {
        name: tree_digest(ckpt_dir / name) if (ckpt_dir / name).is_dir() else None
        for name in ("60.bak", "my_best", "6")
    }
    notes = (ckpt_dir / "notes.txt").read_bytes()
    with caplog.at_level(logging.WARNING, logger="t5pipe.checkpoint_manager"):
        summary = train_in_process(
            model_dir,
            *FAST,
            "--gin.TRAIN_STEPS=6",
            "--gin.CHECKPOINT_PERIOD=1",
            "--gin.CHECKPOINTS_TO_KEEP=2",
        )
    out = capsys.readouterr().out
    assert f"taking over the lock {model_dir / model_dir_lock.LOCK_FILE}" in out
    assert f"pid {dead.pid} on host {socket.gethostname()}" in out
    assert "removed 2 row(s) past step 4" in out
    warned = [r.getMessage() for r in caplog.records if r.name == "t5pipe.checkpoint_manager"]
    assert any("deleting" in w and "5.orbax-checkpoint-tmp-1234" in w for w in warned)
    listed = [w for w in warned if "they are skipped and left alone" in w]
    assert len(listed) == 1, warned  # listed once
    for part in ("60.bak (not a step number)", "my_best (not a step number)", "notes.txt (a file)",
                 "6 (state/ present but meta/ missing)"):  # fmt: skip
        assert part in listed[0]
    assert any(f"not saving step 6: {ckpt_dir / '6'} exists" in w for w in warned)
    assert summary["step"] == 6  # resumed from 4, not from the broken 6
    # Step 6 was not saved over the user's folder; the last two saved are kept.
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        "4", "5", "6", "60.bak", "my_best", "notes.txt",
    ]  # fmt: skip
    for name, digest in user_files.items():
        assert tree_digest(ckpt_dir / name) == digest, name
    assert (ckpt_dir / "notes.txt").read_bytes() == notes
    assert [r["step"] for r in read_metrics(model_dir)] == [1, 2, 3, 4, 5, 6]
    assert read_metrics(model_dir)[4]["loss"] != 1.0  # the redone step's row
    assert not (model_dir / model_dir_lock.LOCK_FILE).exists()


def test_best_checkpoint_is_kept(tmp_path):
    manager = checkpoint_manager.make_manager(
        tmp_path, CheckpointConfig(keep=1, best_metric="acc", async_save=False)
    )
    meta = {"format": 1}
    for step, acc in [(1, 0.2), (2, 0.9), (3, 0.5), (4, 0.4)]:
        state = {"step": np.int32(step), "params": {"w": np.full((2,), step, np.float32)}}
        checkpoint_manager.save(manager, state, meta, {"acc": acc})
    manager.wait_until_finished()
    assert sorted(manager.all_steps()) == [2, 4]  # the latest and the best
    manager.close()


@pytest.mark.parametrize("mode", ["max", "min"])
def test_best_record_on_a_tie_names_the_checkpoint_retention_keeps(tmp_path, mode):
    """Equal values at several saved steps: the record follows retention, which keeps
    the latest of them, so the checkpoint it names is never one retention deleted."""
    config = CheckpointConfig(keep=1, best_metric="acc", best_mode=mode, async_save=False)
    manager = checkpoint_manager.make_manager(tmp_path, config)
    tracker = best_checkpoint.Tracker(tmp_path, "acc", mode)
    best = 0.5 if mode == "max" else 0.1
    worse = 0.1 if mode == "max" else 0.5
    for step, acc in [(1, worse), (2, best), (3, best), (4, worse)]:
        state = {"step": np.int32(step), "params": {"w": np.full((2,), step, np.float32)}}
        checkpoint_manager.save(manager, state, {"format": 1}, {"acc": acc})
        manager.wait_until_finished()
        tracker.offer(step, {"acc": acc})
    assert sorted(manager.all_steps()) == [3, 4]  # the best of the tie, and the latest
    manager.close()
    assert best_checkpoint.read(tmp_path)["step"] == 3


def test_initial_checkpoint_other_dtype_and_partial(tmp_path):
    vocabulary = byt5_vocabulary()
    # The quickstart's model (gin/models/tiny.gin) built directly.
    config = T5Config(
        vocab_size=384,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        d_model=64,
        d_ff=128,
        num_heads=4,
        d_kv=16,
        num_encoder_layers=2,
        num_decoder_layers=2,
    )
    params = init_params(config, jax.random.PRNGKey(7))
    bf16 = jax.tree.map(lambda x: np.asarray(x).astype(jax.numpy.bfloat16), params)
    save_checkpoint(tmp_path / "init", {"params": bf16}, config, vocabulary)

    # One step with learning rate 0: the trained params are the checkpoint's, in float32.
    summary = train_in_process(
        tmp_path / "run",
        *FAST,
        "--gin.TRAIN_STEPS=1",
        f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'init'}'",
        "--gin.constant_schedule.learning_rate=0.0",
    )
    trained = summary["state"]["params"]
    jax.tree.map(
        lambda t, b: np.testing.assert_array_equal(np.asarray(t), np.asarray(b).astype(np.float32)),
        trained,
        bf16,
    )
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(trained))

    # A checkpoint lacking a parameter and holding an extra one: a clear list, or a
    # partial restore when allowed.
    partial = dict(bf16)
    partial.pop("logits_dense")
    partial["extra_head"] = {"kernel": np.zeros((2, 2), np.float32)}
    save_checkpoint(tmp_path / "partial", {"params": partial}, config, vocabulary)
    with pytest.raises(
        UserInputError,
        match=r"\(1 parameter\(s\) differ\).*logits_dense/kernel: model \(64, 384\), not in the "
        r"checkpoint.*also holds 1 parameter\(s\) the model lacks: extra_head/kernel",
    ):
        train_in_process(
            tmp_path / "run2",
            *FAST,
            "--gin.TRAIN_STEPS=1",
            f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'partial'}'",
        )
    summary = train_in_process(
        tmp_path / "run3",
        *FAST,
        "--gin.TRAIN_STEPS=1",
        f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'partial'}'",
        "--gin.train.allow_partial_initial_checkpoint=True",
        "--gin.constant_schedule.learning_rate=0.0",
    )
    trained = summary["state"]["params"]
    np.testing.assert_array_equal(
        np.asarray(trained["encoder"]["encoder_norm"]["scale"]),
        np.asarray(bf16["encoder"]["encoder_norm"]["scale"]).astype(np.float32),
    )

    # Shapes that do not fit the model: every mismatch listed.
    wrong = dict(bf16)
    wrong["logits_dense"] = {"kernel": np.zeros((64, 100), np.float32)}
    save_checkpoint(tmp_path / "wrong", {"params": wrong}, config, vocabulary)
    with pytest.raises(
        UserInputError, match=r"logits_dense/kernel: model \(64, 384\), checkpoint \(64, 100\)"
    ):
        train_in_process(
            tmp_path / "run4",
            *FAST,
            "--gin.TRAIN_STEPS=1",
            f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'wrong'}'",
        )


def test_early_stopping_on_eval_metric(tmp_path):
    # Patience 1 on "higher teacher-forced loss is better": the first eval sets the best,
    # the second (loss fell while training) does not improve it, so the run stops at step 2.
    summary = train_in_process(
        tmp_path / "run",
        *FAST,
        "--gin.TRAIN_STEPS=10",
        "--gin.EVAL_PERIOD=1",
        "--gin.CHECKPOINT_PERIOD=100",
        "--gin.train.eval_max_examples=8",
        "--gin.train.early_stopping_metric='builtin_reverse_v001/teacher_forced_loss'",
        "--gin.train.early_stopping_mode='max'",
        "--gin.train.early_stopping_patience=1",
    )
    evals = read_metrics(tmp_path / "run", split="eval")
    losses = [r["builtin_reverse_v001/teacher_forced_loss"] for r in evals]
    assert losses[1] < losses[0]
    assert summary["step"] == 2 and "early stop at step 2" in summary["stopped"]
    assert checkpoint_manager.is_complete(
        checkpoint_manager.checkpoints_dir(tmp_path / "run") / "2"
    )
    # Only step 2 was saved: the best record ranks by the early stopping metric.
    folder = checkpoint_manager.checkpoints_dir(tmp_path / "run") / "2"
    assert summary["best"] == {
        "step": 2, "metric": "builtin_reverse_v001/teacher_forced_loss", "value": losses[1],
        "mode": "max", "checkpoint": str(folder),
    }  # fmt: skip


def test_remote_model_dir_stays_remote(tmp_path, monkeypatch):
    # gs:// paths must reach orbax untouched (pathlib would make them "cwd/gs:/bucket").
    monkeypatch.chdir(tmp_path)
    assert (
        str(checkpoint_manager.checkpoints_dir("gs://bucket/run")) == "gs://bucket/run/checkpoints"
    )
    assert str(checkpoint_manager.checkpoints_dir("run")) == str(tmp_path / "run" / "checkpoints")


def test_best_checkpoint_record_metadata_and_resume(tmp_path, capsys, caplog):
    """checkpoints/best names the best saved step by the metric; that checkpoint's
    metadata holds its eval metrics; a resumed run reads the record back (a worse value
    does not replace it) and does not list it as a foreign file."""
    model_dir = tmp_path / "run"
    metric = "builtin_reverse_v001/teacher_forced_loss"
    flags = (
        *FAST,
        "--gin.EVAL_PERIOD=2",
        "--gin.CHECKPOINT_PERIOD=2",
        "--gin.train.eval_max_examples=8",
        f"--gin.CheckpointConfig.best_metric='{metric}'",
        "--gin.CheckpointConfig.best_mode='min'",
    )
    summary = train_in_process(model_dir, *flags, "--gin.TRAIN_STEPS=4")
    evals = {r["step"]: r[metric] for r in read_metrics(model_dir, split="eval")}
    assert sorted(evals) == [2, 4]
    best_step = min(evals, key=evals.get)
    record_file = checkpoint_manager.checkpoints_dir(model_dir) / "best"
    record = json.loads(record_file.read_text())
    folder = checkpoint_manager.checkpoints_dir(model_dir) / str(best_step)
    assert record == {
        "step": best_step, "metric": metric, "value": evals[best_step], "mode": "min",
        "checkpoint": str(folder),
    }  # fmt: skip
    assert summary["best"] == record
    assert f"best checkpoint so far: {folder} ({metric} " in capsys.readouterr().out
    for step, value in evals.items():  # each evaluated checkpoint carries its metrics
        assert read_meta(folder.parent / str(step))["eval_metrics"][metric] == value
    # A record from the first run that no later eval can beat: resuming keeps it.
    record_file.write_text(json.dumps({**record, "value": -1.0}))
    caplog.clear()
    summary = train_in_process(model_dir, *flags, "--gin.TRAIN_STEPS=6")
    assert summary["step"] == 6 and summary["best"]["step"] == best_step
    assert json.loads(record_file.read_text())["value"] == -1.0
    assert "not complete checkpoints" not in caplog.text
