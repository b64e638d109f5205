"""Parameter-efficient fine-tuning: frozen parameters stay bit-identical; prompt tuning."""

import jax
import numpy as np
import pytest
import sentencepiece
import seqio
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


def _row_ids(prompt, embedding):
    """The id of the embedding row each prompt row equals (exactly one each)."""
    ids = [np.flatnonzero((embedding == row).all(axis=1)) for row in prompt]
    assert all(len(found) == 1 for found in ids)
    return [int(found[0]) for found in ids]


def test_prompt_initialisations_follow_lester_et_al(spm_path):
    embedding = np.random.default_rng(0).normal(size=(32128, 16)).astype(np.float32)
    uniform = peft.initial_prompt("random_uniform", embedding, 20, seed=3)
    assert uniform.shape == (20, 16) and uniform.dtype == np.float32
    assert np.abs(uniform).max() <= 0.5 and 0.25 < uniform.std() < 0.33  # U(-0.5, 0.5): 0.289
    np.testing.assert_array_equal(uniform, peft.initial_prompt("random_uniform", embedding, 20, 3))
    assert not np.array_equal(uniform, peft.initial_prompt("random_uniform", embedding, 20, 4))

    # Distinct rows of the embedding table among the 5,000 most frequent ids.
    sampled = peft.initial_prompt("sampled_vocab", embedding, 20, seed=3)
    ids = _row_ids(sampled, embedding)
    assert len(set(ids)) == 20 and max(ids) < 5000

    # Class labels: each label's mean token embedding, then sampled vocabulary.
    labels = ["entailment", "not_entailment"]
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    label_ids = peft.label_token_ids(seqio.SentencePieceVocabulary(spm_path), labels)
    assert label_ids == [tokenizer.encode(label) for label in labels]
    assert all(len(tokens) > 1 for tokens in label_ids)  # so the mean is over several rows
    prompt = peft.initial_prompt("class_labels", embedding, 6, seed=0, label_ids=label_ids)
    for row, label in enumerate(labels):
        expected = embedding[tokenizer.encode(label)].mean(axis=0)
        np.testing.assert_allclose(prompt[row], expected, rtol=1e-6)
    assert max(_row_ids(prompt[2:], embedding)) < 5000
    with pytest.raises(UserInputError, match="2 labels do not fit in prompt_length=1"):
        peft.initial_prompt("class_labels", embedding, 1, label_ids=label_ids)
    with pytest.raises(UserInputError, match="expected one of"):
        peft.initial_prompt("from_text", embedding, 4)
