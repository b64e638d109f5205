"""UL2's mixture of denoisers on real text: every denoiser's inputs + targets give back
the text, lengths fill the inputs without truncation, mode tokens round-trip through
T5's SentencePiece model, the shares of the denoisers follow the rates, and a UL2 run
of `t5pipe train` learns."""

import collections

import numpy as np
import pytest
import seqio
import tensorflow as tf
from test_span_corruption import resolve
from train_testlib import FAST, read_metrics, train_in_process

from t5pipe import input_pipeline
from t5pipe.errors import UserInputError
from t5pipe.tasks import ul2, user_data
from t5pipe.tasks.features import t5_output_features
from t5pipe.tasks.sources import examples_source
from t5pipe.vocabularies import byt5_vocabulary

EOS = 1
TOP_SENTINEL, NUM_SENTINELS = 32099, 100  # T5: <extra_id_0> = 32099 ... <extra_id_99>
INPUTS = 64


@pytest.fixture(scope="module")
def vocab(spm_path):
    return seqio.SentencePieceVocabulary(spm_path, extra_ids=NUM_SENTINELS)


@pytest.fixture(scope="module")
def documents(data_dir):
    lines = (data_dir / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n")
    return [line for line in lines if line.strip()][:6_000]


def is_sentinel(token: int) -> bool:
    return TOP_SENTINEL - NUM_SENTINELS < token <= TOP_SENTINEL


def mode_ids(vocab) -> dict[str, list[int]]:
    return {kind: vocab.encode(token + " ") for kind, token in ul2.MODE_TOKENS.items()}


def test_mode_tokens_round_trip_with_t5_vocabulary(vocab):
    text = "First Citizen: Before we proceed any further, hear me speak."
    for kind, token in ul2.MODE_TOKENS.items():
        ids = vocab.encode(token + " ")
        assert not any(is_sentinel(i) for i in ids)
        # Writing the mode token in front of an input gives the pretraining ids.
        assert vocab.encode(f"{token} {text}") == ids + vocab.encode(text)
        assert vocab.decode(ids + vocab.encode(text)) == f"{token} {text}"
        assert vocab.decode(ids) == token
        plans = ul2.plan([d for d in ul2.UL2_DENOISERS if d.kind == kind], 64, vocab, True)
        assert all(list(p.mode_ids) == ids for p in plans)
    assert [d.kind for d in ul2.UL2_DENOISERS] == ["R", "R", "X", "X", "X", "X", "S"]
    assert sum(d.rate for d in ul2.UL2_DENOISERS) == pytest.approx(1.0)


def test_every_denoiser_reconstructs_the_text_and_fills_the_inputs(documents, vocab):
    """Through a seqio Task at (inputs, required targets): nothing truncated, nothing lost."""
    preprocessors = ul2.ul2_preprocessors(vocab)
    task = seqio.Task(
        "test_ul2_shakespeare",
        source=examples_source(lambda split: [{"text": d} for d in documents], ["train"], "t"),
        preprocessors=preprocessors,
        output_features=t5_output_features(vocab),
    )
    targets_length = preprocessors[3].required_target_length(INPUTS)
    plans = ul2.plan(ul2.UL2_DENOISERS, INPUTS, vocab, mode_tokens=True)
    assert targets_length == max(p.targets_length for p in plans)
    lengths = {"inputs": INPUTS, "targets": targets_length}
    examples = list(task.get_dataset(lengths, split="train", shuffle=False, seed=7))
    modes = mode_ids(vocab)
    full = {(d.kind, p.segment_length): p for d, p in zip(ul2.UL2_DENOISERS, plans, strict=True)}
    assert len(full) == len(plans)  # each denoiser's full segments are recognisable

    reconstructed, kinds, longest_prefix = [], collections.Counter(), 0
    for example in examples:
        inputs, targets = example["inputs"].numpy().tolist(), example["targets"].numpy().tolist()
        assert inputs[-1] == EOS and targets[-1] == EOS
        inputs, targets = inputs[:-1], targets[:-1]
        (kind,) = [k for k, ids in modes.items() if inputs[: len(ids)] == ids]
        inputs = inputs[len(modes[kind]) :]
        kinds[kind] += 1
        sentinels = [t for t in inputs if is_sentinel(t)]
        if kind == "S":
            assert not sentinels and not any(is_sentinel(t) for t in targets)
            tokens = inputs + targets
            assert targets  # the split leaves targets
            longest_prefix = max(longest_prefix, len(modes["S"]) + len(inputs) + 1)
        else:
            # Sentinels count down from the top of the vocabulary, in order.
            assert sentinels == list(range(TOP_SENTINEL, TOP_SENTINEL - len(sentinels), -1))
            tokens = resolve(inputs, targets)
        plan = full.get((kind, len(tokens)))
        if plan is not None and kind != "S":  # a full span-corruption segment
            assert len(modes[kind]) + len(inputs) + 1 == INPUTS  # inputs exactly filled
            assert len(targets) + 1 == plan.targets_length
        reconstructed.extend(tokens)

    original = [token for document in documents for token in vocab.encode(document)]
    assert reconstructed == original  # every denoiser: nothing lost, nothing reordered
    print(f"{len(examples)} examples, kinds {dict(kinds)}")
    assert set(kinds) == {"R", "X", "S"}
    assert longest_prefix == INPUTS  # the longest S prefix fills the inputs too


def denoiser_ids(dataset, sequence_length, vocab, seed, count, denoisers=ul2.UL2_DENOISERS):
    with seqio.utils.map_seed_manager(seed):
        examples = ul2.ul2_examples(
            dataset, sequence_length, t5_output_features(vocab), denoisers=denoisers
        )
    return [int(x["denoiser"]) for x in examples.take(count).as_numpy_iterator()]


def test_shares_follow_the_rates_over_10000_examples(documents, vocab):
    rates = [0.3, 0.1, 0.1, 0.0, 0.15, 0.15, 0.2]
    denoisers = [
        ul2.Denoiser(d.noise_density, d.mean_noise_span_length, rate=r)
        for d, r in zip(ul2.UL2_DENOISERS, rates, strict=True)
    ]
    tokens = tf.ragged.constant([vocab.encode(d) for d in documents[:3000]])
    dataset = tf.data.Dataset.from_tensor_slices({"targets": tokens}).repeat()
    lengths = {"inputs": 32, "targets": 32}
    ids = denoiser_ids(dataset, lengths, vocab, seed=11, count=10_000, denoisers=denoisers)
    counts = np.bincount(ids, minlength=len(rates))
    shares = counts / counts.sum()
    print("shares", np.round(shares, 4).tolist(), "rates", rates)
    assert np.all(np.abs(shares - np.array(rates)) <= 0.02)
    assert counts[3] == 0  # rate 0: never drawn
    # Deterministic per seed; another seed draws another sequence.
    again = denoiser_ids(dataset, lengths, vocab, seed=11, count=500, denoisers=denoisers)
    assert again == ids[:500]
    assert denoiser_ids(dataset, lengths, vocab, seed=12, count=500, denoisers=denoisers) != again


def test_spans_are_capped_at_the_vocabulary_sentinels(documents, vocab):
    """At inputs 512, (span 3, 50% noise) would make 127 spans; T5 has 100 sentinels."""
    extreme = (ul2.Denoiser(0.5, 3.0),)
    (plan,) = ul2.plan(extreme, 512, vocab, mode_tokens=True)
    tokens = tf.ragged.constant([vocab.encode(d) for d in documents[:2000]])
    dataset = tf.data.Dataset.from_tensor_slices({"targets": tokens})
    lengths = {"inputs": 512, "targets": plan.targets_length}
    with seqio.utils.map_seed_manager(3):
        examples = ul2.ul2_examples(dataset, lengths, t5_output_features(vocab), extreme)
    full = 0
    for example in examples.as_numpy_iterator():
        inputs, targets = example["inputs"].tolist(), example["targets"].tolist()
        inputs = inputs[len(plan.mode_ids) :]
        sentinels = [t for t in inputs if is_sentinel(t)]
        assert len(sentinels) <= NUM_SENTINELS
        if len(resolve(inputs, targets)) == plan.segment_length:
            full += 1
            assert len(sentinels) == NUM_SENTINELS
            assert len(plan.mode_ids) + len(inputs) + 1 == 512
            noise = sum(not is_sentinel(t) for t in targets)
            assert noise == round(plan.segment_length * 0.5)  # the density is kept
    assert full >= 5


def test_bad_configurations_are_clear_errors(vocab, tmp_path):
    with pytest.raises(UserInputError, match="rates sum to 0"):
        ul2.check_denoisers([ul2.Denoiser(0.15, 3.0, rate=0.0)])
    with pytest.raises(UserInputError, match=r"S denoiser's noise_density .* \(0, 0.5\]"):
        ul2.check_denoisers([ul2.Denoiser(0.7)])
    with pytest.raises(UserInputError, match="extra_ids=0"):
        ul2.plan(ul2.UL2_DENOISERS, 64, byt5_vocabulary(), mode_tokens=True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a line of text\n" * 50, encoding="utf-8")
    task = user_data.ul2_pretraining_task(
        "test_ul2_lengths", files=str(corpus), vocabulary=vocab, overwrite=True
    )
    try:
        needed = max(p.targets_length for p in ul2.plan(ul2.UL2_DENOISERS, 64, vocab, True))
        with pytest.raises(UserInputError, match=rf"UL2 denoising .* makes targets {needed}"):
            input_pipeline.check_feature_lengths(task, {"inputs": 64, "targets": needed - 1})
        assert input_pipeline.check_feature_lengths(task, {"inputs": 64, "targets": needed})
    finally:
        seqio.TaskRegistry.remove("test_ul2_lengths")


def test_ul2_pretraining_run_lowers_the_loss(tmp_path, data_dir):
    """100 steps of `t5pipe train` on wikitext-2 with the tiny byte model."""
    vocabulary = byt5_vocabulary(extra_ids=125)  # ByT5's layout: 125 sentinels, 384 ids
    user_data.ul2_pretraining_task(
        "test_ul2_wikitext",
        files=str(data_dir / "text" / "wikitext2.valid.tokens"),
        vocabulary=vocabulary,
        overwrite=True,
    )
    try:
        targets = ul2.UL2Denoising(vocabulary=vocabulary).required_target_length(INPUTS)
        summary = train_in_process(
            tmp_path / "run",
            *FAST,
            "--gin.MIXTURE_OR_TASK_NAME='test_ul2_wikitext'",
            f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {INPUTS}, 'targets': {targets}}}",
            "--gin.TRAIN_STEPS=100",
            "--gin.train.pack=True",
            "--gin.byt5_vocabulary.extra_ids=125",
            "--gin.T5Config.num_encoder_layers=1",  # compiles in half the time
            "--gin.T5Config.num_decoder_layers=1",
        )
    finally:
        seqio.TaskRegistry.remove("test_ul2_wikitext")
    assert summary["step"] == 100
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(1, 101))
    # Per target token: batches hold different numbers of them (S vs R examples).
    losses = [r["loss"] / r["num_target_tokens"] for r in records]
    means = [float(np.mean(losses[i : i + 10])) for i in range(0, 100, 10)]
    print("loss per target token, means of steps 1-10, 11-20, ...:", np.round(means, 3))
    assert means[-1] < 0.7 * means[0]
    assert means[-1] < means[1]  # still falling after the first steps
