"""A NaN mid-run stops it with the documented message (exit 65), or is skipped.

The fault: a learning-rate schedule that is NaN from the optimizer's 5th update on
(optax schedules see the optimizer's own count, which a skipped step does not advance),
so every update from the 5th is NaN although losses and gradients stay finite.
"""

import gin
import jax.numpy as jnp
import numpy as np
import pytest
from train_testlib import FAST, read_metrics, train_in_process

from t5pipe import cli


@gin.configurable
def nan_at_step_4(base: float = 0.01):
    return lambda step: jnp.where(step == 4, jnp.nan, base)


NAN_SCHEDULE = "--gin.train.learning_rate=@nan_at_step_4()"


def test_nan_stops_with_message(tmp_path, capsys):
    model_dir = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--gin_file=runs/quickstart.gin",
            f"--gin.MODEL_DIR={model_dir}",
            *FAST,
            "--gin.TRAIN_STEPS=8",
            "--gin.CHECKPOINT_PERIOD=2",
            NAN_SCHEDULE,
        ]
    )
    stderr = capsys.readouterr().err
    assert code == 65
    assert "non-finite loss or gradient (NaN/Inf) at step 5" in stderr
    assert (
        f"the newest checkpoint that reads back intact is {model_dir / 'checkpoints' / '4'} "
        "(verified against its checksums;"
    ) in stderr
    assert "learning rate" in stderr and "on_nonfinite" in stderr
    assert "In call to configurable" not in stderr
    assert max(r["step"] for r in read_metrics(model_dir)) <= 6


def test_nan_skipped_and_counted(tmp_path):
    summary = train_in_process(
        tmp_path / "run",
        *FAST,
        "--gin.TRAIN_STEPS=8",
        "--gin.train.on_nonfinite='skip'",
        NAN_SCHEDULE,
    )
    assert summary["step"] == 8
    records = read_metrics(tmp_path / "run")
    assert [r["skipped_steps"] for r in records] == [0, 0, 0, 0, 1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in records)
    # No NaN update was ever applied: the parameters are those after step 4, finite, and
    # steps 5.. all see the same parameters (the same batch would give the same loss).
    params = summary["state"]["params"]
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax_leaves(params))
    assert int(summary["state"]["skipped_steps"]) == 4


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


@pytest.fixture(autouse=True)
def _clear_gin():
    yield
    gin.clear_config()
