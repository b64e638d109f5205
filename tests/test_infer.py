"""`t5pipe infer`: text file, stdin and task-split inputs; predictions checked against
Hugging Face `generate` on the same (exported) weights."""

import io
import json
import os
import sys

from testlib import INPUTS, hf_greedy_texts, shared_data_dir

os.environ.setdefault("T5PIPE_GLUE_DIR", str(shared_data_dir() / "glue"))
os.environ.setdefault("T5PIPE_VOCAB", str(shared_data_dir() / "vocab" / "t5_spiece.model"))

from testlib import command_error, write  # noqa: E402

from t5pipe import cli  # noqa: E402


def test_infer_text_file_matches_transformers(byte_checkpoint, tmp_path, capsys):
    path, hf = byte_checkpoint  # written as an import is: no checksums
    input_file = tmp_path / "inputs.txt"
    input_file.write_text("\n".join(INPUTS) + "\n", encoding="utf-8")
    output_file = tmp_path / "out" / "predictions.jsonl"
    argv = [
        "--checkpoint",
        str(path),
        "--input_file",
        str(input_file),
        "--output_file",
        str(output_file),
        "--batch_size",
        "3",
        "--gin.DecodingOptions.max_decode_length=10",
    ]
    assert cli.main(["infer", *argv]) == 0
    err = capsys.readouterr().err
    assert err.count("loaded unverified") == 1 and f"checkpoint {path} records no checksums" in err
    lines = [json.loads(line) for line in output_file.read_text(encoding="utf-8").splitlines()]
    assert [line["inputs"] for line in lines] == INPUTS
    assert [line["prediction"] for line in lines] == hf_greedy_texts(hf, INPUTS, 10)
    assert len({line["prediction"] for line in lines}) > 1  # not one degenerate output
    for line in lines:
        assert len(line["decodes"]) == 1 and line["decodes"][0]["text"] == line["prediction"]
        assert line["decodes"][0]["log_prob"] <= 0


def test_infer_stdin_beam_decodes_through_gin(byte_checkpoint, monkeypatch, capsys):
    path, _ = byte_checkpoint
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello world\nsecond input\n"))
    argv = [
        "--gin_file=runs/infer.gin",
        f"--gin.CHECKPOINT_PATH='{path}'",
        "--gin.DecodingOptions.method='beam'",
        "--gin.DecodingOptions.num_beams=3",
        "--gin.DecodingOptions.num_decodes=2",
        "--gin.DecodingOptions.max_decode_length=8",
    ]
    assert cli.main(["infer", *argv]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["inputs"] for line in lines] == ["hello world", "second input"]
    for line in lines:
        first, second = line["decodes"]
        assert line["prediction"] == first["text"] and first["score"] >= second["score"]


def test_infer_task_split(byte_checkpoint, tmp_path):
    path, _ = byte_checkpoint
    output_file = tmp_path / "rte.jsonl"
    argv = [
        "--checkpoint",
        str(path),
        "--task",
        "glue_rte_v002",
        "--max_examples",
        "3",
        "--output_file",
        str(output_file),
        "--gin.DecodingOptions.max_decode_length=4",
    ]
    assert cli.main(["infer", *argv]) == 0
    lines = [json.loads(line) for line in output_file.read_text().splitlines()]
    assert len(lines) == 3
    assert all(line["inputs"].startswith("rte sentence1:") for line in lines)
    assert {line["targets"] for line in lines} <= {"entailment", "not_entailment"}


def test_infer_rejects_two_input_sources(byte_checkpoint, tmp_path, capsys):
    path, _ = byte_checkpoint
    argv = ["--checkpoint", str(path), "--task", "glue_rte_v002", "--input_file", str(tmp_path)]
    assert cli.main(["infer", *argv]) == 2
    assert "give --input_file or --task, not both" in capsys.readouterr().err


def test_infer_non_utf8_input_file(model_dir, tmp_path, capsys):
    inputs = write(tmp_path / "inputs.txt", b"reverse: abc\nreverse: d\xe9f\n")
    message = command_error(
        "infer",
        model_dir,
        f"--checkpoint={model_dir / 'checkpoints' / '10'}",
        f"--input_file={inputs}",
        f"--output_file={tmp_path / 'out.jsonl'}",
        capsys=capsys,
    )
    assert message.startswith(f"{inputs}:2:11: not UTF-8 text: byte offset 23 holds b'\\xe9'")
    assert not (tmp_path / "out.jsonl").exists()


def _infer_argv(path, inputs, output, *extra):
    return [
        "--checkpoint", str(path), "--input_file", str(inputs), "--output_file", str(output),
        "--batch_size", "2", "--gin.DecodingOptions.max_decode_length=4", *extra,
    ]  # fmt: skip


def test_infer_refuses_its_input_as_output(byte_checkpoint, tmp_path, capsys):
    path, _ = byte_checkpoint
    same = write(tmp_path / "same.txt", "hello\nworld\n")
    argv = _infer_argv(path, same, same)
    message = command_error("infer", tmp_path, *argv, capsys=capsys)
    assert message.startswith(f"--input_file and --output_file are the same file ({same})")


def test_infer_unwritable_output_folder_before_decoding(
    byte_checkpoint, tmp_path, capsys, monkeypatch
):
    # CI runs as root (chmod cannot make a folder read-only for it): the OS error is
    # injected where the output's temporary file is created.
    import errno

    from t5pipe import inference

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the output folder was checked")

    monkeypatch.setattr(inference.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(inference, "predict_texts", no_decoding)
    path, _ = byte_checkpoint
    inputs = write(tmp_path / "inputs.txt", "hello\n")
    output = tmp_path / "predictions.jsonl"
    message = command_error("infer", tmp_path, *_infer_argv(path, inputs, output), capsys=capsys)
    assert message == (
        f"--output_file {output}: cannot write in {output.parent} (Read-only file system). "
        "Choose a writable place for the predictions."
    )


def test_infer_crash_keeps_previous_output_and_nan_is_null(
    byte_checkpoint, tmp_path, capsys, monkeypatch
):
    import pytest

    from t5pipe import inference

    path, _ = byte_checkpoint
    inputs = write(tmp_path / "inputs.txt", "a\nb\nc\nd\n")
    output = write(tmp_path / "predictions.jsonl", '{"an": "earlier result"}\n')
    before = output.read_bytes()
    real, calls = inference.predict_texts, []

    def crash_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("device lost")
        decodes = real(*args, **kwargs)
        for options in decodes:
            options[0]["score"] = float("nan")
        return decodes

    monkeypatch.setattr(inference, "predict_texts", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="device lost"):
        cli.main(["infer", *_infer_argv(path, inputs, output)])
    assert output.read_bytes() == before  # replaced only by a complete result
    (partial,) = tmp_path.glob(".predictions.jsonl.*.partial")  # the first batch, kept
    rows = [json.loads(line) for line in partial.read_text().splitlines()]
    assert [r["inputs"] for r in rows] == ["a", "b"]

    calls.extend([1, 1])  # past the crash: every batch decodes now
    assert cli.main(["infer", *_infer_argv(path, inputs, output)]) == 0

    def no_nan(name):
        raise AssertionError(f"{name} in the JSON output")

    rows = [json.loads(line, parse_constant=no_nan) for line in output.read_text().splitlines()]
    assert [r["inputs"] for r in rows] == ["a", "b", "c", "d"]
    assert all(r["decodes"][0]["score"] is None for r in rows)
    assert all(isinstance(r["decodes"][0]["log_prob"], float) for r in rows)
