"""Streaming Hugging Face <-> t5pipe parameter maps, shared by the families.

A family describes its checkpoint as a generator of entries

    (hf_name, param_path, hf_to_ours, ours_to_hf)

one per tensor of the unscanned parameter tree; the functions here apply such a
generator to (name, array) streams, one tensor at a time, so conversion never needs
the whole state dict in memory. The transforms are transposes and reshapes only,
so a round trip is bit-exact.

HF `torch.nn.Linear` weights are [out, in]; t5pipe kernels are [in, ...out] with
the head axis split out of attention projections:

    q/k/v [heads * head_dim, embed]  <->  [embed, heads, head_dim]
    o     [embed, heads * head_dim]  <->  [heads, head_dim, embed]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]
Entry = tuple[str, tuple[str, ...], Transform, Transform]


def same(hf_name: str, path: tuple[str, ...]) -> Entry:
    return hf_name, path, lambda w: w, lambda p: p


def transposed(hf_name: str, path: tuple[str, ...]) -> Entry:
    return hf_name, path, lambda w: w.T, lambda p: p.T


def heads_in(hf_name: str, path: tuple[str, ...], embed: int, heads: int, head_dim: int) -> Entry:
    """A q/k/v projection: HF [heads * head_dim, embed] <-> ours [embed, heads, head_dim]."""
    return (
        hf_name,
        path,
        lambda w: w.T.reshape(embed, heads, head_dim),
        lambda p: p.reshape(embed, heads * head_dim).T,
    )


def heads_out(hf_name: str, path: tuple[str, ...], embed: int, heads: int, head_dim: int) -> Entry:
    """An output projection: HF [embed, heads * head_dim] <-> ours [heads, head_dim, embed]."""
    return (
        hf_name,
        path,
        lambda w: w.T.reshape(heads, head_dim, embed),
        lambda p: p.reshape(heads * head_dim, embed).T,
    )


def params_from_hf(
    tensors: Iterable[tuple[str, np.ndarray]],
    entries: Iterable[Entry],
    ignored: Callable[[str], bool],
) -> dict:
    """The unscanned parameter tree from (HF name, array) pairs, one at a time.

    `ignored(name)` says which HF tensors are not ours to read (tied copies, other
    modalities). Raises ValueError naming missing, unexpected or misshapen tensors.
    """
    table = {name: (path, to_ours) for name, path, to_ours, _ in entries}
    params: dict = {}
    unexpected, seen = [], set()
    for name, array in tensors:
        if name not in table:
            if not ignored(name):
                unexpected.append(name)
            continue
        path, to_ours = table[name]
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        try:
            node[path[-1]] = to_ours(np.asarray(array))
        except ValueError as error:
            raise ValueError(
                f"the Hugging Face tensor {name} of shape {np.shape(array)} does not fit the "
                f"model config ({error})"
            ) from None
        seen.add(name)
    missing = sorted(set(table) - seen)
    if missing or unexpected:
        raise ValueError(
            "the Hugging Face checkpoint does not match the model config: "
            f"missing tensors {missing[:10]}{' ...' if len(missing) > 10 else ''} "
            f"({len(missing)} in all); "
            f"unexpected tensors {unexpected[:10]} ({len(unexpected)} in all)"
        )
    return params


def params_to_hf(params: dict, entries: Iterable[Entry]) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, numpy array) pairs from an unscanned parameter tree, one at a time."""
    for name, path, _, to_hf in entries:
        node = params
        for key in path:
            node = node[key]
        yield name, np.ascontiguousarray(to_hf(np.asarray(node)))


def scan_layout(params: dict, layer_counts: dict[str, int]) -> dict:
    """Unscanned tree -> the `scan_layers` tree: each stack's `layers_<i>` stacked on
    a new leading axis under `layers`. `layer_counts` maps stack names to depths."""
    import jax

    out = dict(params)
    for stack, n in layer_counts.items():
        stack_params = dict(params[stack])
        layers = [stack_params.pop(f"layers_{i}") for i in range(n)]
        stack_params["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
        out[stack] = stack_params
    return out


def unscan_layout(params: dict, layer_counts: dict[str, int]) -> dict:
    """Inverse of `scan_layout`."""
    import jax

    out = dict(params)
    for stack, n in layer_counts.items():
        stack_params = dict(params[stack])
        layers = stack_params.pop("layers")
        for i in range(n):
            stack_params[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], layers)
        out[stack] = stack_params
    return out
