"""LoRA through `t5pipe train`: a LoRA fine-tune on RTE from the local GLUE files,
starting from a Hugging Face-imported random model."""

import os
import shutil

import jax
import numpy as np
from hf_testlib import hf_model
from testlib import shared_data_dir, tiny_config
from train_testlib import FAST, read_metrics, train_in_process

from t5pipe import checkpoint_manager, checkpoint_paths, lora, pytrees
from t5pipe.checkpoint_format import load_params, read_meta, stored_param_shapes
from t5pipe.hf.convert import import_hf
from t5pipe.model import abstract_params

os.environ.setdefault("T5PIPE_GLUE_DIR", str(shared_data_dir() / "glue"))
os.environ.setdefault("T5PIPE_VOCAB", str(shared_data_dir() / "vocab" / "t5_spiece.model"))

VOCAB = 32128  # the T5 SentencePiece vocabulary the GLUE tasks use
MODEL = (
    "--gin_file=models/tiny.gin",
    f"--gin.T5Config.vocab_size={VOCAB}",
    "--gin.VOCABULARY=None",
    "--gin.MIXTURE_OR_TASK_NAME='glue_rte_v002'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
    "--gin.BATCH_SIZE=4",
)


def _hf_imported_checkpoint(tmp_path, spm_path):
    config = tiny_config(
        vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
    )  # fmt: skip
    hf_model(config).save_pretrained(tmp_path / "hf")
    shutil.copy(spm_path, tmp_path / "hf" / "spiece.model")
    return import_hf(tmp_path / "hf", tmp_path / "imported")


def test_lora_fine_tune_trains_only_the_adapters(tmp_path, spm_path):
    initial = _hf_imported_checkpoint(tmp_path, spm_path)
    run = tmp_path / "run"
    summary = train_in_process(
        run, *FAST, *MODEL,
        "--gin.TRAIN_STEPS=10",
        f"--gin.INITIAL_CHECKPOINT_PATH='{initial}'",
        "--gin.train.lora_config=@LoraConfig()",
        "--gin.LoraConfig.rank=4",
        "--gin.constant_schedule.learning_rate=0.05",
        gin_file="runs/finetune.gin",
    )  # fmt: skip
    state = jax.device_get(summary["state"])
    base, adapter = lora.split_adapter(state["params"])
    # The base is bit-identical to the imported checkpoint; every adapter moved.
    imported = pytrees.flatten(load_params(initial))
    assert pytrees.flatten(base).keys() == imported.keys()
    for name, value in pytrees.flatten(base).items():
        np.testing.assert_array_equal(value, imported[name], err_msg=name)
    flat = lora.flat_adapter(adapter)
    assert len(flat) == 2 * 2 * 6  # a, b on query and value of 2 + 2 self + 2 cross attentions
    assert all(np.abs(v).max() > 0 for k, v in flat.items() if k.endswith("/b"))

    # Optimizer state only for the adapters: every non-scalar leaf sits under one.
    lora_size = sum(v.size for v in flat.values())
    opt_leaves = jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]
    sized = [(pytrees.leaf_name(p), np.size(v)) for p, v in opt_leaves if np.ndim(v) > 0]
    assert sized and all("_lora/" in name for name, _ in sized), sized[:3]
    assert sum(size for _, size in sized) <= 2 * lora_size

    # Adapters inside the checkpoint and alone in MODEL_DIR/adapter (small).
    latest = checkpoint_manager.latest_checkpoint(run)
    assert set(flat) <= set(stored_param_shapes(latest))
    assert read_meta(latest)["lora"]["rank"] == 4
    saved, saved_config = lora.load_adapter(run / "adapter")
    assert saved_config.rank == 4
    for name, value in lora.flat_adapter(saved).items():
        np.testing.assert_array_equal(value, flat[name])
    adapter_bytes = sum(f.stat().st_size for f in (run / "adapter").iterdir())
    assert adapter_bytes < 64_000

    assert len(read_metrics(run)) == 10

    # Eval, infer and api load the checkpoint for a model without adapters: merged.
    checkpoint = checkpoint_paths.locate(latest)
    config, _ = checkpoint.model_and_vocabulary()
    loaded = checkpoint.load_params(abstract_params(config)[0], config)
    merged = lora.merge(base, adapter, lora.LoraConfig(**read_meta(latest)["lora"]))
    loaded, merged = pytrees.flatten(jax.device_get(loaded)), pytrees.flatten(merged)
    assert loaded.keys() == merged.keys() == imported.keys()
    for name, value in merged.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    query = "encoder/layers_0/attention/query"
    assert np.abs(loaded[query] - imported[query]).max() > 0
