"""Tasks over the user's own files, defined only through the documented factories,
feed packed batches through seqio.get_dataset; malformed files give file:line errors."""

import json

import numpy as np
import pytest
import seqio

from t5pipe.tasks import user_data
from t5pipe.tasks.sources import DataNotFoundError

ROWS = [
    ("A man is playing a guitar.", "A person plays music.", "entailment"),
    ("A dog runs in the park.", "A cat sleeps indoors.", "contradiction"),
    ("Two kids eat ice cream.", "Children are eating.", "entailment"),
    ("The market is closed today.", "People are shopping there now.", "contradiction"),
    ("She reads a book by the window.", "A woman is reading.", "entailment"),
]


@pytest.fixture(autouse=True)
def t5_vocab(spm_path, monkeypatch):
    monkeypatch.setenv("T5PIPE_VOCAB", spm_path)


@pytest.fixture
def registered(tmp_path, data_dir):
    """Registers a TSV task, a text task and their mixture; removes them afterwards."""
    tsv = tmp_path / "nli.tsv"
    tsv.write_text(
        "premise\thypothesis\tlabel\n" + "".join(f"{p}\t{h}\t{label}\n" for p, h, label in ROWS),
        encoding="utf-8",
    )
    corpus = tmp_path / "corpus.txt"
    text = (data_dir / "text" / "wikitext2.valid.tokens").read_text(encoding="utf-8")
    corpus.write_text(text[:60_000], encoding="utf-8")
    names = ["user_nli", "user_corpus", "user_mix"]
    user_data.supervised_task(
        "user_nli",
        files={"train": str(tsv), "validation": str(tsv)},
        inputs_template="nli premise: {premise} hypothesis: {hypothesis}",
        targets_template="{label}",
        metrics=["accuracy", "f1"],
        label_names=["contradiction", "entailment"],
    )
    user_data.text_pretraining_task("user_corpus", files=str(corpus))
    user_data.mixture("user_mix", [("user_nli", 1.0), ("user_corpus", 2.0)])
    yield tsv, corpus
    seqio.MixtureRegistry.remove("user_mix")
    for name in names[:2]:
        seqio.TaskRegistry.remove(name)


def segments(tokens: np.ndarray, segment_ids: np.ndarray) -> list[list[int]]:
    return [tokens[segment_ids == s].tolist() for s in np.unique(segment_ids) if s != 0]


def test_user_tasks_produce_packed_batches(registered, spm_path):
    vocab = seqio.SentencePieceVocabulary(spm_path, extra_ids=100)
    converter = seqio.EncDecFeatureConverter(pack=True)
    lengths = {"inputs": 64, "targets": 32}

    nli = seqio.get_dataset(
        "user_nli", lengths, feature_converter=converter, dataset_split="train",
        shuffle=False, batch_size=1,  # get_dataset drops a last partial batch
    )  # fmt: skip
    batches = list(nli.as_numpy_iterator())
    assert batches[0]["encoder_input_tokens"].shape == (1, 64)
    assert batches[0]["decoder_target_tokens"].shape == (1, 32)
    assert len(batches) < len(ROWS)  # several examples share a row
    inputs, targets = [], []
    for batch in batches:
        for row in range(len(batch["encoder_input_tokens"])):
            inputs += segments(
                batch["encoder_input_tokens"][row], batch["encoder_segment_ids"][row]
            )
            targets += segments(
                batch["decoder_target_tokens"][row], batch["decoder_segment_ids"][row]
            )
    assert max(np.max(b["encoder_segment_ids"]) for b in batches) > 1  # examples were packed
    expected = sorted(f"nli premise: {p} hypothesis: {h}" for p, h, _ in ROWS)
    assert sorted(vocab.decode(ids) for ids in inputs) == expected
    assert sorted(vocab.decode(ids) for ids in targets) == sorted(label for *_, label in ROWS)

    task = seqio.get_mixture_or_task("user_nli")
    assert task.postprocess_fn("entailment") == 1 and task.postprocess_fn("perhaps") == -1
    scores = {}
    for metric_fn in task.metric_fns:
        scores.update(metric_fn([1, 0, 1, 0], [1, 0, 0, 0]))
    assert scores == {"accuracy": 75.0, "f1": pytest.approx(100 * 2 / 3)}

    mixed = seqio.get_dataset(
        "user_mix", {"inputs": 512, "targets": 114}, feature_converter=converter,
        dataset_split="train", shuffle=False, batch_size=4, seed=0,
    )  # fmt: skip
    batch = next(mixed.as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (4, 512)
    assert batch["decoder_target_tokens"].shape == (4, 114)
    sentinels = (batch["encoder_input_tokens"] >= 32000).sum()
    assert sentinels > 0  # span-corrupted text is in the mix


def test_text_task_alone_packs_span_corruption(registered):
    dataset = seqio.get_dataset(
        "user_corpus", {"inputs": 128, "targets": 32},
        feature_converter=seqio.EncDecFeatureConverter(pack=True),
        dataset_split="train", shuffle=False, batch_size=8,
    )  # fmt: skip
    batch = next(dataset.as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (8, 128)
    assert (batch["encoder_input_tokens"] != 0).mean() > 0.9
    assert (batch["decoder_target_tokens"] >= 32000).any()


def test_malformed_rows_name_file_and_line(tmp_path):
    bad_tsv = tmp_path / "bad.tsv"
    bad_tsv.write_text("premise\thypothesis\tlabel\na\tb\tentailment\nonly two\tfields\n")
    user_data.supervised_task(
        "user_bad_tsv", files=str(bad_tsv), inputs_template="{premise} {hypothesis}",
        targets_template="{label}", overwrite=True,
    )  # fmt: skip
    with pytest.raises(user_data.UserDataError, match=rf"{bad_tsv}:3: 2 tab-separated fields"):
        seqio.get_mixture_or_task("user_bad_tsv").get_dataset(None, split="train", shuffle=False)

    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text(json.dumps({"q": "x", "a": "y"}) + "\n{not json\n")
    user_data.supervised_task(
        "user_bad_jsonl", files=str(bad_jsonl), inputs_template="q: {q}", targets_template="{a}",
        overwrite=True,
    )  # fmt: skip
    with pytest.raises(user_data.UserDataError, match=rf"{bad_jsonl}:2: not valid JSON"):
        seqio.get_mixture_or_task("user_bad_jsonl").get_dataset(None, split="train", shuffle=False)

    missing_field = tmp_path / "missing.jsonl"
    missing_field.write_text(
        json.dumps({"q": "x", "a": "y"}) + "\n" + json.dumps({"q": "z"}) + "\n"
    )
    user_data.supervised_task(
        "user_missing_field", files=str(missing_field), inputs_template="q: {q}",
        targets_template="{a}", overwrite=True,
    )  # fmt: skip
    with pytest.raises(
        user_data.UserDataError, match=rf"{missing_field}:2: targets_template uses field 'a'"
    ):
        seqio.get_mixture_or_task("user_missing_field").get_dataset(
            None, split="train", shuffle=False
        )

    user_data.text_pretraining_task(
        "user_no_files", files=str(tmp_path / "none*.txt"), overwrite=True
    )
    with pytest.raises(DataNotFoundError, match="no file matches"):
        seqio.get_mixture_or_task("user_no_files").get_dataset(None, split="train", shuffle=False)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("first paragraph\n\nsecond one, caf\u00e9".encode("latin-1"))
    user_data.text_pretraining_task(
        "user_latin1", files=str(latin1), document="paragraph", overwrite=True
    )
    with pytest.raises(user_data.UserDataError, match=rf"{latin1}:3:\d+: not UTF-8"):
        seqio.get_mixture_or_task("user_latin1").get_dataset(None, split="train", shuffle=False)
    # A field over csv's default 128 KiB limit is read (the limit follows the longest line).
    long_tsv = tmp_path / "long.tsv"
    long_tsv.write_text("q\ta\n" + "x" * 200_000 + "\tyes\nshort\n")
    user_data.supervised_task(
        "user_long_tsv", files=str(long_tsv), inputs_template="{q}", targets_template="{a}",
        overwrite=True,
    )  # fmt: skip
    with pytest.raises(user_data.UserDataError, match=rf"{long_tsv}:3: 1 tab-separated fields"):
        list(seqio.get_mixture_or_task("user_long_tsv").get_dataset(None, split="train",
                                                                    shuffle=False))  # fmt: skip
    names = (
        "user_bad_tsv", "user_bad_jsonl", "user_missing_field", "user_no_files", "user_latin1",
        "user_long_tsv",
    )  # fmt: skip
    for name in names:
        seqio.TaskRegistry.remove(name)


def test_definition_errors_are_reported_at_registration(tmp_path):
    with pytest.raises(user_data.UserDataError, match="metric 'f1' needs label_names"):
        user_data.supervised_task("user_x", files="a.tsv", inputs_template="{a}",
                                  targets_template="{b}", metrics=["f1"])  # fmt: skip
    with pytest.raises(user_data.UserDataError, match="unknown metric 'bleurt'"):
        user_data.supervised_task("user_x", files="a.tsv", inputs_template="{a}",
                                  targets_template="{b}", metrics=["bleurt"])  # fmt: skip
    with pytest.raises(user_data.UserDataError, match="no task or mixture named 'nope'"):
        user_data.mixture("user_mix_bad", ["nope"])
    assert "user_x" not in seqio.TaskRegistry.names()
