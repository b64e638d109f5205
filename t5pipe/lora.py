"""LoRA (Hu et al. 2021) for every model family, attached at the shared projection.

A LoRA adapter adds a low-rank update to chosen projection kernels W:

    y = x W + dropout(x) A B * scale,      scale = alpha / rank (alpha / sqrt(rank) rsLoRA)

A [inputs..., rank] starts uniform in +-1/sqrt(fan_in), B [rank, outputs...] at zero, so
a fresh adapter changes nothing; dropout acts on the adapter's input only, as in
Hugging Face PEFT. Nothing in the model code knows about LoRA: `attach(config)`
intercepts `t5pipe.projection.dense`, the one helper every family's projections use,
and for each kernel whose path matches `config.targets` creates (at init) or reads
the adapter in a child scope of the kernel's module:

    encoder/layers_0/attention/query           [embed, heads, kv]   the frozen base
    encoder/layers_0/attention/query_lora/a    [embed, rank]        logical (embed, None)
    encoder/layers_0/attention/query_lora/b    [rank, heads, kv]    logical (None, heads, kv)
    decoder/layers_1/mlp/wo_lora/a             [mlp, rank]          (mlp, None)
    decoder/layers_1/mlp/wo_lora/b             [rank, embed]        (None, embed)

(under `scan_layers` each gains the leading [layers] axis like its kernel). A takes the
kernel's input axes, B its output axes, so adapters shard with the mesh rules.

Training: init and apply the model under `attach` (e.g. `jax.jit(with_lora(step, cfg))`)
and freeze everything else with `peft.freeze_except(optimizer, params, TRAINABLE)`.
Dropout is on when the apply has a "dropout" rng. Serving: `merge` folds an adapter
into the kernels (then no `attach` is needed); several adapters share one base by
keeping the small adapter trees apart (`split_adapter` / `insert_adapter`) or by merging
one after another. `save_adapter` / `load_adapter` keep an adapter alone on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from t5pipe.checkpoint_format import resolve_path
from t5pipe.errors import UserInputError
from t5pipe.projection import Projection, intercept_projections

# Attention query and value projections of every layer (self and cross attention).
DEFAULT_TARGETS = r"(^|/)(query|value)$"
SUFFIX = "_lora"
# `peft.freeze_except` regex that trains the adapters only.
TRAINABLE = rf"{SUFFIX}/(a|b)$"
ADAPTER_FILE, CONFIG_FILE = "adapter.safetensors", "lora_config.json"
FORMAT = "t5pipe-lora-1"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank: the adapters' inner dimension r; alpha: scale numerator (scale alpha / r);
    dropout: on the adapter input while training; targets: `re.search` over kernel
    paths such as `decoder/layers_0/encoder_decoder_attention/value`; use_rslora:
    scale alpha / sqrt(r) (rank-stabilised LoRA)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = DEFAULT_TARGETS
    use_rslora: bool = False

    def __post_init__(self):
        if not (isinstance(self.rank, int) and self.rank > 0):
            raise UserInputError(f"LoraConfig.rank={self.rank!r}: must be a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise UserInputError(f"LoraConfig.dropout={self.dropout!r}: must be in [0, 1)")
        try:
            re.compile(self.targets)
        except re.error as error:
            raise UserInputError(f"LoraConfig.targets={self.targets!r}: {error}") from None

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class AdapterLayout:
    """How A and B sit around one kernel: shapes, logical axes and the two einsums
    (inputs,A->hidden and hidden,B->outputs) that replace `equation`'s one."""

    a_shape: tuple[int, ...]
    a_axes: tuple[str | None, ...]
    b_shape: tuple[int, ...]
    b_axes: tuple[str | None, ...]
    equation_a: str
    equation_b: str


def _terms(spec: str) -> list[str]:
    """einsum subscripts as terms; '...' is one term."""
    spec = spec.replace(" ", "")
    terms, i = [], 0
    while i < len(spec):
        step = 3 if spec.startswith("...", i) else 1
        terms.append(spec[i : i + step])
        i += step
    return terms


def adapter_layout(projection_path: str, equation: str, kernel_shape, kernel_axes, rank: int):
    """The `AdapterLayout` of a kernel applied by `equation` ("inputs,kernel->outputs").

    The kernel's dimensions must be its input (contracted) dimensions followed by its
    output dimensions, as every T5 kernel is ([embed, heads, kv], [heads, kv, embed]).
    """
    where = f"LoRA on {projection_path} (einsum {equation!r})"
    if "->" not in equation or equation.count(",") != 1:
        raise UserInputError(f"{where}: expected an explicit 'inputs,kernel->outputs' einsum")
    lhs, out_spec = equation.split("->")
    x, k, y = (_terms(s) for s in (*lhs.split(","), out_spec))
    contracted = [t for t in k if t in x and t not in y]
    kept = [t for t in k if t in y and t not in x]
    if "..." in k or k != contracted + kept:
        raise UserInputError(
            f"{where}: the kernel's axes must be its input axes then its output axes, "
            "with no axis shared by inputs and outputs"
        )
    used = set("".join(x + k + y))
    r = next(c for c in "rzqwxyuvstpomnijklabcdefgh" if c not in used)
    hidden = [t for t in y if t not in kept] + [r]
    n_in = len(contracted)
    return AdapterLayout(
        a_shape=(*kernel_shape[:n_in], rank),
        a_axes=(*kernel_axes[:n_in], None),
        b_shape=(rank, *kernel_shape[n_in:]),
        b_axes=(None, *kernel_axes[n_in:]),
        equation_a=f"{''.join(x)},{''.join(contracted)}{r}->{''.join(hidden)}",
        equation_b=f"{''.join(hidden)},{r}{''.join(kept)}->{''.join(y)}",
    )


# ----------------------------------------------------------------------------- attaching


class LoraDelta(nn.Module):
    """dropout(inputs) A B * scale for one kernel; A and B live in this module's scope."""

    config: LoraConfig
    layout: AdapterLayout
    dtype: Any

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        layout, cfg = self.layout, self.config
        # PEFT's default: kaiming_uniform(a=sqrt(5)) on [rank, fan_in], i.e. +-1/sqrt(fan_in).
        bound = math.prod(layout.a_shape[:-1]) ** -0.5

        def a_init(rng, shape, dtype):
            return jax.random.uniform(rng, shape, dtype, -bound, bound)

        a = self.param(
            "a", nn.with_logical_partitioning(a_init, layout.a_axes), layout.a_shape, jnp.float32
        )
        b = self.param(
            "b",
            nn.with_logical_partitioning(nn.initializers.zeros, layout.b_axes),
            layout.b_shape,
            jnp.float32,
        )
        x = inputs.astype(self.dtype)
        if cfg.dropout > 0.0 and self.has_rng("dropout"):
            x = nn.Dropout(cfg.dropout, deterministic=False)(x)
        hidden = jnp.einsum(layout.equation_a, x, a.astype(self.dtype))
        return jnp.einsum(layout.equation_b, hidden, b.astype(self.dtype)) * cfg.scale


class Attachment:
    """The interceptor `attach` installs; records which projections it saw and adapted."""

    def __init__(self, config: LoraConfig):
        self.config = config
        self.pattern = re.compile(config.targets)
        self.seen: dict[str, None] = {}  # ordered sets
        self.adapted: dict[str, None] = {}

    def __call__(self, projection: Projection, outputs: jax.Array) -> jax.Array:
        path = projection.path
        self.seen[path] = None
        if not self.pattern.search(path):
            return outputs
        self.adapted[path] = None
        layout = adapter_layout(
            path,
            projection.equation,
            projection.kernel_shape,
            projection.kernel_axes,
            self.config.rank,
        )
        delta = LoraDelta(
            self.config,
            layout,
            projection.dtype,
            parent=projection.module,
            name=projection.name + SUFFIX,
        )(projection.inputs)
        return outputs + delta.astype(outputs.dtype)


@contextlib.contextmanager
def attach(config: LoraConfig) -> Iterator[Attachment]:
    """Within the context, models built on `projection.dense` carry LoRA adapters on
    the kernels `config.targets` selects (created by `init`, read by `apply`).

    Enter it inside traced functions (see `with_lora`). Raises UserInputError when
    the model ran projections but `targets` matched none of them.
    """
    attachment = Attachment(config)
    with intercept_projections(attachment):
        yield attachment
    if attachment.seen and not attachment.adapted:
        names = list(attachment.seen)
        raise UserInputError(
            f"LoraConfig.targets={config.targets!r} matches no projection of the model; "
            f"projection paths look like {names[:6]} ({len(names)} in all)"
        )


def with_lora(fn: Callable, config: LoraConfig) -> Callable:
    """`fn` running under `attach(config)`: wrap before `jax.jit`, so tracing sees it."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with attach(config):
            return fn(*args, **kwargs)

    return wrapped


# ----------------------------------------------------------------------------- trees


def _is_adapter(key: str, value: Any) -> bool:
    return key.endswith(SUFFIX) and isinstance(value, Mapping) and set(value) == {"a", "b"}


def split_adapter(params: Mapping) -> tuple[dict, dict]:
    """(base parameters, adapter): the adapter holds every `<kernel>_lora/{a,b}` subtree
    at its place in the tree, the base everything else."""
    base, adapter = {}, {}
    for key, value in params.items():
        if _is_adapter(key, value):
            adapter[key] = dict(value)
        elif isinstance(value, Mapping):
            base[key], inner = split_adapter(value)
            if inner:
                adapter[key] = inner
        else:
            base[key] = value
    return base, adapter


def _kernel_shape_check(path: str, kernel, a, b) -> int:
    """Leading stacked ([layers]) axes shared by kernel, A and B; raises if they misfit."""
    lead = a.ndim + b.ndim - 2 - kernel.ndim
    fits = (
        lead >= 0
        and a.shape[-1] == b.shape[lead]
        and tuple(kernel.shape) == tuple(a.shape[:-1]) + tuple(b.shape[lead + 1 :])
        and tuple(a.shape[:lead]) == tuple(b.shape[:lead])
    )
    if not fits:
        raise UserInputError(
            f"LoRA adapter {path}{SUFFIX}: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit "
            f"the kernel {path} {tuple(kernel.shape)} (expected A [inputs..., rank], "
            "B [rank, outputs...]); was the adapter trained on another model config or layout?"
        )
    return lead


def _walk_adapters(base: Mapping, adapter: Mapping, prefix: str = "") -> Iterator:
    """Yields (kernel path, kernel's parent dict, kernel name, {"a", "b"}) for each adapter."""
    for key, value in adapter.items():
        where = f"{prefix}{key}"
        if _is_adapter(key, value):
            kernel_name = key[: -len(SUFFIX)]
            if kernel_name not in base:
                raise UserInputError(
                    f"LoRA adapter {where} has no kernel {prefix}{kernel_name} in the model"
                )
            yield f"{prefix}{kernel_name}", base, kernel_name, value
        elif isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            yield from _walk_adapters(base[key], value, f"{where}/")
        else:
            raise UserInputError(f"LoRA adapter entry {where} has no counterpart in the model")


def insert_adapter(base: Mapping, adapter: Mapping) -> dict:
    """`base` with the adapter's subtrees added (checked against the kernels' shapes)."""
    for path, parent, name, weights in _walk_adapters(base, adapter):
        _kernel_shape_check(path, parent[name], weights["a"], weights["b"])

    def combine(base_node, adapter_node):
        out = dict(base_node)
        for key, value in adapter_node.items():
            out[key] = dict(value) if _is_adapter(key, value) else combine(base_node[key], value)
        return out

    return combine(base, adapter)


def delta_kernel(kernel, a, b, scale: float, path: str = "kernel") -> jax.Array:
    """scale * A B in the kernel's layout [stacked..., inputs..., outputs...], float32."""
    lead = _kernel_shape_check(path, kernel, a, b)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    rank = a.shape[-1]
    product = jnp.matmul(a.reshape(*a.shape[:lead], -1, rank), b.reshape(*b.shape[:lead], rank, -1))
    return product.reshape(kernel.shape) * scale


def merge(base: Mapping, adapter: Mapping, config: LoraConfig) -> dict:
    """`base` with each adapted kernel replaced by W + scale * A B (the adapter folded in;
    apply without `attach`). Merge several adapters by merging one after another."""
    merged: dict[str, Any] = {}
    for path, parent, name, weights in _walk_adapters(base, adapter):
        kernel = parent[name]
        delta = delta_kernel(kernel, weights["a"], weights["b"], config.scale, path)
        merged[path] = (jnp.asarray(kernel, jnp.float32) + delta).astype(kernel.dtype)

    def rebuild(node, prefix=""):
        return {
            key: rebuild(value, f"{prefix}{key}/")
            if isinstance(value, Mapping)
            else merged.get(f"{prefix}{key}", value)
            for key, value in node.items()
        }

    return rebuild(base)


def flat_adapter(adapter: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'encoder/layers_0/attention/query_lora/a': A, ...}"""
    flat = {}
    for key, value in adapter.items():
        if isinstance(value, Mapping):
            flat.update(flat_adapter(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


# ----------------------------------------------------------------------------- files


def save_adapter(directory: str | Path, adapter: Mapping, config: LoraConfig) -> Path:
    """Writes the adapter alone: `adapter.safetensors` (float32, keys are parameter
    paths) and `lora_config.json`. Returns the folder."""
    from safetensors.numpy import save

    directory = resolve_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        path: np.ascontiguousarray(jax.device_get(value), np.float32)
        for path, value in flat_adapter(adapter).items()
    }
    if not tensors:
        raise ValueError("the adapter is empty: no <kernel>_lora/{a,b} parameters")
    meta = {"format": FORMAT, "config": config.to_dict(), "parameters": len(tensors)}
    for name, data in ((ADAPTER_FILE, save(tensors)), (CONFIG_FILE, json.dumps(meta, indent=2))):
        tmp = directory / f"{name}.tmp"
        tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
        tmp.replace(directory / name)  # readers never see a half-written file
    return directory


def load_adapter(directory: str | Path) -> tuple[dict, LoraConfig]:
    """(adapter tree of numpy arrays, its LoraConfig) from a `save_adapter` folder."""
    from safetensors.numpy import load

    directory = resolve_path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        raise UserInputError(
            f"{directory} is not a t5pipe LoRA adapter folder: it has no {CONFIG_FILE} "
            "(a Hugging Face PEFT folder, with adapter_config.json, reads with t5pipe.hf.peft)"
        )
    meta = json.loads(config_path.read_text())
    if meta.get("format") != FORMAT:
        raise UserInputError(f"{config_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    config = LoraConfig(**meta["config"])
    return unflatten(load((directory / ADAPTER_FILE).read_bytes())), config
