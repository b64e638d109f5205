"""Running a loaded model on the host's data: what `t5pipe eval`, `t5pipe infer`, the
trainer's evaluation and `t5pipe.api` share.

    load_for_inference  (params placed on a mesh, config, vocabulary) from a checkpoint
    global_batch        a host array (the same on every process) -> a sharded jax.Array
    to_host             a (sharded) jax.Array -> the whole numpy array, on every process
    predict_texts       decode texts -> [{"text", "score", "log_prob"}, ...] per input
    infer               the `t5pipe infer` entry: inputs from a file/stdin/task -> JSONL
                        (written batch by batch to a temporary file beside the output,
                        renamed at the end; NaN scores as null)

Batches always hold a multiple of the mesh's data-parallel size
(`partitioning.data_parallel_size`), padded with empty rows.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import gin
import jax
import numpy as np
import seqio

from t5pipe import (
    adapters,
    checkpoint_integrity,
    checkpoint_paths,
    partitioning,
    vocabularies,
)
from t5pipe.decoding import DecodingOptions, make_decode_fn
from t5pipe.errors import UserInputError
from t5pipe.model_config import T5Config
from t5pipe.models import abstract_params
from t5pipe.scoring import bucket_length, encode_texts, pad_batch


def load_for_inference(
    path: str | Path | checkpoint_paths.Checkpoint, mesh, rules
) -> tuple[Any, T5Config, seqio.Vocabulary]:
    """(params placed on `mesh`, config, vocabulary) from a checkpoint: any path
    `checkpoint_paths.locate` takes (a t5pipe or t5x checkpoint, a MODEL_DIR).

    Training-only settings (dropout, remat) are switched off. A LoRA run's checkpoint
    comes with its adapters merged into the kernels (`Checkpoint.load_params`). A t5pipe
    checkpoint's parameters are checked against its checksums (`CorruptCheckpoint`,
    exit 2, names the array).
    """
    checkpoint = checkpoint_paths.locate(path, "--checkpoint")
    config, vocabulary = checkpoint.model_and_vocabulary()
    config = config.replace(dropout_rate=0.0, remat_policy="none")
    shapes, specs = abstract_params(config)
    target = partitioning.sharded_abstract(shapes, specs, mesh, rules)
    try:
        params = checkpoint.load_params(target, config)
    except UserInputError:
        raise
    except Exception as error:  # noqa: BLE001 - TensorStore/orbax: the files are damaged
        raise checkpoint_integrity.unreadable(checkpoint.path, error) from None
    return params, config, vocabulary


def global_batch(array: np.ndarray, mesh, rules) -> jax.Array:
    """Host array (the same on every process) -> a jax.Array split like activations' batch."""
    if mesh is None:
        return jax.numpy.asarray(array)
    sharding = partitioning.batch_sharding(mesh, rules)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def to_host(array: jax.Array) -> np.ndarray:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def decode_texts(vocabulary: seqio.Vocabulary, tokens: np.ndarray) -> list[str]:
    """Token rows [n, length] -> texts, each cut at its first EOS."""
    texts = []
    for row in np.asarray(tokens):
        ids = row.tolist()
        if vocabulary.eos_id in ids:
            ids = ids[: ids.index(vocabulary.eos_id)]
        texts.append(vocabulary.decode([i for i in ids if i != 0]))
    return texts


def padded_length(rows: Sequence[Sequence[int]], limit: int | None = None) -> int:
    """The length a batch of token rows is padded to: the next power of two of the longest
    (few shapes, few compilations), but no longer than `limit` when every row fits it."""
    longest = max(map(len, rows))
    length = bucket_length(longest)
    return min(length, max(limit, longest)) if limit is not None else length


def decode_token_rows(
    params,
    config: T5Config,
    rows: Sequence[Sequence[int]],
    options: DecodingOptions,
    *,
    batch_size: int,
    mesh,
    rules,
    rng=None,
    max_length: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Decodes encoder token rows (each already ending in EOS) batch by batch ->
    (tokens [n, decodes, length], scores [n, decodes], log_probs [n, decodes]) per batch.

    Each batch is padded to a power-of-two length (few shapes, few compilations), never
    past `max_length`, and to a whole number of data-parallel rows.
    """
    rng = rng if rng is not None else jax.random.PRNGKey(0)
    decode_fn = make_decode_fn(config, options, mesh, rules)
    batch_size = partitioning.round_up(batch_size, partitioning.data_parallel_size(mesh, rules))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        length = padded_length(chunk, max_length)
        batch = global_batch(pad_batch(chunk, length, batch_size), mesh, rules)
        rng, key = jax.random.split(rng)
        out = decode_fn(params, batch, key)
        yield tuple(to_host(x)[: len(chunk)] for x in out)


def predict_texts(
    params,
    config: T5Config,
    vocabulary: seqio.Vocabulary,
    inputs: Sequence[str],
    options: DecodingOptions,
    *,
    batch_size: int = 32,
    max_input_length: int = 512,
    mesh=None,
    rules=None,
    rng=None,
) -> list[list[dict[str, Any]]]:
    """For each input text: its decodes [{"text", "score", "log_prob"}], best first.
    Inputs longer than `max_input_length` tokens are cut, keeping EOS last."""
    encoded = encode_texts(vocabulary, inputs, max_input_length)
    results = []
    for tokens, scores, log_probs in decode_token_rows(
        params, config, encoded, options, batch_size=batch_size, mesh=mesh, rules=rules,
        rng=rng, max_length=max_input_length,
    ):  # fmt: skip
        for i in range(len(tokens)):
            texts = decode_texts(vocabulary, tokens[i])
            results.append(
                [
                    {"text": text, "score": float(score), "log_prob": float(log_prob)}
                    for text, score, log_prob in zip(texts, scores[i], log_probs[i], strict=True)
                ]
            )
    return results


# ----------------------------------------------------------------------------- t5pipe infer


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _text_inputs(input_file: str | None) -> Iterator[dict[str, Any]]:
    if input_file in (None, "-"):
        for line in sys.stdin:
            yield {"inputs": line.rstrip("\n")}
        return
    from t5pipe.text_files import read_utf8

    if not Path(input_file).is_file():
        raise UserInputError(f"--input_file {input_file}: no such file")
    text = read_utf8(input_file)  # a bad byte is reported before anything is decoded
    for line in text.split("\n")[: -1 if text.endswith("\n") else None]:
        yield {"inputs": line}


def _task_inputs(task_name: str, split: str, max_examples: int | None) -> Iterator[dict[str, Any]]:
    from t5pipe.eval_outputs import to_python
    from t5pipe.input_pipeline import get_task, read_split

    task = get_task(task_name)
    if not isinstance(task, seqio.Task):
        raise UserInputError(f"t5pipe infer --task needs a task, {task_name!r} is a mixture")
    for example in read_split(task, split, None, max_examples):
        yield {
            "inputs": to_python(example["inputs_pretokenized"]),
            "targets": to_python(example.get("targets_pretokenized", b"")),
        }


@gin.configurable
def infer(
    checkpoint_path: str = gin.REQUIRED,
    input_file: str | None = None,
    output_file: str | None = None,
    mixture_or_task_name: str | None = None,
    split: str = "validation",
    max_examples: int | None = None,
    batch_size: int = 32,
    max_input_length: int = 512,
    seed: int = 0,
    mixture_or_task_module: str | None = None,
    adapter_paths: Sequence[str] = (),
    *,
    decoding: DecodingOptions,
) -> int:
    """Decodes every input (file, stdin or task split) with `decoding` and writes JSONL;
    returns the count of lines written.

    `adapter_paths` (`--adapter`, repeatable): LoRA adapters (`t5pipe.adapters` sources)
    each merged onto the one loaded base; every input is decoded once per adapter, its
    lines one after another in the order given, each with "adapter": the path as given.
    """
    from t5pipe.input_pipeline import import_task_modules

    import_task_modules(mixture_or_task_module, "MIXTURE_OR_TASK_MODULE")
    if mixture_or_task_name and input_file:
        raise UserInputError("t5pipe infer: give --input_file or --task, not both")
    checkpoint = checkpoint_paths.locate(checkpoint_path, "--checkpoint")
    _check_not_same(input_file, output_file)
    if mixture_or_task_name:
        with vocabularies.checkpoint_default(checkpoint.model_and_vocabulary()[1]):
            records = list(_task_inputs(mixture_or_task_name, split, max_examples))
    elif input_file in (None, "-"):
        records = _text_inputs(None)  # stdin streams
    else:
        records = list(_text_inputs(input_file))  # read (and checked) before decoding
    # Adapters are read (and checked against the model) before the base is loaded.
    model_config = checkpoint.model_and_vocabulary()[0]
    read = [adapters.read_adapter(path, model_config) for path in adapter_paths]
    mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
    params, config, vocabulary = load_for_inference(checkpoint, mesh, rules)
    # One parameter set per adapter (each merged copy repeats only the adapted kernels).
    variants = [(a.name, adapters.merged(params, a)) for a in read] or [(None, params)]
    # Written beside the output and renamed at the end: the output (or anything at its
    # path) is replaced only by a complete result; a crash leaves the partial file.
    out, partial = (sys.stdout, None) if output_file in (None, "-") else _open_partial(output_file)
    rng, count = jax.random.PRNGKey(seed), 0
    try:
        for chunk in _chunks(records, batch_size):
            rng, key = jax.random.split(rng)  # the same key for every adapter
            results = [
                predict_texts(
                    variant,
                    config,
                    vocabulary,
                    [r["inputs"] for r in chunk],
                    decoding,
                    batch_size=batch_size,
                    max_input_length=max_input_length,
                    mesh=mesh,
                    rules=rules,
                    rng=key,
                )  # fmt: skip
                for _, variant in variants
            ]
            if jax.process_index() == 0:
                for i, record in enumerate(chunk):
                    for (name, _), decodes in zip(variants, results, strict=True):
                        line = {
                            **({"adapter": name} if name is not None else {}),
                            **record,
                            "prediction": decodes[i][0]["text"],
                            "decodes": decodes[i],
                        }
                        out.write(json.dumps(_finite(line), ensure_ascii=False) + "\n")
                out.flush()
            count += len(chunk) * len(variants)
    finally:
        if partial is not None:
            out.close()
    if partial is not None:
        os.replace(partial, output_file)
    return count


def _finite(value: Any) -> Any:
    """NaN/Inf scores -> None (JSON null): the output stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _check_not_same(input_file: str | None, output_file: str | None) -> None:
    if input_file in (None, "-") or output_file in (None, "-"):
        return
    same = Path(input_file).absolute() == Path(output_file).absolute()
    if not same and Path(input_file).exists() and Path(output_file).exists():
        same = os.path.samefile(input_file, output_file)
    if same:
        raise UserInputError(
            f"--input_file and --output_file are the same file ({output_file}): decoding would "
            "overwrite the inputs. Write the predictions to another file."
        )


def _open_partial(output_file: str):
    """(an open temporary file beside `output_file`, its path); a folder that cannot take
    files is reported before any decoding."""
    folder = Path(output_file).absolute().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(
            prefix=f".{Path(output_file).name}.", suffix=".partial", dir=folder
        )
    except OSError as error:
        raise UserInputError(
            f"--output_file {output_file}: cannot write in {folder} ({error.strerror}). "
            "Choose a writable place for the predictions."
        ) from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o666 & ~umask)  # the permissions a plain open() would give
    return os.fdopen(handle, "w", encoding="utf-8"), partial
