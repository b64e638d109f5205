"""t5x-style gin flags and the messages for broken gin configuration."""

import argparse

import gin
import pytest

from t5pipe import gin_setup
from t5pipe.errors import UserInputError
from t5pipe.model_config import T5Config


def parse(tmp_path, text=None, bindings=()):
    files = []
    if text is not None:
        path = tmp_path / "config.gin"
        path.write_text("# a comment line\n" + text)
        files.append(str(path))
    gin_setup.register_configurables()
    gin.clear_config()
    args = argparse.Namespace(
        gin_file=files, gin_bindings=[], gin_search_paths=[], tfds_data_dir=None
    )
    rest, dot = gin_setup.split_gin_dot_flags(list(bindings))
    assert rest == []
    gin_setup.parse_gin(args, dot)


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
    with pytest.raises(UserInputError, match=r"line 2 .*T5Confg.*did you mean: T5Config\?"):
        parse(tmp_path, "T5Confg.d_model = 3\n")


def test_syntax_error_names_file_and_line(tmp_path):
    with pytest.raises(UserInputError, match=r"gin syntax error in .*config.gin, line 2"):
        parse(tmp_path, "T5Config.d_model = = 3\n")


def test_missing_include_lists_the_search_path(tmp_path):
    with pytest.raises(
        UserInputError, match=r"Unable to open file: nope.gin.*Searched config paths"
    ):
        parse(tmp_path, "include 'nope.gin'\n")


def test_undefined_macro_is_explained(tmp_path):
    parse(tmp_path, "T5Config.d_model = %NOT_DEFINED\n")
    with pytest.raises(TypeError) as raw:
        T5Config()
    explained = gin_setup.explain_undefined_macro(raw.value)
    assert explained is not None
    assert "%NOT_DEFINED is used but never defined" in str(explained)
    assert "--gin.NOT_DEFINED=VALUE" in str(explained)
