"""T5 LoRA adapters in Hugging Face PEFT's folder format, both ways.

A PEFT LoRA folder holds `adapter_config.json` (peft_type "LORA", r, lora_alpha,
lora_dropout, target_modules, ...) and `adapter_model.safetensors` with, for every
adapted `torch.nn.Linear` of `T5ForConditionalGeneration`,

    base_model.model.<module>.lora_A.weight   [r, in_features]
    base_model.model.<module>.lora_B.weight   [out_features, r]

(<module> e.g. `encoder.block.0.layer.0.SelfAttention.q`; the adapter name is not in
the saved keys). PEFT computes W x + B A dropout(x) * lora_alpha / r; t5pipe's
adapters (`t5pipe.lora`) are the same maps laid out like their kernels:

    ours A [inputs..., r]  = lora_A.weight.T reshaped (q/k/v/wi: [embed, r]; o: [heads, kv, r])
    ours B [r, outputs...] = lora_B.weight.T reshaped (q/k/v: [r, heads, kv]; o/wo: [r, embed])

`fan_in_fan_out` does not apply: T5's layers are `nn.Linear`, for which PEFT itself
turns it off, so the stored layout is the one above either way.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from t5pipe import lora
from t5pipe.checkpoint_format import resolve_path
from t5pipe.errors import UserInputError
from t5pipe.hf import t5 as hf_t5
from t5pipe.model_config import T5Config

CONFIG_FILE, WEIGHTS_FILE, TORCH_WEIGHTS_FILE = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
PREFIX = "base_model.model."
_PROJECTIONS = {"query", "key", "value", "out", "wi", "wi_0", "wi_1", "wo"}
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(\.[^.]+)?\.weight$")


def module_names(config: T5Config) -> dict[str, str]:
    """{our kernel path (unscanned): HF module name} for every projection kernel."""
    table = {}
    for hf_name, path in hf_t5.tensor_paths(config).items():
        if path[-1] in _PROJECTIONS:
            table["/".join(path)] = hf_name.removesuffix(".weight")
    return table


def _kernel_path(adapter_path: str) -> str:
    """'.../attention/query_lora/a' -> '.../attention/query'."""
    return adapter_path.rsplit("/", 1)[0].removesuffix(lora.SUFFIX)


def _leaf(path: str) -> str:
    return path.replace(".", "/").rsplit("/", 1)[-1]


def _by_leaf_names(adapted: set[str], candidates: set[str]) -> set[str] | None:
    """The leaf names that select exactly `adapted` among `candidates`, if any do."""
    leaves = {_leaf(p) for p in adapted}
    return leaves if {p for p in candidates if _leaf(p) in leaves} == adapted else None


# ----------------------------------------------------------------------------- layouts


def _unscanned(adapter: Mapping) -> dict:
    """The adapter with each stack's [layers]-stacked subtree split into `layers_<i>`."""
    out = dict(adapter)
    for stack in ("encoder", "decoder"):
        if "layers" in adapter.get(stack, {}):
            stack_tree = dict(adapter[stack])
            stacked = lora.flat_adapter(stack_tree.pop("layers"))
            count = next(iter(stacked.values())).shape[0]
            for i in range(count):
                stack_tree[f"layers_{i}"] = lora.unflatten(
                    {path: np.asarray(value)[i] for path, value in stacked.items()}
                )
            out[stack] = stack_tree
    return out


def _scanned(adapter: dict, config: T5Config) -> dict:
    """Inverse of `_unscanned`; every layer of a stack must carry the same adapters."""
    out = dict(adapter)
    for stack, count in (
        ("encoder", config.num_encoder_layers),
        ("decoder", config.num_decoder_layers),
    ):
        if stack not in adapter:
            continue
        layers = [lora.flat_adapter(adapter[stack].get(f"layers_{i}", {})) for i in range(count)]
        if any(set(layer) != set(layers[0]) for layer in layers):
            raise UserInputError(
                f"the adapter does not adapt every {stack} layer alike, which the scanned "
                "layout cannot hold; load it with T5Config.scan_layers=False"
            )
        stacked = {p: np.stack([layer[p] for layer in layers]) for p in layers[0]}
        out[stack] = {"layers": lora.unflatten(stacked)}
    return out


# ----------------------------------------------------------------------------- export


def peft_tensors(adapter: Mapping, model_config: T5Config) -> dict[str, np.ndarray]:
    """PEFT's saved state dict {key: float32 array} for one of our adapters."""
    table = module_names(model_config)
    tensors = {}
    for path, value in lora.flat_adapter(_unscanned(adapter)).items():
        kernel_path, which = _kernel_path(path), path.rsplit("/", 1)[1]
        if kernel_path not in table:
            raise UserInputError(
                f"LoRA adapter on {kernel_path}: PEFT's T5 has no such linear layer"
            )
        value = np.asarray(value, np.float32)
        if which == "a":  # [inputs..., r] -> [r, in_features]
            weight, name = value.reshape(-1, value.shape[-1]).T, "lora_A"
        else:  # [r, outputs...] -> [out_features, r]
            weight, name = value.reshape(value.shape[0], -1).T, "lora_B"
        tensors[f"{PREFIX}{table[kernel_path]}.{name}.weight"] = np.ascontiguousarray(weight)
    return tensors


def peft_config_dict(
    adapter: Mapping,
    lora_config: lora.LoraConfig,
    model_config: T5Config,
    base_model_name_or_path: str | None = None,
) -> dict:
    """adapter_config.json's contents; `target_modules` selects exactly the adapted layers."""
    table = module_names(model_config)
    flat = lora.flat_adapter(_unscanned(adapter))
    adapted = {table[_kernel_path(p)] for p in flat if _kernel_path(p) in table}
    leaves = _by_leaf_names(adapted, set(table.values()))
    # A list names leaf modules (q, v, ...); a string is a regex PEFT full-matches.
    targets = sorted(leaves) if leaves else "|".join(re.escape(m) for m in sorted(adapted))
    alpha = lora_config.alpha
    return {
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": lora_config.rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": lora_config.dropout,
        "use_rslora": lora_config.use_rslora,
        "target_modules": targets,
        "fan_in_fan_out": False,
        "bias": "none",
        "modules_to_save": None,
        "init_lora_weights": True,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
    }


def save_peft_adapter(
    directory: str | Path,
    adapter: Mapping,
    lora_config: lora.LoraConfig,
    model_config: T5Config,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Writes adapter_config.json + adapter_model.safetensors, which
    `peft.PeftModel.from_pretrained(T5ForConditionalGeneration..., directory)` loads."""
    from safetensors.numpy import save

    directory = resolve_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = peft_config_dict(adapter, lora_config, model_config, base_model_name_or_path)
    data = save(peft_tensors(adapter, model_config), metadata={"format": "pt"})
    for name, content in ((WEIGHTS_FILE, data), (CONFIG_FILE, json.dumps(config, indent=2))):
        tmp = directory / f"{name}.tmp"
        tmp.write_bytes(content) if isinstance(content, bytes) else tmp.write_text(content)
        tmp.replace(directory / name)
    return directory


def merged_hf_tensors(
    params: Mapping, adapter: Mapping, lora_config: lora.LoraConfig, model_config: T5Config
) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, array) of the base with the adapter merged: what PEFT's
    `merge_and_unload()` leaves in the model's state dict. Unscanned `params`."""
    merged = lora.merge(params, _unscanned(adapter), lora_config)
    yield from hf_t5.params_to_hf(merged, model_config)


# ----------------------------------------------------------------------------- import


# adapter_config.json fields for what t5pipe's LoRA cannot represent; off is one of _OFF.
_UNSUPPORTED = {
    "use_dora": "DoRA",
    "bias": "trained biases",
    "modules_to_save": "fully trained extra modules",
    "rank_pattern": "per-layer ranks",
    "alpha_pattern": "per-layer alphas",
    "lora_bias": "a bias on lora_B",
    "layer_replication": "replicated layers",
}
_OFF = (None, False, "none", {}, [])


def _read_config(path: Path) -> dict:
    if not path.exists():
        raise UserInputError(f"{path.parent} is not a PEFT adapter folder: no {CONFIG_FILE}")
    config = json.loads(path.read_text())
    if config.get("peft_type") != "LORA":
        raise UserInputError(f"{path}: peft_type {config.get('peft_type')!r}; only LORA reads")
    for field, what in _UNSUPPORTED.items():
        if config.get(field) not in _OFF:
            raise UserInputError(f"{path}: {field}={config[field]!r} ({what}) is not supported")
    return config


def _read_tensors(directory: Path) -> dict[str, np.ndarray]:
    if (directory / WEIGHTS_FILE).exists():
        from safetensors.numpy import load

        data = (directory / WEIGHTS_FILE).read_bytes()
        try:
            return load(data)
        except KeyError:  # a dtype numpy lacks (bfloat16): read through torch
            from safetensors.torch import load as torch_load

            return {k: v.float().numpy() for k, v in torch_load(data).items()}
    if (directory / TORCH_WEIGHTS_FILE).exists():
        import torch

        with (directory / TORCH_WEIGHTS_FILE).open("rb") as file:
            state = torch.load(file, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    raise UserInputError(f"{directory} holds neither {WEIGHTS_FILE} nor {TORCH_WEIGHTS_FILE}")


def _split_point(shape: tuple[int, ...], in_features: int, out_features: int, where: str) -> int:
    for n in range(1, len(shape)):
        if math.prod(shape[:n]) == in_features and math.prod(shape[n:]) == out_features:
            return n
    raise UserInputError(
        f"{where}: [{out_features}, {in_features}] adapters do not fit the kernel {shape}; "
        "was the adapter trained on another model?"
    )


def load_peft_adapter(
    directory: str | Path, model_config: T5Config
) -> tuple[dict, lora.LoraConfig]:
    """(our adapter tree, LoraConfig) from a PEFT LoRA folder, in `model_config`'s layout."""
    from t5pipe.models import abstract_params

    directory = resolve_path(directory)
    config = _read_config(directory / CONFIG_FILE)
    by_module = {hf: ours for ours, hf in module_names(model_config).items()}
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in _read_tensors(directory).items():
        match = _KEY.match(key.removeprefix(PREFIX))
        if not match or match["module"] not in by_module:
            raise UserInputError(
                f"{directory / WEIGHTS_FILE}: tensor {key} is not a LoRA A/B of a T5 linear "
                f"layer (expected e.g. {PREFIX}encoder.block.0.layer.0.SelfAttention.q"
                ".lora_A.weight)"
            )
        pairs.setdefault(by_module[match["module"]], {})[match["which"]] = np.asarray(value)
    if not pairs:
        raise UserInputError(f"{directory}: the adapter holds no LoRA tensors")

    shapes, _ = abstract_params(model_config.replace(scan_layers=False))
    kernels = {p: tuple(x.shape) for p, x in lora.flat_adapter(shapes).items()}
    rank = int(config["r"])
    flat = {}
    for path, weights in sorted(pairs.items()):
        where = f"{directory}: adapter of {path}"
        if set(weights) != {"A", "B"} or weights["A"].shape[0] != rank:
            raise UserInputError(f"{where}: expects lora_A [r={rank}, in] and lora_B [out, r]")
        lora_a, lora_b = weights["A"].astype(np.float32), weights["B"].astype(np.float32)
        n = _split_point(kernels[path], lora_a.shape[1], lora_b.shape[0], where)
        flat[f"{path}{lora.SUFFIX}/a"] = lora_a.T.reshape(*kernels[path][:n], rank)
        flat[f"{path}{lora.SUFFIX}/b"] = lora_b.T.reshape(rank, *kernels[path][n:])

    adapted = set(pairs)
    leaves = _by_leaf_names(adapted, set(by_module.values()))
    targets = (
        rf"(^|/)({'|'.join(sorted(leaves))})$"
        if leaves
        else "^(" + "|".join(re.escape(p) for p in sorted(adapted)) + ")$"
    )
    lora_config = lora.LoraConfig(
        rank=rank,
        alpha=float(config.get("lora_alpha", 8)),
        dropout=float(config.get("lora_dropout", 0.0)),
        targets=targets,
        use_rslora=bool(config.get("use_rslora", False)),
    )
    adapter = lora.unflatten(flat)
    if model_config.scan_layers:
        adapter = _scanned(adapter, model_config)
    return adapter, lora_config


# ----------------------------------------------------------------------------- convert


def _check_target(out: Path, files: tuple[str, ...], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} exists and is not a directory")
    present = sorted(name for name in files if (out / name).exists())
    if present and not overwrite:
        raise UserInputError(
            f"--out {out} already holds {present}; pass --overwrite to replace those files"
        )


def export_adapter(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """`t5pipe convert --to_hf --adapter_only`: the adapters of a LoRA run's checkpoint
    (or its MODEL_DIR's latest) as a PEFT folder at `out`; returns `out`."""
    from t5pipe import adapters, checkpoint_paths

    found = checkpoint_paths.locate(checkpoint, "--checkpoint")
    model_config = found.model_and_vocabulary()[0]
    if found.kind != checkpoint_paths.T5PIPE or not isinstance(model_config, T5Config):
        raise UserInputError(
            f"--checkpoint {found.path}: --adapter_only writes Hugging Face PEFT folders for "
            f"t5pipe T5 checkpoints trained with LoRA; this is a {found.kind} "
            f"{type(model_config).__name__} checkpoint"
        )
    tree, lora_config = adapters.checkpoint_adapter(found.path)
    out = resolve_path(out)
    _check_target(out, (CONFIG_FILE, WEIGHTS_FILE), overwrite)
    return save_peft_adapter(out, tree, lora_config, model_config)


def import_adapter(
    peft_dir: str | Path, base_checkpoint: str | Path, out: str | Path, overwrite: bool = False
) -> Path:
    """`t5pipe convert --from_hf_adapter DIR --checkpoint BASE --out OUT`: a PEFT LoRA
    folder as a t5pipe adapter folder (`t5pipe.lora.save_adapter`) in the layout of the
    base checkpoint's model, checked against its kernels; returns `out`."""
    from t5pipe import adapters, checkpoint_paths

    peft_dir = resolve_path(peft_dir)
    if not (peft_dir / CONFIG_FILE).exists():
        raise UserInputError(
            f"--from_hf_adapter {peft_dir} is not a Hugging Face PEFT folder: no {CONFIG_FILE}"
        )
    base = checkpoint_paths.locate(base_checkpoint, "--checkpoint")
    adapter = adapters.read_adapter(peft_dir, base.model_and_vocabulary()[0])
    out = resolve_path(out)
    _check_target(out, (lora.ADAPTER_FILE, lora.CONFIG_FILE), overwrite)
    return lora.save_adapter(out, adapter.tree, adapter.config)
