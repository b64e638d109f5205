"""SQuAD: the scorer against the official evaluate-v1.1 rules on a real system's
predictions, and `squad_v010_allanswers` text against T5's formatting."""

import collections
import json
import re
import string

import pytest
import seqio

import t5pipe.tasks  # noqa: F401 - registers the tasks
from t5pipe.tasks import metrics


def official_normalize(s: str) -> str:
    """evaluate-v1.1.py's normalize_answer, step by step."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def official_f1(prediction: str, ground_truth: str) -> float:
    prediction_tokens = official_normalize(prediction).split()
    ground_truth_tokens = official_normalize(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_evaluate(dataset, predictions):
    """evaluate-v1.1.py's evaluate(): per question, the max over its gold answers."""
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue  # unanswered questions score 0
                golds = [answer["text"] for answer in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += max(
                    float(official_normalize(prediction) == official_normalize(g)) for g in golds
                )
                f1 += max(official_f1(prediction, g) for g in golds)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


@pytest.fixture(scope="module")
def squad_dev(data_dir):
    return json.loads((data_dir / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))["data"]


@pytest.fixture(scope="module")
def bert_predictions(data_dir):
    path = data_dir / "squad" / "bert_predictions_dev-v1.1.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_squad_scorer_matches_official_rules_on_bert_predictions(squad_dev, bert_predictions):
    reference = official_evaluate(squad_dev, bert_predictions)
    targets, predictions = [], []
    for article in squad_dev:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                targets.append([answer["text"] for answer in qa["answers"]])
                predictions.append(bert_predictions[qa["id"]])
    assert len(targets) == 10570
    ours = metrics.squad(targets, predictions)
    print(f"SQuAD v1.1 dev, BERT predictions: EM {ours['em']:.4f} F1 {ours['f1']:.4f}")
    assert ours["em"] == pytest.approx(reference["exact_match"], abs=1e-9)
    assert ours["f1"] == pytest.approx(reference["f1"], abs=1e-9)


def t5_pad_punctuation(text: str) -> str:
    """T5's squad padding: spaces around ASCII punctuation, runs of ASCII whitespace
    (RE2's \\s: space, \\t, \\n, \\f, \\r) collapsed to one space."""
    text = re.sub(f"([{re.escape(string.punctuation)}])", r" \1 ", text)
    return re.sub(r"[ \t\n\f\r]+", " ", text)


def test_squad_task_formats_every_dev_question_as_t5(data_dir, spm_path, squad_dev, monkeypatch):
    monkeypatch.setenv("T5PIPE_SQUAD_DIR", str(data_dir / "squad"))
    monkeypatch.setenv("T5PIPE_VOCAB", spm_path)
    task = seqio.get_mixture_or_task("squad_v010_allanswers")
    examples = task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator()
    count = 0
    for article in squad_dev:
        for paragraph in article["paragraphs"]:
            context = t5_pad_punctuation(paragraph["context"])
            for qa in paragraph["qas"]:
                example = next(examples)
                question = t5_pad_punctuation(qa["question"])
                inputs = re.sub(r"[ \t\n\f\r]+", " ", f"question: {question} context: {context}")
                golds = [t5_pad_punctuation(answer["text"]) for answer in qa["answers"]]
                assert example["id"].decode() == qa["id"]
                assert example["inputs_pretokenized"].decode() == inputs, qa["id"]
                assert example["targets_pretokenized"].decode() == golds[0], qa["id"]
                # Targets for scoring: every gold answer (duplicates included), as T5.
                assert task.postprocess_fn(b"", example=example, is_target=True) == golds
                count += 1
    assert count == 10570


def test_squad_missing_local_file_says_where_and_how(tmp_path, monkeypatch):
    from t5pipe.tasks.sources import DataNotFoundError

    monkeypatch.setenv("T5PIPE_SQUAD_DIR", str(tmp_path))
    task = seqio.get_mixture_or_task("squad_v010_allanswers")
    with pytest.raises(DataNotFoundError, match=r"train-v1\.1\.json not found") as error:
        task.get_dataset(None, split="train", shuffle=False)
    assert str(tmp_path) in str(error.value) and "TFDS squad/v1.1:3.0.0" in str(error.value)
