"""`t5pipe infer`: decode inputs from a text file, stdin or a task split into JSONL.

    t5pipe infer --checkpoint CKPT --input_file inputs.txt --output_file out.jsonl
    echo "translate English to German: Hello" | t5pipe infer --checkpoint CKPT
    t5pipe infer --checkpoint CKPT --task glue_rte_v002 --split validation --output_file out.jsonl
    ... --gin.DecodingOptions.method="'beam'" --gin.DecodingOptions.num_decodes=4

Text input: one input per line (blank lines are inputs too, so line i of the input is
line i of the output). Each output line:
    {"inputs": ..., "prediction": best decode (text),
     "decodes": [{"text", "score", "log_prob"}, ...] best first}
plus "targets" for task splits. Without --output_file, lines go to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import gin
import jax
import seqio

from t5pipe import distributed, gin_setup, partitioning
from t5pipe.decoding import DecodingOptions, make_decode_fn
from t5pipe.evaluate import batch_multiple, decode_texts, global_batch, load_for_inference, to_host
from t5pipe.scoring import bucket_length, encode_texts, pad_batch


def predict_texts(
    params,
    config,
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
    """For each input text: its decodes [{"text", "score", "log_prob"}], best first."""
    rng = rng if rng is not None else jax.random.PRNGKey(0)
    decode_fn = make_decode_fn(config, options, mesh, rules)
    multiple = batch_multiple(mesh, rules)  # batches split evenly over the devices
    batch_size = -(-batch_size // multiple) * multiple
    encoded = encode_texts(vocabulary, inputs, max_input_length)
    results = []
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        length = min(bucket_length(max(map(len, rows))), bucket_length(max_input_length))
        batch = global_batch(pad_batch(rows, length, batch_size), mesh, rules)
        rng, key = jax.random.split(rng)
        out = decode_fn(params, batch, key)
        tokens, scores, log_probs = (to_host(x)[: len(rows)] for x in out)
        for i in range(len(rows)):
            texts = decode_texts(vocabulary, tokens[i])
            results.append(
                [
                    {"text": text, "score": float(score), "log_prob": float(log_prob)}
                    for text, score, log_prob in zip(texts, scores[i], log_probs[i], strict=True)
                ]
            )
    return results


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
    stream = sys.stdin if input_file in (None, "-") else open(input_file, encoding="utf-8")
    try:
        for line in stream:
            yield {"inputs": line.rstrip("\n")}
    finally:
        if stream is not sys.stdin:
            stream.close()


def _task_inputs(task_name: str, split: str, max_examples: int | None) -> Iterator[dict[str, Any]]:
    from t5pipe.evaluate import task_examples, to_python

    task = seqio.get_mixture_or_task(task_name)
    if not isinstance(task, seqio.Task):
        raise ValueError(f"t5pipe infer --task needs a task, {task_name!r} is a mixture")
    for example in task_examples(task, split, max_examples):
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
) -> int:
    """Decodes every input (file, stdin or task split) and writes JSONL; returns the count.

    Decoding options come from the gin-configurable `DecodingOptions`.
    """
    if mixture_or_task_module:
        importlib.import_module(mixture_or_task_module)
    if mixture_or_task_name and input_file:
        raise ValueError("t5pipe infer: give --input_file or --task, not both")
    options = DecodingOptions()
    mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
    params, config, vocabulary = load_for_inference(Path(checkpoint_path), mesh, rules)
    if mixture_or_task_name:
        records = _task_inputs(mixture_or_task_name, split, max_examples)
    else:
        records = _text_inputs(input_file)
    out = sys.stdout if output_file in (None, "-") else None
    if out is None:
        Path(output_file).parent.mkdir(parents=True, exist_ok=True)
        out = open(output_file, "w", encoding="utf-8")
    rng, count = jax.random.PRNGKey(seed), 0
    try:
        for chunk in _chunks(records, batch_size):
            rng, key = jax.random.split(rng)
            decodes = predict_texts(
                params, config, vocabulary, [r["inputs"] for r in chunk], options,
                batch_size=batch_size, max_input_length=max_input_length, mesh=mesh,
                rules=rules, rng=key,
            )  # fmt: skip
            if jax.process_index() == 0:
                for record, record_decodes in zip(chunk, decodes, strict=True):
                    line = {
                        **record,
                        "prediction": record_decodes[0]["text"],
                        "decodes": record_decodes,
                    }
                    out.write(json.dumps(line, ensure_ascii=False) + "\n")
                out.flush()
            count += len(chunk)
    finally:
        if out is not sys.stdout:
            out.close()
    return count


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="t5pipe infer", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint folder (CHECKPOINT_PATH)")
    parser.add_argument("--input_file", help="one input per line; '-' or absent: stdin")
    parser.add_argument("--output_file", help="JSONL output; absent: stdout")
    parser.add_argument("--task", help="decode a task split instead (MIXTURE_OR_TASK_NAME)")
    parser.add_argument("--split", help="task split (default validation)")
    parser.add_argument("--max_examples", type=int, help="only the first N examples of the split")
    parser.add_argument("--batch_size", type=int, help="inputs per decoding batch")
    gin_setup.add_gin_flags(parser)
    distributed.add_distributed_flags(parser)
    rest, dot_bindings = gin_setup.split_gin_dot_flags(argv)
    args = parser.parse_args(rest)
    distributed.initialize(args)
    gin_setup.parse_command_gin(args, dot_bindings)
    overrides = {
        "checkpoint_path": args.checkpoint,
        "input_file": args.input_file,
        "output_file": args.output_file,
        "mixture_or_task_name": args.task,
        "split": args.split,
        "max_examples": args.max_examples,
        "batch_size": args.batch_size,
    }
    from t5pipe import preflight  # bad input (issue 8) stops here, before any loading

    preflight.check_decode_config(infer, "infer", overrides)
    try:
        count = infer(**{name: value for name, value in overrides.items() if value is not None})
    except (ValueError, FileNotFoundError) as error:
        print(f"t5pipe infer: error: {error}", file=sys.stderr)
        return 2
    print(f"decoded {count} inputs" + (f" into {args.output_file}" if args.output_file else ""),
          file=sys.stderr)  # fmt: skip
    return 0
