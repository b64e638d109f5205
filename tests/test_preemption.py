"""`t5pipe train` subprocesses: SIGTERM saves and exits 75, SIGKILL mid-save is recoverable."""

import signal
import subprocess
import sys
import textwrap
import time

import pytest
from testlib import tree_digest
from train_testlib import read_metrics, run_train, subprocess_env, train_command

from t5pipe import checkpoint_manager, input_pipeline, train_state

ARGS = (
    "--gin_file=runs/quickstart.gin",
    "--gin.BATCH_SIZE=8",
    "--gin.STATS_PERIOD=1",
    "--gin.EVAL_PERIOD=None",
)


def _logged_steps(model_dir):
    try:
        return [r["step"] for r in read_metrics(model_dir)]
    except (FileNotFoundError, ValueError):
        return []


def test_sigterm_saves_current_step_and_rerun_finishes(tmp_path):
    model_dir = tmp_path / "run"
    args = (
        *ARGS,
        f"--gin.MODEL_DIR={model_dir}",
        "--gin.TRAIN_STEPS=100000",
        "--gin.CHECKPOINT_PERIOD=100000",
    )
    process = subprocess.Popen(
        train_command(*args),
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and max(_logged_steps(model_dir), default=0) < 20:
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 75, stderr[-3000:]
    assert "preempted at step" in stderr and "rerun the same command" in stderr
    step = int(stderr.split("preempted at step ")[1].split(":")[0])
    assert step >= 20
    ckpt_dir = checkpoint_manager.checkpoints_dir(model_dir)
    assert checkpoint_manager.is_complete(ckpt_dir / str(step)), sorted(ckpt_dir.iterdir())

    # The same command (finishing sooner) resumes at that step.
    finish = step + 5
    result = run_train(
        (*args[:-2], f"--gin.TRAIN_STEPS={finish}", "--gin.CHECKPOINT_PERIOD=100000"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"restored {ckpt_dir / str(step)}" in result.stdout
    assert _logged_steps(model_dir)[-5:] == list(range(step + 1, finish + 1))
    assert checkpoint_manager.is_complete(ckpt_dir / str(finish))


# Runs `t5pipe train`, killing its own process (SIGKILL) right after the save of step 4
# has started, i.e. while orbax is still writing it asynchronously.
KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    from t5pipe import checkpoint_manager, cli

    real_save = checkpoint_manager.save

    def save_then_die(*args, **kwargs):
        step = real_save(*args, **kwargs)
        if step == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        return step

    checkpoint_manager.save = save_then_die
    sys.exit(cli.main(["train", *sys.argv[1:]]))
""")


def test_sigkill_during_save_restores_previous_checkpoint(tmp_path):
    model_dir = tmp_path / "run"
    args = (
        *ARGS,
        f"--gin.MODEL_DIR={model_dir}",
        "--gin.TRAIN_STEPS=6",
        "--gin.CHECKPOINT_PERIOD=2",
        "--gin.CHECKPOINTS_TO_KEEP=None",
    )
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, *args],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpt_dir = checkpoint_manager.checkpoints_dir(model_dir)
    assert checkpoint_manager.is_complete(ckpt_dir / "2")
    assert not checkpoint_manager.is_complete(ckpt_dir / "4")
    leftovers = [p.name for p in ckpt_dir.iterdir() if p.name != "2"]

    result = run_train(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"restored {ckpt_dir / '2'}" in result.stdout
    output = result.stdout + result.stderr
    for name in leftovers:  # the killed run's own temporary folder: deleted, with a word
        assert f"deleting {ckpt_dir / name}: a save that was interrupted left it" in output
    assert sorted(int(p.name) for p in ckpt_dir.iterdir()) == [2, 4, 6]
    assert _logged_steps(model_dir)[-4:] == [3, 4, 5, 6]


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler (KeyboardInterrupt) for the test, whatever an earlier
    test in the same worker process left installed; put back afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_saves_at_the_step_and_exits_75(tmp_path, monkeypatch, capsys, python_sigint):
    # Ctrl-C arrives while step 2's save is being started (in-process: SIGINT to ourselves;
    # raise_signal delivers it to this thread, so it is handled before the call returns,
    # whatever other threads the process runs).
    from t5pipe import cli

    real_save = checkpoint_manager.save

    def save_then_ctrl_c(*args, **kwargs):
        step = real_save(*args, **kwargs)
        if step == 2:
            signal.raise_signal(signal.SIGINT)
        return step

    monkeypatch.setattr(checkpoint_manager, "save", save_then_ctrl_c)
    model_dir = tmp_path / "run"
    code = cli.main(
        [
            "train",
            *ARGS,
            f"--gin.MODEL_DIR={model_dir}",
            "--gin.TRAIN_STEPS=50",
            "--gin.CHECKPOINT_PERIOD=2",
        ]  # fmt: skip
    )
    err = capsys.readouterr().err
    assert code == 75, err[-3000:]
    assert "preempted at step 2:" in err and "Traceback" not in err
    ckpt_dir = checkpoint_manager.checkpoints_dir(model_dir)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["2"]  # complete, no tmp folder left
    assert checkpoint_manager.is_complete(ckpt_dir / "2")


@pytest.mark.parametrize(
    "module, where",
    [(input_pipeline, "check_first_examples"), (train_state, "start_state")],
    ids=["start-up", "restore-or-compile"],
)
def test_ctrl_c_before_the_loop_is_one_line_exit_75(
    model_dir, module, where, monkeypatch, capsys, python_sigint
):
    # Ctrl-C while the run checks its data (before the lock), or while it restores or
    # initialises (and compiles) the state (lock and checkpoint manager held). os.kill
    # would let the kernel pick any thread (pytest-xdist's, TensorFlow's), and the
    # KeyboardInterrupt would come later, somewhere else; raise_signal is this thread's.
    from t5pipe import cli

    def ctrl_c(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        time.sleep(5)  # not reached: the KeyboardInterrupt arrives at once
        raise AssertionError("SIGINT did not interrupt")

    monkeypatch.setattr(module, where, ctrl_c)
    before = tree_digest(model_dir)
    code = cli.main(["train", *ARGS, f"--gin.MODEL_DIR={model_dir}", "--gin.TRAIN_STEPS=12"])
    err = capsys.readouterr().err
    assert code == 75, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [line for line in err.splitlines() if line.startswith("t5pipe train: ")]
    assert lines == [
        "t5pipe train: interrupted (Ctrl-C) outside the training loop (start-up, restore or "
        "compile): no checkpoint was saved for it and nothing was deleted; rerun the same "
        "command to continue (exit code 75)"
    ]
    assert tree_digest(model_dir) == before  # nothing saved, deleted or left (the lock)


def test_disk_full_during_a_save_is_one_message_exit_1(tmp_path, monkeypatch, capsys):
    # ENOSPC injected where orbax writes the step-4 checkpoint's meta/ file, in its
    # asynchronous save thread (a full disk cannot be made on demand here).
    import errno

    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    from t5pipe import cli

    handler = json_checkpoint_handler.JsonCheckpointHandler
    real = handler._save_fn

    async def disk_full_at_step_4(self, x, directory):
        if "4.orbax-checkpoint-tmp" in str(directory):
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real(self, x, directory)

    monkeypatch.setattr(handler, "_save_fn", disk_full_at_step_4)
    model_dir = tmp_path / "run"
    code = cli.main(
        [
            "train",
            *ARGS,
            f"--gin.MODEL_DIR={model_dir}",
            "--gin.TRAIN_STEPS=8",
            "--gin.CHECKPOINT_PERIOD=2",
            "--gin.CHECKPOINTS_TO_KEEP=None",
        ]  # fmt: skip
    )
    err = capsys.readouterr().err
    assert code == 1, err[-3000:]
    ckpt_dir = checkpoint_manager.checkpoints_dir(model_dir)
    assert err.count("t5pipe train: saving the checkpoint at step 4 into") == 1, err[-3000:]
    assert "No space left on device (disk full)" in err
    assert f"the previous checkpoint {ckpt_dir / '2'} is intact" in err
    assert "Traceback" not in err
    assert checkpoint_manager.is_complete(ckpt_dir / "2")
