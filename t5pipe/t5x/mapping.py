"""Parameter names and layouts between t5x checkpoints and t5pipe, for the T5 family.

Pure functions over numpy arrays, one t5x array at a time. Names are '/'-joined paths
below a checkpoint's `target/`. t5x's T5 networks come in three layouts:

unscanned, `t5x/examples/t5` (the layout of every published T5, T5.1.1, mT5, ByT5 and
Flan-T5 checkpoint; `UNSCANNED`):

    token_embedder/embedding                               [vocab, embed]
    encoder/relpos_bias/rel_embedding                      [heads, relpos_buckets]
    encoder/layers_<i>/pre_attention_layer_norm/scale      [embed]
    encoder/layers_<i>/attention/{query,key,value}/kernel  [embed, heads * kv]
    encoder/layers_<i>/attention/out/kernel                [heads * kv, embed]
    encoder/layers_<i>/pre_mlp_layer_norm/scale            [embed]
    encoder/layers_<i>/mlp/{wi | wi_0, wi_1}/kernel        [embed, mlp]
    encoder/layers_<i>/mlp/wo/kernel                       [mlp, embed]
    encoder/encoder_norm/scale                             [embed]
    decoder/relpos_bias/rel_embedding
    decoder/layers_<i>/{pre_self_attention_layer_norm, self_attention,
        pre_cross_attention_layer_norm, encoder_decoder_attention, pre_mlp_layer_norm, mlp}
    decoder/decoder_norm/scale
    decoder/logits_dense/kernel                            [embed, vocab] (T5.1.1 family only)

unscanned `t5x/examples/scalable_t5` (`T5xLayout(joined_kernels=False,
per_layer_relpos=True)`): attention kernels keep the head axis, [embed, heads, kv] and
[heads, kv, embed], and every layer has its own `layers_<i>/relpos_bias/rel_embedding`.

scanned `scalable_t5` (`SCANNED`): each stack's layers are one module,
`encoder/encoder/...` and `decoder/decoder/...`, whose parameters have a `layers` axis
inserted at position 1 (`param_scan_axis`), e.g. `encoder/encoder/attention/query/kernel`
[embed, layers, heads, kv] and `encoder/encoder/pre_attention_layer_norm/scale`
[embed, layers].

t5pipe (see `t5pipe.model`) keeps attention kernels [embed, heads, kv] / [heads, kv,
embed], one relative position table per stack, `logits_dense/kernel` at the top, no
`kernel` level below attention and MLP weights, and stacks scanned layers on axis 0.
Every conversion is a reshape, slice or stack, so round trips are bit-exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np

from t5pipe.model_config import T5Config

# How a t5x array of one layer relates to the t5pipe leaf: the same, or attention
# kernels whose (heads, kv) axes t5x joins into one.
SAME, JOINED_IN, JOINED_OUT = "same", "joined_in", "joined_out"

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class T5xLayout:
    """Which of t5x's parameter layouts a checkpoint uses (see the module docstring)."""

    scanned: bool = False
    joined_kernels: bool = True  # attention kernels [embed, heads * kv]
    per_layer_relpos: bool = False  # a relative position table in every layer
    scan_axis: int = 1  # position of the `layers` axis in scanned parameters


UNSCANNED = T5xLayout()
SCANNED = T5xLayout(scanned=True, joined_kernels=False, per_layer_relpos=True)


@dataclasses.dataclass(frozen=True)
class Part:
    """One layer's share of a t5x array: the unscanned t5pipe leaf it holds."""

    path: Path  # e.g. ("encoder", "layers_0", "attention", "query")
    kind: str  # SAME, JOINED_IN or JOINED_OUT
    shape: tuple[int, ...]  # the t5pipe leaf's shape, e.g. [embed, heads, kv]


@dataclasses.dataclass(frozen=True)
class T5xArray:
    """One array of a t5x checkpoint and the t5pipe leaves it holds.

    `parts` has one entry, or, for a scanned array, one per layer, stacked along
    `layout.scan_axis`.
    """

    name: str
    shape: tuple[int, ...]
    parts: tuple[Part, ...]
    stacked: bool = False


def _layer_body(config: T5Config, stack: str) -> list[tuple[str, str, str]]:
    """(t5x name in the layer, t5pipe name in the layer, kind) for one layer."""
    if stack == "encoder":
        norms = ("pre_attention_layer_norm", "pre_mlp_layer_norm")
        attentions = ("attention",)
    else:
        norms = ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm")
        norms += ("pre_mlp_layer_norm",)
        attentions = ("self_attention", "encoder_decoder_attention")
    body = [(f"{norm}/scale", f"{norm}/scale", SAME) for norm in norms]
    for attention in attentions:
        for name in ("query", "key", "value"):
            body.append((f"{attention}/{name}/kernel", f"{attention}/{name}", JOINED_IN))
        body.append((f"{attention}/out/kernel", f"{attention}/out", JOINED_OUT))
    mlp = ("wi_0", "wi_1") if config.is_gated else ("wi",)
    body += [(f"mlp/{name}/kernel", f"mlp/{name}", SAME) for name in (*mlp, "wo")]
    return body


def t5pipe_layer_shape(config: T5Config, name: str) -> tuple[int, ...]:
    """The t5pipe shape of a per-layer leaf, e.g. "attention/query" -> [embed, heads, kv]."""
    d, h, k, f = config.d_model, config.num_heads, config.d_kv, config.d_ff
    leaf_name = name.rsplit("/", 1)[-1]
    if leaf_name == "scale":
        return (d,)
    if leaf_name == "out":
        return (h, k, d)
    if leaf_name in ("query", "key", "value"):
        return (d, h, k)
    if leaf_name == "wo":
        return (f, d)
    if leaf_name == "rel_embedding":
        return (h, config.relative_attention_num_buckets)
    return (d, f)  # wi, wi_0, wi_1


def to_t5x_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """t5pipe per-layer shape -> t5x per-layer shape."""
    if kind == JOINED_IN:
        return (shape[0], shape[1] * shape[2])
    if kind == JOINED_OUT:
        return (shape[0] * shape[1], shape[2])
    return tuple(shape)


def to_t5pipe(array: np.ndarray, part: Part) -> np.ndarray:
    """One layer's t5x array -> the t5pipe leaf `part` (a reshape; a view where numpy can)."""
    return array if part.kind == SAME else array.reshape(part.shape)


def from_t5pipe(array: np.ndarray, kind: str) -> np.ndarray:
    """A t5pipe leaf -> one layer's t5x array of `kind` (a reshape)."""
    return array.reshape(to_t5x_shape(tuple(array.shape), kind))


def stack_size(config: T5Config, stack: str) -> int:
    return config.num_encoder_layers if stack == "encoder" else config.num_decoder_layers


def _single(name: str, path: Path, shape: tuple[int, ...]) -> T5xArray:
    return T5xArray(name, shape, (Part(path, SAME, shape),))


def _stack_arrays(config: T5Config, stack: str, layout: T5xLayout) -> list[T5xArray]:
    """The arrays of one stack's layers (and its relative position table)."""
    n = stack_size(config, stack)
    relpos_shape = t5pipe_layer_shape(config, "rel_embedding")
    relpos = Part((stack, "relpos_bias", "rel_embedding"), SAME, relpos_shape)
    arrays = []
    if not layout.per_layer_relpos:
        arrays.append(T5xArray(f"{stack}/relpos_bias/rel_embedding", relpos_shape, (relpos,)))
    body = [
        (t5x_name, ours.split("/"), kind) for t5x_name, ours, kind in _layer_body(config, stack)
    ]
    if layout.per_layer_relpos:  # every t5x layer holds a copy of the stack's one table
        body.insert(0, ("relpos_bias/rel_embedding", None, SAME))
    for t5x_name, ours, kind in body:
        kind = kind if layout.joined_kernels else SAME
        if ours is None:
            parts = [relpos] * n
        else:
            shape = t5pipe_layer_shape(config, ours[-1])
            parts = [Part((stack, f"layers_{i}", *ours), kind, shape) for i in range(n)]
        shape = to_t5x_shape(parts[0].shape, kind)
        if layout.scanned:
            stacked = list(shape)
            stacked.insert(layout.scan_axis, n)
            arrays.append(
                T5xArray(f"{stack}/{stack}/{t5x_name}", tuple(stacked), tuple(parts), True)
            )
        else:
            arrays += [
                T5xArray(f"{stack}/layers_{i}/{t5x_name}", shape, (part,))
                for i, part in enumerate(parts)
            ]
    return arrays


def t5x_arrays(config: T5Config, layout: T5xLayout = UNSCANNED) -> list[T5xArray]:
    """Every parameter array of a t5x T5 checkpoint in `layout`, with its t5pipe leaves."""
    d = config.d_model
    arrays = [
        _single("token_embedder/embedding", ("token_embedder", "embedding"), (config.vocab_size, d))
    ]
    for stack in ("encoder", "decoder"):
        arrays += _stack_arrays(config, stack, layout)
        arrays.append(
            _single(f"{stack}/{stack}_norm/scale", (stack, f"{stack}_norm", "scale"), (d,))
        )
    if not config.tie_word_embeddings:
        arrays.append(
            _single(
                "decoder/logits_dense/kernel", ("logits_dense", "kernel"), (d, config.vocab_size)
            )
        )
    return arrays


def split_layers(
    array: np.ndarray, entry: T5xArray, layout: T5xLayout
) -> Iterator[tuple[Part, np.ndarray]]:
    """(part, t5pipe leaf) for each layer one t5x array holds (views where numpy can)."""
    for i, part in enumerate(entry.parts):
        layer = array[(slice(None),) * layout.scan_axis + (i,)] if entry.stacked else array
        yield part, to_t5pipe(layer, part)


def join_layers(layers: list[np.ndarray], entry: T5xArray, layout: T5xLayout) -> np.ndarray:
    """Inverse of `split_layers`: t5pipe leaves (one per part) -> the t5x array."""
    arrays = [
        from_t5pipe(np.asarray(x), part.kind) for x, part in zip(layers, entry.parts, strict=True)
    ]
    if not entry.stacked:
        return arrays[0]
    return np.stack(arrays, axis=layout.scan_axis)


def leaf(params: Mapping, path: Path, config: T5Config) -> np.ndarray:
    """The t5pipe leaf at an unscanned `path`, from an unscanned or scanned tree."""
    node = params
    if config.scan_layers and len(path) > 1 and path[1].startswith("layers_"):
        node = params[path[0]]["layers"]
        for key in path[2:]:
            node = node[key]
        return node[int(path[1].removeprefix("layers_"))]
    for key in path:
        node = node[key]
    return node


def detect_layout(shapes: Mapping[str, tuple[int, ...]]) -> T5xLayout:
    """The layout of a checkpoint from its parameter names (below `target/`) and shapes."""
    if "encoder/encoder/pre_attention_layer_norm/scale" in shapes:
        norm = shapes["encoder/encoder/pre_attention_layer_norm/scale"]
        embed = shapes.get("token_embedder/embedding", (0, norm[0]))[1]
        # [embed, layers] as scalable_t5 writes it (param_scan_axis=1), or [layers, embed].
        scan_axis = 0 if norm[1] == embed and norm[0] != embed else 1
        query = shapes.get("encoder/encoder/attention/query/kernel", ())
        return T5xLayout(
            scanned=True,
            joined_kernels=len(query) == 3,
            per_layer_relpos="encoder/encoder/relpos_bias/rel_embedding" in shapes,
            scan_axis=scan_axis,
        )
    query = shapes.get("encoder/layers_0/attention/query/kernel")
    if query is None:
        names = sorted(shapes)
        raise ValueError(
            "not a t5x T5 encoder-decoder: no encoder/layers_0/attention/query/kernel nor "
            f"encoder/encoder/attention/query/kernel among its parameters ({names[:5]} ...)"
        )
    return T5xLayout(
        joined_kernels=len(query) == 2,
        per_layer_relpos="encoder/layers_0/relpos_bias/rel_embedding" in shapes,
    )


def _layer_shape(shapes, layout: T5xLayout, stack: str, name: str) -> tuple[int, ...] | None:
    """Shape of one layer's t5x array `name` (the `layers` axis removed when scanned)."""
    full = shapes.get(f"{stack}/{stack}/{name}" if layout.scanned else f"{stack}/layers_0/{name}")
    if full is None or not layout.scanned:
        return full
    return tuple(n for axis, n in enumerate(full) if axis != layout.scan_axis)


def t5config_from_shapes(shapes: Mapping[str, tuple[int, ...]], **overrides) -> T5Config:
    """A `T5Config` whose shapes fit a t5x checkpoint's parameters.

    Read from the shapes: vocabulary, widths, heads, layer counts, gated or not (T5.1.1
    family: gated GELU; T5 1.0: ReLU), tied output layer or not. Not in a checkpoint,
    so t5x's T5 defaults unless overridden: relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6, dropout_rate=0.1.
    """
    layout = detect_layout(shapes)
    vocab, d_model = shapes["token_embedder/embedding"]
    if layout.per_layer_relpos:
        heads, buckets = _layer_shape(shapes, layout, "encoder", "relpos_bias/rel_embedding")
    else:
        heads, buckets = shapes["encoder/relpos_bias/rel_embedding"]
    query = _layer_shape(shapes, layout, "encoder", "attention/query/kernel")
    d_kv = query[1] // heads if layout.joined_kernels else query[2]
    gated = _layer_shape(shapes, layout, "encoder", "mlp/wi_0/kernel") is not None
    d_ff = _layer_shape(shapes, layout, "encoder", "mlp/wi_0/kernel" if gated else "mlp/wi/kernel")[
        1
    ]

    def count(stack):
        if layout.scanned:
            norm = "pre_attention_layer_norm" if stack == "encoder" else "pre_mlp_layer_norm"
            return shapes[f"{stack}/{stack}/{norm}/scale"][layout.scan_axis]
        return len({name.split("/")[1] for name in shapes if name.startswith(f"{stack}/layers_")})

    values = dict(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_heads=heads,
        num_encoder_layers=count("encoder"),
        num_decoder_layers=count("decoder"),
        relative_attention_num_buckets=buckets,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings="decoder/logits_dense/kernel" not in shapes,
    )
    values.update(overrides)
    return T5Config(**values)


def shape_mismatches(
    shapes: Mapping[str, tuple[int, ...]], config: T5Config, layout: T5xLayout
) -> list[str]:
    """What keeps a checkpoint's parameters from fitting `config` (empty: they fit)."""
    expected = {entry.name: entry.shape for entry in t5x_arrays(config, layout)}
    problems = [
        f"{name}: shape {list(shapes[name])}, the model needs {list(shape)}"
        for name, shape in expected.items()
        if name in shapes and tuple(shapes[name]) != shape
    ]
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing:
        problems.append(f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    return problems
