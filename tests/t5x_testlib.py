"""Checkpoints laid out as t5x writes them, for tests (CI cannot install t5x).

Written from t5x's source, independently of `t5pipe.t5x`:

- `t5x_state_dict`: t5pipe parameters as t5x's T5 networks name and shape them
  (`t5x/examples/t5/network.py`: attention kernels [embed, heads * kv] and one
  relative position table per stack; or `t5x/examples/scalable_t5/network.py`:
  [embed, heads, kv] kernels, a table per layer, scanned layers stacked on axis 1
  under `encoder/encoder/`), wrapped in t5x's `{"target", "state": {"step",
  "param_states"}}` state dict.
- `write_t5x_format`: as `t5x.checkpoints.Checkpointer.save`: zarr arrays named
  `target.<path>` next to a msgpack `checkpoint` file holding their TensorStore specs
  (`ts.Spec.to_json()`), the step and the unpartitioned Adafactor slots inline. With
  `shards > 1` each array is written shard by shard with one zarr chunk per shard and
  zstd, as t5x does for arrays spread over devices; otherwise whole, with gzip.
- `write_orbax_format`: as `OrbaxCheckpointManagerInterface.save`: an orbax
  CheckpointManager with step prefix `checkpoint` and an OCDBT PyTree item `state`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import tensorstore as ts
from flax import serialization


def _layer(params_layer, config, joined):
    d, h, k = config.d_model, config.num_heads, config.d_kv
    out = {}
    for name, sub in params_layer.items():
        if name.endswith("layer_norm"):
            out[name] = {"scale": sub["scale"]}
        elif name == "mlp":
            out[name] = {w: {"kernel": sub[w]} for w in sub}
        else:  # attention: query/key/value [embed, heads, kv], out [heads, kv, embed]
            out[name] = {
                w: {"kernel": sub[w].reshape(d, h * k) if joined else sub[w]}
                for w in ("query", "key", "value")
            }
            out[name]["out"] = {"kernel": sub["out"].reshape(h * k, d) if joined else sub["out"]}
    return out


def t5x_target(params, config, scanned=False):
    """t5pipe's unscanned parameters as t5x's `target` tree (see the module docstring)."""
    target = {"token_embedder": {"embedding": params["token_embedder"]["embedding"]}}
    for stack, n in (
        ("encoder", config.num_encoder_layers),
        ("decoder", config.num_decoder_layers),
    ):
        table = params[stack]["relpos_bias"]["rel_embedding"]
        layers = [_layer(params[stack][f"layers_{i}"], config, not scanned) for i in range(n)]
        norm = {f"{stack}_norm": {"scale": params[stack][f"{stack}_norm"]["scale"]}}
        if scanned:
            for layer in layers:
                layer["relpos_bias"] = {"rel_embedding": table}
            stacked = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *layers)
            target[stack] = {stack: stacked, **norm}
        else:
            target[stack] = {f"layers_{i}": layer for i, layer in enumerate(layers)}
            target[stack].update(relpos_bias={"rel_embedding": table}, **norm)
    if not config.tie_word_embeddings:
        target["decoder"]["logits_dense"] = {"kernel": params["logits_dense"]["kernel"]}
    return target


def t5x_state_dict(params, config, step, param_states=None, scanned=False):
    state = {"step": np.asarray(step, np.int32)}
    if param_states is not None:
        state["param_states"] = param_states
    return {"target": t5x_target(params, config, scanned), "state": state}


def _flat(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _inline(path, array):
    # t5x writes to TensorStore the arrays that have mesh axes: parameters, Adafactor's
    # unfactored `v` and `m`; the step, `v_row`, `v_col` and placeholders stay inline.
    return path[-1] in ("step", "v_row", "v_col") or array.shape == (1,)


def write_t5x_format(step_dir, state_dict, shards=1):
    """A checkpoint_<step> folder in the T5X format (see the module docstring)."""
    os.makedirs(step_dir, exist_ok=True)
    written = {}
    for path, array in _flat(state_dict):
        array = np.asarray(array)
        if _inline(path, array):
            _set(written, path, array)
            continue
        name = ".".join(path)
        split = shards > 1 and array.ndim and array.shape[-1] % shards == 0
        chunks = list(array.shape)
        if split:
            chunks[-1] //= shards
        spec = ts.Spec(
            {
                "driver": "zarr",
                "dtype": array.dtype.name,
                "kvstore": {"driver": "file", "path": name},
                "metadata": {
                    "compressor": {"id": "zstd" if split else "gzip"},
                    "shape": list(array.shape),
                    "chunks": chunks,
                },
            }
        )
        absolute = spec.to_json()
        absolute["kvstore"]["path"] = os.path.join(step_dir, name)
        store = ts.open(absolute, create=True, open=True).result()
        if split:  # each device writes its own shard
            width = chunks[-1]
            for s in range(shards):
                store[..., s * width : (s + 1) * width].write(
                    array[..., s * width : (s + 1) * width]
                ).result()
        else:
            store.write(array).result()
        _set(written, path, spec.to_json())
    # t5x's `serialization.to_bytes` turns each ts.Spec into its JSON (a registered
    # state-dict type, so lists inside it stay lists) and arrays into msgpack extensions.
    blob = serialization.msgpack_serialize({"version": 3, "optimizer": written})
    with open(os.path.join(step_dir, "checkpoint"), "wb") as f:
        f.write(blob)
    return step_dir


def write_orbax_format(model_dir, state_dict, step, mesh=None):
    """MODEL_DIR/checkpoint_<step>/state as t5x's Orbax manager writes it. With `mesh`,
    arrays are sharded over its "model" axis (last dimension) so orbax writes shards."""
    import orbax.checkpoint as ocp
    from jax.sharding import NamedSharding, PartitionSpec

    def to_jax(path, array):
        array = np.asarray(array)
        if mesh is None or not array.ndim or array.shape[-1] % mesh.shape["model"]:
            return jax.numpy.asarray(array)
        spec = PartitionSpec(*([None] * (array.ndim - 1)), "model")
        return jax.device_put(array, NamedSharding(mesh, spec))

    tree = {}
    for path, array in _flat(state_dict):
        _set(tree, path, to_jax(path, array))
    manager = ocp.CheckpointManager(
        os.path.abspath(model_dir),
        options=ocp.CheckpointManagerOptions(step_prefix="checkpoint", create=True),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(use_ocdbt=True)},
    )
    manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(tree)), force=True)
    manager.wait_until_finished()
    manager.close()
    return os.path.join(model_dir, f"checkpoint_{step}")
