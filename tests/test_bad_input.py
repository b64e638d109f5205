"""Bad input gets one clear paragraph (what, where, what to do), exit code 2, no
traceback, and leaves an existing MODEL_DIR exactly as it was (issue 8).

Most cases run `t5pipe train` in-process through `t5pipe.cli.main`, against a
MODEL_DIR that already holds a config.gin, a metrics.jsonl and a checkpoint of
the quickstart's tiny model; each test hashes that tree before and after.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
from train_testlib import REPO_ROOT, subprocess_env

from t5pipe import cli, gin_setup, preflight
from t5pipe import train as train_module
from t5pipe.checkpoints import save_checkpoint
from t5pipe.errors import EXIT_BAD_INPUT, UserInputError
from t5pipe.model import abstract_params, init_params
from t5pipe.model_config import T5Config
from t5pipe.tasks import user_data
from t5pipe.tasks.span_corruption import random_spans_helper
from t5pipe.vocabularies import byt5_vocabulary

QUICKSTART = [
    "--gin_file=runs/quickstart.gin",
    "--gin.TRAIN_STEPS=2",
    "--gin.EVAL_PERIOD=0",
    "--gin.BATCH_SIZE=8",  # the test process has 8 CPU devices (conftest)
]


# ------------------------------------------------------------------ fixtures and helpers


def tiny_gin_config() -> T5Config:
    """T5Config exactly as models/tiny.gin (the quickstart's model) binds it."""
    gin.clear_config()
    gin_setup.register_configurables()
    gin.add_config_file_search_path(gin_setup.gin_configs_dir())
    gin.parse_config_files_and_bindings(["models/tiny.gin"], [], finalize_config=False)
    config = T5Config()
    gin.clear_config()
    return config


@pytest.fixture(scope="module")
def model_dir_template(tmp_path_factory) -> Path:
    """A MODEL_DIR as a run leaves it: config.gin, metrics.jsonl, checkpoints/10."""
    root = tmp_path_factory.mktemp("existing_run")
    config = tiny_gin_config()
    (root / "config.gin").write_text("# operative config of an earlier run\nTRAIN_STEPS = 10\n")
    (root / "metrics.jsonl").write_text('{"step": 10, "loss": 3.25, "learning_rate": 0.01}\n')
    params = init_params(config, jax.random.PRNGKey(0))
    save_checkpoint(
        root / "checkpoints" / "10",
        {"params": params, "step": np.int32(10)},
        config,
        byt5_vocabulary(),
    )
    assert preflight.latest_checkpoint(root) == root / "checkpoints" / "10"
    return root


@pytest.fixture
def model_dir(model_dir_template, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(model_dir_template, target)
    return target


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256 of the bytes, or 'dir'} for everything under root."""
    digest = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        digest[relative] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def train_cli(model_dir: Path, *flags: str, capsys) -> str:
    """Runs `t5pipe train` in-process on MODEL_DIR; asserts exit code 2, that MODEL_DIR
    is unchanged and that no traceback was printed; returns the error message."""
    before = tree_digest(model_dir)
    code = cli.main(["train", *QUICKSTART, f"--gin.MODEL_DIR={model_dir}", *flags])
    captured = capsys.readouterr()
    assert code == EXIT_BAD_INPUT, captured.err
    assert tree_digest(model_dir) == before, "MODEL_DIR was changed"
    assert "Traceback" not in captured.err
    prefix = "t5pipe train: error: "
    assert captured.err.count(prefix) == 1, captured.err
    return captured.err.split(prefix, 1)[1].strip()


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def byte_task(name: str, files, **kwargs) -> str:
    """A user TSV/JSONL task in the byte vocabulary (fits the tiny model's 384 ids)."""
    user_data.supervised_task(
        name,
        files,
        inputs_template="q: {question}",
        targets_template="{answer}",
        vocabulary=byt5_vocabulary(),
        overwrite=True,
        **kwargs,
    )
    return name


# ------------------------------------------------------------------ task and gin


def test_unknown_task_names_the_nearest(model_dir, capsys):
    message = train_cli(model_dir, "--gin.MIXTURE_OR_TASK_NAME=builtin_revers_v001", capsys=capsys)
    assert "MIXTURE_OR_TASK_NAME='builtin_revers_v001' is not a registered" in message
    assert "did you mean: builtin_reverse_v001" in message
    assert "t5pipe tasks" in message


def test_unknown_mixture_names_the_nearest(model_dir, capsys):
    message = train_cli(
        model_dir, "--gin.MIXTURE_OR_TASK_NAME=glue_v002_proportionl", capsys=capsys
    )
    assert "did you mean: glue_v002_proportional" in message


def test_unknown_gin_parameter(model_dir, capsys):
    message = train_cli(model_dir, "--gin.train.learning_rat=0.1", capsys=capsys)
    assert "'train' doesn't have a parameter named 'learning_rat'" in message
    assert "did you mean: learning_rate" in message


def test_misspelled_macro_is_not_silently_ignored(model_dir, capsys):
    message = train_cli(model_dir, "--gin.BATCH_SIZ=16", capsys=capsys)
    assert "gin macro BATCH_SIZ is set but nothing uses it" in message
    assert "did you mean: BATCH_SIZE" in message


def test_undefined_macro(model_dir, capsys):
    message = train_cli(model_dir, "--gin_bindings=train.train_steps = %TRAIN_STEP", capsys=capsys)
    assert "%TRAIN_STEP (used by `train.train_steps`) is never defined" in message
    assert "did you mean: TRAIN_STEPS" in message
    assert "--gin.TRAIN_STEP=VALUE" in message


def test_gin_syntax_error_names_file_and_line(model_dir, tmp_path, capsys):
    bad = write(tmp_path / "mine.gin", "# my settings\nBATCH_SIZE = 8\ntrain.seed = = 3\n")
    message = train_cli(model_dir, f"--gin_file={bad}", capsys=capsys)
    assert f"gin syntax error in {bad}, line 3" in message


def test_unknown_configurable_in_a_file(model_dir, tmp_path, capsys):
    bad = write(tmp_path / "mine.gin", "BATCH_SIZE = 8\nT5Confg.d_model = 32\n")
    message = train_cli(model_dir, f"--gin_file={bad}", capsys=capsys)
    assert f"{bad}, line 2" in message and "did you mean: T5Config" in message


def test_required_macro_missing(tmp_path, capsys):
    code = cli.main(["train", *QUICKSTART])  # no MODEL_DIR at all
    message = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "MODEL_DIR is required but not set: --gin.MODEL_DIR=..." in message


# ------------------------------------------------------------------ feature lengths


def test_targets_length_too_small(model_dir, capsys):
    message = train_cli(
        model_dir, "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 1}", capsys=capsys
    )
    assert "TASK_FEATURE_LENGTHS['targets']=1 is too small for task builtin_reverse_v001" in message
    assert "end in EOS" in message


def test_span_corruption_targets_too_short(model_dir, tmp_path, capsys):
    corpus = write(tmp_path / "corpus.txt", "the quick brown fox jumps over the lazy dog\n" * 20)
    user_data.text_pretraining_task(
        "bad_input_corpus", {"train": str(corpus)}, vocabulary=byt5_vocabulary(), overwrite=True
    )
    needed = random_spans_helper(64)[1]  # 64 inputs tokens -> this many targets tokens
    assert needed > 4
    message = train_cli(
        model_dir,
        "--gin.MIXTURE_OR_TASK_NAME=bad_input_corpus",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 4}",
        capsys=capsys,
    )
    assert "TASK_FEATURE_LENGTHS['targets']=4 is too small for task bad_input_corpus" in message
    assert f"at least {needed}" in message


def test_feature_lengths_missing_a_key(model_dir, capsys):
    message = train_cli(model_dir, "--gin.TASK_FEATURE_LENGTHS={'inputs': 24}", capsys=capsys)
    assert "lacks 'targets'" in message


# ------------------------------------------------------------------ checkpoints


def _mismatched_params(config_a: T5Config, config_b: T5Config) -> list[str]:
    flat_a = preflight._flat_shapes(abstract_params(config_a)[0])
    flat_b = preflight._flat_shapes(abstract_params(config_b)[0])
    return sorted(name for name in flat_a if flat_a[name] != flat_b[name])


def test_checkpoint_in_model_dir_does_not_fit(model_dir, capsys):
    message = train_cli(model_dir, "--gin.T5Config.d_model=32", capsys=capsys)
    expected = _mismatched_params(tiny_gin_config(), tiny_gin_config().replace(d_model=32))
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
    with caplog.at_level(logging.WARNING, logger="t5pipe.preflight"):
        train_cli(
            model_dir,
            "--gin.T5Config.d_ff=64",
            f"--gin.INITIAL_CHECKPOINT_PATH={model_dir_template / 'checkpoints' / '10'}",
            capsys=capsys,
        )
    assert "is ignored: MODEL_DIR already has checkpoint" in caplog.text
    assert "training resumes from it" in caplog.text


# ------------------------------------------------------------------ vocabulary


def test_missing_vocabulary(model_dir, tmp_path, monkeypatch, capsys):
    rows = write(tmp_path / "qa.tsv", "question\tanswer\nwho\tme\n")
    user_data.supervised_task(  # T5's SentencePiece vocabulary, found through $T5PIPE_VOCAB
        "bad_input_t5_vocab", {"train": str(rows)}, "q: {question}", "{answer}", overwrite=True
    )
    missing = tmp_path / "nowhere" / "spiece.model"
    monkeypatch.setenv("T5PIPE_VOCAB", str(missing))
    message = train_cli(model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_t5_vocab", capsys=capsys)
    assert f"the vocabulary file {missing} does not exist" in message
    assert "T5PIPE_VOCAB=" in message and "t5_vocabulary.path" in message


def test_unreadable_vocabulary(model_dir, tmp_path, capsys):
    rows = write(tmp_path / "qa.tsv", "question\tanswer\nwho\tme\n")
    user_data.supervised_task(
        "bad_input_t5_vocab", {"train": str(rows)}, "q: {question}", "{answer}", overwrite=True
    )
    garbage = write(tmp_path / "spiece.model", b"this is not a sentencepiece model\n")
    message = train_cli(
        model_dir,
        "--gin.MIXTURE_OR_TASK_NAME=bad_input_t5_vocab",
        f"--gin.t5_vocabulary.path={garbage}",
        capsys=capsys,
    )
    assert f"the vocabulary file {garbage} cannot be read as a SentencePiece model" in message


def test_vocabulary_larger_than_model(model_dir, capsys):
    message = train_cli(model_dir, "--gin.T5Config.vocab_size=200", capsys=capsys)
    assert "the vocabulary has 259 ids but T5Config.vocab_size is 200" in message


# ------------------------------------------------------------------ data


def test_empty_split(model_dir, capsys):
    def no_examples(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices({"inputs": [""], "targets": [""]}).take(0)

    vocabulary = byt5_vocabulary()
    if "bad_input_empty" in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove("bad_input_empty")
    seqio.TaskRegistry.add(
        "bad_input_empty",
        source=seqio.FunctionDataSource(no_examples, splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features={k: seqio.Feature(vocabulary) for k in ("inputs", "targets")},
    )
    message = train_cli(model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_empty", capsys=capsys)
    assert "task bad_input_empty has no examples in split 'train'" in message
    assert "data source: no_examples" in message
    assert "first batch would never arrive" in message


def test_user_file_with_only_a_header(model_dir, tmp_path, capsys):
    header_only = write(tmp_path / "train.tsv", "question\tanswer\n")
    byte_task("bad_input_header_only", {"train": str(header_only)})
    message = train_cli(
        model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_header_only", capsys=capsys
    )
    assert "task bad_input_header_only has no examples in split 'train'" in message
    assert str(header_only) in message


def test_malformed_tsv_row(model_dir, tmp_path, capsys):
    rows = write(tmp_path / "train.tsv", "question\tanswer\nwho\tme\nwhat is this\n")
    byte_task("bad_input_tsv", {"train": str(rows)})
    message = train_cli(model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_tsv", capsys=capsys)
    assert message.startswith("task bad_input_tsv, split 'train'")
    assert f"{rows}:3: 1 tab-separated fields, expected 2 (question, answer)" in message


def test_malformed_jsonl_row(model_dir, tmp_path, capsys):
    rows = write(
        tmp_path / "train.jsonl",
        '{"question": "who", "answer": "me"}\n\n{"question": "what", "answer": }\n',
    )
    byte_task("bad_input_jsonl", {"train": str(rows)})
    message = train_cli(model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_jsonl", capsys=capsys)
    assert f"{rows}:3: not valid JSON" in message


def test_row_missing_a_template_field(model_dir, tmp_path, capsys):
    rows = write(tmp_path / "train.jsonl", '{"question": "who", "answer": "me"}\n{"q": "x"}\n')
    byte_task("bad_input_field", {"train": str(rows)})
    message = train_cli(model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_field", capsys=capsys)
    assert f"{rows}:2: inputs_template uses field 'question'" in message


def test_non_utf8_text(model_dir, tmp_path, capsys):
    latin1 = "question\tanswer\nwho\tme\ncaf\u00e9\tyes\n".encode("latin-1")
    rows = write(tmp_path / "train.tsv", latin1)
    byte_task("bad_input_latin1", {"train": str(rows)})
    message = train_cli(model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_latin1", capsys=capsys)
    offset = latin1.index(b"\xe9")
    assert f"{rows}:3:4: not UTF-8 text" in message  # line 3, 4th byte: "caf" then 0xE9
    assert f"byte offset {offset}" in message and "b'\\xe9'" in message


def test_check_utf8_locates_the_byte(tmp_path):
    path = write(tmp_path / "inputs.txt", "ok\nalso ok\n\u00fcber".encode() + b"\n\xff\xfe!\n")
    with pytest.raises(UserInputError) as error:
        preflight.check_utf8(path)
    offset = path.read_bytes().index(b"\xff")
    assert str(error.value).startswith(
        f"{path}:4:1: not UTF-8 text: byte offset {offset} holds " + repr(b"\xff")
    )
    preflight.check_utf8(write(tmp_path / "fine.txt", "\u00fcber alles\n"))


def test_over_long_examples_are_truncated_and_counted(tmp_path, caplog):
    questions = ["hi", "x" * 40, "why", "y" * 13, "z" * 14]
    rows = write(
        tmp_path / "train.tsv",
        "question\tanswer\n" + "".join(f"{q}\tok\n" for q in questions),
    )
    name = byte_task("bad_input_long", {"train": str(rows)})
    lengths = {"inputs": 17, "targets": 4}
    # Byte vocabulary: one token per UTF-8 byte, plus EOS; inputs are "q: " + question.
    token_counts = [len(f"q: {q}".encode()) + 1 for q in questions]
    expected = sum(count > lengths["inputs"] for count in token_counts)
    assert expected == 2
    with caplog.at_level(logging.WARNING, logger="t5pipe.preflight"):
        report = preflight.count_truncated(seqio.get_mixture_or_task(name), "train", lengths)
    assert report[name]["truncated"] == expected
    assert report[name]["inputs"] == {"truncated": expected, "longest": max(token_counts)}
    assert report[name]["whole_split"] and report[name]["examples"] == len(questions)
    assert f"{expected} of {len(questions)} examples (the whole split)" in caplog.text
    # ...and the pipeline keeps them, cut to the limit and still ending in EOS.
    dataset = seqio.get_dataset(
        name,
        task_feature_lengths=lengths,
        dataset_split="train",
        shuffle=False,
        feature_converter=seqio.EncDecFeatureConverter(pack=False),
    )
    batches = list(dataset.as_numpy_iterator())
    assert len(batches) == len(questions)
    longest = batches[1]["encoder_input_tokens"]
    assert longest.shape == (lengths["inputs"],) and longest[-1] == 1  # EOS


# ------------------------------------------------------------------ MODEL_DIR, flags


@contextlib.contextmanager
def without_write_permission(folder: Path):
    """Root ignores permission bits, so as root act as `nobody`; otherwise chmod."""
    if os.geteuid() == 0:
        os.seteuid(65534)
        try:
            yield
        finally:
            os.seteuid(0)
    else:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)


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


def test_batch_size_not_divisible_by_devices(model_dir, capsys):
    message = train_cli(model_dir, "--gin.BATCH_SIZE=12", capsys=capsys)
    assert "BATCH_SIZE=12 does not divide evenly over the data-parallel devices" in message
    assert f"({jax.device_count()})" in message


def test_batch_size_not_divisible_by_microbatches(model_dir, capsys):
    message = train_cli(model_dir, "--gin.train.num_microbatches=3", capsys=capsys)
    assert "BATCH_SIZE=8 does not divide evenly over train.num_microbatches (3)" in message


def test_zero_stats_period(model_dir, capsys):
    message = train_cli(model_dir, "--gin.STATS_PERIOD=0", capsys=capsys)
    assert "STATS_PERIOD=0: expected a whole number >= 1" in message


def test_good_config_passes_and_touches_nothing(model_dir, caplog):
    before = tree_digest(model_dir)
    train_module.configure([*QUICKSTART, f"--gin.MODEL_DIR={model_dir}"])
    with caplog.at_level(logging.INFO, logger="t5pipe.preflight"):
        settings = preflight.check_train_config(train_module.train)
    assert settings["batch_size"] == 8
    assert settings["mixture_or_task_name"] == "builtin_reverse_v001"
    assert "truncation: task builtin_reverse_v001" in caplog.text
    assert tree_digest(model_dir) == before


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


# ------------------------------------------------------------------ eval and infer


def _command(command: str, model_dir: Path, *flags: str, capsys) -> str:
    before = tree_digest(model_dir)
    code = cli.main([command, *flags])
    captured = capsys.readouterr()
    assert code == EXIT_BAD_INPUT, captured.err
    assert tree_digest(model_dir) == before
    assert "Traceback" not in captured.err
    return captured.err.split(f"t5pipe {command}: error: ", 1)[1].strip()


def test_eval_checkpoint_flag_conflicts_with_gin(model_dir, tmp_path, capsys):
    checkpoint = model_dir / "checkpoints" / "10"
    message = _command(
        "eval",
        model_dir,
        "--gin_file=runs/eval.gin",
        f"--checkpoint={checkpoint}",
        "--gin.CHECKPOINT_PATH=/somewhere/else",
        "--task=builtin_reverse_v001",
        f"--output_dir={tmp_path / 'eval'}",
        capsys=capsys,
    )
    assert f"conflicting settings: --checkpoint {checkpoint} but gin sets CHECKPOINT_PATH" in (
        message
    )
    assert "/somewhere/else" in message


def test_infer_non_utf8_input_file(model_dir, tmp_path, capsys):
    inputs = write(tmp_path / "inputs.txt", b"reverse: abc\nreverse: d\xe9f\n")
    message = _command(
        "infer",
        model_dir,
        f"--checkpoint={model_dir / 'checkpoints' / '10'}",
        f"--input_file={inputs}",
        f"--output_file={tmp_path / 'out.jsonl'}",
        capsys=capsys,
    )
    assert message.startswith(f"{inputs}:2:11: not UTF-8 text: byte offset 23 holds b'\\xe9'")
    assert not (tmp_path / "out.jsonl").exists()
