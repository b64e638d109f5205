"""t5x-style gin flags and the messages for broken gin configuration."""

import argparse

import gin
import pytest
from testlib import QUICKSTART, train_error, write

from t5pipe import cli, gin_setup
from t5pipe.errors import EXIT_BAD_INPUT, UserInputError
from t5pipe.model_config import T5Config


def parse(tmp_path, text=None, bindings=()):
    files = []
    if text is not None:
        path = tmp_path / "config.gin"
        path.write_text("# a comment line\n" + text)
        files.append(str(path))
    args = argparse.Namespace(
        gin_file=files, gin_bindings=[], gin_search_paths=[], tfds_data_dir=None
    )
    rest, dot = gin_setup.split_gin_dot_flags(list(bindings))
    assert rest == []
    return gin_setup.parse_command_gin(args, dot)


@pytest.fixture(autouse=True)
def clean_gin():
    yield
    gin.clear_config()


def test_dot_flags_take_literals_references_and_bare_strings():
    rest, bindings = gin_setup.split_gin_dot_flags(
        [
            "train",
            "--gin.TRAIN_STEPS=20",
            "--gin.MODEL_DIR=/tmp/run a",
            "--gin.X",
            "'q'",
            "--gin.VOCAB=@byt5_vocabulary()",
            "--other",
        ]
    )
    assert rest == ["train", "--other"]
    assert bindings == [
        "TRAIN_STEPS = 20",
        "MODEL_DIR = '/tmp/run a'",
        "X = 'q'",
        "VOCAB = @byt5_vocabulary()",
    ]


def test_shipped_model_file_and_binding_override(tmp_path):
    parse(tmp_path, "include 'models/t5_1_1/small.gin'\n", ["--gin.T5Config.d_ff=96"])
    config = T5Config()
    assert (config.d_model, config.d_ff, config.tie_word_embeddings) == (512, 96, False)


def test_unknown_parameter_names_file_line_and_suggestion(tmp_path):
    with pytest.raises(UserInputError) as error:
        parse(tmp_path, "T5Config.dmodel = 3\n")
    message = str(error.value)
    assert "config.gin, line 2" in message and "dmodel" in message
    assert "did you mean: d_model?" in message


def test_unknown_configurable_suggests_the_nearest(tmp_path):
    with pytest.raises(UserInputError, match=r"line 2 .*T5Confg.*did you mean: T5Config\b"):
        parse(tmp_path, "T5Confg.d_model = 3\n")


def test_syntax_error_names_file_and_line(tmp_path):
    with pytest.raises(UserInputError, match=r"gin syntax error in .*config.gin, line 2"):
        parse(tmp_path, "T5Config.d_model = = 3\n")


def test_missing_include_lists_the_search_path(tmp_path):
    with pytest.raises(UserInputError) as error:
        parse(tmp_path, "include 'nope.gin'\n")
    message = str(error.value)
    assert (
        "gin file 'nope.gin' (included from " in message and "config.gin) not found in" in message
    )
    assert gin_setup.gin_configs_dir() in message and "--gin_search_paths" in message


def test_undefined_macro_is_explained_at_parse_time(tmp_path):
    with pytest.raises(UserInputError) as error:
        parse(tmp_path, "T5Config.d_model = %NOT_DEFINED\n")
    message = str(error.value)
    assert "gin macro %NOT_DEFINED (used in " in message and "config.gin, line 2" in message
    assert "is never defined" in message and "--gin.NOT_DEFINED=VALUE" in message


def test_unclosed_bracket_names_the_file(tmp_path):
    with pytest.raises(UserInputError, match=r"gin syntax error in .*config.gin: .*unclosed"):
        parse(tmp_path, "T5Config.d_model = [3,\n")


# Every binding and macro the README documents, as a user's gin file would set them.
DOCUMENTED = """
include 'models/tiny.gin'
include 'runs/finetune.gin'
MODEL_DIR = '/tmp/documented'
MIXTURE_OR_TASK_NAME = 'builtin_reverse_v001'
MIXTURE_OR_TASK_MODULE = 't5pipe.tasks.builtin'
TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 12}
TRAIN_STEPS = 30
BATCH_SIZE = 16
DROPOUT_RATE = 0.25
INITIAL_CHECKPOINT_PATH = '/ckpts/start'
USE_CACHED_TASKS = False
Z_LOSS = 2e-4
LABEL_SMOOTHING = 0.1
LOSS_NORMALIZING_FACTOR = 'NUM_REAL_TARGET_TOKENS'
STATS_PERIOD = 7
EVAL_PERIOD = 11
CHECKPOINT_PERIOD = 13
CHECKPOINTS_TO_KEEP = 3
RANDOM_SEED = 5
train.optimizer = @adamw
train.learning_rate = @cosine_schedule()
cosine_schedule.decay_steps = 100
train.num_microbatches = 2
train.trainable_params = 'decoder/.*'
train.on_nonfinite = 'skip'
train.allow_partial_initial_checkpoint = True
train.initial_prompt_path = '/prompts/p'
train.eval_batch_size = 4
train.eval_max_examples = 9
train.eval_with_decoding = False
train.early_stopping_metric = 'builtin_reverse_v001/accuracy'
train.early_stopping_mode = 'min'
train.early_stopping_patience = 2
train.best_checkpoint_metric = 'builtin_reverse_v001/accuracy'
train.best_checkpoint_mode = 'min'
train.pack = False
train.peak_flops_per_device = 1e12
train.async_checkpointing = False
train.input_shards = 2
DecodingOptions.method = 'beam'
DecodingOptions.num_beams = 3
DecodingOptions.alpha = 0.0
DecodingOptions.max_decode_length = 9
EvalOptions.rank_classification = True
EvalOptions.labels = ('a', 'b')
"""


def test_every_documented_binding_and_macro_still_works(tmp_path):
    from t5pipe.train import train

    parse(tmp_path, DOCUMENTED)
    settings = gin_setup.resolved_arguments(train, "train")
    data, optimization = settings["data"], settings["optimization"]
    checkpoint, evaluation = settings["checkpoint"], settings["evaluation"]
    assert (settings["model_dir"], settings["train_steps"], settings["seed"]) == (
        "/tmp/documented",
        30,
        5,
    )
    assert settings["stats_period"] == 7 and settings["peak_flops_per_device"] == 1e12
    assert settings["model"].dropout_rate == 0.25 and settings["model"].d_model == 64
    assert (data.mixture_or_task_name, data.mixture_or_task_module) == (
        "builtin_reverse_v001",
        "t5pipe.tasks.builtin",
    )
    assert data.task_feature_lengths == {"inputs": 24, "targets": 12}
    assert (data.batch_size, data.pack, data.seed, data.input_shards) == (16, False, 5, 2)
    assert (optimization.z_loss, optimization.label_smoothing) == (2e-4, 0.1)
    assert optimization.loss_normalizing_factor == "NUM_REAL_TARGET_TOKENS"
    assert (optimization.num_microbatches, optimization.trainable_params) == (2, "decoder/.*")
    assert optimization.on_nonfinite == "skip"
    assert optimization.optimizer.__name__ == "adamw"
    assert float(optimization.schedule()(100)) == 0.0  # the cosine schedule decayed to its end
    assert (checkpoint.period, checkpoint.keep, checkpoint.async_save) == (13, 3, False)
    assert checkpoint.initial_checkpoint_path == "/ckpts/start"
    assert checkpoint.allow_partial_initial_checkpoint
    assert checkpoint.initial_prompt_path == "/prompts/p"
    assert (checkpoint.best_metric, checkpoint.best_mode) == (
        "builtin_reverse_v001/accuracy",
        "min",
    )
    assert (evaluation.period, evaluation.batch_size, evaluation.max_examples) == (11, 4, 9)
    assert not evaluation.with_decoding
    assert evaluation.early_stopping_metric == "builtin_reverse_v001/accuracy"
    assert (evaluation.early_stopping_mode, evaluation.early_stopping_patience) == ("min", 2)
    assert evaluation.decoding.method == "beam" and evaluation.decoding.num_beams == 3
    assert (evaluation.decoding.alpha, evaluation.decoding.max_decode_length) == (0.0, 9)
    assert evaluation.options.rank_classification and evaluation.options.labels == ("a", "b")


# ------------------------------------------------------------------ errors through `t5pipe train`


def test_unknown_gin_parameter(model_dir, capsys):
    message = train_error(model_dir, "--gin.train.learning_rat=0.1", capsys=capsys)
    assert "'train' doesn't have a parameter named 'learning_rat'" in message
    assert "did you mean: learning_rate" in message


def test_misspelled_macro_is_not_silently_ignored(model_dir, capsys):
    message = train_error(model_dir, "--gin.BATCH_SIZ=16", capsys=capsys)
    assert "gin macro BATCH_SIZ is set but nothing uses it" in message
    assert "did you mean: BATCH_SIZE" in message


def test_undefined_macro(model_dir, capsys):
    message = train_error(
        model_dir, "--gin_bindings=train.train_steps = %TRAIN_STEP", capsys=capsys
    )
    assert (
        "%TRAIN_STEP (used in --gin flags, line 1 (`train.train_steps = %TRAIN_STEP`))" in message
    )
    assert "is never defined" in message
    assert "did you mean: TRAIN_STEPS" in message
    assert "--gin.TRAIN_STEP=VALUE" in message


def test_gin_syntax_error_names_file_and_line(model_dir, tmp_path, capsys):
    bad = write(tmp_path / "mine.gin", "# my settings\nBATCH_SIZE = 8\ntrain.seed = = 3\n")
    message = train_error(model_dir, f"--gin_file={bad}", capsys=capsys)
    assert f"gin syntax error in {bad}, line 3" in message


def test_unknown_configurable_in_a_file(model_dir, tmp_path, capsys):
    bad = write(tmp_path / "mine.gin", "BATCH_SIZE = 8\nT5Confg.d_model = 32\n")
    message = train_error(model_dir, f"--gin_file={bad}", capsys=capsys)
    assert f"{bad}, line 2" in message and "did you mean: T5Config" in message


def test_required_macro_missing(tmp_path, capsys):
    code = cli.main(["train", *QUICKSTART])  # no MODEL_DIR at all
    message = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "MODEL_DIR is required but not set: --gin.MODEL_DIR=..." in message


def test_shipped_gin_files_win_over_the_current_directory(tmp_path, monkeypatch):
    # A `models/tiny.gin` in the working directory (with an import line) must not replace
    # the shipped one that runs/quickstart.gin includes; it is used only when asked for.
    import os

    write(tmp_path / "models" / "tiny.gin", "import a_module_that_does_not_exist\n")
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(
        gin_file=["runs/quickstart.gin"], gin_bindings=[], gin_search_paths=[],
        tfds_data_dir=None,
    )  # fmt: skip
    report = gin_setup.parse_command_gin(args, [])
    shipped = os.path.join(gin_setup.gin_configs_dir(), "models", "tiny.gin")
    assert shipped in report.files
    assert str(tmp_path / "models" / "tiny.gin") not in report.files
