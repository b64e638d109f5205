"""LoRA adapters for serving and export: one reader for every place an adapter is kept,
checked against the base model, and the merge onto a loaded base. `t5pipe infer
--adapter`, `t5pipe.api` and `t5pipe convert`'s adapter flags share it (a LoRA run's
checkpoint loaded as the model itself comes merged: `checkpoint_paths.Checkpoint`).

An adapter source is one of
    - a t5pipe adapter folder: `lora_config.json` + `adapter.safetensors`
      (`t5pipe.lora.save_adapter`; a LoRA run's MODEL_DIR/adapter, or
      `t5pipe convert --from_hf_adapter`);
    - a Hugging Face PEFT LoRA folder: `adapter_config.json` +
      `adapter_model.safetensors` (T5 models; `t5pipe.hf.peft`);
    - a LoRA training checkpoint (its meta records "lora") or its MODEL_DIR (the latest).

Adapters are kept apart from the base (a few MB) and merged on loading (W + scale A B),
so that decoding needs no LoRA code and several adapters share one base: each merged
copy repeats only the adapted kernels.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

from t5pipe import checkpoint_format, checkpoint_paths, lora
from t5pipe.errors import UserInputError
from t5pipe.model_config import T5Config
from t5pipe.models import abstract_params


@dataclasses.dataclass(frozen=True)
class Adapter:
    """A loaded adapter: `name` as the user gave it, `source` the file it was read from
    (named in errors), `tree` the `<kernel>_lora/{a, b}` subtrees, `config` its LoRA
    settings, `kind` "t5pipe", "peft" or "checkpoint"."""

    name: str
    source: str
    tree: Any
    config: lora.LoraConfig
    kind: str


def _checked(adapter: Adapter, model_config) -> Adapter:
    """`adapter` after checking every A, B against the kernel it adapts."""
    shapes, _ = abstract_params(model_config)
    try:
        lora.insert_adapter(shapes, adapter.tree)
    except UserInputError as error:
        raise UserInputError(
            f"{adapter.source}: {error} (the base model: {type(model_config).__name__} "
            f"{_shape_summary(model_config)})"
        ) from None
    return adapter


def _shape_summary(config) -> str:
    fields = ("d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers", "scan_layers")
    shown = [f"{f}={getattr(config, f)}" for f in fields if hasattr(config, f)]
    return ", ".join(shown) or "its config"


def read_adapter(path: str | os.PathLike, model_config, name: str | None = None) -> Adapter:
    """The adapter at `path` (any source in the module docstring), in `model_config`'s
    layout and checked against its kernels; a UserInputError names the file otherwise."""
    from t5pipe.hf import peft as hf_peft

    given = os.fspath(path)
    folder = checkpoint_format.resolve_path(given)
    name = name or given
    if (folder / lora.CONFIG_FILE).exists():
        tree, config = lora.load_adapter(folder)
        adapter = Adapter(name, str(folder / lora.ADAPTER_FILE), tree, config, "t5pipe")
    elif (folder / hf_peft.CONFIG_FILE).exists():
        if not isinstance(model_config, T5Config):
            raise UserInputError(
                f"{folder / hf_peft.CONFIG_FILE}: Hugging Face PEFT folders read onto T5 "
                f"models only; the base is {type(model_config).__name__}"
            )
        tree, config = hf_peft.load_peft_adapter(folder, model_config)
        adapter = Adapter(name, str(folder / hf_peft.WEIGHTS_FILE), tree, config, "peft")
    elif folder.exists():
        adapter = _checkpoint_adapter(given, name)
    else:
        raise UserInputError(f"adapter {given}: no such folder")
    return _checked(adapter, model_config)


def _checkpoint_adapter(given: str, name: str) -> Adapter:
    """The adapter inside a LoRA training checkpoint (or a MODEL_DIR's latest)."""
    expected = (
        f"expected a t5pipe adapter folder ({lora.CONFIG_FILE} + {lora.ADAPTER_FILE}), "
        "a Hugging Face PEFT folder (adapter_config.json + adapter_model.safetensors) or a "
        "LoRA run's checkpoint"
    )
    try:
        checkpoint = checkpoint_paths.locate(given, "adapter")
    except UserInputError:
        checkpoint = None
    if checkpoint is None or checkpoint.kind != checkpoint_paths.T5PIPE:
        entries = sorted(p.name for p in Path(given).iterdir())[:6] if Path(given).is_dir() else []
        raise UserInputError(f"adapter {given} is not an adapter: {expected}; it holds {entries}")
    tree, config = checkpoint_adapter(checkpoint.path)
    return Adapter(name, str(checkpoint.path), tree, config, "checkpoint")


def checkpoint_adapter(path) -> tuple[dict, lora.LoraConfig]:
    """(adapter tree of host arrays, LoraConfig) of a LoRA training checkpoint."""
    recorded = checkpoint_format.read_meta(path).get("lora")
    if not recorded:
        raise UserInputError(
            f"checkpoint {path} holds no LoRA adapters (its meta records no 'lora'; "
            "a LoRA run sets train.lora_config = @LoraConfig())"
        )
    config, model_config = lora.LoraConfig(**recorded), checkpoint_format.load_model_config(path)
    with lora.attach(config):
        _, adapter_shapes = lora.split_adapter(abstract_params(model_config)[0])
    checkpoint = checkpoint_paths.locate(path, "adapter")
    tree = checkpoint.load_params(adapter_shapes, model_config)  # checked against checksums
    return jax.device_get(tree), config


def merged(params: Mapping, adapter: Adapter) -> dict:
    """The base `params` with `adapter` folded into its kernels (W + scale A B)."""
    try:
        return lora.merge(params, adapter.tree, adapter.config)
    except UserInputError as error:
        raise UserInputError(f"{adapter.source}: {error}") from None
