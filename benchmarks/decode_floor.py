"""How close a cached decoding step comes to its memory-bound floor.

    python -m benchmarks.decode_floor --model small --batch_size 8 --input_length 128 \\
        --out decode_floor.json

floor = bytes one step must read / measured memory bandwidth, where

- bytes per step: every decoder weight but the cross-attention key/value kernels (they
  ran once, into the cache) and the output layer, in the parameters' dtype (float32;
  the token embedding only if it is also the output layer, otherwise a step reads one
  row of it); the cross-attention keys/values (once per input: beams of one input
  share them) and the self-attention caches at full length (each step attends to the
  whole, masked cache), in the activation dtype;
- bandwidth: the faster of two read-only streams through every core, best of 5 each:
  a jitted sum over a 512 MiB float32 array, and a [batch, 4096] x [4096, 8192]
  float32 matmul (a 128 MiB weight streamed once per call, as a step streams its
  weights).

Per-step time: two full decodes (EOS suppressed, see decode_speed.without_eos) of
`--short` and `--long` positions; (t_long - t_short) / (long - short) is the time of one
step with the encoder pass and the loop's set-up cancelled out (median of
`--repeats` each).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import decode_speed, train_speed
from benchmarks.measure import summarize, time_calls
from t5pipe import partitioning
from t5pipe.model_config import T5Config

STREAM_BYTES = 512 * 2**20


def memory_bandwidth(batch: int, repeats: int = 5) -> dict:
    """Bytes/second read by the faster of a sum over STREAM_BYTES and a [batch, 4096] x
    [4096, 8192] matmul (best of `repeats` each)."""
    figures = {}
    array = jnp.ones((STREAM_BYTES // 4,), jnp.float32)
    weight = jnp.ones((4096, 8192), jnp.float32)
    rows = jnp.ones((batch, 4096), jnp.float32)
    for name, fn, args, size in (
        ("sum", jnp.sum, (array,), array.nbytes),
        ("matmul", jnp.matmul, (rows, weight), weight.nbytes + rows.nbytes),
    ):
        jitted = jax.jit(fn)
        jax.block_until_ready(jitted(*args))
        seconds = time_calls(lambda jitted=jitted, args=args: jitted(*args), repeats)
        figures[name] = {
            "bytes": size,
            "bytes_per_second": size / min(seconds),
            **summarize(seconds),
        }
    best = max(figures.values(), key=lambda f: f["bytes_per_second"])
    return {"bytes_per_second": best["bytes_per_second"], **figures}


def step_bytes(config: T5Config, params, batch: int, input_length: int, length: int, beams: int):
    """Bytes one decoder step must read (see the module docstring), by part."""
    itemsize = jnp.dtype(config.dtype).itemsize
    flat = jax.tree_util.tree_flatten_with_path(params)[0]

    def size(keep) -> int:
        return sum(
            int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
            for path, leaf in flat
            if keep("/".join(str(getattr(p, "key", p)) for p in path))
        )

    # Cross-attention key/value kernels ran once, on the encoder output (the cache).
    cross_kv = ("encoder_decoder_attention/key", "encoder_decoder_attention/value")
    decoder_weights = size(
        lambda p: p.startswith("decoder/") and "relpos" not in p and not p.endswith(cross_kv)
    )
    output_layer = size(lambda p: p.startswith("logits_dense/"))
    if config.tie_word_embeddings:
        output_layer = size(lambda p: p.startswith("token_embedder/"))
    kv_width = config.num_heads * config.d_kv * itemsize
    layers = config.num_decoder_layers
    cross = 2 * layers * batch * input_length * kv_width
    self_cache = 2 * layers * batch * beams * length * kv_width
    parts = {
        "decoder_weights": decoder_weights,
        "output_layer": output_layer,
        "cross_attention_keys_values": cross,
        "self_attention_cache": self_cache,
    }
    return {**parts, "total": sum(parts.values())}


def per_step_seconds(config, params, inputs, method, beams, short, long, repeats, mesh, rules):
    """(t_long - t_short) / (long - short) from two full decodes."""
    medians = {}
    for length in (short, long):
        figures, _ = decode_speed.measure_decode(
            config,
            params,
            inputs,
            method=method,
            num_beams=beams,
            max_decode_length=length,
            repeats=repeats,
            mesh=mesh,
            rules=rules,
        )
        medians[length] = figures["time"]["median_s"]
    return (medians[long] - medians[short]) / (long - short), medians


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import load_model_config

    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode_floor", description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--input_length", type=int, default=128)
    parser.add_argument("--short", type=int, default=8)
    parser.add_argument("--long", type=int, default=40)
    parser.add_argument("--num_beams", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--methods", default="greedy,beam", help="greedy, beam or both")
    args = parser.parse_args(argv)
    if not 0 < args.short < args.long:
        parser.error("need 0 < --short < --long")

    config = load_model_config(args.model, {"dropout_rate": 0.0, "dtype": args.dtype})
    mesh = partitioning.create_mesh()
    rules = partitioning.logical_axis_rules("standard")
    params = decode_speed.without_eos(train_speed.sharded_params(config, mesh, rules), config)
    inputs = decode_speed.random_inputs(config, args.batch_size, args.input_length)
    bandwidth = memory_bandwidth(args.batch_size)
    report: dict = {"settings": vars(args), "memory_bandwidth": bandwidth, "methods": {}}
    methods = [("greedy", 1), ("beam", args.num_beams)]
    for method, beams in [m for m in methods if m[0] in args.methods.split(",")]:
        key = "greedy" if method == "greedy" else f"beam{beams}"
        print(f"[{key}] ...", file=sys.stderr, flush=True)
        seconds, medians = per_step_seconds(
            config, params, inputs, method, beams, args.short, args.long, args.repeats, mesh, rules
        )
        read = step_bytes(config, params, args.batch_size, args.input_length, args.long, beams)
        floor = read["total"] / bandwidth["bytes_per_second"]
        report["methods"][key] = {
            "bytes_per_step": read,
            "floor_s": floor,
            "per_step_s": seconds,
            "per_step_over_floor": seconds / floor,
            "decode_median_s": medians,
        }
    Path(args.out).write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
