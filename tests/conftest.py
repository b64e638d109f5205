"""Shared test setup: 8 simulated CPU devices, the shared data folder, tiny configs."""

import os

# Before jax is imported anywhere: several CPU devices for the sharding tests.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from t5pipe.model_config import T5Config  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Real data for tests: $T5PIPE_TEST_DATA, default ../shared/data beside the repo."""
    path = Path(os.environ.get("T5PIPE_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        raise RuntimeError(
            f"test data folder {path} is missing; set T5PIPE_TEST_DATA to the shared data folder"
        )
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def spm_path(data_dir) -> str:
    return str(data_dir / "vocab" / "t5_spiece.model")


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
