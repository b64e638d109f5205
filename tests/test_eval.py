"""`t5pipe eval` end to end on the shared GLUE RTE / SQuAD data, with a random tiny checkpoint.

The metrics it writes are recomputed from its predictions file twice: with the
task's own metric functions, and with independent implementations (sklearn
accuracy; the official SQuAD v1.1 answer normalisation, exact match and F1).
"""

import collections
import json
import os
import re
import string

import jax
import numpy as np
import pytest
import seqio
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from testlib import shared_data_dir, tiny_config

os.environ.setdefault("T5PIPE_GLUE_DIR", str(shared_data_dir() / "glue"))
os.environ.setdefault("T5PIPE_SQUAD_DIR", str(shared_data_dir() / "squad"))
os.environ.setdefault("T5PIPE_VOCAB", str(shared_data_dir() / "vocab" / "t5_spiece.model"))

from testlib import command_error  # noqa: E402

import t5pipe.tasks  # noqa: E402, F401
from t5pipe import cli, evaluation, inference  # noqa: E402
from t5pipe.checkpoint_format import save_checkpoint  # noqa: E402
from t5pipe.model import init_params  # noqa: E402

RTE_SQUAD = "test_eval_rte_and_squad"
if RTE_SQUAD not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(
        RTE_SQUAD, ["glue_rte_v002", "squad_v010_allanswers"], default_rate=1.0
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, spm_path):
    """A random tiny T5.1.1 with the real T5 vocabulary."""
    config = tiny_config(vocab_size=32128)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    params = init_params(config, jax.random.PRNGKey(0))
    save_checkpoint(path, {"params": params}, config, seqio.SentencePieceVocabulary(spm_path))
    return path


def run_eval(argv):
    return cli.main(["eval", *argv])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# Official SQuAD v1.1 evaluation rules, written independently of the task's metrics.
def normalize_answer(text):
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction, gold):
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def rte_label(text):
    return {"entailment": 0, "not_entailment": 1}.get(text, -1)


def test_eval_command_writes_metrics_that_recompute_from_predictions(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--task",
        RTE_SQUAD,
        "--output_dir",
        str(out),
        "--max_examples",
        "12",
        "--batch_size",
        "8",
    ]
    assert run_eval(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"glue_rte_v002", "squad_v010_allanswers", "glue_average"}
    assert list(out.glob("events.out.tfevents.*"))

    rte = read_jsonl(out / "glue_rte_v002.predictions.jsonl")
    assert len(rte) == 12 and all({"inputs", "targets", "prediction"} <= set(row) for row in rte)
    assert rte[0]["inputs"].startswith("rte sentence1:")
    task = seqio.get_mixture_or_task("glue_rte_v002")
    targets = [row["targets_postprocessed"] for row in rte]
    predictions = [row["prediction_postprocessed"] for row in rte]
    assert metrics["glue_rte_v002"] == evaluation.compute_metrics(task, targets, predictions)
    # Independently: labels from the raw texts, accuracy by sklearn (T5 reports percent).
    gold = [rte_label(row["targets"]) for row in rte]
    predicted = [rte_label(row["prediction"]) for row in rte]
    assert gold == targets and predicted == predictions
    assert metrics["glue_rte_v002"]["accuracy"] == pytest.approx(
        100 * accuracy_score(gold, predicted)
    )
    assert metrics["glue_average"] == pytest.approx(metrics["glue_rte_v002"]["accuracy"])
    assert (out / "glue_rte_v002.per_class.txt").exists()

    squad = read_jsonl(out / "squad_v010_allanswers.predictions.jsonl")
    assert len(squad) == 12
    task = seqio.get_mixture_or_task("squad_v010_allanswers")
    answers = [row["targets_postprocessed"] for row in squad]
    predictions = [row["prediction_postprocessed"] for row in squad]
    assert metrics["squad_v010_allanswers"] == evaluation.compute_metrics(
        task, answers, predictions
    )
    em = np.mean(
        [
            max(normalize_answer(row["prediction"]) == normalize_answer(a) for a in row_answers)
            for row, row_answers in zip(squad, answers, strict=True)
        ]
    )
    f1 = np.mean(
        [
            max(squad_f1(row["prediction"], a) for a in row_answers)
            for row, row_answers in zip(squad, answers, strict=True)
        ]
    )
    assert metrics["squad_v010_allanswers"]["em"] == pytest.approx(100 * em)
    assert metrics["squad_v010_allanswers"]["f1"] == pytest.approx(100 * f1)


def test_rank_classification_eval_and_per_class_table(checkpoint, tmp_path, capsys):
    out = tmp_path / "rank"
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--task",
        "glue_rte_v002",
        "--output_dir",
        str(out),
        "--max_examples",
        "16",
        "--batch_size",
        "16",
        "--gin.EvalOptions.rank_classification=True",
    ]
    assert run_eval(argv) == 0
    printed = capsys.readouterr().out
    rows = read_jsonl(out / "glue_rte_v002.predictions.jsonl")
    # Every prediction is one of the task's labels: no invalid outputs with ranking.
    assert {row["prediction"] for row in rows} <= {"entailment", "not_entailment"}
    gold = [rte_label(row["targets"]) for row in rows]
    predicted = [rte_label(row["prediction"]) for row in rows]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["glue_rte_v002"]["accuracy"] == pytest.approx(
        100 * accuracy_score(gold, predicted)
    )
    # The per-class table agrees with sklearn.
    table = (out / "glue_rte_v002.per_class.txt").read_text().splitlines()
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=[0, 1], zero_division=0
    )
    for label, line in zip([0, 1], table[1:], strict=True):
        fields = line.split()
        assert fields[0] == str(label)
        np.testing.assert_allclose(
            [float(x) for x in fields[-4:-1]],
            [precision[label], recall[label], f1[label]],
            atol=1e-4,
        )
        assert int(fields[-1]) == support[label]
    assert "per-class precision / recall / F1" in printed


def test_model_dir_latest_or_every_checkpoint(checkpoint, tmp_path, capsys, spm_path):
    model_dir = tmp_path / "model"
    config = tiny_config(vocab_size=32128)
    vocabulary = seqio.SentencePieceVocabulary(spm_path)
    for step, seed in ((100, 1), (200, 2)):
        params = init_params(config, jax.random.PRNGKey(seed))
        save_checkpoint(
            model_dir / "checkpoints" / str(step), {"params": params}, config, vocabulary
        )
    common = [
        "--model_dir",
        str(model_dir),
        "--task",
        "glue_rte_v002",
        "--max_examples",
        "4",
        "--batch_size",
        "8",
    ]
    # The latest checkpoint, configured through the shipped gin file and its macros.
    with_gin = [
        "--gin_file=runs/eval.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.MIXTURE_OR_TASK_NAME='glue_rte_v002'",
        "--gin.BATCH_SIZE=8",
        "--max_examples=4",
    ]
    assert run_eval(with_gin) == 0
    latest = model_dir / "eval"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(latest)
    assert (latest / "metrics.json").exists() and not (latest / "step_100").exists()

    every = tmp_path / "every"
    assert run_eval([*common, "--all_checkpoints", "--output_dir", str(every)]) == 0
    for step in (100, 200):
        assert "glue_rte_v002" in json.loads((every / f"step_{step}" / "metrics.json").read_text())
    assert list(every.glob("events.out.tfevents.*"))


def test_errors_name_what_is_wrong(checkpoint, tmp_path, capsys):
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--task",
        "no_such_task",
        "--output_dir",
        str(tmp_path),
    ]
    assert run_eval(argv) == 2
    err = capsys.readouterr().err
    assert "MIXTURE_OR_TASK_NAME='no_such_task' is not a registered seqio task" in err
    assert "t5pipe tasks list" in err
    argv[3] = "glue_rte_v02"
    assert run_eval(argv) == 2
    assert "did you mean: glue_rte_v002" in capsys.readouterr().err
    argv = ["--checkpoint", str(tmp_path / "missing"), "--task", "glue_rte_v002"]
    assert run_eval(argv) == 2
    assert f"{tmp_path / 'missing'} does not exist" in capsys.readouterr().err


def test_decoded_inputs_are_cut_by_seqio_keeping_eos(checkpoint, tmp_path, monkeypatch):
    """With TASK_FEATURE_LENGTHS inputs 24, decoding sees at most 24 tokens per example, and
    an example that was cut still ends in EOS (as training and teacher-forced eval see it)."""
    fed = []
    make_decode_fn = inference.make_decode_fn

    def recording(config, options, mesh=None, rules=None):
        decode = make_decode_fn(config, options, mesh, rules)

        def run(params, encoder_tokens, rng=None):
            fed.append(np.asarray(encoder_tokens))
            return decode(params, encoder_tokens, rng)

        return run

    monkeypatch.setattr(inference, "make_decode_fn", recording)
    argv = [
        "--checkpoint", str(checkpoint), "--task", "glue_rte_v002", "--output_dir",
        str(tmp_path / "out"), "--max_examples", "8", "--batch_size", "8",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 4}",
        "--gin_file=runs/eval.gin",
    ]  # fmt: skip
    assert run_eval(argv) == 0
    rows = np.concatenate(fed)
    assert rows.shape[1] <= 24
    lengths = (rows != 0).sum(axis=1)
    assert lengths.max() == 24  # RTE inputs are longer: every one was cut
    for row, length in zip(rows, lengths, strict=True):
        assert row[length - 1] == 1  # EOS kept as the last token


def test_eval_checkpoint_flag_conflicts_with_gin(model_dir, tmp_path, capsys):
    checkpoint = model_dir / "checkpoints" / "10"
    message = command_error(
        "eval",
        model_dir,
        "--gin_file=runs/eval.gin",
        f"--checkpoint={checkpoint}",
        "--gin.CHECKPOINT_PATH=/somewhere/else",
        "--task=builtin_reverse_v001",
        f"--output_dir={tmp_path / 'eval'}",
        capsys=capsys,
    )
    assert f"conflicting settings: --checkpoint {checkpoint} but gin sets CHECKPOINT_PATH" in (
        message
    )
    assert "/somewhere/else" in message


def test_eval_unwritable_output_folder_before_decoding(model_dir, capsys, monkeypatch):
    # CI runs as root (chmod cannot make a folder read-only for it): EROFS is injected
    # where the folder's write probe is created.
    import errno
    import os

    from t5pipe import eval_outputs, evaluation

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def no_decoding(*args, **kwargs):
        raise AssertionError("evaluated before the output folder was checked")

    monkeypatch.setattr(eval_outputs.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(evaluation, "run_evaluation", no_decoding)
    message = command_error(
        "eval", model_dir, f"--model_dir={model_dir}", "--task=builtin_reverse_v001",
        capsys=capsys,
    )  # fmt: skip
    assert message == (
        f"the eval output folder {model_dir / 'eval'} is not writable ({model_dir}: Read-only "
        "file system); choose another with --output_dir"
    )


def test_module_flag_imports_the_users_tasks_from_the_current_folder(
    checkpoint, tmp_path, monkeypatch, capsys
):
    (tmp_path / "cli_eval_my_tasks.py").write_text(
        "import seqio\n"
        "if 'cli_eval_my_mix' not in seqio.MixtureRegistry.names():\n"
        "    seqio.MixtureRegistry.add('cli_eval_my_mix', ['glue_rte_v002'], default_rate=1.0)\n"
    )
    monkeypatch.chdir(tmp_path)
    argv = ["--module", "cli_eval_my_tasks", "--task", "cli_eval_my_mix"]
    argv += ["--checkpoint", str(checkpoint), "--max_examples", "2", "--output_dir", "out"]
    assert run_eval(argv) == 0, capsys.readouterr().err
    assert set(json.loads((tmp_path / "out" / "metrics.json").read_text())) >= {"glue_rte_v002"}
    assert cli.main(["eval", "--module", "no_such_tasks_module", "--task", "x"]) == 2
    assert "--module='no_such_tasks_module' cannot be imported" in capsys.readouterr().err


def test_offline_eval_and_infer_use_the_checkpoints_own_vocabulary(
    checkpoint, tmp_path, monkeypatch, capsys
):
    """No T5PIPE_VOCAB and no network: GLUE's default vocabulary is the checkpoint's."""
    from t5pipe import vocabularies

    monkeypatch.delenv(vocabularies.VOCAB_ENV)
    monkeypatch.setattr(vocabularies, "gcs_reachable", lambda: False)
    argv = ["--task", "glue_rte_v002", "--checkpoint", str(checkpoint), "--max_examples", "2"]
    assert run_eval([*argv, "--output_dir", str(tmp_path / "eval")]) == 0, capsys.readouterr().err
    rows = read_jsonl(tmp_path / "eval" / "glue_rte_v002.predictions.jsonl")
    assert len(rows) == 2 and rows[0]["inputs"].startswith("rte sentence1:")
    out = tmp_path / "infer.jsonl"
    assert cli.main(["infer", *argv, "--output_file", str(out)]) == 0, capsys.readouterr().err
    assert [r["inputs"] for r in read_jsonl(out)] == [r["inputs"] for r in rows]
    # Outside a checkpoint's use the default is unreachable again: one message.
    with pytest.raises(vocabularies.UserInputError, match="T5PIPE_VOCAB="):
        seqio.get_mixture_or_task("glue_rte_v002").output_features["inputs"].vocabulary.encode("x")


def test_per_class_report_only_for_tasks_with_label_classes(tmp_path):
    from t5pipe.eval_outputs import write_results

    rows = [
        {"targets_postprocessed": t, "prediction_postprocessed": p}
        for t, p in [("cba", "cba"), ("fed", "fde"), ("ih", "ih")]
    ]
    results = {"metrics": {"gen": {"accuracy": 66.7}, "cls": {"accuracy": 50.0}}}
    results["predictions"] = {"gen": rows, "cls": [dict(rows[0], targets_postprocessed=0)]}
    write_results(results, tmp_path, label_names={"cls": ("negative", "positive")})
    assert not (tmp_path / "gen.per_class.txt").exists()  # a generation task: no classes
    assert "0 (negative)" in (tmp_path / "cls.per_class.txt").read_text()
