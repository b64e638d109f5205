"""Device mesh and logical-axis rules: how the model's named axes map onto devices.

The model names logical axes only (`batch`, `length`, `embed`, `mlp`, `heads`,
`kv`, `vocab`, `relpos_buckets`, `layers`). A rule set maps each onto mesh axes
(`data`, `fsdp`, `model`); the mesh shape then decides what is really split:

    data 8                  -> data parallel (parameters replicated)
    fsdp 8                  -> parameters and optimizer state sharded on `embed`
    data 2 x fsdp 2 x model 2, data 4 x model 2 -> combinations with tensor parallelism
                               (heads, mlp and vocab split over `model`)

One code path serves one CPU, a GPU box and a TPU pod.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t5pipe.pytrees import leaf_name

MESH_AXES = ("data", "fsdp", "model")

# The batch is split over every data-like axis; a logical axis may fall back to a
# later rule when its mesh axis is already used in the same array (flax semantics).
# `kv_heads` (grouped-query attention's key/value heads) stays replicated in every set:
# models have few of them, often fewer than the `model` axis has devices, and their
# projections are small; queries, outputs and the feed-forward carry tensor parallelism.
_UNSHARDED = (
    ("length", None),
    ("kv", None),
    ("kv_heads", None),
    ("relpos_buckets", None),
    ("layers", None),
)
RULE_SETS: dict[str, tuple[tuple[str, str | tuple[str, ...] | None], ...]] = {
    "data_parallel": (
        ("batch", ("data", "fsdp")),
        ("embed", None),
        ("vocab", None),
        ("mlp", None),
        ("heads", None),
        *_UNSHARDED,
    ),
    "fsdp": (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("vocab", None),
        ("mlp", None),
        ("heads", None),
        *_UNSHARDED,
    ),
    "tensor_parallel": (
        ("batch", ("data", "fsdp")),
        ("embed", None),
        ("vocab", "model"),
        ("mlp", "model"),
        ("heads", "model"),
        *_UNSHARDED,
    ),
    # FSDP and tensor parallelism together: what the mesh shape does not use is a no-op.
    "standard": (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("vocab", "model"),
        ("mlp", "model"),
        ("heads", "model"),
        *_UNSHARDED,
    ),
}


@gin.configurable
def logical_axis_rules(name: str = "standard", overrides: Sequence[tuple] = ()) -> tuple:
    """A named rule set, with `overrides` (logical, mesh axes) taking precedence."""
    if name not in RULE_SETS:
        raise ValueError(f"logical_axis_rules.name={name!r}: expected one of {sorted(RULE_SETS)}")
    overridden = {logical for logical, _ in overrides}
    base = tuple(rule for rule in RULE_SETS[name] if rule[0] not in overridden)
    return tuple(tuple(rule) for rule in overrides) + base


@gin.configurable
def create_mesh(
    mesh_shape: Sequence[int] = (-1, 1, 1),
    dcn_mesh_shape: Sequence[int] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A (data, fsdp, model) mesh. One entry of `mesh_shape` may be -1 ("the rest").

    With `dcn_mesh_shape` (TPU multi-slice), `mesh_shape` is the per-slice shape
    and `dcn_mesh_shape` the shape across slices.
    """
    devices = list(devices if devices is not None else jax.devices())
    return Mesh(device_grid(mesh_shape, dcn_mesh_shape, devices), MESH_AXES)


def device_grid(
    mesh_shape: Sequence[int], dcn_mesh_shape: Sequence[int] | None, devices: Sequence
) -> np.ndarray:
    """The devices arranged as the (data, fsdp, model) mesh: an array of shape
    mesh_shape * dcn_mesh_shape (elementwise; -1 resolved per slice).

    Multi-slice: slice s of the `dcn_mesh_shape` grid (devices' `slice_index`) fills
    the block at its position, so an axis with dcn size > 1 crosses slices over DCN
    and the others stay on each slice's fast interconnect.
    """
    if dcn_mesh_shape is not None and len(dcn_mesh_shape) != len(MESH_AXES):
        raise ValueError(
            f"create_mesh.dcn_mesh_shape={tuple(dcn_mesh_shape)} needs {len(MESH_AXES)} "
            f"entries for axes {MESH_AXES}"
        )
    num_slices = math.prod(dcn_mesh_shape) if dcn_mesh_shape else 1
    if len(devices) % num_slices:
        raise ValueError(
            f"create_mesh.dcn_mesh_shape={tuple(dcn_mesh_shape)} asks for {num_slices} slices, "
            f"which do not divide {len(devices)} devices"
        )
    shape = _resolve_shape(mesh_shape, len(devices) // num_slices)
    if dcn_mesh_shape:
        if not hasattr(devices[0], "slice_index"):
            raise ValueError(
                f"create_mesh.dcn_mesh_shape={tuple(dcn_mesh_shape)} needs multi-slice devices "
                f"(with a slice_index); {devices[0].platform} devices have none"
            )
        return mesh_utils.create_hybrid_device_mesh(shape, dcn_mesh_shape, devices)
    if devices[0].platform in ("tpu", "gpu") and len(devices) > 1:
        return mesh_utils.create_device_mesh(shape, devices)
    return np.asarray(devices).reshape(shape)


def _resolve_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    shape = list(mesh_shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(
            f"create_mesh.mesh_shape={tuple(mesh_shape)} needs {len(MESH_AXES)} entries "
            f"for axes {MESH_AXES}"
        )
    if shape.count(-1) > 1:
        raise ValueError(f"create_mesh.mesh_shape={tuple(mesh_shape)}: at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(
                f"create_mesh.mesh_shape={tuple(mesh_shape)} does not divide {num_devices} devices"
            )
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"create_mesh.mesh_shape={tuple(mesh_shape)} holds {math.prod(shape)} devices, "
            f"but {num_devices} are available"
        )
    return tuple(shape)


def logical_to_sharding(logical_specs, mesh: Mesh, rules) -> object:
    """A pytree of logical PartitionSpecs -> the same pytree of NamedShardings."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def state_logical_specs(state_shapes, params_shapes, param_specs) -> object:
    """Logical PartitionSpecs for every leaf of a train state (params, optimizer state, ...).

    A leaf whose trailing dict keys name a parameter (`.../encoder/layers_0/mlp/wi_0/kernel`)
    is split like that parameter: same shape -> the parameter's spec (Adam moments,
    unfactored Adafactor `v`); one dimension fewer -> the spec without that dimension
    (Adafactor's factored `v_row` / `v_col`). Where the dropped dimension is ambiguous
    (a square kernel) and the candidates disagree, and for every other leaf (step
    counters, rng, placeholders), the leaf is replicated. Works through optax chains,
    `multi_transform` and masked (frozen) parameters, whose state has no leaves.
    """
    params_by_path = {
        _dict_keys(path): (tuple(leaf.shape), spec)
        for (path, leaf), spec in zip(
            jax.tree_util.tree_flatten_with_path(params_shapes)[0],
            jax.tree.leaves(param_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)),
            strict=True,
        )
    }

    def spec_for(path, leaf) -> PartitionSpec:
        keys = _dict_keys(path, trailing=True)
        for start in range(len(keys)):
            if keys[start:] in params_by_path:
                shape, spec = params_by_path[keys[start:]]
                return _spec_for_derived(tuple(getattr(leaf, "shape", ())), shape, spec)
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(spec_for, state_shapes)


def _dict_keys(path, trailing: bool = False) -> tuple:
    """The dict keys of a pytree path; with `trailing`, only the run of them at its end."""
    keys = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            keys.append(entry.key)
        elif trailing:
            keys = []
    return tuple(keys)


def _spec_for_derived(shape, param_shape, param_spec: PartitionSpec) -> PartitionSpec:
    axes = tuple(param_spec) + (None,) * (len(param_shape) - len(param_spec))
    if shape == param_shape:
        return PartitionSpec(*axes)
    if len(shape) == len(param_shape) - 1:
        candidates = {
            axes[:i] + axes[i + 1 :]
            for i in range(len(param_shape))
            if param_shape[:i] + param_shape[i + 1 :] == shape
        }
        if len(candidates) == 1:
            return PartitionSpec(*candidates.pop())
    return PartitionSpec()


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Sharding of host batches [batch, length]: the batch split like activations' `batch`."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch", None), rules))


def batch_mesh_axes(rules) -> tuple[str, ...]:
    """The mesh axes the logical `batch` axis is split over."""
    axes = nn.logical_to_mesh_axes(("batch",), rules)[0] or ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def data_parallel_size(mesh: Mesh | None, rules) -> int:
    """How many ways a batch is split: every batch must be a multiple of this."""
    if mesh is None:
        return 1
    return math.prod(mesh.shape[axis] for axis in batch_mesh_axes(rules))


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` >= value (batches padded to split evenly)."""
    return -(-value // multiple) * multiple


def check_batch_layout(batch_size: int, num_microbatches: int, mesh: Mesh, rules) -> None:
    """BATCH_SIZE splits evenly over processes, data-parallel devices and microbatches."""
    from t5pipe.errors import UserInputError

    axes = ", ".join(batch_mesh_axes(rules))
    for divisor, what in (
        (jax.process_count(), "the number of processes"),
        (data_parallel_size(mesh, rules), f"the data-parallel devices (mesh axes {axes})"),
        (num_microbatches, "train.num_microbatches"),
    ):
        if batch_size % divisor:
            lower = batch_size - batch_size % divisor
            raise UserInputError(
                f"BATCH_SIZE={batch_size} does not divide evenly over {what} ({divisor}); "
                f"use a multiple of {divisor}, e.g. --gin.BATCH_SIZE={max(lower, divisor)}"
            )


def sharded_abstract(shapes, logical_specs, mesh: Mesh, rules):
    """ShapeDtypeStructs carrying the shardings the logical specs give on `mesh`: the
    target that orbax restores into and that `jax.jit` out_shardings follow."""
    shardings = logical_to_sharding(logical_specs, mesh, rules)
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        shapes,
        shardings,
    )


def process_batch_rows(
    sharding: jax.sharding.Sharding, batch_size: int, process_index: int | None = None
) -> tuple[int, int]:
    """Rows [start, stop) of a global batch [batch_size, ...] that a process's devices hold.

    Where the mesh puts a process's devices decides which rows it must load; processes
    that hold the same rows (the batch replicated over a `model` axis that spans hosts)
    must load the same data.
    """
    process_index = jax.process_index() if process_index is None else process_index
    rows: set[int] = set()
    for device, index in sharding.devices_indices_map((batch_size, 1)).items():
        if device.process_index == process_index:
            rows.update(range(*index[0].indices(batch_size)))
    if not rows:
        raise ValueError(f"process {process_index} holds no device of the batch sharding")
    start, stop = min(rows), max(rows) + 1
    if len(rows) != stop - start:
        raise ValueError(
            f"process {process_index} holds rows {sorted(rows)} of the batch, not one block; "
            "order the mesh's devices by process (create_mesh does)"
        )
    return start, stop


def num_batch_blocks(sharding: jax.sharding.Sharding, batch_size: int) -> int:
    """How many distinct row blocks the processes hold: the default number of input shards."""
    processes = {device.process_index for device in sharding.device_set}
    return len({process_batch_rows(sharding, batch_size, p) for p in processes})


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules):
    """Context under which the model's `with_logical_constraint`s resolve on `mesh`.

    Enter it around tracing (the first call of a jitted function).
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def describe_params(params, logical_specs, mesh: Mesh, rules) -> str:
    """One line per parameter: path, shape, logical axes, mesh partition spec (model-info.txt)."""
    lines = []
    flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_specs = jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    total = 0
    for (path, leaf), spec in zip(flat_params, flat_specs, strict=True):
        name = leaf_name(path)
        mesh_spec = nn.logical_to_mesh_axes(spec, rules)
        total += int(np.prod(leaf.shape))
        lines.append(
            f"{name:<70} {str(tuple(leaf.shape)):<22} {str(leaf.dtype):<9} "
            f"logical={tuple(spec)} mesh={tuple(mesh_spec)}"
        )
    lines.append(f"total parameters: {total:,}  mesh: {dict(mesh.shape)}")
    return "\n".join(lines)
