"""Name and layout mapping between Hugging Face T5 state dicts and t5pipe parameters.

Pure functions over numpy arrays, one tensor at a time, so that conversion can
stream (see `t5pipe.hf.convert` for the import/export driver).

HF stores `torch.nn.Linear` weights as [out, in]; t5pipe keeps kernels as
[in, ...out] with the head axis split out of attention projections:

    HF q/k/v.weight  [heads * kv, embed]  <->  attention/{query,key,value} [embed, heads, kv]
    HF o.weight      [embed, heads * kv]  <->  attention/out [heads, kv, embed]
    HF relative_attention_bias.weight [buckets, heads]
        <-> relpos_bias/rel_embedding [heads, buckets]

Transposes and reshapes only, so a round trip is bit-exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from t5pipe import pytrees
from t5pipe.model_config import T5Config

# HF config.json keys that map one-to-one onto T5Config fields.
_SAME_NAME_FIELDS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "dropout_rate",
    "layer_norm_epsilon",
    "feed_forward_proj",
    "tie_word_embeddings",
    "pad_token_id",
    "eos_token_id",
    "decoder_start_token_id",
)


def t5config_from_hf(hf_config: dict[str, Any], **overrides: Any) -> T5Config:
    """A `T5Config` from the dict of a Hugging Face `config.json`."""
    values = {k: hf_config[k] for k in _SAME_NAME_FIELDS if hf_config.get(k) is not None}
    values["num_encoder_layers"] = hf_config["num_layers"]
    values["num_decoder_layers"] = hf_config.get("num_decoder_layers") or hf_config["num_layers"]
    values.setdefault("tie_word_embeddings", True)
    # transformers >= 5 forces `tie_word_embeddings` to True and keeps T5's real
    # switch (scale the decoder output and share the output layer: T5 1.0 yes,
    # T5 1.1 no) in `scale_decoder_outputs`.
    if hf_config.get("scale_decoder_outputs") is not None:
        values["tie_word_embeddings"] = bool(hf_config["scale_decoder_outputs"])
    values.update(overrides)
    return T5Config(**values)


def t5config_to_hf(config: T5Config) -> dict[str, Any]:
    """The `config.json` dict that transformers' `T5Config` reads back into the same shapes."""
    hf = {k: getattr(config, k) for k in _SAME_NAME_FIELDS}
    act = config.feed_forward_proj
    hf.update(
        architectures=["T5ForConditionalGeneration"],
        model_type="t5",
        num_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers,
        is_encoder_decoder=True,
        initializer_factor=1.0,
        dense_act_fn="gelu_new" if act == "gated-gelu" else act.removeprefix("gated-"),
        is_gated_act=config.is_gated,
        use_cache=True,
        scale_decoder_outputs=config.tie_word_embeddings,
    )
    return hf


def hf_tensor_shape(name: str, config: T5Config) -> tuple[int, ...] | None:
    """The shape Hugging Face gives tensor `name` for `config` (None: not a T5 tensor)."""
    d, inner, heads = config.d_model, config.num_heads * config.d_kv, config.num_heads
    if name in ("shared.weight", "lm_head.weight") or name.endswith("embed_tokens.weight"):
        return (config.vocab_size, d)
    if name.endswith("relative_attention_bias.weight"):
        return (config.relative_attention_num_buckets, heads)
    module = name.rsplit(".", 2)[-2]  # "q" in "...SelfAttention.q.weight"
    shapes = {
        "q": (inner, d),
        "k": (inner, d),
        "v": (inner, d),
        "o": (d, inner),
        "wi": (config.d_ff, d),
        "wi_0": (config.d_ff, d),
        "wi_1": (config.d_ff, d),
        "wo": (d, config.d_ff),
        "layer_norm": (d,),
        "final_layer_norm": (d,),
    }
    return shapes.get(module)


Transform = Callable[[np.ndarray], np.ndarray]


def _entries(config: T5Config) -> Iterator[tuple[str, tuple[str, ...], Transform, Transform]]:
    """(hf_name, param_path, hf->ours, ours->hf) for every tensor, unscanned layout."""
    d, h, k = config.d_model, config.num_heads, config.d_kv

    def qkv(hf_name, path):
        yield hf_name, path, lambda w: w.T.reshape(d, h, k), lambda p: p.reshape(d, h * k).T

    def out(hf_name, path):
        yield hf_name, path, lambda w: w.T.reshape(h, k, d), lambda p: p.reshape(h * k, d).T

    def same(hf_name, path):
        yield hf_name, path, lambda w: w, lambda p: p

    def transposed(hf_name, path):
        yield hf_name, path, lambda w: w.T, lambda p: p.T

    def attention(hf_prefix, path):
        for name, ours in (("q", "query"), ("k", "key"), ("v", "value")):
            yield from qkv(f"{hf_prefix}.{name}.weight", (*path, ours))
        yield from out(f"{hf_prefix}.o.weight", (*path, "out"))

    def mlp(hf_prefix, path):
        names = ("wi_0", "wi_1") if config.is_gated else ("wi",)
        for name in names:
            yield from transposed(f"{hf_prefix}.{name}.weight", (*path, name))
        yield from transposed(f"{hf_prefix}.wo.weight", (*path, "wo"))

    yield from same("shared.weight", ("token_embedder", "embedding"))
    for stack, n_layers in (
        ("encoder", config.num_encoder_layers),
        ("decoder", config.num_decoder_layers),
    ):
        yield from transposed(
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            (stack, "relpos_bias", "rel_embedding"),
        )
        for i in range(n_layers):
            hf, ours = f"{stack}.block.{i}.layer", (stack, f"layers_{i}")
            if stack == "encoder":
                yield from same(
                    f"{hf}.0.layer_norm.weight", (*ours, "pre_attention_layer_norm", "scale")
                )
                yield from attention(f"{hf}.0.SelfAttention", (*ours, "attention"))
                yield from same(f"{hf}.1.layer_norm.weight", (*ours, "pre_mlp_layer_norm", "scale"))
                yield from mlp(f"{hf}.1.DenseReluDense", (*ours, "mlp"))
            else:
                yield from same(
                    f"{hf}.0.layer_norm.weight", (*ours, "pre_self_attention_layer_norm", "scale")
                )
                yield from attention(f"{hf}.0.SelfAttention", (*ours, "self_attention"))
                yield from same(
                    f"{hf}.1.layer_norm.weight", (*ours, "pre_cross_attention_layer_norm", "scale")
                )
                yield from attention(
                    f"{hf}.1.EncDecAttention", (*ours, "encoder_decoder_attention")
                )
                yield from same(f"{hf}.2.layer_norm.weight", (*ours, "pre_mlp_layer_norm", "scale"))
                yield from mlp(f"{hf}.2.DenseReluDense", (*ours, "mlp"))
        yield from same(f"{stack}.final_layer_norm.weight", (stack, f"{stack}_norm", "scale"))
    if not config.tie_word_embeddings:
        yield from transposed("lm_head.weight", ("logits_dense", "kernel"))


# HF tensors that duplicate `shared.weight` (tied), or are not parameters.
_IGNORED_HF_NAMES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def hf_tensor_names(config: T5Config) -> list[str]:
    return [name for name, *_ in _entries(config)]


def tensor_paths(config: T5Config) -> dict[str, tuple[str, ...]]:
    """{HF tensor name: t5pipe parameter path (unscanned)} for every mapped tensor."""
    return {name: path for name, path, *_ in _entries(config)}


def params_from_hf(tensors: Iterable[tuple[str, np.ndarray]], config: T5Config) -> dict:
    """Builds the unscanned parameter tree from (HF name, array) pairs, one at a time.

    The output layer: `config.tie_word_embeddings` says whether the decoder output is
    scaled (`t5config_from_hf`); whether the layer is a tensor of its own is decided by
    the tensors. An unscaled model without `lm_head.weight` (transformers >= 5.24 saves a
    T5.1.1 made from scratch so: tied, `scale_decoder_outputs: false`) gets
    `shared.weight` as its output layer; a scaled one whose `lm_head.weight` differs from
    `shared.weight` cannot be held (t5pipe's T5 scales only a shared layer) and is refused.

    Raises ValueError naming every missing, unexpected or wrongly shaped tensor.
    """
    table = {name: (path, to_ours) for name, path, to_ours, _ in _entries(config)}
    params: dict = {}
    unexpected, seen, kept = [], set(), {}
    for name, array in tensors:
        if name == "lm_head.weight" and config.tie_word_embeddings:
            kept[name] = np.asarray(array)  # compared with shared.weight below
            continue
        if name not in table:
            if name not in _IGNORED_HF_NAMES:
                unexpected.append(name)
            continue
        path, to_ours = table[name]
        _put(params, path, to_ours(np.asarray(array)))
        seen.add(name)
    if "lm_head.weight" in table and "lm_head.weight" not in seen and "shared.weight" in seen:
        # Tied and unscaled: the output layer is the embedding.
        embedding = params["token_embedder"]["embedding"]
        _put(params, table["lm_head.weight"][0], np.ascontiguousarray(embedding.T))
        seen.add("lm_head.weight")
    if "lm_head.weight" in kept and "shared.weight" in seen:
        if not np.array_equal(kept["lm_head.weight"], params["token_embedder"]["embedding"]):
            raise ValueError(
                "lm_head.weight differs from shared.weight, but the config scales the "
                "decoder output (T5 1.0: `tie_word_embeddings` true and no "
                "`scale_decoder_outputs: false`); t5pipe's T5 scales only an output layer "
                "shared with the embedding. If the model is T5.1.1-style, set "
                '"scale_decoder_outputs": false in its config.json'
            )
    missing = sorted(set(table) - seen)
    if missing or unexpected:
        raise ValueError(
            "the Hugging Face checkpoint does not match the model config: "
            f"missing tensors {missing[:10]}{' ...' if len(missing) > 10 else ''} "
            f"({len(missing)} in all); "
            f"unexpected tensors {unexpected[:10]} ({len(unexpected)} in all)"
        )
    return params


def _put(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def params_to_hf(params: dict, config: T5Config) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, numpy array) pairs from an unscanned parameter tree, one at a time."""
    for name, path, _, to_hf in _entries(config):
        node = params
        for key in path:
            node = node[key]
        yield name, np.ascontiguousarray(to_hf(np.asarray(node)))


def scan_layout(params: dict, config: T5Config, *, in_place: bool = False) -> dict:
    """Unscanned tree -> the `scan_layers` tree (each stack's `layers_<i>` stacked on axis 0).

    `in_place` frees each layer of `params` as it is copied (a conversion then holds one
    layout, not two); otherwise `params` is left as it was."""
    out = params if in_place else {**params, **{k: dict(params[k]) for k in ("encoder", "decoder")}}
    pytrees.stack_layers(out["encoder"], config.num_encoder_layers)
    pytrees.stack_layers(out["decoder"], config.num_decoder_layers)
    return out


def unscan_layout(params: dict, config: T5Config) -> dict:
    """Inverse of `scan_layout` (views of the stacked arrays, no copies)."""
    out = dict(params)
    out["encoder"] = pytrees.unstack_layers(params["encoder"], config.num_encoder_layers)
    out["decoder"] = pytrees.unstack_layers(params["decoder"], config.num_decoder_layers)
    return out
