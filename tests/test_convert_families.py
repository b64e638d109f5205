"""`t5pipe convert` for a family other than T5 (T5Gemma), through the command's `main`:
HF -> t5pipe -> HF bit-identical, the Gemma SentencePiece embedded and exported, and the
imported checkpoint fine-tuned on a task that names T5's vocabulary, in its own."""

import json

import numpy as np
import pytest
import sentencepiece
import torch
import transformers
from family_testlib import config_from_gin, hf_state, spread_weights
from safetensors.numpy import load_file
from train_testlib import train_in_process

from t5pipe import checkpoint_format, cli, vocabularies
from t5pipe.models import get_family
from t5pipe.models.t5gemma import config_to_hf
from t5pipe.tasks import user_data

TINY = "models/t5gemma/tiny.gin"


@pytest.fixture(scope="module")
def gemma_spm(tmp_path_factory, data_dir):
    """A SentencePiece model trained here on local text, with Gemma's special tokens
    (pad 0, eos 1, bos 2, unk 3): Gemma's own is gated and the hub cannot be reached."""
    folder = tmp_path_factory.mktemp("spm")
    text = (data_dir / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(text.splitlines()[:3000]), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "gemma"), vocab_size=300,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
        bos_piece="<bos>", unk_piece="<unk>", minloglevel=2,
    )  # fmt: skip
    return folder / "gemma.model"


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, gemma_spm):
    """A random T5Gemma of tiny.gin's shapes saved by transformers, with the tokenizer."""
    config = config_from_gin(get_family("t5gemma"), TINY)
    torch.manual_seed(0)
    hf = transformers.T5GemmaForConditionalGeneration(
        transformers.T5GemmaConfig(**config_to_hf(config))
    )
    spread_weights(hf, 0.3, one_centered_norms=True, embedding_std=0.1)
    folder = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(folder)
    (folder / "tokenizer.model").write_bytes(gemma_spm.read_bytes())
    return folder, hf_state(hf)


def test_t5gemma_round_trip_through_convert_main(tmp_path, hf_folder, gemma_spm):
    folder, state = hf_folder
    ckpt, back = tmp_path / "ckpt", tmp_path / "back"
    assert cli.main(["convert", "--from_hf", str(folder), "--out", str(ckpt)]) == 0
    meta = checkpoint_format.read_meta(ckpt)
    assert meta["model_config"]["family"] == "t5gemma"
    assert meta["vocabulary"]["kind"] == "sentencepiece"
    assert meta["vocabulary"]["extra_ids"] == 0  # Gemma's pieces fill the embedding
    assert cli.main(["convert", "--to_hf", "--checkpoint", str(ckpt), "--out", str(back)]) == 0

    exported = load_file(back / "model.safetensors")
    saved = load_file(folder / "model.safetensors")
    assert set(exported) == set(saved)  # the tied output layer is not repeated
    for name, array in exported.items():
        assert array.dtype == saved[name].dtype and np.array_equal(array, saved[name]), name
    config = json.loads((back / "config.json").read_text())
    assert config["architectures"] == ["T5GemmaForConditionalGeneration"]
    assert (back / "tokenizer.model").read_bytes() == gemma_spm.read_bytes()
    tokenizer = json.loads((back / "tokenizer_config.json").read_text())
    assert tokenizer["tokenizer_class"] == "GemmaTokenizer"

    reloaded = transformers.T5GemmaForConditionalGeneration.from_pretrained(back)
    for name, array in hf_state(reloaded).items():
        assert np.array_equal(array, state[name]), name


def test_imported_t5gemma_fine_tunes_in_its_own_vocabulary(tmp_path, hf_folder, gemma_spm, capsys):
    folder, _ = hf_folder
    ckpt = tmp_path / "ckpt"
    assert cli.main(["convert", "--from_hf", str(folder), "--out", str(ckpt)]) == 0
    rows = tmp_path / "rows.tsv"
    rows.write_text("q\ta\nto be or not\tto be\nthe king\tis dead\n", encoding="utf-8")
    task = user_data.supervised_task(
        "family_t5_vocab_task", files={"train": str(rows)}, inputs_template="{q}",
        targets_template="{a}", overwrite=True,
    )  # fmt: skip
    assert vocabularies.is_t5_default(task.output_features["targets"].vocabulary)
    try:
        summary = train_in_process(
            tmp_path / "run",
            "--gin_file=runs/finetune.gin",
            f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'",
            "--gin.MIXTURE_OR_TASK_NAME='family_t5_vocab_task'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}",
            "--gin.TRAIN_STEPS=2",
            "--gin.CHECKPOINT_PERIOD=2",
            "--gin.BATCH_SIZE=2",
            "--gin.EVAL_PERIOD=None",
            "--gin.train.eval_with_decoding=False",
            "--gin.train.pack=False",
            "--gin.VOCABULARY=None",  # tiny.gin's byte vocabulary is for training from scratch
            gin_file=TINY,
        )
        recorded = checkpoint_format.load_vocabulary(summary["checkpoint"])
        gemma = sentencepiece.SentencePieceProcessor(model_file=str(gemma_spm))
        assert recorded.encode("to be or not") == gemma.encode("to be or not")
    finally:
        vocabularies.stand_in_for_t5(None)
    assert recorded.vocab_size == 300
    said = capsys.readouterr().out.splitlines()
    lines = [line for line in said if line.startswith("vocabulary: the checkpoint's")]
    assert len(lines) == 1 and str(ckpt) in lines[0], said
