"""Registered names, mixtures and rates as T5 has them; SuperGLUE / translation /
summarisation formatting on fixture rows; clear errors for missing data; `t5pipe tasks`."""

import pytest
import seqio
import tensorflow as tf

import t5pipe.tasks  # noqa: F401 - registers the tasks
from t5pipe import cli
from t5pipe.tasks import preprocessors, sources

T5_NAMES = [
    *(f"glue_{n}_v002" for n in ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_matched",
                                 "mnli_mismatched", "qnli", "rte", "wnli", "ax"]),
    *(f"super_glue_{n}_v102" for n in ["boolq", "cb", "copa", "multirc", "record", "rte", "wic",
                                       "axb", "axg"]),
    "super_glue_wsc_v102_simple_train", "super_glue_wsc_v102_simple_eval", "dpr_v001_simple",
    "squad_v010_allanswers", "cnn_dailymail_v002", "wmt_t2t_ende_v003", "wmt14_ende_v003",
    "wmt15_enfr_v003", "wmt16_enro_v003", "c4_v220_span_corruption",
]  # fmt: skip

# T5's GLUE_WEIGHT_MAPPING (t5/data/glue_utils.py): training-set sizes, eval-only at 0.
T5_GLUE_RATES = {
    "glue_cola_v002": 8_551, "glue_sst2_v002": 67_349, "glue_mrpc_v002": 3_668,
    "glue_qqp_v002": 363_849, "glue_stsb_v002": 5_749, "glue_mnli_v002": 392_702,
    "glue_qnli_v002": 104_743, "glue_rte_v002": 2_490, "glue_mnli_mismatched_v002": 0,
    "glue_mnli_matched_v002": 0, "glue_ax_v002": 0,
}  # fmt: skip


def test_t5_task_names_are_registered():
    assert set(T5_NAMES) <= set(seqio.TaskRegistry.names())
    assert {"glue_v002_proportional", "super_glue_v102_proportional"} <= set(
        seqio.MixtureRegistry.names()
    )


def test_mixture_rates_are_t5s(data_dir):
    glue = seqio.get_mixture_or_task("glue_v002_proportional")
    assert {task.name: glue.get_rate(task) for task in glue.tasks} == T5_GLUE_RATES
    # Training sizes in the rates match the local GLUE files where we have them.
    for name in ("cola", "sst2", "mrpc", "stsb", "rte"):
        rows = len(sources.read_glue_tsv(name, "train", data_dir / "glue"))
        assert rows == T5_GLUE_RATES[f"glue_{name}_v002"], name
    super_glue = seqio.get_mixture_or_task("super_glue_v102_proportional")
    rates = {task.name: super_glue.get_rate(task) for task in super_glue.tasks}
    assert rates["super_glue_record_v102"] == 138_854 and rates["super_glue_axb_v102"] == 0
    assert rates["super_glue_wsc_v102_simple_train"] == 259 and rates["dpr_v001_simple"] == 1_322


def run_one(preprocessor, features: dict):
    return next(preprocessor(tf.data.Dataset.from_tensors(features)).as_numpy_iterator())


def glue_style(task_name: str):
    return seqio.get_mixture_or_task(task_name).preprocessors[0]


@pytest.mark.parametrize(
    "task, row, inputs, targets",
    [
        ("super_glue_boolq_v102",
         {"question": "is a wolverine the same as a badger", "passage": "Wolverines are...",
          "label": 0, "idx": 3},
         "boolq passage: Wolverines are... question: is a wolverine the same as a badger",
         "False"),
        ("super_glue_cb_v102", {"premise": "p", "hypothesis": "h", "label": 1, "idx": 0},
         "cb hypothesis: h premise: p", "contradiction"),
        ("super_glue_copa_v102",
         {"premise": "My body cast a shadow over the grass.", "question": "cause",
          "choice1": "The sun was rising.", "choice2": "The grass was cut.", "label": 0, "idx": 0},
         "copa choice1: The sun was rising. choice2: The grass was cut. premise: My body cast a "
         "shadow over the grass. question: cause", "choice1"),
        ("super_glue_wic_v102",
         {"sentence1": "Do you want to come over?", "sentence2": "Come here.", "word": "come",
          "start1": 12, "end1": 16, "start2": 0, "end2": 4, "label": 1, "idx": 0},
         "wic sentence1: Do you want to come over? sentence2: Come here. word: come", "True"),
        ("super_glue_axg_v102", {"premise": "p", "hypothesis": "h", "label": -1, "idx": 0},
         "rte hypothesis: h premise: p", "<unk>"),
    ],
)  # fmt: skip
def test_super_glue_formatting(task, row, inputs, targets):
    features = {k: tf.constant(v) for k, v in row.items()}
    example = run_one(glue_style(task), features)
    assert (example["inputs"].decode(), example["targets"].decode()) == (inputs, targets)


def test_multirc_drops_html_and_keeps_ids():
    features = {
        "paragraph": tf.constant("<b>Sent 1: </b>Hello.<br><b>Sent 2: </b>Bye."),
        "question": tf.constant("Who?"), "answer": tf.constant("Me"),
        "idx": {"paragraph": tf.constant(1), "question": tf.constant(2), "answer": tf.constant(3)},
        "label": tf.constant(1),
    }  # fmt: skip
    example = run_one(glue_style("super_glue_multirc_v102"), features)
    assert example["inputs"].decode() == (
        "multirc question: Who? answer: Me paragraph: Sent 1: Hello. Sent 2: Bye."
    )
    assert example["targets"].decode() == "True" and example["idx/question"] == 2
    task = seqio.get_mixture_or_task("super_glue_multirc_v102")
    assert task.postprocess_fn(b"True", example=example, is_target=True) == {"value": 1, "group": 2}


def test_record_gives_one_example_per_answer():
    features = {
        "passage": tf.constant("Obama visited.\n@highlight\nHe spoke\n@highlight\nIt ended"),
        "query": tf.constant("@placeholder spoke."),
        "entities": tf.constant(["Obama", "Paris"]),
        "answers": tf.constant(["Obama", "Barack Obama"]),
        "idx": {"passage": tf.constant(4), "query": tf.constant(9)},
    }
    examples = list(
        preprocessors.record(tf.data.Dataset.from_tensors(features)).as_numpy_iterator()
    )
    assert [e["targets"].decode() for e in examples] == ["Obama", "Barack Obama"]
    assert examples[0]["inputs"].decode() == (
        "record query: @placeholder spoke. entities: Obama, Paris passage: Obama visited. "
        "He spoke. It ended"
    )
    task = seqio.get_mixture_or_task("super_glue_record_v102")
    target = task.postprocess_fn(b"Obama", example=examples[1], is_target=True)
    assert target == {"value": ["Obama", "Barack Obama"], "group": (4, 9)}


def test_wsc_simple_marks_the_pronoun():
    features = {
        "text": tf.constant(
            "Mark told Pete many lies about himself , which Pete included in his book ."
        ),
        "span1_text": tf.constant("Pete"), "span2_text": tf.constant("his"),
        "span1_index": tf.constant(2), "span2_index": tf.constant(12),
        "label": tf.constant(1), "idx": tf.constant(0),
    }  # fmt: skip
    example = run_one(preprocessors.wsc_simple, features)
    assert example["inputs"].decode() == (
        "wsc: Mark told Pete many lies about himself , which Pete included in *his* book ."
    )
    assert example["targets"].decode() == "Pete"
    task = seqio.get_mixture_or_task("super_glue_wsc_v102_simple_eval")
    example["targets_pretokenized"] = example["targets"]
    assert task.postprocess_fn("pete", example=example) == 1
    assert task.postprocess_fn("Mark", example=example) == 0


def test_translation_and_summary_prefixes():
    example = run_one(
        glue_style("wmt_t2t_ende_v003"),
        {"en": tf.constant("That is good."), "de": tf.constant("Das ist gut.")},
    )
    assert example["inputs"].decode() == "translate English to German: That is good."
    assert example["targets"].decode() == "Das ist gut."
    example = run_one(
        glue_style("wmt16_enro_v003"), {"en": tf.constant("a"), "ro": tf.constant("b")}
    )
    assert example["inputs"].decode() == "translate English to Romanian: a"
    example = run_one(
        glue_style("cnn_dailymail_v002"),
        {"article": tf.constant("Long text."), "highlights": tf.constant("Short.")},
    )
    assert (example["inputs"].decode(), example["targets"].decode()) == (
        "summarize: Long text.",
        "Short.",
    )


def test_missing_tfds_data_names_dataset_place_and_remedy(tmp_path, monkeypatch, spm_path):
    monkeypatch.delenv("T5PIPE_GLUE_DIR", raising=False)
    monkeypatch.setenv("T5PIPE_VOCAB", spm_path)
    seqio.set_tfds_data_dir_override(str(tmp_path))
    try:
        with pytest.raises(sources.DataNotFoundError) as error:
            seqio.get_mixture_or_task("glue_rte_v002").get_dataset(None, split="train")
        message = str(error.value)
        assert "glue/rte:2.0.0" in message and str(tmp_path) in message
        assert "tfds build glue/rte" in message and "T5PIPE_GLUE_DIR" in message
        with pytest.raises(sources.DataNotFoundError, match="c4/en:3.1.0 is not prepared"):
            seqio.get_mixture_or_task("c4_v220_span_corruption").get_dataset(
                {"inputs": 512, "targets": 114}, split="train"
            )
    finally:
        seqio.set_tfds_data_dir_override(None)


def test_missing_local_glue_file_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("T5PIPE_GLUE_DIR", str(tmp_path))
    with pytest.raises(sources.DataNotFoundError, match=r"MNLI/train\.tsv not found") as error:
        seqio.get_mixture_or_task("glue_mnli_v002").get_dataset(None, split="train")
    assert str(tmp_path) in str(error.value)


def test_tasks_command_list_and_show(data_dir, spm_path, monkeypatch, capsys):
    monkeypatch.setenv("T5PIPE_GLUE_DIR", str(data_dir / "glue"))
    monkeypatch.setenv("T5PIPE_VOCAB", spm_path)
    assert cli.main(["tasks", "list", "--filter", "glue_"]) == 0
    listing = capsys.readouterr().out
    assert "glue_rte_v002" in listing and "TFDS glue/rte:2.0.0" in listing
    assert "glue_v002_proportional" in listing and "glue_mnli_v002:392702" in listing

    assert cli.main(["tasks", "show", "glue_rte_v002", "--split", "validation", "-n", "2"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("=== glue_rte_v002 validation example") == 2
    assert "inputs (" in shown and "rte sentence1: Dana Reeve" in shown
    vocab = seqio.SentencePieceVocabulary(spm_path, extra_ids=100)
    label_ids = vocab.encode("not_entailment") + [1]
    assert f"targets ({len(label_ids)} tokens): not_entailment" in shown
    assert f"targets ids: {label_ids}" in shown

    # Missing data and unknown names are the user's to fix: exit 2, one message.
    assert cli.main(["tasks", "show", "glue_qqp_v002", "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert "task glue_qqp_v002, split 'train'" in err and "QQP/train.tsv not found" in err
    assert cli.main(["tasks", "show", "glue_rte", "-n", "1"]) == 2
    assert "did you mean: glue_rte_v002" in capsys.readouterr().err
