"""`t5pipe convert --from_t5x / --to_t5x` through the command line, in process."""

import jax
import numpy as np
import pytest
from t5x_testlib import t5x_state_dict, write_t5x_format

from t5pipe import checkpoint_format, cli, gin_setup
from t5pipe.model import init_params
from t5pipe.t5x import convert


@pytest.fixture(scope="module")
def t5x_run(tmp_path_factory):
    """A t5x MODEL_DIR: checkpoint_1000 (T5X format, two shards per array) and the
    run's config.gin (here the tiny model's gin)."""
    model_dir = tmp_path_factory.mktemp("t5x_run")
    config = gin_setup.model_config_from_gin(["models/tiny.gin"])
    params = jax.tree.map(np.asarray, init_params(config, jax.random.PRNGKey(3)))
    write_t5x_format(model_dir / "checkpoint_1000", t5x_state_dict(params, config, 1000), 2)
    (model_dir / "config.gin").write_text("include 'models/tiny.gin'\n")
    return model_dir, config, params


def test_from_t5x_finds_config_gin_and_to_t5x_round_trips(t5x_run, tmp_path, capsys):
    model_dir, config, params = t5x_run
    ckpt = tmp_path / "ckpt"
    assert (
        cli.main(["convert", "--from_t5x", str(model_dir / "checkpoint_1000"), "--out", str(ckpt)])
        == 0
    )
    assert capsys.readouterr().out.strip().endswith(str(ckpt))
    assert checkpoint_format.load_model_config(ckpt) == config
    assert checkpoint_format.stored_step(ckpt) == 1000  # INITIAL_CHECKPOINT_PATH starts there
    jax.tree.map(np.testing.assert_array_equal, checkpoint_format.load_params(ckpt), params)
    assert checkpoint_format.read_meta(ckpt)["vocabulary"]  # VOCABULARY of the run's gin

    back = tmp_path / "checkpoint_1000"
    assert cli.main(["convert", "--to_t5x", "--checkpoint", str(ckpt), "--out", str(back)]) == 0
    read, step = convert.read_t5x_params(back, config)
    assert step == 1000
    jax.tree.map(np.testing.assert_array_equal, read, params)


def test_from_t5x_without_a_config_needs_a_vocabulary(t5x_run, tmp_path, capsys):
    model_dir, config, params = t5x_run
    lone = tmp_path / "lone"
    import shutil

    shutil.copytree(model_dir / "checkpoint_1000", lone / "checkpoint_1000")
    args = ["convert", "--from_t5x", str(lone / "checkpoint_1000"), "--out", str(tmp_path / "c")]
    assert cli.main(args) == 2
    assert "names no vocabulary" in capsys.readouterr().err
    assert cli.main([*args, "--gin_file=models/tiny.gin"]) == 0
    assert checkpoint_format.load_model_config(tmp_path / "c") == config
