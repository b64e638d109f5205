"""Zero-shot rank classification with a verbalizer (`EvalOptions.labels` as a mapping from
scored words to the task's classes) on SST-2 from the shared GLUE files."""

import json
import os

import jax
import numpy as np
import pytest
import seqio
from sklearn.metrics import accuracy_score
from testlib import command_error, shared_data_dir, tiny_config, train_error

os.environ.setdefault("T5PIPE_GLUE_DIR", str(shared_data_dir() / "glue"))
os.environ.setdefault("T5PIPE_VOCAB", str(shared_data_dir() / "vocab" / "t5_spiece.model"))

import t5pipe.tasks  # noqa: E402, F401
from t5pipe import cli, evaluation  # noqa: E402
from t5pipe.checkpoint_format import save_checkpoint  # noqa: E402
from t5pipe.errors import UserInputError  # noqa: E402
from t5pipe.model import init_params  # noqa: E402
from t5pipe.scoring import score_texts  # noqa: E402

TASK = "glue_sst2_v002"
VERBALIZER = "{'terrible': 'negative', 'awful': 'negative', 'great': 'positive'}"
CLASS_INDEX = {"negative": 0, "positive": 1}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, spm_path):
    """A random tiny T5.1.1 over the real T5 vocabulary (its output layer sharpened so
    that the words' scores differ by more than rounding)."""
    config = tiny_config(vocab_size=32128)
    params = init_params(config, jax.random.PRNGKey(3))
    params["logits_dense"]["kernel"] = params["logits_dense"]["kernel"] * 20
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    save_checkpoint(path, {"params": params}, config, seqio.SentencePieceVocabulary(spm_path))
    return path, params, config


def test_verbalizer_accuracy_recomputes_from_the_scores(checkpoint, tmp_path, capsys, spm_path):
    path, params, config = checkpoint
    out = tmp_path / "eval"
    argv = [
        "eval", "--checkpoint", str(path), "--task", TASK, "--output_dir", str(out),
        "--max_examples", "24", "--batch_size", "24",
        "--gin.EvalOptions.rank_classification=True",
        f"--gin.EvalOptions.labels={VERBALIZER}",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())[TASK]
    rows = [
        json.loads(line) for line in (out / f"{TASK}.predictions.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 24
    verbalizer = {"terrible": "negative", "awful": "negative", "great": "positive"}
    # By hand: the likeliest word per row, its class, accuracy against the raw targets.
    gold, predicted = [], []
    for row in rows:
        assert set(row["rank_scores"]) == set(verbalizer)
        word = max(row["rank_scores"], key=row["rank_scores"].get)
        assert row["label_word"] == word and row["prediction"] == verbalizer[word]
        gold.append(CLASS_INDEX[row["targets"]])
        predicted.append(CLASS_INDEX[verbalizer[word]])
    assert predicted == [row["prediction_postprocessed"] for row in rows]  # no -1 (invalid)
    assert len(set(predicted)) == 2  # both classes occur: the mapping is exercised both ways
    assert metrics["accuracy"] == pytest.approx(100 * accuracy_score(gold, predicted))
    # The recorded scores are the model's log-likelihoods of the words.
    vocabulary = seqio.SentencePieceVocabulary(spm_path)
    words = list(verbalizer)
    expected = score_texts(params, config, vocabulary, [rows[0]["inputs"]] * 3, words, batch_size=3)
    np.testing.assert_allclose([rows[0]["rank_scores"][w] for w in words], expected, rtol=1e-5)
    assert (out / f"{TASK}.per_class.txt").exists()
    assert "per-class precision / recall / F1" in capsys.readouterr().out


def test_label_sets_that_do_not_map_onto_the_classes_are_refused(checkpoint, tmp_path, capsys):
    task = seqio.get_mixture_or_task(TASK)

    def refused(labels):
        options = evaluation.EvalOptions(rank_classification=True, labels=labels)
        with pytest.raises(UserInputError) as error:
            evaluation.rank_labels(task, options)
        return str(error.value)

    # Words that are not classes, as a tuple: every prediction would be invalid (-1).
    message = refused(("terrible", "great"))
    assert "['terrible', 'great'] are not the task's classes ['negative', 'positive']" in message
    assert "{'terrible': 'negative', 'great': 'positive'}" in message  # the fix, spelled out
    message = refused({"terrible": "negative"})
    assert "classes ['negative'] are not the task's classes ['negative', 'positive']" in message
    assert "no word for ['positive']" in message
    message = refused({"bad": "negative", "great": "positive", "meh": "neutral"})
    assert "['neutral'] not among them" in message and "['bad', 'great', 'meh']" in message
    with pytest.raises(UserInputError, match="a tuple of label texts or a mapping"):
        evaluation.EvalOptions(labels={"great": 1})
    # The task's own classes, or some of them, stay fine as a tuple.
    options = evaluation.EvalOptions(rank_classification=True, labels=("positive", "negative"))
    assert evaluation.rank_labels(task, options) == {"positive": "positive", "negative": "negative"}

    # Through the command line: exit 2, one paragraph naming both sets, before any scoring.
    message = command_error(
        "eval", tmp_path, "--checkpoint", str(checkpoint[0]), "--task", TASK,
        "--output_dir", str(tmp_path / "out"), "--max_examples", "4",
        "--gin.EvalOptions.rank_classification=True",
        "--gin.EvalOptions.labels=('terrible', 'great')",
        capsys=capsys,
    )  # fmt: skip
    assert "['terrible', 'great']" in message and "['negative', 'positive']" in message


def test_train_refuses_a_verbalizer_before_training(model_dir, capsys):
    message = train_error(
        model_dir,
        "--gin.EVAL_PERIOD=1",
        "--gin.EvalOptions.rank_classification=True",
        "--gin.EvalOptions.labels={'terrible': 'negative', 'great': 'positive'}",
        capsys=capsys,
    )
    assert "task 'builtin_reverse_v001'" in message and "has no label classes" in message
