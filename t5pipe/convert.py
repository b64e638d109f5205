"""`t5pipe convert`: Hugging Face T5 folders <-> self-describing t5pipe checkpoints.

    t5pipe convert --from_hf DIR --out CKPT [--scan_layers] [--dtype bfloat16]
                   [--vocab byte|SPM_FILE] [--extra_ids N] [--overwrite]
    t5pipe convert --to_hf --checkpoint CKPT --out DIR [--dtype float32|bfloat16|float16]
                   [--overwrite]

Import reads DIR/config.json (model_type t5 or mt5) and the weights from, in this
order of preference, model.safetensors, model.safetensors.index.json (shards),
pytorch_model.bin or pytorch_model.bin.index.json (torch.load with weights_only).
The vocabulary comes from DIR/spiece.model (extra ids from tokenizer_config.json,
else 100 when they fit the embedding: T5 and Flan-T5 yes, mT5 no) or is ByT5's
byte vocabulary (tokenizer_config.json names ByT5Tokenizer, or no tokenizer at
all and a byte-sized embedding); --vocab / --extra_ids override the guess.

Export writes config.json, generation_config.json, model.safetensors (lm_head.weight
only for an untied, T5.1.1-style output layer) and the tokenizer files that
transformers' AutoTokenizer reads (spiece.model + tokenizer_config.json +
special_tokens_map.json, or a ByT5Tokenizer config for the byte vocabulary).

Memory: tensors stream one at a time in both directions (one shard open at a time
on import, a hand-written safetensors stream on export), so the peak is about the
parameters once plus the largest tensor, not a full state dict plus a copy.
Progress goes to stderr; the last line on stdout is the path written.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import shutil
import struct
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from t5pipe import checkpoints, gin_setup, hf_mapping
from t5pipe.errors import EXIT_BAD_INPUT, UserInputError
from t5pipe.model_config import DTYPES, T5Config

HF_MODEL_TYPES = ("t5", "mt5")
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
SPM_FILE = "spiece.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"

# Older transformers releases saved a cross-attention bias that T5 never uses
# (transformers itself ignores it on load); the original t5-small checkpoint has one.
UNUSED_HF_TENSORS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)

# ByT5: 3 special ids, then the 256 byte values; any further rows are extra ids.
BYTE_VOCAB_BASE = 3 + 256
# Files an exported folder is made of; anything else that a loader would pick up
# instead of ours makes the export refuse to run.
EXPORT_FILES = (
    "config.json",
    "generation_config.json",
    SAFETENSORS_FILE,
    SPM_FILE,
    TOKENIZER_CONFIG,
    SPECIAL_TOKENS_MAP,
)
CONFLICTING_HF_FILES = (SAFETENSORS_INDEX, TORCH_FILE, TORCH_INDEX, "tokenizer.json")
# What orbax writes into a checkpoint directory besides our two items.
CHECKPOINT_ENTRIES = {
    checkpoints.STATE_ITEM,
    checkpoints.META_ITEM,
    "_CHECKPOINT_METADATA",
    "_METADATA",
    "commit_success.txt",
}
SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


class ConversionError(UserInputError):
    """Bad input to `t5pipe convert`; the message says what and where."""


def _local_path(path: str | Path, flag: str) -> Path:
    """Conversion streams tensors through local files; remote folders are copied first."""
    text = os.fspath(path)
    if "://" in text:
        raise ConversionError(
            f"{flag} {text}: convert reads and writes local folders; copy with "
            "`gcloud storage cp -r` (or gsutil) before or after converting"
        )
    return Path(text).absolute()


def say(message: str) -> None:
    print(f"[t5pipe convert] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Hugging Face folder -> t5pipe checkpoint


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
    model_type = hf_config.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise ConversionError(
            f"{path}: model_type is {model_type!r} "
            f"(architectures {hf_config.get('architectures')}); only T5-family models "
            f"({', '.join(HF_MODEL_TYPES)}) can be converted"
        )
    return hf_config


def hf_weight_files(hf_dir: Path) -> list[Path]:
    """The weight files of a Hugging Face folder, in reading order."""
    for single, index in ((SAFETENSORS_FILE, SAFETENSORS_INDEX), (TORCH_FILE, TORCH_INDEX)):
        if (hf_dir / single).is_file():
            return [hf_dir / single]
        if (hf_dir / index).is_file():
            weight_map = json.loads((hf_dir / index).read_text()).get("weight_map")
            if not weight_map:
                raise ConversionError(f"{hf_dir / index}: no 'weight_map' in the index")
            shards = [hf_dir / name for name in dict.fromkeys(weight_map.values())]
            missing = [s.name for s in shards if not s.is_file()]
            if missing:
                raise ConversionError(f"{hf_dir / index} names shards that are missing: {missing}")
            return shards
    present = sorted(p.name for p in hf_dir.iterdir())
    raise ConversionError(
        f"{hf_dir} has no weights: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, "
        f"{TORCH_FILE} or {TORCH_INDEX}; found {present}"
    )


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


def _read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Tensors of a safetensors file, each read into its own array with plain reads.

    Not `safe_open`: it memory-maps the file, and every page it touches stays in
    the process's resident memory until the file closes, a second copy of the shard.
    """
    dtypes = {code: _numpy_dtype(name) for name, code in SAFETENSORS_DTYPES.items()}
    dtypes["F64"] = np.dtype(np.float64)
    with open(path, "rb") as f:
        try:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size))
        except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConversionError(f"{path}: not a safetensors file ({e})") from e
        header.pop("__metadata__", None)
        data_start = 8 + header_size
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
            if entry["dtype"] not in dtypes:
                raise ConversionError(
                    f"{path}: tensor {name} has dtype {entry['dtype']}; expected one of "
                    f"{sorted(dtypes)}"
                )
            dtype, shape = dtypes[entry["dtype"]], tuple(entry["shape"])
            start, end = entry["data_offsets"]
            if end - start != math.prod(shape) * dtype.itemsize:
                raise ConversionError(f"{path}: tensor {name}: byte range does not fit its shape")
            f.seek(data_start + start)
            array = np.fromfile(f, dtype, math.prod(shape))
            if array.size != math.prod(shape):
                raise ConversionError(f"{path}: tensor {name} is cut short (truncated file?)")
            yield name, array.reshape(shape)


def _read_torch(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            f"{path} is a PyTorch file and reading it needs torch (pip install torch); "
            "a folder with model.safetensors needs nothing else"
        ) from e
    try:
        # mmap: tensors stay in the page cache instead of being copied in whole.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # files in torch's pre-1.6 format cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    for name in list(state):
        tensor = state.pop(name)
        # numpy has no bfloat16; float32 holds every bfloat16 value exactly.
        yield name, (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def read_hf_tensors(hf_dir: Path, config: T5Config) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, float32 array) for every tensor in the folder, one file open at a time,
    each shape checked against `config`."""
    files = hf_weight_files(hf_dir)
    for i, path in enumerate(files, 1):
        say(f"reading {path.name} ({i}/{len(files)})")
        reader = _read_safetensors if path.suffix == ".safetensors" else _read_torch
        for name, array in reader(path):
            if name in UNUSED_HF_TENSORS:
                say(f"skipping {name} (unused by T5; older transformers saved it)")
                continue
            expected = hf_tensor_shape(name, config)
            if expected is not None and tuple(array.shape) != expected:
                raise ConversionError(
                    f"{path}: tensor {name} has shape {list(array.shape)}, but config.json "
                    f"(d_model={config.d_model}, d_ff={config.d_ff}, num_heads={config.num_heads}, "
                    f"d_kv={config.d_kv}, vocab_size={config.vocab_size}) needs {list(expected)}"
                )
            yield name, array.astype(np.float32, copy=False)


def detect_vocabulary(
    hf_dir: Path, config: T5Config, vocab: str | None = None, extra_ids: int | None = None
):
    """The seqio vocabulary of a Hugging Face folder (see the module docstring)."""
    import seqio

    from t5pipe.vocabularies import byt5_vocabulary

    tokenizer_config = {}
    if (hf_dir / TOKENIZER_CONFIG).is_file():
        tokenizer_config = json.loads((hf_dir / TOKENIZER_CONFIG).read_text())
    tokenizer_class = str(tokenizer_config.get("tokenizer_class") or "")

    if vocab == "byte" or (vocab is None and tokenizer_class.startswith("ByT5")):
        return byt5_vocabulary(extra_ids=extra_ids or 0)
    spm_path = Path(vocab) if vocab else hf_dir / SPM_FILE
    if vocab and not spm_path.is_file():
        raise ConversionError(f"--vocab {vocab}: not 'byte' and no such SentencePiece model file")
    if not spm_path.is_file():
        has_tokenizer = tokenizer_config or (hf_dir / "tokenizer.json").is_file()
        if not has_tokenizer and BYTE_VOCAB_BASE <= config.vocab_size <= BYTE_VOCAB_BASE + 125:
            say(f"no tokenizer in {hf_dir} and vocab_size {config.vocab_size}: ByT5 bytes")
            return byt5_vocabulary(extra_ids=extra_ids or 0)
        raise ConversionError(
            f"{hf_dir} has no {SPM_FILE} (tokenizer class {tokenizer_class or 'unknown'}); "
            "pass --vocab PATH/TO/spiece.model, or --vocab byte for ByT5"
        )
    if extra_ids is None:
        extra_ids = tokenizer_config.get("extra_ids")
    if extra_ids is None:
        # T5's 32000 pieces + 100 sentinels fit its 32128 rows; mT5's model file
        # already holds its sentinels (250100 pieces in 250112 rows).
        pieces = seqio.SentencePieceVocabulary(str(spm_path)).vocab_size
        extra_ids = 100 if pieces + 100 <= config.vocab_size else 0
    vocabulary = seqio.SentencePieceVocabulary(str(spm_path.absolute()), extra_ids=extra_ids)
    if vocabulary.vocab_size > config.vocab_size:
        raise ConversionError(
            f"{spm_path}: the vocabulary has {vocabulary.vocab_size} ids ({extra_ids} extra ids) "
            f"but the model's embedding has only {config.vocab_size} rows (config.json "
            "vocab_size); pass --extra_ids or --vocab"
        )
    return vocabulary


def stack_layers(params: dict, config: T5Config) -> dict:
    """Unscanned tree -> the `scan_layers` layout, in place, one layer at a time.

    Same result as `hf_mapping.scan_layout`, which holds both layouts at once;
    here each layer is freed as soon as it is copied into the stacked arrays.
    """
    import jax

    for stack in ("encoder", "decoder"):
        n = config.num_encoder_layers if stack == "encoder" else config.num_decoder_layers
        node = params[stack]
        stacked = jax.tree.map(lambda x, n=n: np.empty((n, *x.shape), x.dtype), node["layers_0"])
        for i in range(n):
            layer = node.pop(f"layers_{i}")
            jax.tree.map(lambda dst, src, i=i: dst.__setitem__(i, src), stacked, layer)
            del layer
        node["layers"] = stacked
    return params


def _make_contiguous(tree: dict) -> None:
    """Replaces transposed views by compact arrays, leaf by leaf, so that each view's
    source tensor is freed before the next copy (and orbax writes plain buffers)."""
    for key, value in tree.items():
        if isinstance(value, dict):
            _make_contiguous(value)
        else:
            tree[key] = np.ascontiguousarray(value)


def _check_against_model(params: dict, config: T5Config) -> None:
    import jax

    from t5pipe.model import abstract_params

    expected, _ = abstract_params(config)

    def shapes(tree):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}

    want, got = shapes(expected), shapes(params)
    if want != got:
        wrong = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
        raise ConversionError(
            "converted parameters do not fit the t5pipe model: "
            f"missing {sorted(want.keys() - got.keys())[:5]}, "
            f"unexpected {sorted(got.keys() - want.keys())[:5]}, "
            f"wrong shapes {[(k, got[k], want[k]) for k in wrong[:5]]}"
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
    """Converts a Hugging Face T5 folder into a t5pipe checkpoint at `out`; returns `out`.

    `gin_bound`: T5Config fields bound in gin (see `gin_model_config_bindings`).
    """
    hf_dir, out = _local_path(hf_dir, "--from_hf"), _local_path(out, "--out")
    hf_config = read_hf_config(hf_dir)
    try:
        config = hf_mapping.t5config_from_hf(hf_config)
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(f"{hf_dir / 'config.json'}: cannot read the T5 config: {e}") from e
    if hf_config["model_type"] == "mt5":
        # mT5 is T5.1.1-shaped: own output layer, no rescale. transformers >= 5 writes
        # `tie_word_embeddings: true` for it regardless (and its MT5 model ignores it).
        config = config.replace(tie_word_embeddings=False)
    config = apply_gin_bindings(config, gin_bound or {}, hf_dir / "config.json")
    vocabulary = detect_vocabulary(hf_dir, config, vocab, extra_ids)
    _check_checkpoint_target(out, overwrite)
    say(
        f"{hf_dir.name}: {config.num_encoder_layers}+{config.num_decoder_layers} layers, "
        f"d_model {config.d_model}, {config.feed_forward_proj}, "
        f"{'tied' if config.tie_word_embeddings else 'untied'} output layer, "
        f"vocabulary {type(vocabulary).__name__} ({vocabulary.vocab_size} ids)"
    )
    try:
        params = hf_mapping.params_from_hf(read_hf_tensors(hf_dir, config), config)
    except ValueError as e:  # hf_mapping lists the missing and unexpected tensors
        raise ConversionError(f"{hf_dir}: {e}") from e
    _make_contiguous(params)
    scan_layers = scan_layers or config.scan_layers
    if scan_layers:
        params = stack_layers(params, config)
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


# T5Config fields that say how to run the model, not what it is: gin may set them.
RUNTIME_FIELDS = ("dtype", "dropout_rate", "scan_layers", "remat_policy", "attention_impl")


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


def gin_model_config_bindings(args: argparse.Namespace) -> dict[str, Any]:
    """{field: value} for every T5Config field the gin flags bind (macros resolved)."""
    import gin

    from t5pipe import gin_setup

    if not (args.gin_file or args.gin_bindings or args.gin_dot_bindings):
        return {}
    gin.clear_config()  # the command's own flags only, as train/eval/infer
    gin_setup.register_configurables()
    gin_setup.parse_gin(args, args.gin_dot_bindings)
    names = gin.get_bindings(T5Config)
    configured = T5Config()  # gin fills in the bound fields
    return {name: getattr(configured, name) for name in names}


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
    if not checkpoints.is_checkpoint(out):
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
        checkpoints.save_checkpoint(
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


def write_safetensors(
    path: Path,
    plan: list[tuple[str, tuple[int, ...]]],
    dtype: str,
    tensors: Iterable[tuple[str, np.ndarray]],
) -> None:
    """Streams tensors into a safetensors file without holding them all.

    The format is an 8-byte little-endian header length, a JSON header naming each
    tensor's dtype, shape and byte range, then the raw bytes. Shapes are known in
    advance (`plan`), so the header goes first and each tensor follows as it comes.
    """
    np_dtype = _numpy_dtype(dtype)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in plan:
        size = math.prod(shape) * np_dtype.itemsize
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for (name, shape), (got_name, array) in zip(plan, tensors, strict=True):
            if got_name != name or tuple(array.shape) != tuple(shape):
                raise ConversionError(
                    f"internal: tensor {got_name} {list(array.shape)} where {name} {list(shape)} "
                    "was planned"
                )
            # As bytes: Python's buffer protocol has no bfloat16.
            data = np.ascontiguousarray(array.astype(np_dtype, copy=False))
            f.write(data.reshape(-1).view(np.uint8))
    os.replace(partial, path)


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def tokenizer_files(vocabulary_spec: dict[str, Any], config: T5Config) -> dict[str, bytes]:
    """File name -> contents of the tokenizer files transformers' AutoTokenizer reads."""
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    kind = vocabulary_spec.get("kind")
    if kind == "sentencepiece":
        from t5pipe.vocabularies import vocabulary_from_spec

        if vocabulary_spec.get("model_b64"):
            model = base64.b64decode(vocabulary_spec["model_b64"])
        else:
            model = vocabulary_from_spec(vocabulary_spec).sp_model
        extra_ids = int(vocabulary_spec.get("extra_ids", 0))
        special["additional_special_tokens"] = [f"<extra_id_{i}>" for i in range(extra_ids)]
        tokenizer_config = {"tokenizer_class": "T5Tokenizer", "extra_ids": extra_ids, **special}
        files = {SPM_FILE: model}
    elif kind == "byte":
        # HF's ByT5Tokenizer counts every row past the bytes as an extra id.
        extra_ids = max(config.vocab_size - BYTE_VOCAB_BASE, 0)
        tokenizer_config = {"tokenizer_class": "ByT5Tokenizer", "extra_ids": extra_ids, **special}
        files = {}
    else:
        raise ConversionError(f"checkpoint vocabulary {vocabulary_spec} cannot be exported")
    files[TOKENIZER_CONFIG] = _json_bytes(tokenizer_config)
    files[SPECIAL_TOKENS_MAP] = _json_bytes(special)
    return files


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
    """Writes a Hugging Face T5 folder at `out` from a t5pipe checkpoint; returns `out`."""
    from t5pipe.model import abstract_params

    checkpoint, out = _local_path(checkpoint, "--checkpoint"), _local_path(out, "--out")
    if not checkpoint.exists():
        raise ConversionError(f"--checkpoint {checkpoint}: no such directory")
    try:
        meta = checkpoints.read_meta(checkpoint)
    except FileNotFoundError as e:
        raise ConversionError(str(e)) from e
    config = T5Config.from_dict(meta["model_config"])
    if config.prompt_length:
        raise ConversionError(
            f"{checkpoint}: the model has a {config.prompt_length}-vector soft prompt, which a "
            "Hugging Face T5 cannot hold"
        )
    _check_export_target(out, overwrite)
    files = tokenizer_files(meta["vocabulary"], config)

    say(f"reading parameters from {checkpoint}")
    shapes, _ = abstract_params(config)
    params = checkpoints.load_params(checkpoint, shapes)
    if config.scan_layers:
        params = hf_mapping.unscan_layout(params, config)  # views, no copies
        config = config.replace(scan_layers=False)

    out.mkdir(parents=True, exist_ok=True)
    names = hf_mapping.hf_tensor_names(config)
    plan = [(name, hf_tensor_shape(name, config)) for name in names]
    say(f"writing {len(plan)} tensors as {dtype} to {out / SAFETENSORS_FILE}")
    write_safetensors(out / SAFETENSORS_FILE, plan, dtype, hf_mapping.params_to_hf(params, config))
    del params

    hf_config = {**hf_mapping.t5config_to_hf(config), "dtype": dtype}
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


# ---------------------------------------------------------------------------
# command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="t5pipe convert",
        description="Import a Hugging Face T5 folder as a t5pipe checkpoint, or export one.",
    )
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from_hf", metavar="DIR", help="Hugging Face T5 folder to import")
    direction.add_argument("--to_hf", action="store_true", help="export --checkpoint to --out")
    parser.add_argument("--checkpoint", metavar="CKPT", help="t5pipe checkpoint to export")
    parser.add_argument("--out", required=True, help="checkpoint (import) or folder (export)")
    parser.add_argument(
        "--scan_layers", action="store_true", help="import: store layers stacked for scan"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        help="import: activation dtype recorded in the model config (parameters stay float32); "
        "export: dtype of the written tensors (default float32)",
    )
    parser.add_argument("--vocab", help="import: 'byte' or a SentencePiece model file")
    parser.add_argument("--extra_ids", type=int, help="import: sentinel ids after the pieces")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing checkpoint / exported files"
    )
    gin_setup.add_gin_flags(parser)
    parser.epilog += (
        " With --from_hf, gin may set how the model runs (T5Config.dtype, dropout_rate, "
        "scan_layers, remat_policy, attention_impl); shapes come from config.json and "
        "gin shapes must agree with them."
    )
    argv, dot_bindings = gin_setup.split_gin_dot_flags(argv)
    args = parser.parse_args(argv)
    args.gin_dot_bindings = dot_bindings
    if args.to_hf and not args.checkpoint:
        parser.error("--to_hf needs --checkpoint CKPT")
    if args.from_hf and args.checkpoint:
        parser.error("--checkpoint goes with --to_hf; --from_hf reads DIR and writes --out")
    if args.to_hf:
        for flag in ("scan_layers", "vocab", "extra_ids", "gin_file", "gin_bindings"):
            if getattr(args, flag) not in (None, False, []):
                parser.error(f"--{flag} applies to --from_hf only")
        if args.gin_dot_bindings:
            parser.error("--gin.NAME=VALUE flags apply to --from_hf only")
    if args.extra_ids is not None and args.extra_ids < 0:
        parser.error(f"--extra_ids must be >= 0, got {args.extra_ids}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        if args.to_hf:
            out = export_hf(args.checkpoint, args.out, args.dtype or "float32", args.overwrite)
        else:
            out = import_hf(
                args.from_hf,
                args.out,
                scan_layers=args.scan_layers,
                dtype=args.dtype,
                vocab=args.vocab,
                extra_ids=args.extra_ids,
                overwrite=args.overwrite,
                gin_bound=gin_model_config_bindings(args),
            )
    except ConversionError as e:
        print(f"t5pipe convert: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(out)
    return 0
