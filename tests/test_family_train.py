"""A non-T5 family through `t5pipe train` (in-process): a tiny T5Gemma memorises a batch,
and its checkpoint then decodes what it learned."""

import numpy as np
from train_testlib import read_metrics, train_in_process

from t5pipe import checkpoint_format
from t5pipe.decoding import DecodingOptions
from t5pipe.inference import load_for_inference, predict_texts
from t5pipe.partitioning import create_mesh, logical_axis_rules
from t5pipe.tasks import user_data
from t5pipe.vocabularies import byt5_vocabulary

TASK = "family_memorise_batch"
STEPS = 80
WORDS = ["kqzmf", "banana", "tree", "glimmer", "sox", "vortex", "pale", "quorum"]


def test_tiny_t5gemma_memorises_a_batch_through_train(tmp_path):
    rows = tmp_path / "rows.tsv"
    lines = "".join(f"{w}\t{w[::-1]}\n" for w in WORDS)
    rows.write_text("word\treversed\n" + lines, encoding="utf-8")
    user_data.supervised_task(
        TASK, files={"train": str(rows)}, inputs_template="reverse: {word}",
        targets_template="{reversed}", vocabulary=byt5_vocabulary(), overwrite=True,
    )  # fmt: skip
    # The task's 8 examples make one batch, the same every step.
    summary = train_in_process(
        tmp_path / "run",
        "--gin_file=runs/pretrain.gin",
        f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}",
        f"--gin.TRAIN_STEPS={STEPS}",
        f"--gin.CHECKPOINT_PERIOD={STEPS}",
        "--gin.BATCH_SIZE=8",
        "--gin.STATS_PERIOD=1",
        "--gin.EVAL_PERIOD=None",
        "--gin.train.eval_with_decoding=False",
        "--gin.train.pack=False",
        gin_file="models/t5gemma/tiny.gin",
    )
    assert summary["step"] == STEPS
    losses = [r["loss"] for r in read_metrics(tmp_path / "run")]
    assert len(losses) == STEPS and all(np.isfinite(losses))
    assert min(losses) < 0.1 * losses[0], (losses[0], losses[-10:])

    # The checkpoint says it holds a T5Gemma, and decodes the memorised targets (training
    # fed the decoder T5Gemma's start token, <bos> = 2, as decoding does).
    checkpoint = summary["checkpoint"]
    assert checkpoint_format.read_meta(checkpoint)["model_config"]["family"] == "t5gemma"
    mesh = create_mesh()
    params, config, vocabulary = load_for_inference(checkpoint, mesh, logical_axis_rules())
    assert type(config).__name__ == "T5GemmaConfig"
    decodes = predict_texts(
        params, config, vocabulary, [f"reverse: {w}" for w in WORDS],
        DecodingOptions(max_decode_length=8), max_input_length=16, mesh=mesh,
        rules=logical_axis_rules(),
    )  # fmt: skip
    predictions = [d[0]["text"] for d in decodes]
    right = sum(p == w[::-1] for p, w in zip(predictions, WORDS, strict=True))
    assert right >= 6, predictions
