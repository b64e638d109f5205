"""`t5pipe train`'s checks of MODEL_DIR and the run settings: bad input stops it with one
paragraph and exit code 2 before anything is written; good input passes and touches
nothing."""

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from testlib import QUICKSTART, train_error, tree_digest, without_write_permission
from train_testlib import REPO_ROOT, subprocess_env

from t5pipe import cli, gin_setup
from t5pipe.commands.train import configure
from t5pipe.errors import EXIT_BAD_INPUT, UserInputError
from t5pipe.train import train


@pytest.fixture
def shared_model_dir(model_dir_template):
    """A MODEL_DIR copy in a folder every user may enter (pytest's tmp folders are 0700)."""
    parent = Path(tempfile.mkdtemp(prefix="t5pipe_bad_input_"))
    parent.chmod(0o755)
    target = parent / "run"
    shutil.copytree(model_dir_template, target)
    for folder in (target, *[p for p in target.rglob("*") if p.is_dir()]):
        folder.chmod(0o755)
    yield target
    shutil.rmtree(parent)


def test_model_dir_not_writable(shared_model_dir, capsys):
    model_dir = shared_model_dir
    before = tree_digest(model_dir)
    with without_write_permission(model_dir):
        code = cli.main(["train", *QUICKSTART, f"--gin.MODEL_DIR={model_dir}"])
    message = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert tree_digest(model_dir) == before
    assert f"MODEL_DIR='{model_dir}' is not writable: Permission denied" in message


def test_model_dir_under_a_file(model_dir, capsys):
    target = model_dir / "metrics.jsonl" / "run"
    before = tree_digest(model_dir)
    code = cli.main(["train", *QUICKSTART, f"--gin.MODEL_DIR={target}"])
    message = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and tree_digest(model_dir) == before
    assert f"{model_dir / 'metrics.jsonl'} is a file" in message


def test_batch_size_not_divisible_by_microbatches(model_dir, capsys):
    message = train_error(model_dir, "--gin.train.num_microbatches=3", capsys=capsys)
    assert "BATCH_SIZE=8 does not divide evenly over train.num_microbatches (3)" in message


def test_zero_stats_period(model_dir, capsys):
    message = train_error(model_dir, "--gin.STATS_PERIOD=0", capsys=capsys)
    assert "STATS_PERIOD=0: expected a whole number >= 1" in message


def test_good_config_passes_and_touches_nothing(model_dir, caplog):
    before = tree_digest(model_dir)
    configure([*QUICKSTART, f"--gin.MODEL_DIR={model_dir}"])
    with caplog.at_level(logging.INFO, logger="t5pipe"):
        result = gin_setup.call(train, "train", {"dry_run": True})
    assert result["start"].kind == "resume"
    assert result["start"].path == model_dir / "checkpoints" / "10"
    # Resuming: the data is looked at (a first example) but not counted again.
    assert "truncation:" not in caplog.text
    assert tree_digest(model_dir) == before


def test_fresh_run_counts_truncation_once(tmp_path, caplog):
    configure([*QUICKSTART, f"--gin.MODEL_DIR={tmp_path / 'fresh'}"])
    with caplog.at_level(logging.INFO, logger="t5pipe"):
        result = gin_setup.call(train, "train", {"dry_run": True})
    assert result["start"].kind == "fresh"
    assert caplog.text.count("truncation: task builtin_reverse_v001, split 'train'") == 1
    assert not (tmp_path / "fresh").exists()


def test_debug_env_shows_the_traceback(model_dir, monkeypatch):
    monkeypatch.setenv("T5PIPE_DEBUG", "1")
    with pytest.raises(UserInputError, match="builtin_revers_v001"):
        cli.main(
            [
                "train",
                *QUICKSTART,
                f"--gin.MODEL_DIR={model_dir}",
                "--gin.MIXTURE_OR_TASK_NAME=builtin_revers_v001",
            ]
        )


def test_subprocess_prints_one_paragraph_without_traceback(model_dir):
    before = tree_digest(model_dir)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "t5pipe.cli",
            "train",
            *QUICKSTART,
            f"--gin.MODEL_DIR={model_dir}",
            "--gin.BATCH_SIZE=4",
            "--gin.MIXTURE_OR_TASK_NAME=builtin_revers_v001",
        ],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert tree_digest(model_dir) == before
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("t5pipe train: error: MIXTURE_OR_TASK_NAME='builtin_revers_v001'")
    assert "did you mean: builtin_reverse_v001" in last


def test_mixture_whose_rates_are_all_zero(model_dir, capsys):
    import seqio

    seqio.MixtureRegistry.add("zero_rate_mix", [("builtin_reverse_v001", 0)])
    try:
        message = train_error(
            model_dir, "--gin.MIXTURE_OR_TASK_NAME='zero_rate_mix'", capsys=capsys
        )
    finally:
        seqio.MixtureRegistry.remove("zero_rate_mix")
    assert message.startswith(
        "mixture zero_rate_mix: the rates of its tasks sum to 0.0 (builtin_reverse_v001=0)"
    )


def test_dry_run_takes_train_steps_relative_and_checks_steps_as_train_does(tmp_path, capsys):
    argv = ["train", "--dry_run", *QUICKSTART, f"--gin.MODEL_DIR={tmp_path / 'run'}"]
    assert cli.main([*argv, "--gin.TRAIN_STEPS=None", "--gin.TRAIN_STEPS_RELATIVE=30"]) == 0
    assert "train steps: the initial checkpoint's + 30;" in capsys.readouterr().out
    assert cli.main([*argv, "--gin.TRAIN_STEPS=None"]) == 2
    assert "TRAIN_STEPS is required but not set" in capsys.readouterr().err
    assert cli.main([*argv, "--gin.STATS_PERIOD=0"]) == 2
    assert "STATS_PERIOD=0: expected a whole number >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
