"""`t5pipe infer`: text file, stdin and task-split inputs; predictions checked against
Hugging Face `generate` on the same (exported) weights."""

import io
import json
import os
import sys

import jax
import numpy as np
import pytest
import seqio
import torch
import transformers
from conftest import shared_data_dir, tiny_config

os.environ.setdefault("T5PIPE_GLUE_DIR", str(shared_data_dir() / "glue"))
os.environ.setdefault("T5PIPE_VOCAB", str(shared_data_dir() / "vocab" / "t5_spiece.model"))

from t5pipe import hf_mapping, infer  # noqa: E402
from t5pipe.checkpoints import save_checkpoint  # noqa: E402
from t5pipe.model import init_params  # noqa: E402

INPUTS = [
    "translate English to German: Hello.",
    "",
    "summarize: a longer line of input text " * 3,
    "ünïcödé ✓",
]


@pytest.fixture(scope="module")
def byte_checkpoint(tmp_path_factory):
    """A random tiny T5.1.1 over the byte vocabulary, and the same weights in HF."""
    config = tiny_config(vocab_size=384)
    params = init_params(config, jax.random.PRNGKey(0))
    # Sharpen the output layer so that decodes are not one repeated token.
    params["logits_dense"]["kernel"] = params["logits_dense"]["kernel"] * 20
    path = tmp_path_factory.mktemp("ckpt") / "byte"
    save_checkpoint(path, {"params": params}, config, seqio.ByteVocabulary())
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**hf_mapping.t5config_to_hf(config))
    ).eval()
    state = {k: torch.tensor(np.asarray(v)) for k, v in hf_mapping.params_to_hf(params, config)}
    hf.lm_head.weight = torch.nn.Parameter(state["lm_head.weight"])
    hf.load_state_dict(state, strict=False)
    return path, hf


def hf_greedy_texts(hf, texts, max_new_tokens):
    vocabulary = seqio.ByteVocabulary()
    rows = [[*vocabulary.encode(t), 1] for t in texts]
    length = max(map(len, rows))
    ids = np.asarray([r + [0] * (length - len(r)) for r in rows])
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor((ids != 0) * 1),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
        )
    texts = []
    for row in out.numpy()[:, 1:].tolist():
        row = row[: row.index(1)] if 1 in row else row
        texts.append(vocabulary.decode([i for i in row if i != 0]))
    return texts


def test_infer_text_file_matches_transformers(byte_checkpoint, tmp_path):
    path, hf = byte_checkpoint
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
    assert infer.main(argv) == 0
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
    assert infer.main(argv) == 0
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
    assert infer.main(argv) == 0
    lines = [json.loads(line) for line in output_file.read_text().splitlines()]
    assert len(lines) == 3
    assert all(line["inputs"].startswith("rte sentence1:") for line in lines)
    assert {line["targets"] for line in lines} <= {"entailment", "not_entailment"}


def test_infer_rejects_two_input_sources(byte_checkpoint, tmp_path, capsys):
    path, _ = byte_checkpoint
    argv = ["--checkpoint", str(path), "--task", "glue_rte_v002", "--input_file", str(tmp_path)]
    assert infer.main(argv) == 2
    assert "give --input_file or --task, not both" in capsys.readouterr().err
