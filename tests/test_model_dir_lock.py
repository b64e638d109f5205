"""One writer per MODEL_DIR: a held lock stops a second `t5pipe train` before it changes
anything; of two runs started together exactly one trains."""

import json
import os
import socket
import subprocess

from testlib import train_error, tree_digest
from train_testlib import read_metrics, subprocess_env, train_command

from t5pipe.model_dir_lock import LOCK_FILE


def test_held_lock_names_its_holder(model_dir, capsys):
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "start_time": 0.0}
    (model_dir / LOCK_FILE).write_text(json.dumps(holder))
    message = train_error(model_dir, "--gin.TRAIN_STEPS=12", capsys=capsys)
    assert message.startswith(
        f"MODEL_DIR {model_dir} is in use by another `t5pipe train` (pid {os.getppid()} on "
        f"host {socket.gethostname()}, started "
    )
    assert f"lock file {model_dir / LOCK_FILE}" in message


def test_two_runs_started_together_one_trains(tmp_path):
    model_dir = tmp_path / "run"
    args = (
        "--gin_file=runs/quickstart.gin", f"--gin.MODEL_DIR={model_dir}", "--gin.BATCH_SIZE=8",
        "--gin.STATS_PERIOD=1", "--gin.EVAL_PERIOD=None", "--gin.TRAIN_STEPS=5",
        "--gin.CHECKPOINT_PERIOD=100",
    )  # fmt: skip
    runs = [
        subprocess.Popen(
            train_command(*args),
            cwd=tmp_path,
            env=subprocess_env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [(run.pid, run.wait(timeout=600), *run.communicate()) for run in runs]
    codes = sorted(code for _, code, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for *_, err in results]
    (winner,) = [pid for pid, code, _, _ in results if code == 0]
    (loser_err,) = [err for _, code, _, err in results if code == 2]
    assert f"is in use by another `t5pipe train` (pid {winner} on host" in loser_err
    assert "Traceback" not in loser_err
    assert [r["step"] for r in read_metrics(model_dir)] == [1, 2, 3, 4, 5]
    assert "5" in tree_digest(model_dir / "checkpoints")
    assert not (model_dir / LOCK_FILE).exists()
