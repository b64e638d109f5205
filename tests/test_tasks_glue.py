"""GLUE tasks read from the shared GLUE files give exactly T5's text, for every
validation example of every task present, and T5's format on fixture rows."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

import t5pipe.tasks  # noqa: F401 - registers the tasks
from t5pipe.tasks import glue as glue_tasks
from t5pipe.tasks import sources

# folder -> (task, headerless column of the sentence | None, text columns as (T5 key, TSV
# column), label column, label names or None for STS-B)
GLUE_FILES = {
    "CoLA": ("cola", [("sentence", 3)], 1, ["unacceptable", "acceptable"]),
    "SST-2": ("sst2", [("sentence", "sentence")], "label", ["negative", "positive"]),
    "MRPC": ("mrpc", [("sentence1", "#1 String"), ("sentence2", "#2 String")], "Quality",
             ["not_equivalent", "equivalent"]),
    "STS-B": ("stsb", [("sentence1", "sentence1"), ("sentence2", "sentence2")], "score", None),
    "QNLI": ("qnli", [("question", "question"), ("sentence", "sentence")], "label",
             ["entailment", "not_entailment"]),
    "RTE": ("rte", [("sentence1", "sentence1"), ("sentence2", "sentence2")], "label",
            ["entailment", "not_entailment"]),
    "WNLI": ("wnli", [("sentence1", "sentence1"), ("sentence2", "sentence2")], "label",
             ["not_entailment", "entailment"]),
    "QQP": ("qqp", [("question1", "question1"), ("question2", "question2")], "is_duplicate",
            ["not_duplicate", "duplicate"]),
    "MNLI": ("mnli_matched", [("hypothesis", "sentence2"), ("premise", "sentence1")],
             "gold_label", ["entailment", "neutral", "contradiction"]),
}  # fmt: skip


@pytest.fixture(autouse=True)
def local_glue(data_dir, spm_path, monkeypatch):
    monkeypatch.setenv("T5PIPE_GLUE_DIR", str(data_dir / "glue"))
    monkeypatch.setenv("T5PIPE_VOCAB", spm_path)


def stsb_target(score: str) -> str:
    """Nearest multiple of 0.2 with one decimal, in float32 with ties to even as tf.round."""
    value = np.float32(score) * np.float32(5)
    return f"{np.float32(np.round(value)) / np.float32(5):.1f}"


def expected_validation_texts(data_dir, folder):
    """(inputs, targets) per dev row, formatted by hand from the raw TSV lines."""
    task, columns, label_column, labels = GLUE_FILES[folder]
    file = "dev_matched.tsv" if folder == "MNLI" else "dev.tsv"
    lines = (data_dir / "glue" / folder / file).read_text(encoding="utf-8").split("\n")
    lines = [line for line in lines if line]
    if folder == "MRPC":
        lines[0] = lines[0].removeprefix("\ufeff")
    header = None if folder == "CoLA" else lines.pop(0).split("\t")
    benchmark = "mnli" if task.startswith("mnli") else task
    expected = []
    for line in lines:
        fields = line.split("\t")
        row = fields if header is None else dict(zip(header, fields, strict=True))
        text = " ".join(f"{key}: {row[column]}" for key, column in columns)
        label = row[label_column]
        target = (
            stsb_target(label)
            if labels is None
            else labels[int(label)]
            if label.isdigit()
            else label
        )
        expected.append((f"{benchmark} {text}", target))
    return task, expected


def present_folders(data_dir):
    return [folder for folder in GLUE_FILES if (data_dir / "glue" / folder).is_dir()]


def test_every_local_glue_validation_example_has_t5_formatting(data_dir, spm_path):
    folders = present_folders(data_dir)
    assert {"CoLA", "SST-2", "MRPC", "STS-B", "RTE", "WNLI", "QNLI"} <= set(folders)
    vocab = seqio.SentencePieceVocabulary(spm_path, extra_ids=100)
    for folder in folders:
        task_name, expected = expected_validation_texts(data_dir, folder)
        task = seqio.get_mixture_or_task(f"glue_{task_name}_v002")
        examples = list(
            task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator()
        )
        assert len(examples) == len(expected), folder
        for index, (example, (inputs, targets)) in enumerate(zip(examples, expected, strict=True)):
            where = f"{folder} dev row {index}"
            assert example["inputs_pretokenized"].decode() == inputs, where
            assert example["targets_pretokenized"].decode() == targets, where
        # Token ids are the vocabulary's encoding plus EOS (checked on a sample: speed).
        for example, (inputs, targets) in list(zip(examples, expected, strict=True))[::25]:
            assert example["inputs"].tolist() == vocab.encode(inputs) + [1]
            assert example["targets"].tolist() == vocab.encode(targets) + [1]


def test_training_splits_read_every_row(data_dir):
    for folder, task, rows in [
        ("CoLA", "cola", 8551),
        ("RTE", "rte", 2490),
        ("MRPC", "mrpc", 3668),
    ]:
        examples = sources.read_glue_tsv(task, "train", data_dir / "glue")
        assert len(examples) == rows, folder
    mrpc = sources.read_glue_tsv("mrpc", "validation", data_dir / "glue")
    assert mrpc[0]["sentence2"].startswith('"The foodservice')  # quotes are text (no CSV quoting)


# T5's format (paper appendix D and the t5 package): one fixture row per task, run
# through the registered task's own preprocessing.
FIXTURES = [
    ("cola", {"sentence": "John made Bill master of himself.", "label": 1},
     "cola sentence: John made Bill master of himself.", "acceptable"),
    ("sst2", {"sentence": "it confirms fincher 's status as a film maker .", "label": 1},
     "sst2 sentence: it confirms fincher 's status as a film maker .", "positive"),
    ("mrpc", {"sentence1": "We acted because we saw the existing evidence.",
              "sentence2": "We acted because we saw the evidence.", "label": 0},
     "mrpc sentence1: We acted because we saw the existing evidence. "
     "sentence2: We acted because we saw the evidence.", "not_equivalent"),
    ("qqp", {"question1": "Why do I easily get bored of my friends?",
             "question2": "Why do I get bored of friends so quickly?", "label": 1},
     "qqp question1: Why do I easily get bored of my friends? "
     "question2: Why do I get bored of friends so quickly?", "duplicate"),
    ("stsb", {"sentence1": "The rhino grazed on the grass.",
              "sentence2": "A rhino is grazing in a field.", "label": 3.8},
     "stsb sentence1: The rhino grazed on the grass. "
     "sentence2: A rhino is grazing in a field.", "3.8"),
    ("stsb", {"sentence1": "a", "sentence2": "b", "label": 3.73}, "stsb sentence1: a sentence2: b",
     "3.8"),
    ("stsb", {"sentence1": "a", "sentence2": "b", "label": 2.5}, "stsb sentence1: a sentence2: b",
     "2.4"),  # 12.5 rounds half to even
    ("mnli", {"premise": "I hate pigeons.", "hypothesis": "My feelings towards pigeons are "
              "filled with animosity.", "label": 0},
     "mnli hypothesis: My feelings towards pigeons are filled with animosity. "
     "premise: I hate pigeons.", "entailment"),
    ("mnli_mismatched", {"premise": "p", "hypothesis": "h", "label": 2},
     "mnli hypothesis: h premise: p", "contradiction"),
    ("ax", {"premise": "p", "hypothesis": "h", "label": -1}, "mnli hypothesis: h premise: p",
     "<unk>"),
    ("qnli", {"question": "Where did Jebe die?", "sentence": "Genghis Khan recalled Subutai "
              "back to Mongolia soon afterwards, and Jebe died on the road back to Samarkand.",
              "label": 0},
     "qnli question: Where did Jebe die? sentence: Genghis Khan recalled Subutai back to "
     "Mongolia soon afterwards, and Jebe died on the road back to Samarkand.", "entailment"),
    ("rte", {"sentence1": "A smaller proportion of Yugoslavia's Italians were settled in "
             "Slovenia.", "sentence2": "Slovenia has 3,000 inhabitants.", "label": 1},
     "rte sentence1: A smaller proportion of Yugoslavia's Italians were settled in Slovenia. "
     "sentence2: Slovenia has 3,000 inhabitants.", "not_entailment"),
    ("wnli", {"sentence1": "The drain is clogged with hair.", "sentence2": "The hair is "
              "clogged.", "label": 0},
     "wnli sentence1: The drain is clogged with hair. sentence2: The hair is clogged.",
     "not_entailment"),
]  # fmt: skip


@pytest.mark.parametrize("name, row, inputs, targets", FIXTURES)
def test_t5_paper_format(name, row, inputs, targets):
    features = {key: tf.constant(value) for key, value in row.items() if key != "label"}
    label_dtype = tf.float32 if name == "stsb" else tf.int64
    features["label"] = tf.constant(row["label"], label_dtype)
    features["idx"] = tf.constant(0, tf.int32)
    dataset = tf.data.Dataset.from_tensors(features)
    example = next(glue_tasks.glue_text_preprocessor(name)(dataset).as_numpy_iterator())
    assert example["inputs"].decode() == inputs
    assert example["targets"].decode() == targets


def test_postprocessors_and_metrics_follow_t5():
    cola = seqio.get_mixture_or_task("glue_cola_v002")
    assert cola.postprocess_fn("acceptable") == 1 and cola.postprocess_fn("maybe") == -1
    stsb = seqio.get_mixture_or_task("glue_stsb_v002")
    assert stsb.postprocess_fn("3.8") == pytest.approx(3.8) and stsb.postprocess_fn("x") == -1
    names = {
        name: [
            fn.__name__
            for fn in seqio.get_mixture_or_task(glue_tasks.glue_task_name(name)).metric_fns
        ]
        for name in ("cola", "mrpc", "stsb", "qqp", "rte", "ax")
    }
    assert names == {
        "cola": ["matthews_corrcoef"],
        "mrpc": ["f1_score_with_invalid", "accuracy"],
        "stsb": ["pearson_corrcoef", "spearman_corrcoef"],
        "qqp": ["f1_score_with_invalid", "accuracy"],
        "rte": ["accuracy"],
        "ax": [],
    }
