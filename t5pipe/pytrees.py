"""Parameter trees by name: 'encoder/layers_0/attention/query' paths, and the scan layout.

Parameters are nested dicts. Everything that names a leaf to a user (model-info.txt,
`train.trainable_params` regexes, checkpoint mismatch messages) or matches leaves of
two trees (a checkpoint against a model) uses `leaf_name`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

SCAN_AXIS = "layers"


def leaf_name(path) -> str:
    """A pytree key path -> 'a/b/c' (dict keys, sequence indices and attributes alike)."""
    parts = []
    for key in path:
        for attribute in ("key", "idx", "name"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def flatten(tree: Any) -> dict[str, Any]:
    """{'a/b/c': leaf} in the tree's leaf order."""
    return {leaf_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dicts from {'a/b/c': leaf}."""
    tree: dict[str, Any] = {}
    for name, leaf in flat.items():
        node = tree
        *parents, last = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    return tree


def shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'a/b/c': shape} of arrays or ShapeDtypeStructs."""
    return {name: tuple(leaf.shape) for name, leaf in flatten(tree).items()}


def stack_layers(stack: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """A stack's `layers_0 .. layers_<n-1>` subtrees -> one `layers` subtree whose leaves
    have a leading [layers] axis (the `scan_layers` layout), in place.

    Each layer is dropped as soon as it is copied, so a conversion holds the stacked
    arrays plus one layer, not both layouts at once.
    """
    import numpy as np

    first = stack["layers_0"]
    stacked = jax.tree.map(lambda x: np.empty((num_layers, *x.shape), x.dtype), first)
    for i in range(num_layers):
        layer = stack.pop(f"layers_{i}")
        jax.tree.map(lambda out, x, i=i: out.__setitem__(i, x), stacked, layer)
        del layer
    stack[SCAN_AXIS] = stacked
    return stack


def unstack_layers(stack: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """Inverse of `stack_layers` (views of the stacked arrays, no copies), as a new dict."""
    out = {key: value for key, value in stack.items() if key != SCAN_AXIS}
    for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stack[SCAN_AXIS])
    return out
