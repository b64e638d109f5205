"""Step semantics as t5x: TRAIN_STEPS counts the initial checkpoint's step, schedules
continue from it, and the data position counts from the run's own first step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf
from train_testlib import FAST, read_metrics, train_in_process

from t5pipe import (
    checkpoint_format,
    checkpoint_manager,
    gin_setup,
    input_pipeline,
    train,
    train_state,
)
from t5pipe.checkpoint_manager import CheckpointConfig
from t5pipe.errors import UserInputError
from t5pipe.model import init_params
from t5pipe.tasks import builtin
from t5pipe.vocabularies import byt5_vocabulary

TASK = ("--gin.MIXTURE_OR_TASK_NAME='builtin_reverse_v001'", "--gin.train.pack=False")


def tiny_config():
    return gin_setup.model_config_from_gin(["models/tiny.gin"])


def initial_checkpoint(path, step):
    """The quickstart's tiny model, freshly initialised, saved as if trained `step` steps."""
    config = tiny_config()
    params = init_params(config, jax.random.PRNGKey(7))
    state = {"params": params}
    if step is not None:
        state["step"] = jnp.asarray(step, jnp.int32)
    checkpoint_format.save_checkpoint(path, state, config, byt5_vocabulary())
    return path


def schedule_counts(opt_state):
    leaves = jax.tree.leaves(
        opt_state, is_leaf=lambda node: isinstance(node, optax.ScaleByScheduleState)
    )
    return [int(n.count) for n in leaves if isinstance(n, optax.ScaleByScheduleState)]


@pytest.fixture(scope="module")
def step_400(tmp_path_factory):
    return initial_checkpoint(tmp_path_factory.mktemp("init") / "ckpt", 400)


def test_train_steps_count_the_initial_step_and_schedules_continue(tmp_path, step_400, capsys):
    common = (*FAST, *TASK, f"--gin.INITIAL_CHECKPOINT_PATH='{step_400}'")
    absolute = train_in_process(tmp_path / "abs", *common, "--gin.TRAIN_STEPS=430")
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith(
        f"starting at step 400, the step of the initial checkpoint {step_400}"
    )
    assert "(30 steps to run" in first_line
    assert absolute["step"] == 430
    logged = read_metrics(tmp_path / "abs")
    assert [r["step"] for r in logged] == list(range(401, 431))
    assert schedule_counts(absolute["state"]["opt_state"]) == [430]
    meta = checkpoint_format.read_meta(absolute["checkpoint"])
    assert meta["run_start_step"] == 400

    # TRAIN_STEPS_RELATIVE=30 (it replaces TRAIN_STEPS) with a schedule that warms up
    # over 400 steps: continued from step 400 it is at its full rate, so every step
    # equals the constant-rate run's; restarted from 0 it would be ~0 at first.
    relative = train_in_process(
        tmp_path / "rel", *common, "--gin.TRAIN_STEPS_RELATIVE=30",
        "--gin.constant_schedule.warmup_steps=400",
    )  # fmt: skip
    assert relative["step"] == 430
    warm = read_metrics(tmp_path / "rel")
    assert [r["step"] for r in warm] == list(range(401, 431))
    assert warm[0]["learning_rate"] == pytest.approx(0.01)
    # Equal up to float reassociation (the two schedules compile differently); a schedule
    # restarted at 0 would leave step 401's parameters unchanged, and the losses apart.
    np.testing.assert_allclose([r["loss"] for r in warm], [r["loss"] for r in logged], rtol=1e-5)
    assert len({r["loss"] for r in logged}) > 20  # the losses move: equality is not trivial
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        relative["state"]["params"], absolute["state"]["params"],
    )  # fmt: skip


def test_parameters_only_checkpoint_starts_at_zero(tmp_path):
    hf_like = initial_checkpoint(tmp_path / "hf_like", None)
    start = train_state.plan_start(
        tmp_path / "run", CheckpointConfig(initial_checkpoint_path=str(hf_like)), tiny_config()
    )
    assert (start.kind, start.step, start.run_start) == ("initial", 0, 0)
    assert start.describe(2).startswith(
        f"starting at step 0 from the initial checkpoint {hf_like}, which carries no step"
    )


def test_train_steps_below_the_initial_step_is_refused(tmp_path, step_400):
    with pytest.raises(UserInputError, match=r"TRAIN_STEPS=30 leaves nothing to train.*step 400"):
        train_in_process(
            tmp_path / "run", *FAST, *TASK, f"--gin.INITIAL_CHECKPOINT_PATH='{step_400}'",
            "--gin.TRAIN_STEPS=30",
        )  # fmt: skip
    assert not (tmp_path / "run" / "checkpoints").exists()


COUNTING_TASK = "steps_counting_reverse"
READS = {"examples": 0}


def _count(example):
    """Counts the examples the source yields (tf.data calls this once per example)."""

    def bump(text):
        READS["examples"] += 1
        return text

    inputs = tf.py_function(bump, [example["inputs"]], tf.string)
    inputs.set_shape([])
    return {**example, "inputs": inputs}


def _register_counting_task():
    if COUNTING_TASK in seqio.TaskRegistry.names():
        return

    def dataset_fn(split, shuffle_files, seed=None):
        del shuffle_files, seed
        return builtin.letter_examples(split, "reverse").map(_count)

    seqio.TaskRegistry.add(
        COUNTING_TASK,
        source=seqio.FunctionDataSource(dataset_fn, splits=("train", "validation")),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=builtin._byte_features(),
    )


def test_finetune_from_a_million_steps_reads_its_data_from_the_start(tmp_path, monkeypatch):
    _register_counting_task()
    positions = []
    real_batches = input_pipeline.train_batches

    def spy(data, *, start_step=0, **kwargs):
        positions.append(start_step)
        assert start_step < 100, f"the run would skip {start_step} batches of its new task"
        return real_batches(data, start_step=start_step, **kwargs)

    monkeypatch.setattr(input_pipeline, "train_batches", spy)
    pretrained = initial_checkpoint(tmp_path / "pretrained", 1_000_000)
    args = (
        *FAST, f"--gin.MIXTURE_OR_TASK_NAME='{COUNTING_TASK}'", "--gin.train.pack=False",
        f"--gin.INITIAL_CHECKPOINT_PATH='{pretrained}'", "--gin.CHECKPOINT_PERIOD=2",
    )  # fmt: skip
    READS["examples"] = 0
    first = train_in_process(tmp_path / "run", *args, "--gin.TRAIN_STEPS_RELATIVE=2")
    assert first["step"] == 1_000_002 and positions == [0]
    # The check of the first examples reads at most 1,000, training 2 batches of 8 (plus
    # prefetch); skipping by the global step would read 8,000,000.
    assert 0 < READS["examples"] < 3000

    # Resuming the fine-tune: its own position (2 batches in), and the same end step.
    config = tiny_config()
    start = train_state.plan_start(tmp_path / "run", CheckpointConfig(), config)
    assert (start.kind, start.step, start.run_start) == ("resume", 1_000_002, 1_000_000)
    assert start.data_position(start.step) == 2
    assert train._end_step(start, None, 4) == 1_000_004
    resumed_from = checkpoint_manager.checkpoints_dir(tmp_path / "run") / "1000002"
    line = start.describe(1_000_004)
    assert line.startswith(f"resuming from {resumed_from} at step 1000002")
    assert "this run began at step 1000000, so its data continues at batch 2" in line


def test_fine_tune_from_step_one_million_reads_its_data_from_the_start(
    tmp_path_factory, tmp_path, monkeypatch
):
    """The data position counts from the run's first step: a fine-tune from a step-1M
    checkpoint asks for its task's batches from batch 0 (no skip over 1M batches) and
    pulls only the batches it trains on (plus at most one the loop reads ahead)."""
    initial = initial_checkpoint(tmp_path_factory.mktemp("init") / "ckpt", 1_000_000)
    asked, pulled = [], []
    original = input_pipeline.train_batches

    def counting(data, start_step=0, **kwargs):
        asked.append(start_step)
        for batch in original(data, start_step=start_step, **kwargs):
            pulled.append(1)
            yield batch

    monkeypatch.setattr(input_pipeline, "train_batches", counting)
    summary = train_in_process(
        tmp_path / "run", *FAST, *TASK, f"--gin.INITIAL_CHECKPOINT_PATH='{initial}'",
        "--gin.TRAIN_STEPS=1000002",
    )  # fmt: skip
    assert summary["step"] == 1_000_002
    assert asked == [0]
    assert 2 <= len(pulled) <= 3
