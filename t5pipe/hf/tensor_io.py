"""Tensor files of Hugging Face folders, read and written one tensor at a time.

    weight_files       the weight files of a folder, in reading order (safetensors,
                       sharded safetensors, pytorch_model.bin, sharded .bin)
    read_safetensors   (name, array) per tensor with plain reads (no memory map)
    read_torch         (name, array) per tensor of a PyTorch file (needs torch)
    write_safetensors  streams tensors into a safetensors file without holding them all

Memory: one tensor (and one shard) at a time, so a conversion peaks at about the
parameters once plus the largest tensor.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from t5pipe.errors import UserInputError

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


class ConversionError(UserInputError):
    """Bad input to `t5pipe convert`; the message says what and where."""


def weight_files(hf_dir: Path) -> list[Path]:
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


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Tensors of a safetensors file, each read into its own array with plain reads.

    Not `safe_open`: it memory-maps the file, and every page it touches stays in
    the process's resident memory until the file closes, a second copy of the shard.
    """
    dtypes = {code: numpy_dtype(name) for name, code in SAFETENSORS_DTYPES.items()}
    dtypes["F64"] = np.dtype(np.float64)
    with open(path, "rb") as f:
        try:
            (header_size,) = struct.unpack("<Q", f.read(8))
            file_size = os.fstat(f.fileno()).st_size
            if header_size > file_size - 8:  # read as is, a huge length is a MemoryError
                raise ConversionError(
                    f"{path}: not a safetensors file, or cut short: its header says it is "
                    f"{header_size} bytes long, but the file has {file_size} bytes"
                )
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


def read_torch(path: Path) -> Iterator[tuple[str, np.ndarray]]:
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
    np_dtype = numpy_dtype(dtype)
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


def numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
