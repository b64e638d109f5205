"""What a checkpoint path names (`t5pipe.checkpoint_paths`): a missing path, a MODEL_DIR,
a missing step, a Hugging Face folder and t5x checkpoints, through the commands."""

import json
import shutil

import jax
import numpy as np
import pytest
from t5x_testlib import t5x_state_dict, write_orbax_format, write_t5x_format
from train_testlib import FAST, train_in_process

from t5pipe import api, checkpoint_format, checkpoint_paths, cli, evaluation, gin_setup
from t5pipe.errors import UserInputError
from t5pipe.model import init_params

GIN_TRAILER = "In call to configurable"


@pytest.fixture(scope="module")
def t5x_run(tmp_path_factory):
    """The quickstart's tiny model at step 1000: a t5x run in the T5X format (two shards
    per array) with its config.gin, a t5x run in t5x's Orbax format without one, and
    the same parameters as a t5pipe checkpoint."""
    root = tmp_path_factory.mktemp("t5x")
    config = gin_setup.model_config_from_gin(["models/tiny.gin"])
    params = jax.tree.map(np.asarray, init_params(config, jax.random.PRNGKey(5)))
    # Sharpened, so that decodes are not one repeated token.
    params["logits_dense"]["kernel"] = params["logits_dense"]["kernel"] * 20
    state = t5x_state_dict(params, config, 1000)
    write_t5x_format(root / "run" / "checkpoint_1000", state, 2)
    (root / "run" / "config.gin").write_text("include 'models/tiny.gin'\n")
    write_orbax_format(root / "orbax_run", state, 1000)
    reference = root / "t5pipe"
    from t5pipe.vocabularies import byt5_vocabulary

    checkpoint_format.save_checkpoint(reference, {"params": params}, config, byt5_vocabulary())
    return root, config, params


def _infer(capsys, tmp_path, checkpoint, *extra):
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("hello\nworld\n")
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}.jsonl"
    argv = ["infer", "--checkpoint", str(checkpoint), "--input_file", str(inputs)]
    argv += ["--output_file", str(out), "--gin.DecodingOptions.max_decode_length=6", *extra]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert GIN_TRAILER not in err
    lines = [json.loads(line)["prediction"] for line in out.open()] if code == 0 else None
    return code, err, lines


def test_missing_path_names_the_nearest_existing_parent(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("x")
    code, err, _ = _infer(capsys, tmp_path, tmp_path / "runs" / "exp1" / "ckpt")
    assert code == 2
    assert f"{tmp_path / 'runs' / 'exp1' / 'ckpt'} does not exist" in err
    assert f"the nearest existing folder is {tmp_path / 'runs'} (it holds notes.txt)" in err


def test_model_dir_as_checkpoint_uses_its_latest(model_dir, tmp_path, capsys):
    code, err, lines = _infer(capsys, tmp_path, model_dir)
    assert code == 0 and len(lines) == 2
    latest = model_dir / "checkpoints" / "10"
    assert f"is a MODEL_DIR; using its latest complete checkpoint {latest} (step 10" in err
    # Its checkpoints/ folder names the same run.
    assert checkpoint_paths.locate(model_dir / "checkpoints", say=print).path == latest


def test_missing_step_lists_the_steps_there_are(model_dir, tmp_path, capsys):
    shutil.copytree(model_dir / "checkpoints" / "10", model_dir / "checkpoints" / "400")
    code, err, _ = _infer(capsys, tmp_path, model_dir / "checkpoints" / "401")
    assert code == 2
    assert "there is no step 401" in err
    assert f"the complete checkpoints in {model_dir / 'checkpoints'} are steps 10, 400" in err
    # The same message through eval and through gin (CHECKPOINT_PATH) on eval.
    argv = ["eval", "--task", "glue_rte_v002", "--output_dir", str(tmp_path / "e")]
    assert cli.main([*argv, f"--gin.evaluate.checkpoint_path='{model_dir}/checkpoints/401'"]) == 2
    err = capsys.readouterr().err
    assert "there is no step 401" in err and GIN_TRAILER not in err


def test_hugging_face_folder_says_which_convert_to_run(tmp_path, capsys):
    hf = tmp_path / "flan-t5-small"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "t5"}')
    (hf / "model.safetensors").write_bytes(b"")
    code, err, _ = _infer(capsys, tmp_path, hf)
    assert code == 2
    assert "is a Hugging Face model folder, not a t5pipe checkpoint; import it once with " in err
    assert f"`t5pipe convert --from_hf {hf} --out CKPT`" in err


def test_other_folders_and_files_say_what_they_hold(model_dir, tmp_path):
    with pytest.raises(UserInputError, match=r"is not a checkpoint \(it holds a.txt\)"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "a.txt").write_text("")
        checkpoint_paths.locate(tmp_path / "other")
    state_file = model_dir / "checkpoints" / "10" / "meta"
    with pytest.raises(UserInputError, match="is a file, not a checkpoint folder"):
        checkpoint_paths.locate(next(p for p in state_file.iterdir() if p.is_file()))
    shutil.rmtree(model_dir / "checkpoints" / "10" / "meta")
    with pytest.raises(UserInputError, match="has a state/ folder but no meta/"):
        checkpoint_paths.locate(model_dir / "checkpoints" / "10")
    with pytest.raises(UserInputError, match="holds no complete checkpoint yet"):
        checkpoint_paths.locate(model_dir)


def test_t5x_checkpoint_loads_directly_in_infer_eval_and_api(t5x_run, tmp_path, capsys):
    root, config, params = t5x_run
    code, err, from_t5x = _infer(capsys, tmp_path, root / "run" / "checkpoint_1000")
    assert code == 0
    assert "is a t5x checkpoint, t5x format, step 1000: loading it directly, unverified" in err
    code, _, reference = _infer(capsys, tmp_path, root / "t5pipe")
    assert code == 0 and from_t5x == reference
    assert len(set(reference)) > 1  # not one degenerate decode

    # t5x's Orbax format, named by its MODEL_DIR (the latest step), with the model
    # from a gin file: the parameters are the same bits.
    with pytest.raises(UserInputError, match=r"no config.gin beside it.*--gin_file MODEL.gin"):
        api.load(root / "orbax_run")
    loaded = api.load(root / "orbax_run", gin_file="models/tiny.gin")
    assert loaded.config == config.replace(dropout_rate=0.0, remat_policy="none")
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded.params), params)
    assert "its latest, checkpoint_1000" in capsys.readouterr().err

    found = evaluation.checkpoints_to_evaluate(str(root / "run" / "checkpoint_1000"), None, False)
    assert [(step, c.kind) for step, c in found] == [(1000, checkpoint_paths.T5X)]


def test_t5x_checkpoint_without_config_takes_the_commands_gin_file(t5x_run, tmp_path, capsys):
    root, _, _ = t5x_run
    lone = tmp_path / "lone" / "checkpoint_1000"
    shutil.copytree(root / "run" / "checkpoint_1000", lone)
    code, err, _ = _infer(capsys, tmp_path, lone)
    assert code == 2
    assert "nothing says which model it holds: there is no config.gin" in err
    assert "--gin_file MODEL.gin" in err
    code, _, lines = _infer(capsys, tmp_path, lone, "--gin_file=models/tiny.gin")
    assert code == 0
    assert lines == _infer(capsys, tmp_path, root / "t5pipe")[2]


def test_t5x_checkpoint_as_initial_checkpoint_starts_at_its_step(t5x_run, tmp_path, capsys):
    root, _, params = t5x_run
    initial = root / "run" / "checkpoint_1000"
    task = ("--gin.MIXTURE_OR_TASK_NAME='builtin_reverse_v001'", "--gin.train.pack=False")
    summary = train_in_process(
        tmp_path / "run", *FAST, *task, f"--gin.INITIAL_CHECKPOINT_PATH='{initial}'",
        "--gin.TRAIN_STEPS=1001",
    )  # fmt: skip
    out = capsys.readouterr()
    assert "is a t5x checkpoint, t5x format, step 1000: loading it directly, unverified" in out.err
    assert out.out.splitlines()[0].startswith("starting at step 1000, the step of the initial")
    assert summary["step"] == 1001
    # One step from the t5x parameters: close to them, not equal (it trained).
    trained = jax.device_get(summary["state"]["params"]["encoder"]["encoder_norm"]["scale"])
    start = params["encoder"]["encoder_norm"]["scale"]
    assert not np.array_equal(trained, start)
    np.testing.assert_allclose(trained, start, atol=0.05)


def test_dry_run_reads_checkpoint_paths_as_the_run_does(model_dir, t5x_run, tmp_path, capsys):
    argv = ["eval", "--dry_run", "--task", "glue_rte_v002", "--output_dir", str(tmp_path / "e")]
    assert cli.main([*argv, "--checkpoint", str(model_dir)]) == 0
    latest = model_dir / "checkpoints" / "10"
    assert f"checkpoint: {model_dir} (t5pipe checkpoint, step 10 at {latest})" in (
        capsys.readouterr().out
    )
    root, _, _ = t5x_run
    assert cli.main([*argv, "--checkpoint", str(root / "run")]) == 0
    out = capsys.readouterr().out
    assert f"(t5x checkpoint, step 1000 at {root / 'run' / 'checkpoint_1000'})" in out
    # A missing step is the run's own error, before anything is written.
    assert cli.main([*argv, "--checkpoint", str(model_dir / "checkpoints" / "401")]) == 2
    assert "there is no step 401" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
