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


# ---------------------------------------------------------------------------
# t5x's Adafactor (t5x/adafactor.py), re-implemented in numpy from its source


def t5x_logical_axes(name, shape):
    """The logical axes t5x's T5 networks give parameter `name` (scanned: `layers` at 1)."""
    scanned = name.startswith(("encoder/encoder/", "decoder/decoder/"))
    rank = len(shape) - scanned
    if name.endswith("token_embedder/embedding"):
        axes = ("vocab", "embed")
    elif name.endswith("logits_dense/kernel"):
        axes = ("embed", "vocab")
    elif name.endswith("/scale"):
        axes = ("embed",)
    elif name.endswith("rel_embedding"):
        axes = ("heads", "relpos_buckets")
    elif name.endswith(("query/kernel", "key/kernel", "value/kernel")):
        axes = ("embed", "joined_kv") if rank == 2 else ("embed", "heads", "kv")
    elif name.endswith("out/kernel"):
        axes = ("joined_kv", "embed") if rank == 2 else ("heads", "kv", "embed")
    elif name.endswith("wo/kernel"):
        axes = ("mlp", "embed")
    else:
        axes = ("embed", "mlp")
    return axes[:1] + ("layers",) + axes[1:] if scanned else axes


def t5x_factoring(name, shape, min_dim_size_to_factor=128):
    """(row dims, column dims, batch dims) as t5x's Adafactor with
    `standard_logical_factor_rules()` decides (the heuristic below rank 3 without a
    `layers` axis); rows and columns empty: not factored. Batch dims are never averaged
    over, factored or not."""
    axes = t5x_logical_axes(name, shape)
    if len(shape) <= 2 and "layers" not in axes:
        order = np.argsort(shape)
        if len(shape) < 2 or shape[order[-2]] < min_dim_size_to_factor:
            return (), (), ()
        return (int(order[-2]),), (int(order[-1]),), ()
    rows = tuple(i for i, a in enumerate(axes) if a == "embed")
    cols = tuple(i for i, a in enumerate(axes) if a in ("vocab", "mlp", "heads", "kv", "joined_kv"))
    batch = tuple(i for i, a in enumerate(axes) if a == "layers")
    if not (rows and cols):  # t5x: a rule without both marks no factoring
        rows = cols = ()
    return rows, cols, batch


def t5x_init_state(name, shape, momentum):
    rows, cols, _ = t5x_factoring(name, shape)
    one = np.zeros((1,), np.float32)
    state = {"v_row": one, "v_col": one, "v": one, "m": one}
    if not rows:
        state["v"] = np.zeros(shape, np.float32)
    else:
        state["v_row"] = np.zeros([n for i, n in enumerate(shape) if i not in cols], np.float32)
        state["v_col"] = np.zeros([n for i, n in enumerate(shape) if i not in rows], np.float32)
    if momentum is not None:
        state["m"] = np.zeros(shape, np.float32)
    return state


def t5x_adafactor_step(name, param, grad, state, step, lr, momentum=None, decay_rate=0.8):
    """One step of t5x's Adafactor for one parameter (T5 defaults: parameter scaling,
    update clipping at 1, epsilon1 1e-30, epsilon2 1e-3) -> (new param, new state)."""
    param, grad = np.asarray(param, np.float32), np.asarray(grad, np.float32)
    rows, cols, batch = t5x_factoring(name, param.shape)
    averaging = tuple(i for i in range(param.ndim) if i not in batch)
    decay = np.float32(1.0 - (step + 1.0) ** -decay_rate)
    mixing = np.float32(1.0) - decay
    scale = np.maximum(np.sqrt(np.mean(param * param, axis=averaging, keepdims=True)), 1e-3)
    grad_sqr = grad * grad + np.float32(1e-30)
    new = dict(state)
    if rows:
        new["v_row"] = decay * state["v_row"] + mixing * np.mean(grad_sqr, axis=cols)
        new["v_col"] = decay * state["v_col"] + mixing * np.mean(grad_sqr, axis=rows)
        rows_in_v_row = tuple(r - sum(c < r for c in cols) for r in rows)
        row_mean = np.mean(new["v_row"], axis=rows_in_v_row, keepdims=True)
        y = (
            grad
            * np.expand_dims((new["v_row"] / row_mean) ** -0.5, cols)
            * np.expand_dims(new["v_col"] ** -0.5, rows)
        )
    else:
        new["v"] = decay * state["v"] + mixing * grad_sqr
        y = grad * new["v"] ** -0.5
    y = y / np.maximum(1.0, np.sqrt(np.mean(y * y, axis=averaging, keepdims=True)) / 1.0)
    update = np.float32(lr) * scale * y
    if momentum is not None:
        new["m"] = momentum * state["m"] + (1.0 - momentum) * update
        update = new["m"]
    return (param - update).astype(np.float32), {
        k: np.asarray(v, np.float32) for k, v in new.items()
    }


def t5x_adafactor_steps(params, grads, lr, momentum=None, states=None, first_step=0):
    """t5x's Adafactor over {t5x name: array} `params`, one step per entry of `grads`
    (each {t5x name: gradient}), from `states` (default: t5x's zero state) at
    `first_step` -> (params, states)."""
    params = dict(params)
    if states is None:
        states = {n: t5x_init_state(n, p.shape, momentum) for n, p in params.items()}
    states = dict(states)
    for step, grad in enumerate(grads, first_step):
        for name in params:
            params[name], states[name] = t5x_adafactor_step(
                name, params[name], grad[name], states[name], step, lr, momentum
            )
    return params, states


def spread_params(shapes, seed):
    """Random parameters shaped like `shapes` (a tree of ShapeDtypeStructs), spread so
    that Adafactor's parameter scale and clipping matter: layer-norm scales near 1,
    kernels ~ N(0, 1 / fan_in)."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return (1 + 0.2 * rng.normal(size=x.shape)).astype(np.float32)
        return (rng.normal(size=x.shape) * x.shape[0] ** -0.5).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def flat_names(tree):
    """{'a/b': leaf} of a nested dict."""
    return {"/".join(path): value for path, value in _flat(tree)}


def nest(flat):
    tree = {}
    for name, value in flat.items():
        _set(tree, tuple(name.split("/")), value)
    return tree
