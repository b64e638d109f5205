"""Hugging Face folders <-> self-describing t5pipe checkpoints, for every model family
(the `t5pipe convert` driver; the command's flags are in `t5pipe.commands.convert`).

Import reads DIR/config.json, whose model_type names the family (`family_for_hf`: t5 and
mt5, umt5, t5gemma, t5gemma2), and the weights (`tensor_io.weight_files`), maps them by
the family's name map (T5's in `t5pipe.hf.t5`, the others' in their `t5pipe.models`
module) and writes a checkpoint with the vocabulary (`t5pipe.hf.tokenizers`) embedded.
Export writes config.json, generation_config.json, model.safetensors (the tensors the
family's map names; an output layer tied to the embedding is not repeated) and the
tokenizer files.

Memory: tensors stream one at a time in both directions (one shard open at a time
on import, a hand-written safetensors stream on export), so the peak is about the
parameters once plus the largest tensor, not a full state dict plus a copy.
Progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from t5pipe import checkpoint_format, checkpoint_paths, pytrees
from t5pipe.checkpoint_format import RUNTIME_FIELDS
from t5pipe.hf import t5 as t5_mapping
from t5pipe.hf import tensor_io
from t5pipe.hf.tensor_io import SAFETENSORS_FILE, ConversionError
from t5pipe.hf.tokenizers import (
    GEMMA_SPM_FILE,
    SPECIAL_TOKENS_MAP,
    SPM_FILE,
    TOKENIZER_CONFIG,
    detect_vocabulary,
    say,
    tokenizer_files,
)
from t5pipe.model_config import T5Config
from t5pipe.models import Family, abstract_params, config_from_dict, family_for_hf, family_of

# Older transformers releases saved a cross-attention bias that T5 never uses
# (transformers itself ignores it on load); the original t5-small checkpoint has one.
UNUSED_HF_TENSORS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
# Files an exported folder is made of; anything else that a loader would pick up
# instead of ours makes the export refuse to run.
EXPORT_FILES = (
    "config.json",
    "generation_config.json",
    SAFETENSORS_FILE,
    SPM_FILE,
    GEMMA_SPM_FILE,
    TOKENIZER_CONFIG,
    SPECIAL_TOKENS_MAP,
)
CONFLICTING_HF_FILES = (
    tensor_io.SAFETENSORS_INDEX,
    tensor_io.TORCH_FILE,
    tensor_io.TORCH_INDEX,
    "tokenizer.json",
)
# What orbax writes into a checkpoint directory besides our two items.
CHECKPOINT_ENTRIES = {
    checkpoint_format.STATE_ITEM,
    checkpoint_format.META_ITEM,
    "_CHECKPOINT_METADATA",
    "_METADATA",
    "commit_success.txt",
}


def _local_path(path: str | Path, flag: str) -> Path:
    """Conversion streams tensors through local files; remote folders are copied first."""
    text = os.fspath(path)
    if "://" in text:
        raise ConversionError(
            f"{flag} {text}: convert reads and writes local folders; copy with "
            "`gcloud storage cp -r` (or gsutil) before or after converting"
        )
    return Path(text).absolute()


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
    if not hf_dir.is_dir():
        raise ConversionError(f"--from_hf {hf_dir}: no such directory")
    path = hf_dir / "config.json"
    if not path.is_file():
        raise ConversionError(
            f"{hf_dir} has no config.json; expected a Hugging Face T5 folder "
            "(config.json + model.safetensors or pytorch_model.bin + spiece.model)"
        )
    try:
        hf_config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    return hf_config


def hf_family(hf_config: dict[str, Any], hf_dir: Path) -> Family:
    """The model family that reads this config.json (by its model_type)."""
    try:
        return family_for_hf(hf_config)
    except ValueError as error:
        raise ConversionError(
            f"{hf_dir / 'config.json'}: model_type is {hf_config.get('model_type')!r} "
            f"(architectures {hf_config.get('architectures')}): {error}"
        ) from None


def read_hf_tensors(hf_dir: Path, config) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, float32 array) for every tensor in the folder, one file open at a time;
    T5's shapes checked against `config` here, the other families' by their name map."""
    files = tensor_io.weight_files(hf_dir)
    for i, path in enumerate(files, 1):
        say(f"reading {path.name} ({i}/{len(files)})")
        reader = (
            tensor_io.read_safetensors if path.suffix == ".safetensors" else tensor_io.read_torch
        )
        for name, array in reader(path):
            if name in UNUSED_HF_TENSORS:
                say(f"skipping {name} (unused by T5; older transformers saved it)")
                continue
            is_t5 = isinstance(config, T5Config)
            expected = t5_mapping.hf_tensor_shape(name, config) if is_t5 else None
            if expected is not None and tuple(array.shape) != expected:
                raise ConversionError(
                    f"{path}: tensor {name} has shape {list(array.shape)}, but config.json "
                    f"(d_model={config.d_model}, d_ff={config.d_ff}, num_heads={config.num_heads}, "
                    f"d_kv={config.d_kv}, vocab_size={config.vocab_size}) needs {list(expected)}"
                )
            yield name, array.astype(np.float32, copy=False)


def _make_contiguous(tree: dict) -> None:
    """Replaces transposed views by compact arrays, leaf by leaf, so that each view's
    source tensor is freed before the next copy (and orbax writes plain buffers)."""
    for key, value in tree.items():
        if isinstance(value, dict):
            _make_contiguous(value)
        else:
            tree[key] = np.ascontiguousarray(value)


def _check_against_model(params: dict, config) -> None:
    from t5pipe.models import abstract_params

    problems = checkpoint_format.shape_differences(
        pytrees.shapes(abstract_params(config)[0]), pytrees.shapes(params), what="conversion"
    )
    if problems:
        raise ConversionError(
            "converted parameters do not fit the t5pipe model: " + "; ".join(problems[:10])
        )


def import_hf(
    hf_dir: str | Path,
    out: str | Path,
    scan_layers: bool = False,
    dtype: str | None = None,
    vocab: str | None = None,
    extra_ids: int | None = None,
    overwrite: bool = False,
    gin_bound: dict[str, Any] | None = None,
) -> Path:
    """Converts a Hugging Face folder into a t5pipe checkpoint at `out`; returns `out`.

    `gin_bound`: T5Config fields bound in gin (see `gin_model_config_bindings`); T5 only.
    """
    hf_dir, out = _local_path(hf_dir, "--from_hf"), _local_path(out, "--out")
    hf_config = read_hf_config(hf_dir)
    family = hf_family(hf_config, hf_dir)
    try:
        config = family.config_from_hf(hf_config)
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(
            f"{hf_dir / 'config.json'}: cannot read the {family.name} config: {e}"
        ) from e
    if hf_config["model_type"] == "mt5":
        # mT5 is T5.1.1-shaped: own output layer, no rescale. transformers >= 5 writes
        # `tie_word_embeddings: true` for it regardless (and its MT5 model ignores it).
        config = config.replace(tie_word_embeddings=False)
    if isinstance(config, T5Config):
        config = apply_gin_bindings(config, gin_bound or {}, hf_dir / "config.json")
    vocabulary = detect_vocabulary(hf_dir, config, vocab, extra_ids)
    _check_checkpoint_target(out, overwrite)
    say(
        f"{hf_dir.name}: {family.name}, layers {family.layer_counts(config)}, "
        f"{'tied' if config.tie_word_embeddings else 'untied'} output layer, "
        f"vocabulary {type(vocabulary).__name__} ({vocabulary.vocab_size} ids)"
    )
    try:
        params = family.params_from_hf(read_hf_tensors(hf_dir, config), config)
    except ValueError as e:  # the name map lists the missing and unexpected tensors
        raise ConversionError(f"{hf_dir}: {e}") from e
    _make_contiguous(params)
    scan_layers = scan_layers or config.scan_layers
    if scan_layers:
        for stack, depth in family.layer_counts(config).items():
            pytrees.stack_layers(params[stack], depth)  # in place: one layout at a time
    config = config.replace(scan_layers=scan_layers, dtype=dtype or config.dtype)
    _check_against_model(params, config)
    count = sum(int(np.prod(x.shape)) for x in _leaves(params))
    say(f"{count / 1e6:.1f}M parameters; writing {out}")
    with _numpy_saved_without_copies():
        _write_checkpoint(out, params, config, vocabulary, hf_dir, overwrite)
    return out


@contextlib.contextmanager
def _numpy_saved_without_copies():
    """orbax deep-copies every numpy leaf before writing it (so that a training loop
    may change its arrays while an async save runs), which would double the peak
    memory of a conversion; ours are not touched again and the save is synchronous."""
    import orbax.checkpoint as ocp

    default = ocp.type_handlers.get_type_handler(np.ndarray)
    ocp.type_handlers.register_type_handler(
        np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False), override=True
    )
    try:
        yield
    finally:
        ocp.type_handlers.register_type_handler(np.ndarray, default, override=True)


def apply_gin_bindings(config: T5Config, bound: dict[str, Any], hf_config_path: Path) -> T5Config:
    """The imported config with gin's runtime settings; gin's shape settings must agree
    with the Hugging Face config (a `--gin_file=models/t5_1_1/base.gin` given for a
    large checkpoint is a mistake to report, not to apply)."""
    disagree = [
        f"T5Config.{name} = {value!r} (config.json: {getattr(config, name)!r})"
        for name, value in bound.items()
        if name not in RUNTIME_FIELDS and value != getattr(config, name)
    ]
    if disagree:
        raise ConversionError(f"gin bindings contradict {hf_config_path}: {'; '.join(disagree)}")
    return config.replace(**{k: v for k, v in bound.items() if k in RUNTIME_FIELDS})


def _leaves(tree: dict) -> Iterator[np.ndarray]:
    for value in tree.values():
        yield from _leaves(value) if isinstance(value, dict) else (value,)


def _check_checkpoint_target(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise ConversionError(f"--out {out} exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not checkpoint_format.is_checkpoint(out):
        raise ConversionError(
            f"--out {out} is not empty and not a t5pipe checkpoint ({entries[:5]}); "
            "refusing to write into it"
        )
    if not overwrite:
        raise ConversionError(
            f"--out {out} already holds a checkpoint; pass --overwrite to replace it"
        )
    foreign = sorted(set(entries) - CHECKPOINT_ENTRIES)
    if foreign:
        raise ConversionError(
            f"--out {out} holds a checkpoint and also {foreign}; refusing to replace it"
        )


def _write_checkpoint(out, params, config, vocabulary, hf_dir, overwrite) -> None:
    """Writes next to `out`, then swaps it in: a failed run never leaves half a
    checkpoint behind, nor destroys the one it was to replace."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.converting-{os.getpid()}")
    try:
        checkpoint_format.save_checkpoint(
            staging, {"params": params}, config, vocabulary, source=str(hf_dir)
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists() and any(out.iterdir()):
        assert overwrite  # _check_checkpoint_target refused otherwise
        retired = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired)
    else:
        if out.exists():
            out.rmdir()  # empty
        staging.rename(out)


# ---------------------------------------------------------------------------
# t5pipe checkpoint -> Hugging Face folder


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


def _check_export_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConversionError(f"--out {out} exists and is not a directory")
    if not out.is_dir():
        return
    ours = sorted(name for name in EXPORT_FILES if (out / name).exists())
    if ours and not overwrite:
        raise ConversionError(
            f"--out {out} already holds {ours}; pass --overwrite to replace those files"
        )
    conflicting = sorted(
        p.name
        for p in out.iterdir()
        if p.name in CONFLICTING_HF_FILES or (p.suffix == ".safetensors" and p.name not in ours)
    )
    if conflicting:
        raise ConversionError(
            f"--out {out} holds {conflicting}, which transformers would read instead of or "
            "beside the exported files; remove them or choose another folder"
        )


def export_hf(
    checkpoint: str | Path, out: str | Path, dtype: str = "float32", overwrite: bool = False
) -> Path:
    """Writes a Hugging Face folder of the checkpoint's family at `out`; returns `out`.
    A LoRA run's checkpoint is written with its adapters merged (`--adapter_only`:
    `t5pipe.hf.peft.export_adapter`)."""

    checkpoint, out = _local_path(checkpoint, "--checkpoint"), _local_path(out, "--out")
    if not checkpoint.exists():
        raise ConversionError(f"--checkpoint {checkpoint}: no such directory")
    try:
        meta = checkpoint_format.read_meta(checkpoint)
    except FileNotFoundError as e:
        raise ConversionError(str(e)) from e
    config = config_from_dict(meta["model_config"])
    family = family_of(config)
    if getattr(config, "prompt_length", 0):
        raise ConversionError(
            f"{checkpoint}: the model has a {config.prompt_length}-vector soft prompt, which a "
            "Hugging Face T5 cannot hold"
        )
    _check_export_target(out, overwrite)
    files = tokenizer_files(meta["vocabulary"], config)

    say(f"reading parameters from {checkpoint}")
    if meta.get("lora"):  # what PEFT's merge_and_unload() leaves: W + scale B A
        say(f"merging the LoRA adapters (rank {meta['lora']['rank']}) into the kernels")
    # A LoRA run's adapters come merged (`Checkpoint.load_params`).
    located = checkpoint_paths.locate(checkpoint, "--checkpoint")
    params = jax.device_get(located.load_params(abstract_params(config)[0], config))
    if config.scan_layers:
        for stack, depth in family.layer_counts(config).items():
            params[stack] = pytrees.unstack_layers(params[stack], depth)  # views, no copies
        config = config.replace(scan_layers=False)

    out.mkdir(parents=True, exist_ok=True)
    plan = _export_plan(family, params, config)
    say(f"writing {len(plan)} tensors as {dtype} to {out / SAFETENSORS_FILE}")
    tensor_io.write_safetensors(
        out / SAFETENSORS_FILE, plan, dtype, family.params_to_hf(params, config)
    )
    del params

    hf_config = {**family.config_to_hf(config), "dtype": dtype}
    generation = {
        "decoder_start_token_id": config.decoder_start_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }
    files["config.json"] = _json_bytes(hf_config)
    files["generation_config.json"] = _json_bytes(generation)
    for name, content in files.items():
        partial = out / f"{name}.partial"
        partial.write_bytes(content)
        os.replace(partial, out / name)
    return out


def _export_plan(family: Family, params: dict, config) -> list[tuple[str, tuple[int, ...]]]:
    """(HF name, shape) of every tensor to write, in the order `params_to_hf` yields them."""
    if family.hf_entries is None:  # T5 keeps its own map
        names = t5_mapping.hf_tensor_names(config)
        return [(name, t5_mapping.hf_tensor_shape(name, config)) for name in names]
    plan = []
    for name, path, _, to_hf in family.hf_entries(config):
        node = params
        for key in path:
            node = node[key]
        plan.append((name, tuple(to_hf(np.asarray(node)).shape)))  # views: no copies kept
    return plan
