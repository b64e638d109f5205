"""Bad task names, feature lengths and data: one clear paragraph (what, where, what to do),
exit code 2, no traceback, and an existing MODEL_DIR left exactly as it was. These checks
are `t5pipe.input_pipeline`'s, made where the data is read."""

import logging

import pytest
import seqio
import tensorflow as tf
from testlib import byte_task, train_error, write

from t5pipe import input_pipeline
from t5pipe.errors import UserInputError
from t5pipe.input_pipeline import DataConfig
from t5pipe.tasks import user_data
from t5pipe.tasks.span_corruption import random_spans_helper
from t5pipe.text_files import read_utf8
from t5pipe.vocabularies import byt5_vocabulary


def test_unknown_task_names_the_nearest(model_dir, capsys):
    message = train_error(
        model_dir, "--gin.MIXTURE_OR_TASK_NAME=builtin_revers_v001", capsys=capsys
    )
    assert "MIXTURE_OR_TASK_NAME='builtin_revers_v001' is not a registered" in message
    assert "did you mean: builtin_reverse_v001" in message
    assert "t5pipe tasks" in message


def test_unknown_mixture_names_the_nearest(model_dir, capsys):
    message = train_error(
        model_dir, "--gin.MIXTURE_OR_TASK_NAME=glue_v002_proportionl", capsys=capsys
    )
    assert "did you mean: glue_v002_proportional" in message


def test_targets_length_too_small(model_dir, capsys):
    message = train_error(
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
    message = train_error(
        model_dir,
        "--gin.MIXTURE_OR_TASK_NAME=bad_input_corpus",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 4}",
        capsys=capsys,
    )
    assert "TASK_FEATURE_LENGTHS['targets']=4 is too small for task bad_input_corpus" in message
    assert f"at least {needed}" in message


def test_feature_lengths_missing_a_key(model_dir, capsys):
    message = train_error(model_dir, "--gin.TASK_FEATURE_LENGTHS={'inputs': 24}", capsys=capsys)
    assert "lacks 'targets'" in message


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
    message = train_error(model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_empty", capsys=capsys)
    assert "task bad_input_empty has no examples in split 'train'" in message
    assert "data source: no_examples" in message
    assert "first batch would never arrive" in message


def test_user_file_with_only_a_header(model_dir, tmp_path, capsys):
    header_only = write(tmp_path / "train.tsv", "question\tanswer\n")
    byte_task("bad_input_header_only", {"train": str(header_only)})
    message = train_error(
        model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_header_only", capsys=capsys
    )
    assert "task bad_input_header_only has no examples in split 'train'" in message
    assert str(header_only) in message


def test_malformed_tsv_row(model_dir, tmp_path, capsys):
    rows = write(tmp_path / "train.tsv", "question\tanswer\nwho\tme\nwhat is this\n")
    byte_task("bad_input_tsv", {"train": str(rows)})
    message = train_error(model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_tsv", capsys=capsys)
    assert message.startswith("task bad_input_tsv, split 'train'")
    assert f"{rows}:3: 1 tab-separated fields, expected 2 (question, answer)" in message


def test_malformed_jsonl_row(model_dir, tmp_path, capsys):
    rows = write(
        tmp_path / "train.jsonl",
        '{"question": "who", "answer": "me"}\n\n{"question": "what", "answer": }\n',
    )
    byte_task("bad_input_jsonl", {"train": str(rows)})
    message = train_error(model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_jsonl", capsys=capsys)
    assert f"{rows}:3: not valid JSON" in message


def test_row_missing_a_template_field(model_dir, tmp_path, capsys):
    rows = write(tmp_path / "train.jsonl", '{"question": "who", "answer": "me"}\n{"q": "x"}\n')
    byte_task("bad_input_field", {"train": str(rows)})
    message = train_error(model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_field", capsys=capsys)
    assert f"{rows}:2: inputs_template uses field 'question'" in message


def test_non_utf8_text(model_dir, tmp_path, capsys):
    latin1 = "question\tanswer\nwho\tme\ncaf\u00e9\tyes\n".encode("latin-1")
    rows = write(tmp_path / "train.tsv", latin1)
    byte_task("bad_input_latin1", {"train": str(rows)})
    message = train_error(model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_latin1", capsys=capsys)
    offset = latin1.index(b"\xe9")
    assert f"{rows}:3:4: not UTF-8 text" in message  # line 3, 4th byte: "caf" then 0xE9
    assert f"byte offset {offset}" in message and "b'\\xe9'" in message


def test_check_utf8_locates_the_byte(tmp_path):
    path = write(tmp_path / "inputs.txt", "ok\nalso ok\n\u00fcber".encode() + b"\n\xff\xfe!\n")
    with pytest.raises(UserInputError) as error:
        read_utf8(path)
    offset = path.read_bytes().index(b"\xff")
    assert str(error.value).startswith(
        f"{path}:4:1: not UTF-8 text: byte offset {offset} holds " + repr(b"\xff")
    )
    assert read_utf8(write(tmp_path / "fine.txt", "\u00fcber alles\n")) == "\u00fcber alles\n"


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
    data = DataConfig(mixture_or_task_name=name, task_feature_lengths=lengths)
    with caplog.at_level(logging.WARNING, logger="t5pipe.input_pipeline"):
        report = input_pipeline.check_first_examples(
            input_pipeline.check_task(data), data, count_truncation=True
        )
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


def test_non_utf8_text_corpus_is_an_error_naming_the_byte(model_dir, tmp_path, capsys):
    text = "a first line\nand a second\ncaf\u00e9 au lait\n"
    corpus = write(tmp_path / "corpus.txt", text.encode("latin-1"))
    user_data.text_pretraining_task(  # document="line": streamed, checked when built
        "bad_input_latin1_corpus", {"train": str(corpus)}, vocabulary=byt5_vocabulary(),
        overwrite=True,
    )  # fmt: skip
    message = train_error(
        model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_latin1_corpus", capsys=capsys
    )
    offset = corpus.read_bytes().index(b"\xe9")
    assert f"{corpus}:3:4: not UTF-8 text: byte offset {offset} holds b'\\xe9'" in message
    assert "text_pretraining_task.errors = 'replace'" in message
    for document in ("paragraph", "file"):  # read whole: the same error
        task = user_data.text_pretraining_task(
            "bad_input_latin1_corpus", {"train": str(corpus)}, document=document,
            vocabulary=byt5_vocabulary(), overwrite=True,
        )  # fmt: skip
        with pytest.raises(UserInputError, match=f"{corpus}:3:4: not UTF-8 text"):
            list(task.source.get_dataset("train").as_numpy_iterator())


def test_non_utf8_text_corpus_with_errors_replace(tmp_path, caplog):
    import gin

    # Two latin-1 bytes (0xE9), and a U+FFFD and an "à" that are UTF-8.
    corpus = write(tmp_path / "corpus.txt", b"caf\xe9 au lait\n\nd\xe9j\xc3\xa0 \xef\xbf\xbd vu\n")
    # One binding in gin (read when the task is registered), or the argument itself.
    gin.parse_config("text_pretraining_task.errors = 'replace'")
    streamed = user_data.text_pretraining_task(
        "latin1_corpus", {"train": str(corpus)}, vocabulary=byt5_vocabulary(), overwrite=True
    )
    gin.clear_config()
    with caplog.at_level(logging.WARNING, logger="t5pipe.text_files"):
        whole = user_data.ul2_pretraining_task(
            "latin1_corpus_ul2", {"train": str(corpus)}, document="paragraph",
            vocabulary=byt5_vocabulary(), overwrite=True, errors="replace",
        )  # fmt: skip
        texts = {
            name: [e["text"].decode() for e in task.source.get_dataset("train").as_numpy_iterator()]
            for name, task in (("line", streamed), ("paragraph", whole))
        }
    expected = ["caf\ufffd au lait", "d\ufffdj\u00e0 \ufffd vu"]  # the file's own U+FFFD kept
    assert texts == {"line": expected, "paragraph": expected}
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [f"{corpus}: 2 byte sequence(s) that are not UTF-8 read as U+FFFD"]
    with pytest.raises(UserInputError, match="errors='ignore'; expected one of"):
        user_data.text_pretraining_task("latin1_corpus", str(corpus), errors="ignore")
