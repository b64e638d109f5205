"""Checksums per array: a flipped byte in a checkpoint's data file (or a garbled
state/_METADATA) makes train fall back to the previous checkpoint (finishing
bit-identical to an uninterrupted run, the bad one kept), and eval/infer refuse it;
garbage in meta/metadata or state/_METADATA names that file; a vocabulary that is not
a SentencePiece model is refused; a checkpoint without checksums resumes with one line
saying so; TensorBoard drops the rows a resume redoes."""

import collections
import json
import shutil
from pathlib import Path

import numpy as np
from testlib import QUICKSTART, command_error, train_error, tree_digest, write
from train_testlib import FAST, read_metrics, train_in_process

from t5pipe import checkpoint_integrity
from t5pipe.checkpoint_format import load_params

RUN = (*FAST, "--gin.TRAIN_STEPS=4", "--gin.CHECKPOINT_PERIOD=2", "--gin.CHECKPOINTS_TO_KEEP=None")


def _flip_a_parameter_byte(checkpoint: Path) -> None:
    """Flips one byte of a data file, at the first of 16 spread-out offsets per file
    (largest file first) that changes the parameters as read back or leaves them
    unreadable: a byte of the optimizer's arrays alone leaves eval, which reads only the
    parameters, nothing to refuse."""
    params = load_params(checkpoint)
    original = _leaves(params)
    files = sorted((checkpoint / "state").rglob("d/*"), key=lambda p: -p.stat().st_size)
    for data in files:
        content = bytearray(data.read_bytes())
        for offset in np.unique(np.linspace(0, len(content) - 1, 16).astype(int)):
            content[offset] ^= 0x10
            data.write_bytes(bytes(content))
            try:
                flipped = _leaves(load_params(checkpoint, target=params))  # params alone
                changed = not all(map(np.array_equal, original, flipped))
            except Exception:  # noqa: BLE001 - the parameters' bytes no longer decode
                changed = True
            if changed:
                return
            content[offset] ^= 0x10
        data.write_bytes(bytes(content))
    raise AssertionError(f"no sampled byte of {checkpoint}/state reaches the parameters")


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_flipped_byte_falls_back_and_eval_refuses(tmp_path, capsys):
    model_dir = tmp_path / "run"
    train_in_process(model_dir, *RUN)
    reference = read_metrics(model_dir)  # the uninterrupted run's losses
    bad = model_dir / "checkpoints" / "4"
    _flip_a_parameter_byte(bad)
    corrupt = tree_digest(bad)
    capsys.readouterr()

    message = command_error(
        "eval", tmp_path, f"--checkpoint={bad}", "--task=builtin_reverse_v001",
        f"--output_dir={tmp_path / 'eval'}", "--max_examples=2", capsys=capsys,
    )  # fmt: skip
    assert message.startswith(f"checkpoint {bad}")
    assert "fails verification: array params/" in message or "cannot be read" in message
    # As an initial checkpoint too: the fine-tune refuses it (and leaves it as it is).
    message = command_error(
        "train", bad, *QUICKSTART, *RUN, f"--gin.MODEL_DIR={tmp_path / 'finetune'}",
        "--gin.TRAIN_STEPS_RELATIVE=1", f"--gin.INITIAL_CHECKPOINT_PATH='{bad}'", capsys=capsys,
    )  # fmt: skip
    assert message.startswith(f"checkpoint {bad}")
    assert "fails verification: array params/" in message or "cannot be read" in message

    summary = train_in_process(model_dir, *RUN)
    out = capsys.readouterr().out
    assert f"checkpoint {bad} cannot be used (" in out
    assert f"falling back to checkpoint {model_dir / 'checkpoints' / '2'}" in out
    assert f"kept the unusable checkpoint {bad} as {bad}.corrupt (not deleted)" in out
    assert summary["step"] == 4
    losses = [(r["step"], r["loss"]) for r in read_metrics(model_dir)]
    assert losses == [(r["step"], r["loss"]) for r in reference]  # bit-identical, one per step
    assert tree_digest(Path(f"{bad}.corrupt")) == corrupt  # never deleted or changed

    # A garbled state/_METADATA in the latest checkpoint: the same fallback.
    (bad / "state" / "_METADATA").write_bytes(b"\xff\xfe garbage")
    garbled = tree_digest(bad)
    capsys.readouterr()
    summary = train_in_process(model_dir, *RUN)
    out = capsys.readouterr().out
    assert f"falling back to checkpoint {model_dir / 'checkpoints' / '2'}" in out
    assert f"kept the unusable checkpoint {bad} as {bad}.corrupt2 (not deleted)" in out
    assert summary["step"] == 4
    losses = [(r["step"], r["loss"]) for r in read_metrics(model_dir)]
    assert losses == [(r["step"], r["loss"]) for r in reference]
    assert tree_digest(Path(f"{bad}.corrupt2")) == garbled

    # A data file that no longer decodes at all: fine-tuning from it says so, no traceback.
    undecodable = tmp_path / "undecodable"
    shutil.copytree(model_dir / "checkpoints" / "2", undecodable)
    data = max((undecodable / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
    data.write_bytes(bytes(range(256)) * (data.stat().st_size // 256 + 1))
    message = command_error(
        "train", undecodable, *QUICKSTART, *RUN, f"--gin.MODEL_DIR={tmp_path / 'finetune2'}",
        "--gin.TRAIN_STEPS_RELATIVE=1", f"--gin.INITIAL_CHECKPOINT_PATH='{undecodable}'",
        capsys=capsys,
    )  # fmt: skip
    assert message.startswith(f"checkpoint {undecodable}: its arrays cannot be read"), message


def test_garbage_metadata_names_the_file(model_dir, tmp_path, capsys):
    ckpt = model_dir / "checkpoints" / "10"
    (ckpt / "meta" / "metadata").write_bytes(b"\xff\xfe garbage")
    message = command_error(
        "infer", model_dir, f"--checkpoint={ckpt}", f"--input_file={model_dir / 'config.gin'}",
        f"--output_file={tmp_path / 'out.jsonl'}", capsys=capsys,
    )  # fmt: skip
    assert f"{ckpt / 'meta' / 'metadata'}" in message


def test_checksums_catch_one_flipped_bit():
    state = {"params": {"w": np.arange(6, dtype=np.float32)}, "step": np.int32(3)}
    meta = checkpoint_integrity.with_checksums({}, state)
    assert checkpoint_integrity.mismatches(state, meta) == []
    flipped = np.arange(6, dtype=np.float32)
    flipped.view(np.uint32)[4] ^= 1 << 7
    assert checkpoint_integrity.mismatches({**state, "params": {"w": flipped}}, meta) == [
        "params/w"
    ]


def test_garbage_state_metadata_names_the_file(model_dir, tmp_path, capsys):
    ckpt = model_dir / "checkpoints" / "10"
    (ckpt / "state" / "_METADATA").write_bytes(b"\xff\xfe garbage")
    expected = f"{ckpt / 'state' / '_METADATA'}: not the JSON object orbax writes there"
    message = command_error(
        "infer", model_dir, f"--checkpoint={ckpt}", f"--input_file={model_dir / 'config.gin'}",
        f"--output_file={tmp_path / 'out.jsonl'}", capsys=capsys,
    )  # fmt: skip
    assert message.startswith(expected) and "Use another checkpoint" in message
    message = train_error(model_dir, "--gin.TRAIN_STEPS=12", capsys=capsys)  # resume refused
    assert message.startswith(expected) and "move this one out of checkpoints/" in message


def test_checkpoint_vocabulary_not_sentencepiece(model_dir, tmp_path, capsys):
    ckpt = model_dir / "checkpoints" / "10"
    garbage = write(model_dir / "spiece.model", b"this is not a sentencepiece model\n")
    metadata = ckpt / "meta" / "metadata"
    meta = json.loads(metadata.read_text())
    meta["vocabulary"] = {"kind": "sentencepiece", "path": str(garbage), "extra_ids": 0}
    metadata.write_text(json.dumps(meta))
    message = command_error(
        "infer", model_dir, f"--checkpoint={ckpt}", f"--input_file={model_dir / 'config.gin'}",
        f"--output_file={tmp_path / 'out.jsonl'}", capsys=capsys,
    )  # fmt: skip
    assert message.startswith(f"checkpoint {ckpt} (the vocabulary its meta/ records): ")
    assert f"the vocabulary file {garbage} cannot be read as a SentencePiece model" in message
    assert f"{metadata} records the vocabulary as {garbage}: put the SentencePiece" in message
    assert "DecodeError" not in message and not (tmp_path / "out.jsonl").exists()


def _tensorboard_rows(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows the event files: read in order,
    a SessionLog START at step s (a resumed writer's purge_step) drops every earlier
    event at step >= s."""
    import tensorflow as tf

    rows = collections.defaultdict(list)
    for file in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(file)):
            if event.HasField("session_log") and event.session_log.status == 1:  # START
                for tag in rows:
                    rows[tag] = [(s, v) for s, v in rows[tag] if s < event.step]
            for value in event.summary.value:
                rows[value.tag].append((event.step, value.simple_value))
    return dict(rows)


def test_old_checkpoint_resumes_unverified_and_tensorboard_drops_redone_rows(tmp_path, capsys):
    model_dir = tmp_path / "run"
    train_in_process(model_dir, *RUN)
    ckpt_dir = model_dir / "checkpoints"
    # As if killed before step 4's save, with step 2 written by a version without checksums.
    shutil.rmtree(ckpt_dir / "4")
    metadata = ckpt_dir / "2" / "meta" / "metadata"
    meta = json.loads(metadata.read_text())
    del meta[checkpoint_integrity.CHECKSUMS_KEY], meta[checkpoint_integrity.KIND_KEY]
    metadata.write_text(json.dumps(meta))
    tensorboard = model_dir / "tensorboard"
    first_files = {p: p.read_bytes() for p in tensorboard.iterdir()}
    assert [s for s, _ in _tensorboard_rows(tensorboard)["train/loss"]] == [1, 2, 3, 4]
    capsys.readouterr()

    summary = train_in_process(model_dir, *RUN)
    out = capsys.readouterr().out
    assert summary["step"] == 4
    assert out.count("loaded unverified") == 1
    assert f"checkpoint {ckpt_dir / '2'} records no checksums" in out
    assert "removed 2 row(s) past step 2" in out
    losses = {r["step"]: r["loss"] for r in read_metrics(model_dir)}
    rows = _tensorboard_rows(tensorboard)
    for tag in ("train/loss", "train/learning_rate"):
        assert [s for s, _ in rows[tag]] == [1, 2, 3, 4], tag  # steps 3 and 4 once each
    assert [v for _, v in rows["train/loss"]] == [np.float32(losses[s]) for s in (1, 2, 3, 4)]
    assert {p: p.read_bytes() for p in first_files} == first_files  # earlier events untouched


def test_processes_agree_on_the_fallback_step(tmp_path):
    # The collective injected: this process reads steps 4 and 2, the other process
    # cannot read its part of step 4; both must take step 2.
    import jax

    from t5pipe import checkpoint_manager
    from t5pipe.checkpoint_manager import CheckpointConfig

    manager = checkpoint_manager.make_manager(tmp_path, CheckpointConfig(async_save=False))
    for step in (2, 4):
        state = {"step": np.int32(step), "params": {"w": np.full((3,), step, np.float32)}}
        checkpoint_manager.save(manager, state, {"format": 1})
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=sharding), state
    )
    other_process = iter([False, True])
    verdicts, lines = [], []

    def agree(ok):
        verdicts.append(ok)
        return ok and next(other_process)

    restored = checkpoint_manager.restore_newest_good(manager, abstract, lines.append, agree)
    ckpt_dir = tmp_path / "checkpoints"
    assert int(restored["step"]) == 2 and verdicts == [True, True]
    assert lines == [
        f"checkpoint {ckpt_dir / '4'} cannot be used (another process cannot read or verify "
        "its part); trying an older one",
        f"kept the unusable checkpoint {ckpt_dir / '4'} as {ckpt_dir / '4.corrupt'} (not deleted)",
        f"falling back to checkpoint {ckpt_dir / '2'}",
    ]
    assert sorted(manager.all_steps()) == [2] and (ckpt_dir / "4.corrupt" / "state").is_dir()
    manager.close()
    # One process: its own verdict.
    assert checkpoint_manager.all_processes_agree(True)
    assert not checkpoint_manager.all_processes_agree(False)
