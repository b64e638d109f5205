"""t5x checkpoints (written here as t5x lays them out, see t5x_testlib) read by
`t5pipe.t5x`: parameters bit-exact, logits of transformers' T5 on the same weights,
scanned layouts, the writer's round trip, detection and bad input."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import t5x_testlib as t5xlib
import torch
from flax import serialization
from jax.sharding import Mesh
from test_model_parity import T5_1_0, T5_1_1, batch, hf_model, relative_error
from testlib import tiny_config

from t5pipe import checkpoint_format as t5pipe_checkpoints
from t5pipe.errors import UserInputError
from t5pipe.hf import t5 as hf_mapping
from t5pipe.model import T5, abstract_params, shift_right
from t5pipe.t5x import checkpoints, convert, is_t5x_checkpoint

FAMILIES = {"t5_1_1": T5_1_1, "t5_1_0": T5_1_0}


def spread_params(config, seed=0):
    """Random weights spread out (embeddings N(0, 1), kernels N(0, 1/fan_in))."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return (1 + 0.2 * rng.normal(size=x.shape)).astype(np.float32)
        std = 1.0 if "embedding" in name else 0.5 if "rel_" in name else x.shape[0] ** -0.5
        return (std * rng.normal(size=x.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract_params(config)[0])


@pytest.fixture(scope="module")
def models():
    """{family: (config, params, HF logits on `batch`)}, HF loaded with the same weights."""
    out = {}
    for family, kind in FAMILIES.items():
        config = tiny_config(**kind)
        params = spread_params(config, seed=len(out))
        hf = hf_model(config)
        state = hf.state_dict()
        with torch.no_grad():
            for name, array in hf_mapping.params_to_hf(params, config):
                state[name].copy_(torch.from_numpy(array))
        enc, targets, enc_mask, _ = batch(config.vocab_size)
        dec_in = np.asarray(shift_right(jnp.asarray(targets)))
        with torch.no_grad():
            logits = hf(
                input_ids=torch.tensor(enc),
                attention_mask=torch.tensor(enc_mask.astype(np.int64)),
                decoder_input_ids=torch.tensor(dec_in),
            ).logits.numpy()
        out[family] = config, params, logits
    return out


def assert_same_tree(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    leaves = zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True)
    for (path, a), b in leaves:
        assert a.dtype == np.float32 and np.array_equal(a, b), jax.tree_util.keystr(path)


def assert_logits_match(params, config, hf_logits):
    enc, targets, _, dec_mask = batch(config.vocab_size)
    dec_in = shift_right(jnp.asarray(targets))
    ours = T5(config).apply({"params": params}, jnp.asarray(enc), dec_in)
    assert relative_error(ours, hf_logits, dec_mask) <= 1e-5


def write(fmt, root, state_dict, step):
    if fmt == "orbax":
        mesh = Mesh(np.array(jax.devices()[:2]), ("model",))
        return t5xlib.write_orbax_format(root, state_dict, step, mesh)
    return t5xlib.write_t5x_format(root / f"checkpoint_{step}", state_dict, shards=fmt[-1:] == "2")


@pytest.mark.parametrize("fmt", ["t5x", "t5x_2shards", "orbax"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_import_is_bit_exact_and_matches_transformers(models, family, fmt, tmp_path):
    config, params, hf_logits = models[family]
    shards = 2 if fmt == "t5x_2shards" else 1
    state_dict = t5xlib.t5x_state_dict(params, config, step=1234)
    if fmt == "orbax":
        step_dir = write(fmt, tmp_path, state_dict, 1234)
    else:
        step_dir = t5xlib.write_t5x_format(tmp_path / "checkpoint_1234", state_dict, shards)
    if shards > 1:  # one zarr chunk per shard, as a multi-device t5x run writes
        chunks = os.listdir(step_dir / "target.encoder.layers_0.mlp.wo.kernel")
        assert sorted(chunks) == [".zarray", "0.0", "0.1"]
    checkpoint = checkpoints.open_checkpoint(tmp_path)  # the MODEL_DIR: latest step
    assert checkpoint.format == ("orbax" if fmt == "orbax" else "t5x")
    assert checkpoint.step == 1234
    read_config = convert.t5config_from_t5x(
        checkpoint, relative_attention_max_distance=20, dropout_rate=0.0
    )
    assert read_config == config
    got, step = convert.read_t5x_params(step_dir, config)
    assert step == 1234
    assert_same_tree(got, params)
    assert_logits_match(got, config, hf_logits)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["into-unscanned", "into-scanned"])
@pytest.mark.parametrize("layout", ["scalable-scanned", "scalable-unscanned", "t5"])
def test_scanned_and_scalable_layouts_import(models, layout, scan_layers, tmp_path):
    config, params, _ = models["t5_1_1"]
    state_dict = t5xlib.t5x_state_dict(params, config, 7, scanned=layout == "scalable-scanned")
    if layout == "scalable-unscanned":  # split kernels and a table per layer
        target = state_dict["target"]
        for stack in ("encoder", "decoder"):
            table = target[stack].pop("relpos_bias")
            for i in range(2):
                layer = target[stack][f"layers_{i}"]
                layer["relpos_bias"] = table
                for name, d, h, k in [(a, 32, 4, 8) for a in layer if a.endswith("attention")]:
                    for w in ("query", "key", "value"):
                        layer[name][w]["kernel"] = layer[name][w]["kernel"].reshape(d, h, k)
                    layer[name]["out"]["kernel"] = layer[name]["out"]["kernel"].reshape(h, k, d)
    if layout == "scalable-scanned":
        query = state_dict["target"]["encoder"]["encoder"]["attention"]["query"]["kernel"]
        assert query.shape == (32, 2, 4, 8)  # [embed, layers, heads, kv]
    t5xlib.write_t5x_format(tmp_path / "checkpoint_7", state_dict)
    assert convert.t5config_from_t5x(
        tmp_path, relative_attention_max_distance=20
    ) == config.replace(dropout_rate=0.1)
    target_config = config.replace(scan_layers=scan_layers)
    got, _ = convert.read_t5x_params(tmp_path, target_config)
    want = hf_mapping.scan_layout(params, config) if scan_layers else params
    assert_same_tree(got, want)


def test_per_layer_tables_that_differ_are_refused(models, tmp_path):
    config, params, _ = models["t5_1_0"]
    state_dict = t5xlib.t5x_state_dict(params, config, 7, scanned=True)
    table = state_dict["target"]["decoder"]["decoder"]["relpos_bias"]["rel_embedding"]
    table[:, 1] += 1.0  # layer 1's table no longer equals layer 0's
    t5xlib.write_t5x_format(tmp_path / "checkpoint_7", state_dict)
    with pytest.raises(UserInputError, match="decoder have different relative position tables"):
        convert.read_t5x_params(tmp_path, config)


@pytest.mark.parametrize("scanned", [False, True], ids=["t5-layout", "scanned-layout"])
def test_writer_round_trip_is_bit_identical(models, scanned, tmp_path):
    config, params, _ = models["t5_1_1"]
    out = tmp_path / "checkpoint_99"
    param_states = {
        "encoder/layers_0/mlp/wo/kernel": {
            "v_row": np.arange(64, dtype=np.float32),
            "v_col": np.arange(32, dtype=np.float32),
            "v": np.zeros(1, np.float32),
            "m": np.ones((64, 32), np.float32),
        }
    }
    convert.write_t5x_checkpoint(
        out, params, config, 99, scanned=scanned, param_states=param_states, chunk_bytes=1024
    )
    # The layout t5x reads: msgpack with TensorStore specs, arrays in dotted folders.
    contents = serialization.msgpack_restore((out / "checkpoint").read_bytes())
    assert set(contents) == {"version", "optimizer"} and contents["version"] == 3
    target = contents["optimizer"]["target"]
    if scanned:
        spec = target["encoder"]["encoder"]["mlp"]["wi_0"]["kernel"]
        assert spec["metadata"]["shape"] == [32, 2, 64]  # [embed, layers, mlp]
    else:
        spec = target["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
        assert spec["metadata"]["shape"] == [32, 64]
    assert spec["driver"] == "zarr" and {"chunks", "compressor"} <= set(spec["metadata"])
    folder = out / spec["kvstore"]["path"]
    assert len(os.listdir(folder)) > 2  # several chunks
    assert json.loads((folder / ".zarray").read_text())["compressor"]["id"] == "gzip"
    state = contents["optimizer"]["state"]
    assert int(state["step"]) == 99
    assert isinstance(
        state["param_states"]["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]["v_row"], np.ndarray
    )

    got, step = convert.read_t5x_params(out, config)
    assert step == 99
    assert_same_tree(got, params)
    back = convert.read_t5x_param_states(checkpoints.open_checkpoint(out))
    for slot, array in param_states["encoder/layers_0/mlp/wo/kernel"].items():
        assert np.array_equal(back["encoder/layers_0/mlp/wo/kernel"][slot], array), slot

    scanned_config = config.replace(scan_layers=True)
    convert.write_t5x_checkpoint(
        out, hf_mapping.scan_layout(params, config), scanned_config, 100, overwrite=True
    )
    got, step = convert.read_t5x_params(out, config)
    assert step == 100
    assert_same_tree(got, params)


def test_detection(models, tmp_path):
    config, params, _ = models["t5_1_0"]
    state_dict = t5xlib.t5x_state_dict(params, config, 10)
    t5x_dir = tmp_path / "t5x_run"
    t5xlib.write_t5x_format(t5x_dir / "checkpoint_10", state_dict)
    t5xlib.write_t5x_format(t5x_dir / "checkpoint_20", t5xlib.t5x_state_dict(params, config, 20))
    orbax_dir = tmp_path / "orbax_run"
    t5xlib.write_orbax_format(orbax_dir, state_dict, 10)
    for path in (
        t5x_dir,
        t5x_dir / "checkpoint_10",
        t5x_dir / "checkpoint_10" / "checkpoint",
        orbax_dir,
        orbax_dir / "checkpoint_10",
        orbax_dir / "checkpoint_10" / "state",
    ):
        assert is_t5x_checkpoint(path), path
    assert checkpoints.open_checkpoint(t5x_dir).step == 20
    assert checkpoints.open_checkpoint(t5x_dir, step=10).step == 10
    with pytest.raises(UserInputError, match=r"no checkpoint_30/; its steps are \[10, 20\]"):
        checkpoints.open_checkpoint(t5x_dir, step=30)

    ours = tmp_path / "t5pipe_ckpt"
    t5pipe_checkpoints.save_checkpoint(ours, {"params": params}, config, _byte_vocabulary())
    (tmp_path / "empty").mkdir()
    tf_dir = tmp_path / "tf"
    tf_dir.mkdir()
    (tf_dir / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-0"\n')
    for path in (ours, ours / "state", tmp_path / "empty", tmp_path / "missing", tf_dir):
        assert not is_t5x_checkpoint(path), path
    with pytest.raises(UserInputError, match="TensorFlow"):
        checkpoints.open_checkpoint(tf_dir)
    with pytest.raises(UserInputError, match="is not a t5x checkpoint"):
        checkpoints.open_checkpoint(tmp_path / "empty")


def _byte_vocabulary():
    from t5pipe.vocabularies import byt5_vocabulary

    return byt5_vocabulary()


def test_bad_input_is_named(models, tmp_path):
    config, params, _ = models["t5_1_1"]
    t5xlib.write_t5x_format(tmp_path / "checkpoint_1", t5xlib.t5x_state_dict(params, config, 1))
    wrong = config.replace(d_ff=48)
    with pytest.raises(
        UserInputError,
        match=r"encoder/layers_0/mlp/wi_0/kernel: shape \[32, 64\], the model needs \[32, 48\]",
    ):
        convert.read_t5x_params(tmp_path, wrong)
    with pytest.raises(UserInputError, match=r"unexpected \[.decoder/logits_dense/kernel.\]"):
        convert.read_t5x_params(tmp_path, config.replace(tie_word_embeddings=True))

    not_empty = tmp_path / "notes"
    not_empty.mkdir()
    (not_empty / "README").write_text("mine")
    with pytest.raises(UserInputError, match="refusing to write into it"):
        convert.write_t5x_checkpoint(not_empty, params, config, 1)
    with pytest.raises(UserInputError, match="pass overwrite=True"):
        convert.write_t5x_checkpoint(tmp_path / "checkpoint_1", params, config, 1)
    assert (not_empty / "README").read_text() == "mine"


def test_bfloat16_checkpoints_import_as_float32(models, tmp_path):
    config, params, _ = models["t5_1_0"]
    import ml_dtypes

    halved = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), params)
    t5xlib.write_t5x_format(tmp_path / "checkpoint_3", t5xlib.t5x_state_dict(halved, config, 3))
    got, _ = convert.read_t5x_params(tmp_path, config)
    assert_same_tree(got, jax.tree.map(lambda x: x.astype(np.float32), halved))


def test_specs_with_the_path_outside_the_kvstore(models, tmp_path):
    """Older tensorstore specs (and t5x's gs:// ones as built) name the folder in a
    top-level "path" instead of kvstore.path."""
    config, params, _ = models["t5_1_0"]
    step_dir = t5xlib.write_t5x_format(
        tmp_path / "checkpoint_5", t5xlib.t5x_state_dict(params, config, 5)
    )
    contents = serialization.msgpack_restore((step_dir / "checkpoint").read_bytes())

    def legacy(tree):
        for value in tree.values():
            if isinstance(value, dict) and "kvstore" in value:
                value["path"] = value["kvstore"].pop("path")
            elif isinstance(value, dict):
                legacy(value)

    legacy(contents)
    (step_dir / "checkpoint").write_bytes(serialization.msgpack_serialize(contents))
    got, _ = convert.read_t5x_params(step_dir, config)
    assert_same_tree(got, params)


def test_remote_paths_become_gcs_kvstore_specs():
    """gs:// checkpoints are read through TensorStore's gcs driver (no network in CI:
    only the specs are checked), and written with t5x's portable dummy bucket."""
    from etils import epath

    directory = epath.Path("gs://my-bucket/runs/t5/checkpoint_100")
    assert checkpoints.kvstore_spec(directory, "target.encoder.encoder_norm.scale") == {
        "driver": "gcs",
        "bucket": "my-bucket",
        "path": "runs/t5/checkpoint_100/target.encoder.encoder_norm.scale",
    }
    local = checkpoints.kvstore_spec(epath.Path("/ckpt/checkpoint_1"), "target.x")
    assert local == {"driver": "file", "path": "/ckpt/checkpoint_1/target.x"}


def test_t5x_and_t5_are_never_imported():
    # Everything above ran without them; a real t5x installed beside must stay unused.
    assert "t5x" not in sys.modules and "t5" not in sys.modules
