"""A checkpoint that does not fit the model (resumed from, or given as
INITIAL_CHECKPOINT_PATH) is refused before anything is written, with every differing
parameter listed (`t5pipe.checkpoint_format.check_fits`)."""

import logging

from testlib import QUICKSTART, train_error, tree_digest, write

from t5pipe import cli, pytrees
from t5pipe.errors import EXIT_BAD_INPUT
from t5pipe.gin_setup import model_config_from_gin
from t5pipe.model import abstract_params
from t5pipe.model_config import T5Config

TINY = model_config_from_gin(["models/tiny.gin"])


def _mismatched_params(config_a: T5Config, config_b: T5Config) -> list[str]:
    flat_a = pytrees.shapes(abstract_params(config_a)[0])
    flat_b = pytrees.shapes(abstract_params(config_b)[0])
    return sorted(name for name in flat_a if flat_a[name] != flat_b[name])


def test_checkpoint_in_model_dir_does_not_fit(model_dir, capsys):
    message = train_error(model_dir, "--gin.T5Config.d_model=32", capsys=capsys)
    expected = _mismatched_params(TINY, TINY.replace(d_model=32))
    assert f"({len(expected)} parameter(s) differ)" in message
    for name in expected:  # every mismatch is listed with its path
        assert f"{name}: model " in message
    assert "token_embedder/embedding: model (384, 32), checkpoint (384, 64)" in message
    assert "d_model=64 (this run: 32)" in message
    assert str(model_dir / "checkpoints" / "10") in message


def test_initial_checkpoint_does_not_fit(model_dir_template, tmp_path, capsys):
    fresh = tmp_path / "fresh_run"
    write(fresh / "config.gin", "# kept\n")
    before = tree_digest(fresh)
    code = cli.main(
        [
            "train",
            *QUICKSTART,
            f"--gin.MODEL_DIR={fresh}",
            "--gin.T5Config.num_heads=2",
            f"--gin.INITIAL_CHECKPOINT_PATH={model_dir_template / 'checkpoints' / '10'}",
        ]
    )
    message = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert tree_digest(fresh) == before
    assert "INITIAL_CHECKPOINT_PATH=" in message and "does not fit the model config" in message
    assert "encoder/layers_0/attention/query: model (64, 2, 16), checkpoint (64, 4, 16)" in message


def test_initial_checkpoint_ignored_when_resuming(model_dir, model_dir_template, caplog, capsys):
    with caplog.at_level(logging.WARNING, logger="t5pipe.train_state"):
        train_error(
            model_dir,
            "--gin.T5Config.d_ff=64",
            f"--gin.INITIAL_CHECKPOINT_PATH={model_dir_template / 'checkpoints' / '10'}",
            capsys=capsys,
        )
    assert "is ignored: MODEL_DIR already has checkpoint" in caplog.text
    assert "training resumes from it" in caplog.text
