"""Checksums per array: a flipped byte in a checkpoint's data file makes train fall back
to the previous checkpoint (finishing bit-identical to an uninterrupted run, the bad one
kept), and eval/infer refuse it; garbage in meta/metadata names that file."""

from pathlib import Path

import numpy as np
from testlib import command_error, tree_digest
from train_testlib import FAST, read_metrics, train_in_process

from t5pipe import checkpoint_integrity
from t5pipe.checkpoint_format import load_params

RUN = (*FAST, "--gin.TRAIN_STEPS=4", "--gin.CHECKPOINT_PERIOD=2", "--gin.CHECKPOINTS_TO_KEEP=None")


def _flip_a_parameter_byte(checkpoint: Path) -> None:
    """Flips one byte of the largest data file, at the first offset (from its middle on)
    that changes what the parameters read back as, or makes them unreadable."""
    original = load_params(checkpoint)
    data = max((checkpoint / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
    content = bytearray(data.read_bytes())
    for offset in range(len(content) // 2, len(content), 97):
        content[offset] ^= 0x10
        data.write_bytes(bytes(content))
        try:
            flipped = load_params(checkpoint)
        except Exception:  # noqa: BLE001 - unreadable counts as corrupt too
            return
        leaves = zip(_leaves(original), _leaves(flipped), strict=True)
        if any(not np.array_equal(a, b) for a, b in leaves):
            return
        content[offset] ^= 0x10
    raise AssertionError(f"no byte of {data} reaches the parameters")


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

    summary = train_in_process(model_dir, *RUN)
    out = capsys.readouterr().out
    assert f"checkpoint {bad} cannot be used (" in out
    assert f"falling back to checkpoint {model_dir / 'checkpoints' / '2'}" in out
    assert f"kept the unusable checkpoint {bad} as {bad}.corrupt (not deleted)" in out
    assert summary["step"] == 4
    losses = [(r["step"], r["loss"]) for r in read_metrics(model_dir)]
    assert losses == [(r["step"], r["loss"]) for r in reference]  # bit-identical, one per step
    assert tree_digest(Path(f"{bad}.corrupt")) == corrupt  # never deleted or changed


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
