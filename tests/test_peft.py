"""Parameter-efficient fine-tuning: frozen parameters stay bit-identical; prompt tuning."""

import jax
import numpy as np
import pytest
from train_testlib import FAST, train_in_process

from t5pipe import peft
from t5pipe.checkpoint_format import load_params
from t5pipe.errors import UserInputError
from t5pipe.pytrees import leaf_name


def _flat(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {leaf_name(p): np.asarray(x) for p, x in flat}


def test_frozen_parameters_bit_identical_and_stateless(tmp_path):
    # learning rate 0 for one step gives the initial parameters to compare against.
    start = train_in_process(
        tmp_path / "start",
        *FAST,
        "--gin.TRAIN_STEPS=1",
        "--gin.constant_schedule.learning_rate=0.0",
    )
    trained = train_in_process(
        tmp_path / "run",
        *FAST,
        "--gin.TRAIN_STEPS=3",
        "--gin.train.trainable_params='decoder/.*mlp'",
    )
    before, after = _flat(start["state"]["params"]), _flat(trained["state"]["params"])
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert changed and all("decoder/" in n and "mlp" in n for n in changed), changed
    frozen = [n for n in before if not ("decoder/" in n and "mlp" in n)]
    for name in frozen:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    # Frozen parameters carry no optimizer state: only trainable shapes appear in it.
    opt_sizes = sum(x.size for x in jax.tree.leaves(trained["state"]["opt_state"]))
    frozen_sizes = sum(before[n].size for n in frozen)
    assert opt_sizes < frozen_sizes


def test_regex_matching_nothing_is_an_error():
    params = {"encoder": {"w": np.zeros(2)}, "decoder": {"w": np.zeros(2)}}
    with pytest.raises(UserInputError, match="matches no parameter.*encoder/w"):
        peft.trainable_labels(params, "^nothing$")


def test_prompt_tuning_changes_only_the_prompt(tmp_path):
    prompt = ("--gin.T5Config.prompt_length=4",)
    start = train_in_process(
        tmp_path / "start",
        *FAST,
        *prompt,
        "--gin.TRAIN_STEPS=1",
        "--gin.constant_schedule.learning_rate=0.0",
    )
    trained = train_in_process(
        tmp_path / "run", *FAST, *prompt, "--gin.TRAIN_STEPS=3", "--gin.CHECKPOINT_PERIOD=3"
    )
    before, after = _flat(start["state"]["params"]), _flat(trained["state"]["params"])
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert changed == {"prompt"}

    # Saved on its own (MODEL_DIR/prompt/prompt.npy) and merged into the checkpoint.
    alone = peft.load_prompt(tmp_path / "run" / "prompt")
    np.testing.assert_array_equal(alone, after["prompt"])
    merged = load_params(tmp_path / "run" / "checkpoints" / "3")
    np.testing.assert_array_equal(np.asarray(merged["prompt"]), after["prompt"])

    # Restored on its own into a fresh model: the saved prompt, everything else initial.
    restored = train_in_process(
        tmp_path / "again",
        *FAST,
        *prompt,
        "--gin.TRAIN_STEPS=1",
        "--gin.constant_schedule.learning_rate=0.0",
        f"--gin.train.initial_prompt_path='{tmp_path / 'run' / 'prompt'}'",
    )
    again = _flat(restored["state"]["params"])
    np.testing.assert_array_equal(again["prompt"], after["prompt"])
    np.testing.assert_array_equal(
        again["encoder/encoder_norm/scale"], before["encoder/encoder_norm/scale"]
    )
    with pytest.raises(UserInputError, match=r"soft prompt of shape \(4, 64\) does not fit"):
        peft.merge_prompt({"prompt": np.zeros((5, 64), np.float32)}, alone)
