"""T5's vocabulary through seqio against Hugging Face's T5 tokenizer, and how
t5pipe.vocabularies resolves and describes vocabularies."""

import csv
import pickle
import socket
import time

import pytest
import seqio
from testlib import train_error, write
from transformers import T5Tokenizer

from t5pipe import errors, vocabularies
from t5pipe.tasks import user_data

# (folder, file, sentence columns); header=None for CoLA's headerless file.
GLUE_SENTENCES = [
    ("CoLA", "dev.tsv", [3], None),
    ("SST-2", "dev.tsv", ["sentence"], True),
    ("MRPC", "dev.tsv", ["#1 String", "#2 String"], True),
    ("STS-B", "dev.tsv", ["sentence1", "sentence2"], True),
    ("RTE", "dev.tsv", ["sentence1", "sentence2"], True),
    ("QNLI", "dev.tsv", ["question", "sentence"], True),
    ("WNLI", "dev.tsv", ["sentence1", "sentence2"], True),
]


def glue_sentences(data_dir, count: int) -> list[str]:
    """`count` sentences spread over the GLUE dev files (every task contributes)."""
    per_file = []
    for folder, name, columns, header in GLUE_SENTENCES:
        with open(data_dir / "glue" / folder / name, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            names = next(reader) if header else None
            sentences = []
            for row in reader:
                for column in columns:
                    index = names.index(column) if names else column
                    if index < len(row) and row[index]:
                        sentences.append(row[index])
        per_file.append(sentences)
    chosen, i = [], 0
    while len(chosen) < count:
        for sentences in per_file:
            if i < len(sentences) and len(chosen) < count:
                chosen.append(sentences[i])
        i += 1
    return chosen


@pytest.fixture(scope="module")
def hf_tokenizer(spm_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5_tokenizer")
    (folder / "spiece.model").symlink_to(spm_path)
    return T5Tokenizer.from_pretrained(str(folder), extra_ids=100)


def test_seqio_t5_vocabulary_matches_hf_tokenizer_on_glue_sentences(
    spm_path, data_dir, hf_tokenizer
):
    vocab = seqio.SentencePieceVocabulary(spm_path, extra_ids=100)
    sentences = glue_sentences(data_dir, 1000)
    assert len(set(sentences)) > 900
    ours = [vocab.encode(s) for s in sentences]
    theirs = hf_tokenizer(sentences, add_special_tokens=False)["input_ids"]
    mismatches = [(s, a, b) for s, a, b in zip(sentences, ours, theirs, strict=True) if a != b]
    assert not mismatches, mismatches[:3]
    # The batched TF tokenizer (what seqio's tokenize preprocessor runs) agrees as well.
    tf_ids = vocab.encode_tf(sentences).to_list()
    assert tf_ids == ours


def test_sentinels_and_sizes(spm_path, hf_tokenizer):
    vocab = seqio.SentencePieceVocabulary(spm_path, extra_ids=100)
    assert vocab.vocab_size == 32100 == len(hf_tokenizer)
    assert vocab.encode("<extra_id_0>") == [32099]
    assert hf_tokenizer.convert_tokens_to_ids("<extra_id_0>") == 32099
    assert hf_tokenizer.convert_tokens_to_ids("<extra_id_99>") == 32000
    assert vocab.decode([32098]) == "<extra_id_1>"
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    assert vocab.encode("Hello world") == [8774, 296]


def test_t5_vocabulary_resolves_path_on_first_use(spm_path, monkeypatch):
    monkeypatch.setenv(vocabularies.VOCAB_ENV, "/nonexistent/spiece.model")
    vocab = vocabularies.t5_vocabulary()  # made before the variable points somewhere real
    monkeypatch.setenv(vocabularies.VOCAB_ENV, spm_path)
    assert vocab.sentencepiece_model_file == spm_path
    assert vocab.encode("Hello world") == [8774, 296]
    plain = seqio.SentencePieceVocabulary(spm_path, extra_ids=100)
    assert vocab == plain and plain == vocab
    restored = pickle.loads(pickle.dumps(vocab))
    assert restored == plain and restored.encode("Hello") == [8774]


def test_vocabulary_specs_round_trip(spm_path, tmp_path, monkeypatch):
    monkeypatch.setenv("T5PIPE_CACHE", str(tmp_path))
    vocab = vocabularies.t5_vocabulary(path=spm_path)
    spec = vocabularies.vocabulary_to_spec(vocab)
    assert spec["extra_ids"] == 100 and spec["path"] == spm_path
    moved = dict(spec, path=str(tmp_path / "gone.model"))  # original file gone: use the copy
    restored = vocabularies.vocabulary_from_spec(moved)
    assert restored.encode("Hello world") == [8774, 296] and restored.vocab_size == 32100
    byte_vocab = vocabularies.vocabulary_from_spec(
        vocabularies.vocabulary_to_spec(vocabularies.byt5_vocabulary())
    )
    assert byte_vocab.encode("hi") == [ord("h") + 3, ord("i") + 3]
    with pytest.raises(ValueError, match="unknown vocabulary kind"):
        vocabularies.vocabulary_from_spec({"kind": "wordpiece"})


# ------------------------------------------------------------------ bad vocabularies


def test_missing_vocabulary(model_dir, tmp_path, monkeypatch, capsys):
    rows = write(tmp_path / "qa.tsv", "question\tanswer\nwho\tme\n")
    user_data.supervised_task(  # T5's SentencePiece vocabulary, found through $T5PIPE_VOCAB
        "bad_input_t5_vocab", {"train": str(rows)}, "q: {question}", "{answer}", overwrite=True
    )
    missing = tmp_path / "nowhere" / "spiece.model"
    monkeypatch.setenv("T5PIPE_VOCAB", str(missing))
    message = train_error(model_dir, "--gin.MIXTURE_OR_TASK_NAME=bad_input_t5_vocab", capsys=capsys)
    assert f"the vocabulary file {missing} does not exist" in message
    assert "T5PIPE_VOCAB=" in message and "t5_vocabulary.path" in message


def test_unreadable_vocabulary(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(vocabularies.VOCAB_ENV, raising=False)  # it would be read first
    rows = write(tmp_path / "qa.tsv", "question\tanswer\nwho\tme\n")
    user_data.supervised_task(
        "bad_input_t5_vocab", {"train": str(rows)}, "q: {question}", "{answer}", overwrite=True
    )
    garbage = write(tmp_path / "spiece.model", b"this is not a sentencepiece model\n")
    message = train_error(
        model_dir,
        "--gin.MIXTURE_OR_TASK_NAME=bad_input_t5_vocab",
        f"--gin.t5_vocabulary.path={garbage}",
        capsys=capsys,
    )
    assert f"the vocabulary file {garbage} cannot be read as a SentencePiece model" in message


def test_vocabulary_larger_than_model(model_dir, capsys):
    message = train_error(model_dir, "--gin.T5Config.vocab_size=200", capsys=capsys)
    assert "the vocabulary has 259 ids but T5Config.vocab_size is 200" in message


# ------------------------------------------------------------------ offline defaults


def test_default_path_order_env_then_gin_then_gs(spm_path, tmp_path, monkeypatch):
    import gin

    monkeypatch.delenv(vocabularies.VOCAB_ENV, raising=False)
    vocab = vocabularies.t5_vocabulary()
    assert vocab.sentencepiece_model_file == vocabularies.T5_SPM_PATH
    gin.bind_parameter("t5_vocabulary.path", str(tmp_path / "bound.model"))
    assert vocab.sentencepiece_model_file == str(tmp_path / "bound.model")
    monkeypatch.setenv(vocabularies.VOCAB_ENV, spm_path)
    assert vocab.sentencepiece_model_file == spm_path
    # A checkpoint's own vocabulary comes before all of them while it is in use.
    embedded = seqio.SentencePieceVocabulary(str(tmp_path / "checkpoint.model"))
    with vocabularies.checkpoint_default(embedded):
        assert vocab.sentencepiece_model_file == str(tmp_path / "checkpoint.model")
    with vocabularies.checkpoint_default(vocabularies.byt5_vocabulary()):  # not SentencePiece
        assert vocab.sentencepiece_model_file == spm_path
    assert vocab.encode("Hello world") == [8774, 296]


def test_offline_glue_run_without_vocabulary_setting_is_one_quick_message(
    model_dir, data_dir, monkeypatch, capsys
):
    """No T5PIPE_VOCAB, no binding, gs:// unreachable: exit 2 with one message naming each
    way to set the vocabulary, and no network attempt past the probe."""
    monkeypatch.delenv(vocabularies.VOCAB_ENV, raising=False)
    monkeypatch.setenv("T5PIPE_GLUE_DIR", str(data_dir / "glue"))
    probes = []
    monkeypatch.setattr(vocabularies, "gcs_reachable", lambda: probes.append(1) or False)
    started = time.monotonic()
    message = train_error(model_dir, "--gin.MIXTURE_OR_TASK_NAME=glue_sst2_v002", capsys=capsys)
    elapsed = time.monotonic() - started
    assert message.startswith(
        f"task glue_sst2_v002: the vocabulary file {vocabularies.T5_SPM_PATH} cannot be read: "
        "storage.googleapis.com cannot be reached from this host (no network)."
    ), message
    for how in ("T5PIPE_VOCAB=/path/to/spiece.model", "--gin.t5_vocabulary.path=", "gs://"):
        assert how in message
    assert "libcurl" not in message and probes
    assert elapsed < 20, elapsed  # in-process: gin, task lookup, no data read


def test_gcs_probe_gives_up_quickly_on_an_unreachable_host(monkeypatch):
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    with socket.socket() as closed:  # a port nothing listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(vocabularies, "GCS_HOST", ("127.0.0.1", port))
    vocabularies.gcs_reachable.cache_clear()
    started = time.monotonic()
    try:
        assert vocabularies.gcs_reachable() is False
    finally:
        vocabularies.gcs_reachable.cache_clear()
    assert time.monotonic() - started < vocabularies.GCS_PROBE_SECONDS + 1


def test_network_failures_become_one_line():
    try:
        try:
            raise RuntimeError(
                "Error executing an HTTP request: libcurl code 6 meaning 'Could not resolve "
                "hostname'\n\t when reading gs://bucket/data/train.tfrecord\nmore detail"
            )
        except RuntimeError as cause:
            raise KeyError("while building the dataset") from cause
    except KeyError as error:
        line = errors.network_failure(error)
    assert "\n" not in line and "reading gs://bucket/data/train.tfrecord" in line
    assert "T5PIPE_VOCAB" in line and "--tfds_data_dir" in line
    assert errors.network_failure(ValueError("a plain bad value")) is None
