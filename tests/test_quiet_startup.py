"""Start-up noise: every command's stderr holds t5pipe's lines and real warnings only."""

import logging
import os
import re
import subprocess
import sys

import numpy as np
from train_testlib import FAST, subprocess_env

from t5pipe import startup

# A line from TF/XLA/absl's C++ logging, or one of the library notices t5pipe silences.
LIBRARY_LINE = re.compile(
    r"^[IWEF]\d{4} |cuInit|E0000|absl::InitializeLog|uncached FunctionDataset"
    r"|Features not in `features_length`|Type handler registry overriding|oneDNN",
    re.MULTILINE,
)

CUINIT = (
    "E0000 00:00:1796220027.606088   26932 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)"
)


def test_noise_rules_keep_real_errors_and_warnings():
    stub = "I0000 00:00:1796216950.850795   10533 cudart_stub.cc:31] Could not find cuda drivers"
    assert startup.is_noise(stub, gpu=False)
    assert startup.is_noise(
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        gpu=False,
    )
    assert startup.is_noise("2026-01-02 10:00:00.123456: I tensorflow/core/port.cc:153] oneDNN", 0)
    assert startup.is_noise(CUINIT, gpu=False)
    # With a GPU present a failing cuInit is a real problem, as is any other C++ error.
    assert not startup.is_noise(CUINIT, gpu=True)
    assert not startup.is_noise("E0000 00:00:1.5   7 loader.cc:9] could not open file", False)
    assert not startup.is_noise("F0000 00:00:1.5   7 check.cc:9] Check failed", False)
    assert not startup.is_noise("/home/me/tasks.py:3: UserWarning: mine", False)


def test_filtered_stderr_passes_what_it_does_not_drop(capfd):
    with startup.filtered_stderr(lambda line: startup.is_noise(line, gpu=False)):
        os.write(2, f"{CUINIT}\n".encode())
        print("a real warning", file=sys.stderr)
        os.write(2, b"E0000 00:00:1.5   7 loader.cc:9] a real error\n")
    err = capfd.readouterr().err
    assert err == "a real warning\nE0000 00:00:1.5   7 loader.cc:9] a real error\n"


def test_verbose_flag_anywhere_before_a_double_dash(monkeypatch):
    monkeypatch.delenv(startup.LOG_LEVEL_VARIABLE, raising=False)
    assert startup.verbose_requested(["train", "--verbose", "--gin_file=x"]) == (
        True,
        ["train", "--gin_file=x"],
    )
    assert startup.verbose_requested(["infer", "--", "--verbose"]) == (
        False,
        ["infer", "--", "--verbose"],
    )
    monkeypatch.setenv(startup.LOG_LEVEL_VARIABLE, "DEBUG")
    assert startup.verbose_requested(["tasks", "list"]) == (True, ["tasks", "list"])


def test_packing_converter_gets_only_the_features_it_packs(caplog):
    import tensorflow as tf

    from t5pipe.input_pipeline import EncDecConverter

    examples = {
        "inputs": np.array([[3, 4, 1]], np.int32),
        "targets": np.array([[5, 1]], np.int32),
        "idx": np.array([7], np.int32),
    }
    dataset = tf.data.Dataset.from_tensor_slices(examples)
    with caplog.at_level(logging.WARNING):
        packed = EncDecConverter(pack=True)(dataset, {"inputs": 8, "targets": 4})
        row = next(packed.as_numpy_iterator())
    assert "Features not in" not in caplog.text
    assert row["encoder_input_tokens"].tolist() == [3, 4, 1, 0, 0, 0, 0, 0]
    assert row["decoder_target_tokens"].tolist() == [5, 1, 0, 0]


WARNING_TASKS = """
import warnings
warnings.warn("my_warning_tasks: a warning of the user's own")
"""


def _run(args, cwd):
    """The command through pipes (not a terminal), as a log file gets it."""
    raw = subprocess.run(
        [sys.executable, "-m", "t5pipe.cli", *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        timeout=600,
    )
    # Bytes, not text=True: universal newlines would turn a carriage return into "\n".
    result = subprocess.CompletedProcess(
        raw.args, raw.returncode, raw.stdout.decode(), raw.stderr.decode()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stdout + result.stderr, f"{args[0]} printed a carriage return"
    found = LIBRARY_LINE.findall(result.stderr)
    assert not found, f"{args[0]} printed library lines:\n{result.stderr[-3000:]}"
    return result


def test_every_command_prints_no_library_lines(tmp_path):
    """train (5 steps), eval, infer, convert, tasks list: as a user runs them."""
    model_dir = tmp_path / "run"
    train = _run(
        [
            "train",
            "--gin_file=runs/quickstart.gin",
            f"--gin.MODEL_DIR={model_dir}",
            "--gin.TRAIN_STEPS=5",
            "--gin.CHECKPOINT_PERIOD=5",
            *FAST,
        ],
        tmp_path,
    )
    _check_train_log(train.stdout, model_dir)
    checkpoint = model_dir / "checkpoints" / "5"
    evaluated = _run(
        ["eval", "--checkpoint", str(checkpoint), "--task", "builtin_reverse_v001"]
        + ["--max_examples", "4", "--output_dir", str(tmp_path / "eval")],
        tmp_path,
    )
    # Not a terminal: plain progress lines (rate, ETA), the last at 100%.
    assert re.search(
        r"^decoding builtin_reverse_v001: 100% \(1/1 batch\), [\d.]+ batch/s, ETA 0m00s$",
        evaluated.stderr,
        re.MULTILINE,
    ), evaluated.stderr
    (tmp_path / "inputs.txt").write_text("reverse: abc\n")
    _run(["infer", "--checkpoint", str(checkpoint), "--input_file", "inputs.txt"], tmp_path)
    _run(["convert", "--to_hf", "--checkpoint", str(checkpoint), "--out", "hf"], tmp_path)
    (tmp_path / "my_warning_tasks.py").write_text(WARNING_TASKS)
    listing = _run(["tasks", "list", "--module", "my_warning_tasks"], tmp_path)
    assert "builtin_reverse_v001" in listing.stdout
    assert "UserWarning: my_warning_tasks: a warning of the user's own" in listing.stderr


def _check_train_log(stdout: str, model_dir) -> None:
    """The per-token loss beside t5x's summed loss, in metrics.jsonl and the progress line;
    the final summary line with wall time, tokens/s and the best checkpoint."""
    import json

    rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if "split" not in row]
    assert [row["step"] for row in train_rows] == [1, 2, 3, 4, 5]
    for row in train_rows:
        expected = row["loss"] / row["num_target_tokens"]
        assert np.isclose(row["loss/token"], expected, rtol=1e-6), row
        assert row["loss/token"] < row["loss"]  # a sum over several tokens
    line = re.search(r"^step 5/5  loss ([\d.]+)  loss/token ([\d.]+)  ", stdout, re.MULTILINE)
    assert line, stdout
    assert float(line.group(2)) == round(train_rows[-1]["loss/token"], 4)
    last = stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"summary: step 5 in \dm\d\ds wall, \d+ tokens/s; best: none \(no evaluation metric "
        r"to rank checkpoints by\)",
        last,
    ), last
