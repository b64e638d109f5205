"""An injected NaN stops the run with the documented message (exit 65), or is skipped."""

import jax.numpy as jnp
import numpy as np
import pytest
from train_testlib import FAST, read_metrics, train_in_process

from t5pipe import train as train_module
from t5pipe import train_step


@pytest.fixture
def nan_at_step_5(monkeypatch):
    """The loss of the 5th step (state step 4) becomes NaN."""
    original = train_step.microbatch_loss

    def poisoned(params, batch, factor, rng, step, **kwargs):
        loss, aux = original(params, batch, factor, rng, step, **kwargs)
        return loss * jnp.where(step == 4, jnp.nan, 1.0), aux

    monkeypatch.setattr(train_step, "microbatch_loss", poisoned)


def test_nan_stops_with_message(tmp_path, nan_at_step_5, capsys):
    model_dir = tmp_path / "run"
    code = train_module.main(
        [
            "--gin_file=runs/quickstart.gin",
            f"--gin.MODEL_DIR={model_dir}",
            *FAST,
            "--gin.TRAIN_STEPS=8",
            "--gin.CHECKPOINT_PERIOD=2",
        ]
    )
    stderr = capsys.readouterr().err
    assert code == train_module.EXIT_NONFINITE == 65
    assert "non-finite loss or gradient (NaN/Inf) at step 5" in stderr
    assert f"last good checkpoint is {model_dir / 'checkpoints' / '4'}" in stderr
    assert "learning rate" in stderr and "on_nonfinite" in stderr
    assert max(r["step"] for r in read_metrics(model_dir)) <= 6


def test_nan_skipped_and_counted(tmp_path, nan_at_step_5):
    summary = train_in_process(
        tmp_path / "run", *FAST, "--gin.TRAIN_STEPS=8", "--gin.train.on_nonfinite='skip'"
    )
    assert summary["step"] == 8
    records = read_metrics(tmp_path / "run")
    assert [r["skipped_steps"] for r in records] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert records[4]["loss"] == "nan"
    assert all(np.isfinite(r["loss"]) for r in records if r["step"] != 5)
