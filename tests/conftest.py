"""Shared test setup: one CPU device (tests/multi_device/ runs with 8, in its own process),
the shared data folder, and the fixtures several test modules use."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from testlib import shared_data_dir  # noqa: E402

# Collected only by tests/test_multi_device.py, which runs them with 8 simulated devices.
collect_ignore = ["multi_device"]


@pytest.fixture(autouse=True)
def _clear_gin():
    """gin's bindings are global: a test's config must not reach the next test (config
    objects built directly, such as DataConfig(...), would pick it up)."""
    yield
    import gin

    gin.clear_config()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def spm_path(data_dir) -> str:
    return str(data_dir / "vocab" / "t5_spiece.model")


@pytest.fixture(scope="module")
def byte_checkpoint(tmp_path_factory):
    """A random tiny T5.1.1 checkpoint over the byte vocabulary, and the same weights in a
    Hugging Face model: (path, hf_model)."""
    import jax
    import numpy as np
    import seqio
    import torch
    import transformers
    from testlib import tiny_config

    from t5pipe.checkpoint_format import save_checkpoint
    from t5pipe.hf import t5 as hf_mapping
    from t5pipe.model import init_params

    config = tiny_config(vocab_size=384)
    params = init_params(config, jax.random.PRNGKey(0))
    # Sharpen the output layer so that decodes are not one repeated token.
    params["logits_dense"]["kernel"] = params["logits_dense"]["kernel"] * 20
    path = tmp_path_factory.mktemp("ckpt") / "byte"
    save_checkpoint(path, {"params": params}, config, seqio.ByteVocabulary())
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**hf_mapping.t5config_to_hf(config))
    ).eval()
    state = {k: torch.tensor(np.asarray(v)) for k, v in hf_mapping.params_to_hf(params, config)}
    hf.lm_head.weight = torch.nn.Parameter(state["lm_head.weight"])
    hf.load_state_dict(state, strict=False)
    return path, hf


@pytest.fixture(scope="module")
def model_dir_template(tmp_path_factory) -> Path:
    """A MODEL_DIR as a run leaves it: config.gin, metrics.jsonl, checkpoints/10 of the
    quickstart's tiny model."""
    import jax
    import numpy as np

    from t5pipe.checkpoint_format import save_checkpoint
    from t5pipe.checkpoint_manager import latest_checkpoint
    from t5pipe.gin_setup import model_config_from_gin
    from t5pipe.model import init_params
    from t5pipe.vocabularies import byt5_vocabulary

    root = tmp_path_factory.mktemp("existing_run")
    config = model_config_from_gin(["models/tiny.gin"])
    (root / "config.gin").write_text("# operative config of an earlier run\nTRAIN_STEPS = 10\n")
    (root / "metrics.jsonl").write_text('{"step": 10, "loss": 3.25, "learning_rate": 0.01}\n')
    params = init_params(config, jax.random.PRNGKey(0))
    save_checkpoint(
        root / "checkpoints" / "10",
        {"params": params, "step": np.int32(10)},
        config,
        byt5_vocabulary(),
    )
    assert latest_checkpoint(root) == root / "checkpoints" / "10"
    return root


@pytest.fixture
def model_dir(model_dir_template, tmp_path) -> Path:
    """A copy of `model_dir_template` the test may hand to a command."""
    import shutil

    target = tmp_path / "run"
    shutil.copytree(model_dir_template, target)
    return target


# The slowest files, run first: `--dist loadfile` hands files to the two workers in
# collection order, so a long file collected last leaves the other worker idle at the
# end. (Seconds per file on the CI machine, one worker; the rest keep their order.)
SLOW_FILES_FIRST = (
    "test_multi_device.py",  # an 8-device subprocess, ~250 s
    "test_multi_device_scale_out.py",  # the other 8-device subprocess, ~250 s
    "test_model_dir_lock.py",  # two trainers, ~115 s
    "test_sigkill_soak.py",  # ~110 s
    "test_preemption.py",
    "test_checkpointing.py",
    "test_decoding.py",
    "test_model_parity.py",
    "test_family_t5gemma.py",
    "test_quickstart.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable
