"""A random Hugging Face T5, imported with `t5pipe convert`, fine-tunes on GLUE RTE (offline)."""

import jax
import numpy as np
import torch
import transformers
from train_testlib import read_metrics, train_in_process

from t5pipe.checkpoint_format import load_params
from t5pipe.hf import t5 as hf_mapping
from t5pipe.hf.convert import import_hf
from t5pipe.model_config import T5Config

SHAPES = dict(
    vocab_size=32128,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_heads=4,
    num_encoder_layers=2,
    num_decoder_layers=2,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)


def test_hf_imported_model_finetunes_on_rte(tmp_path, data_dir, spm_path, monkeypatch):
    monkeypatch.setenv("T5PIPE_GLUE_DIR", str(data_dir / "glue"))
    monkeypatch.setenv("T5PIPE_VOCAB", spm_path)
    config = T5Config(**SHAPES)
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**hf_mapping.t5config_to_hf(config))
    )
    hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.lm_head.weight) * 0.05)
    hf.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "ckpt", vocab=spm_path)
    imported = load_params(tmp_path / "ckpt")
    np.testing.assert_array_equal(
        np.asarray(imported["token_embedder"]["embedding"]),
        hf.shared.weight.detach().numpy(),
    )

    shapes = [f"--gin.T5Config.{k}={v!r}" for k, v in SHAPES.items()]
    summary = train_in_process(
        tmp_path / "run",
        "--gin_file=runs/finetune.gin",
        *shapes,
        f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'ckpt'}'",
        "--gin.MIXTURE_OR_TASK_NAME='glue_rte_v002'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 4}",
        "--gin.TRAIN_STEPS=3",
        "--gin.BATCH_SIZE=8",
        "--gin.STATS_PERIOD=1",
        "--gin.EVAL_PERIOD=3",
        "--gin.CHECKPOINT_PERIOD=3",
        "--gin.train.eval_max_examples=16",
        "--gin.train.eval_with_decoding=False",
        gin_file="models/t5_1_1/small.gin",
    )
    assert summary["step"] == 3 and summary["train_step_compilations"] == 1
    losses = [r["loss"] for r in read_metrics(tmp_path / "run")]
    assert len(losses) == 3 and all(np.isfinite(losses))
    # Training started from the imported weights and moved them.
    trained = summary["state"]["params"]
    changed = jax.tree.map(
        lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b)), trained, imported
    )
    assert all(jax.tree.leaves(changed))
    assert np.allclose(
        np.asarray(trained["token_embedder"]["embedding"]),
        np.asarray(imported["token_embedder"]["embedding"]),
        atol=0.1,
    )
    evals = read_metrics(tmp_path / "run", split="eval")
    assert 0.0 <= evals[-1]["glue_rte_v002/teacher_forced_token_accuracy"] <= 1.0
