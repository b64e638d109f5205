"""LoRA through `t5pipe train` (in-process) on two model families: a tiny T5 and a tiny
T5Gemma start from a checkpoint, learn a memorisation batch with adapters alone, and
leave the base bit-identical; the run's checkpoint then serves with its adapters merged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_testlib import read_metrics, train_in_process

from t5pipe import lora, pytrees
from t5pipe.checkpoint_format import load_params, read_meta, save_checkpoint
from t5pipe.gin_setup import model_config_from_gin
from t5pipe.inference import load_for_inference
from t5pipe.models import init_params, model_for
from t5pipe.partitioning import create_mesh, logical_axis_rules
from t5pipe.tasks import user_data
from t5pipe.vocabularies import byt5_vocabulary

TASK = "lora_memorise_batch"
STEPS = 30
WORDS = ["kqzmf", "banana", "tree", "glimmer", "sox", "vortex", "pale", "quorum"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    rows = tmp_path_factory.mktemp("rows") / "rows.tsv"
    rows.write_text("word\treversed\n" + "".join(f"{w}\t{w[::-1]}\n" for w in WORDS))
    user_data.supervised_task(
        TASK, files={"train": str(rows)}, inputs_template="reverse: {word}",
        targets_template="{reversed}", vocabulary=byt5_vocabulary(), overwrite=True,
    )  # fmt: skip
    return TASK


@pytest.mark.parametrize("model_gin", ["models/tiny.gin", "models/t5gemma/tiny.gin"])
def test_lora_learns_a_batch_and_leaves_the_base_alone(task, model_gin, tmp_path):
    config = model_config_from_gin([model_gin])
    initial = tmp_path / "initial"
    save_checkpoint(
        initial, {"params": init_params(config, jax.random.PRNGKey(0))}, config, byt5_vocabulary()
    )
    run = tmp_path / "run"
    summary = train_in_process(
        run,
        f"--gin_file={model_gin}",
        f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}",
        f"--gin.TRAIN_STEPS={STEPS}",
        f"--gin.CHECKPOINT_PERIOD={STEPS}",
        f"--gin.INITIAL_CHECKPOINT_PATH='{initial}'",
        "--gin.BATCH_SIZE=8",  # the task's 8 examples: the same batch every step
        "--gin.STATS_PERIOD=1",
        "--gin.EVAL_PERIOD=None",
        "--gin.DROPOUT_RATE=0.0",
        "--gin.train.eval_with_decoding=False",
        "--gin.train.pack=False",
        "--gin.train.lora_config=@LoraConfig()",
        "--gin.LoraConfig.rank=8",  # on query and value, the default
        "--gin.train.optimizer=@adamw",
        "--gin.constant_schedule.learning_rate=0.01",
        gin_file="runs/finetune.gin",
    )
    losses = [r["loss"] for r in read_metrics(run)]
    assert len(losses) == STEPS and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.6 * losses[0], (losses[0], losses[-5:])

    base, adapter = lora.split_adapter(jax.device_get(summary["state"]["params"]))
    start = pytrees.flatten(load_params(initial))
    assert pytrees.flatten(base).keys() == start.keys()
    for name, value in pytrees.flatten(base).items():
        np.testing.assert_array_equal(value, start[name], err_msg=name)  # bit-identical
    flat = lora.flat_adapter(adapter)
    assert len(flat) == 2 * 2 * 6  # a, b on query and value of 2 + 2 self, 2 cross attentions
    assert all(np.abs(v).max() > 0 for k, v in flat.items() if k.endswith("/b"))
    meta = read_meta(summary["checkpoint"])
    assert meta["lora"]["rank"] == 8
    assert meta["model_config"].get("family", "t5") == getattr(config, "family", "t5")

    # Served from the checkpoint, the adapters are merged: its logits are the model's
    # with the adapters attached, and differ from the base's.
    params, loaded, _ = load_for_inference(
        summary["checkpoint"], create_mesh(), logical_axis_rules()
    )
    rng = np.random.default_rng(0)
    enc, dec = (jnp.asarray(rng.integers(3, 200, (4, n)), jnp.int32) for n in (12, 6))

    def run(p):
        return model_for(loaded).apply({"params": p}, enc, dec)

    served = jax.jit(run)(params)
    attached = jax.jit(lora.with_lora(run, lora.LoraConfig(**meta["lora"])))(
        lora.insert_adapter(base, adapter)
    )
    np.testing.assert_allclose(served, attached, atol=1e-4)
    assert np.abs(served - jax.jit(run)(base)).max() > 0.1
