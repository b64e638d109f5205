"""Helpers shared by the tests (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from t5pipe.model_config import T5Config

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Real data for tests: $T5PIPE_TEST_DATA, default ../shared/data beside the repo."""
    path = Path(os.environ.get("T5PIPE_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        raise RuntimeError(
            f"test data folder {path} is missing; set T5PIPE_TEST_DATA to the shared data folder"
        )
    return path


def tiny_config(**changes) -> T5Config:
    """A T5.1.1-shaped model small enough to compile and run in seconds."""
    base = T5Config(
        vocab_size=128,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    return base.replace(**changes)


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256 of the bytes, or 'dir'} for everything under root."""
    digest = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        digest[relative] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# Inputs for byte-vocabulary checkpoints (the `byte_checkpoint` fixture): ASCII, empty,
# long and non-ASCII text.
INPUTS = [
    "translate English to German: Hello.",
    "",
    "summarize: a longer line of input text " * 3,
    "ünïcödé ✓",
]


def hf_greedy_texts(hf, texts, max_new_tokens):
    """transformers' greedy `generate` on byte-vocabulary texts -> texts."""
    import numpy as np
    import seqio
    import torch

    vocabulary = seqio.ByteVocabulary()
    rows = [[*vocabulary.encode(t), 1] for t in texts]
    length = max(map(len, rows))
    ids = np.asarray([r + [0] * (length - len(r)) for r in rows])
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor((ids != 0) * 1),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
        )
    texts = []
    for row in out.numpy()[:, 1:].tolist():
        row = row[: row.index(1)] if 1 in row else row
        texts.append(vocabulary.decode([i for i in row if i != 0]))
    return texts


# ------------------------------------------------------------------ bad input, run in-process

# The quickstart, shortened: what the bad-input tests run `t5pipe train` with.
QUICKSTART = [
    "--gin_file=runs/quickstart.gin",
    "--gin.TRAIN_STEPS=2",
    "--gin.EVAL_PERIOD=0",
    "--gin.BATCH_SIZE=8",
]


def command_error(command: str, model_dir: Path, *flags: str, capsys) -> str:
    """Runs `t5pipe COMMAND` in-process; asserts exit code 2, that `model_dir` is unchanged
    and that one error paragraph and no traceback were printed; returns the message."""
    from t5pipe import cli
    from t5pipe.errors import EXIT_BAD_INPUT

    before = tree_digest(model_dir)
    code = cli.main([command, *flags])
    captured = capsys.readouterr()
    assert code == EXIT_BAD_INPUT, captured.err
    assert tree_digest(model_dir) == before, "MODEL_DIR was changed"
    assert "Traceback" not in captured.err
    prefix = f"t5pipe {command}: error: "
    assert captured.err.count(prefix) == 1, captured.err
    return captured.err.split(prefix, 1)[1].strip()


def train_error(model_dir: Path, *flags: str, capsys) -> str:
    """`t5pipe train` on the quickstart with MODEL_DIR and `flags`: its error message."""
    return command_error(
        "train", model_dir, *QUICKSTART, f"--gin.MODEL_DIR={model_dir}", *flags, capsys=capsys
    )


def byte_task(name: str, files, **kwargs) -> str:
    """A user TSV/JSONL task in the byte vocabulary (fits the tiny model's 384 ids)."""
    from t5pipe.tasks import user_data
    from t5pipe.vocabularies import byt5_vocabulary

    user_data.supervised_task(
        name,
        files,
        inputs_template="q: {question}",
        targets_template="{answer}",
        vocabulary=byt5_vocabulary(),
        overwrite=True,
        **kwargs,
    )
    return name


@contextlib.contextmanager
def without_write_permission(folder: Path):
    """Root ignores permission bits, so as root act as `nobody`; otherwise chmod."""
    if os.geteuid() == 0:
        os.seteuid(65534)
        try:
            yield
        finally:
            os.seteuid(0)
    else:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)


# tests/multi_device/ split into two runs, one per test file, so that pytest-xdist can put
# them on different workers (each run is a process with 8 simulated devices).
MULTI_DEVICE_GROUPS = {
    "processes": (
        "test_multiprocess.py", "test_partitioning.py", "test_batch_layout.py",
        "test_decoding_mesh.py",
    ),
    "scale_out": ("test_scale_out.py", "test_family_scale_out.py", "test_lora_mesh.py"),
}  # fmt: skip


def run_on_8_devices(group: str) -> str:
    """Runs one group of tests/multi_device/ in a process with 8 simulated CPU devices
    (XLA_FLAGS must be set before JAX starts, so those tests cannot share this process's
    single device); returns pytest's output, after asserting that every test passed."""
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    files = [f"tests/multi_device/{name}" for name in MULTI_DEVICE_GROUPS[group]]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    print(result.stdout[-5000:])
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
    return result.stdout
