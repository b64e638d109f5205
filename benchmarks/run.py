"""Benchmark harness: t5pipe's training and decoding speed, MFU, memory, data-pipeline
speed, and (with --compare_hf) Hugging Face PyTorch T5 on the same work in the same run.

    python -m benchmarks.run --models small --batch_size 8 --input_length 128 \\
        --target_length 32 --compare_hf --out bench.json

Writes every figure to --out (JSON) and prints a markdown table. Models are t5_1_1
sizes (gin/models/t5_1_1/<name>.gin) or gin file paths; random weights, dropout 0.
See README.md, "Performance", for what each figure means.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import sys
from pathlib import Path

from t5pipe import host_malloc

# What the CPU targets of the performance issue ask for.
TARGETS = {
    "train_tokens_per_second_vs_hf": 1.25,
    "greedy_tokens_per_second_vs_hf": 2.0,
    "beam4_tokens_per_second_vs_hf": 1.8,
    "bfloat16_train_and_greedy_vs_hf_autocast": 1.25,
    "data_vs_training_examples_per_second": 10.0,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="JSON file to write the figures to")
    parser.add_argument(
        "--models",
        default="small",
        help="comma-separated t5_1_1 sizes (small, base, ...) or gin files",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="T5Config override applied to every model (repeatable)",
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--input_length", type=int, default=128)
    parser.add_argument("--target_length", type=int, default=32)
    parser.add_argument(
        "--dtype",
        default="float32",
        help="activation dtype(s), comma-separated: float32, bfloat16 (parameters stay "
        "float32); each model runs once per dtype, in this order. With --compare_hf, "
        "transformers runs bfloat16 under torch.autocast",
    )
    parser.add_argument(
        "--attention",
        default="xla",
        choices=("xla", "cudnn"),
        help="T5Config.attention_impl; cudnn needs a GPU",
    )
    parser.add_argument("--scan_layers", action="store_true")
    parser.add_argument("--remat_policy", default="none")
    parser.add_argument("--rules", default="standard", help="partitioning rule set")
    parser.add_argument("--optimizer", default="adafactor", choices=("adafactor", "adamw"))
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed training steps first (the first compiles)"
    )
    parser.add_argument(
        "--decode_length",
        type=int,
        default=None,
        help="positions to decode (default: --target_length)",
    )
    parser.add_argument("--num_beams", type=int, default=4)
    parser.add_argument("--decode_repeats", type=int, default=3)
    parser.add_argument(
        "--data_batches", type=int, default=50, help="timed batches per data pipeline"
    )
    parser.add_argument(
        "--text_file",
        default=os.environ.get("T5PIPE_BENCHMARK_TEXT"),
        help="plain text (one document per line) for the span-corruption "
        "pipeline; default $T5PIPE_BENCHMARK_TEXT; without it that row is skipped",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated parts to leave out: train, decode, beam, data, peak",
    )
    parser.add_argument(
        "--compare_hf",
        action="store_true",
        help="also time transformers' PyTorch T5 on the same work",
    )
    parser.add_argument(
        "--hf_threads",
        type=int,
        default=os.cpu_count(),
        help="torch threads for the HF side (default: every core)",
    )
    args = parser.parse_args(argv)
    args.skip = {part for part in args.skip.split(",") if part}
    unknown = args.skip - {"train", "decode", "beam", "data", "peak"}
    if unknown:
        parser.error(f"--skip: unknown parts {sorted(unknown)}")
    args.dtypes = [dtype.strip() for dtype in args.dtype.split(",") if dtype.strip()]
    if not args.dtypes or set(args.dtypes) - {"float32", "bfloat16"}:
        parser.error(f"--dtype {args.dtype!r}: expected float32, bfloat16 or both")
    args.decode_length = args.decode_length or args.target_length
    for name in ("batch_size", "input_length", "target_length", "steps", "decode_length"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    return args


def config_overrides(entries: list[str]) -> dict:
    """'d_model=32' -> {'d_model': 32} (values as Python literals, else strings)."""
    overrides = {}
    for entry in entries:
        field, sep, value = entry.partition("=")
        if not sep:
            raise SystemExit(f"--config {entry!r}: expected FIELD=VALUE")
        try:
            overrides[field.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[field.strip()] = value.strip()
    return overrides


def load_model_config(model: str, overrides: dict):
    """T5Config from gin/models/t5_1_1/<model>.gin (or the gin file `model`), plus overrides."""
    from t5pipe.gin_setup import model_config_from_gin

    path = model if model.endswith(".gin") else f"models/t5_1_1/{model}.gin"
    return model_config_from_gin([path]).replace(**overrides)


def environment() -> dict:
    import jax

    versions = {}
    for package in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "seqio"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = None
    device = jax.devices()[0]
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "num_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "versions": versions,
        # glibc malloc settings both sides ran under (t5pipe.host_malloc; None: unset).
        "malloc": {name: os.environ.get(name) for name in host_malloc.SETTINGS},
    }


def ceiling_flops(peak: dict | None) -> tuple[float | None, str]:
    """FLOP/s that MFU divides by: on CPU the measured matmul peak (all cores are one
    device's threads); elsewhere the vendor peak per device x devices, else measured."""
    import jax

    from t5pipe import flops

    device = jax.devices()[0]
    if device.platform != "cpu":
        vendor = flops.peak_flops_per_device(device)
        if vendor is not None:
            return vendor * jax.device_count(), f"vendor bf16 peak of {device.device_kind}"
        if peak:
            return peak["flops_per_second"] * jax.device_count(), "measured matmul peak"
        return None, "unknown"
    if peak:
        return peak["flops_per_second"], f"measured {peak['dtype']} matmul peak"
    return None, "unknown"


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return None if not ours or not theirs else ours / theirs


def model_key(name: str, dtype: str) -> str:
    """The report's key of one model at one activation dtype: the bare name for a
    float32 run, '<name> <dtype>' otherwise."""
    return name if dtype == "float32" else f"{name} {dtype}"


def bench_model(name: str, config, args, mesh, rules, peak_flops: float | None) -> dict:
    """Every figure of one model shape (t5pipe, then Hugging Face when asked)."""
    import jax
    import numpy as np

    from benchmarks import decode_speed, train_speed

    # EOS cannot win anywhere (see decode_speed.without_eos): every decode runs full length.
    params = decode_speed.without_eos(train_speed.sharded_params(config, mesh, rules), config)
    count = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    result: dict = {"config": config.to_dict(), "parameters": count}
    lengths = dict(
        batch_size=args.batch_size, input_length=args.input_length, target_length=args.target_length
    )
    if "train" not in args.skip:
        print(f"[{name}] training step ...", file=sys.stderr, flush=True)
        # The step donates the state it is given: train on a copy, keep `params` for decoding.
        result["train"] = train_speed.measure_train_step(
            config,
            jax.tree.map(lambda x: x.copy(), params),
            **lengths,
            optimizer_name=args.optimizer,
            learning_rate=args.learning_rate,
            steps=args.steps,
            warmup=args.warmup,
            mesh=mesh,
            rules=rules,
            peak_flops=peak_flops or float("nan"),
        )
    inputs = decode_speed.random_inputs(config, args.batch_size, args.input_length)
    ours_tokens = {}
    if "decode" not in args.skip:
        methods = [("greedy", 1)] + ([] if "beam" in args.skip else [("beam", args.num_beams)])
        result["decode"] = {}
        for method, beams in methods:
            key = "greedy" if method == "greedy" else f"beam{beams}"
            print(f"[{name}] decode {key} ...", file=sys.stderr, flush=True)
            result["decode"][key], ours_tokens[key] = decode_speed.measure_decode(
                config,
                params,
                inputs,
                method=method,
                num_beams=beams,
                max_decode_length=args.decode_length,
                repeats=args.decode_repeats,
                mesh=mesh,
                rules=rules,
            )
    if args.compare_hf:
        result["hf"] = bench_hf(name, config, params, inputs, ours_tokens, args)
        result["ratios"] = ratios(result)
    return result


def bench_hf(name, config, params, inputs, ours_tokens, args) -> dict:
    import jax
    import numpy as np

    from benchmarks import hf_reference, train_speed

    # t5pipe's bfloat16 keeps float32 parameters and computes in bfloat16: autocast is
    # PyTorch's counterpart (float32 weights, bfloat16 matmuls).
    autocast = config.dtype == "bfloat16"
    model = hf_reference.hf_model(config, jax.device_get(params), args.hf_threads)
    hf: dict = {}
    if "train" not in args.skip:
        print(f"[{name}] HF training step ...", file=sys.stderr, flush=True)
        batches = [
            train_speed.random_batch(
                config, args.batch_size, args.input_length, args.target_length, seed
            )
            for seed in range(4)
        ]
        hf["train"] = hf_reference.measure_hf_train_step(
            model,
            batches,
            optimizer_name=args.optimizer,
            learning_rate=args.learning_rate,
            steps=args.steps,
            warmup=args.warmup,
            autocast=autocast,
        )
        # Training changed the weights; decode with the ones t5pipe decoded with.
        model = hf_reference.hf_model(config, jax.device_get(params), args.hf_threads)
    if "decode" not in args.skip:
        hf["generate"] = {}
        for key, beams in [("greedy", 1), (f"beam{args.num_beams}", args.num_beams)]:
            if key not in ours_tokens:
                continue
            print(f"[{name}] HF generate {key} ...", file=sys.stderr, flush=True)
            figures, sequences = hf_reference.measure_hf_generate(
                model,
                inputs,
                num_beams=beams,
                max_decode_length=args.decode_length,
                repeats=args.decode_repeats,
                autocast=autocast,
            )
            # Same weights, same inputs: the decodes should agree (float32 rounding aside).
            figures["same_tokens_as_t5pipe"] = float(np.mean(sequences == ours_tokens[key]))
            hf["generate"][key] = figures
    return hf


def ratios(result: dict) -> dict:
    """t5pipe / Hugging Face, higher is better for t5pipe."""
    out = {}
    hf = result["hf"]
    if "train" in result and "train" in hf:
        out["train_tokens_per_second"] = ratio(
            result["train"]["tokens_per_second"], hf["train"]["tokens_per_second"]
        )
    for key, figures in result.get("decode", {}).items():
        if key in hf.get("generate", {}):
            out[f"{key}_tokens_per_second"] = ratio(
                figures["tokens_per_second"], hf["generate"][key]["tokens_per_second"]
            )
    return out


def bench_data(args) -> dict:
    from benchmarks import data_speed

    lengths = dict(
        batch_size=args.batch_size,
        input_length=args.input_length,
        target_length=args.target_length,
        batches=args.data_batches,
    )
    data = {}
    print("[data] GLUE ...", file=sys.stderr, flush=True)
    glue, tasks = data_speed.glue_mixture_name()
    data["glue"] = {**data_speed.measure_pipeline(glue, **lengths), "tasks": tasks}
    if args.text_file:
        print("[data] span corruption ...", file=sys.stderr, flush=True)
        task = data_speed.span_corruption_task_name(args.text_file)
        data["span_corruption"] = {
            **data_speed.measure_pipeline(task, **lengths),
            "text_file": args.text_file,
        }
    return data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if argv is None:  # as `t5pipe train` does: both sides run under the same settings
        host_malloc.reexec_with_cpu_malloc()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:  # TensorFlow (under seqio) would otherwise take GPU memory from JAX.
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    except Exception:  # noqa: BLE001 - no TF, or already initialised
        pass

    from benchmarks.matmul_peak import measure_matmul_peak
    from t5pipe import partitioning

    overrides = config_overrides(args.config)
    overrides.update(
        attention_impl=args.attention,
        scan_layers=args.scan_layers,
        remat_policy=args.remat_policy,
        dropout_rate=0.0,
    )
    report: dict = {
        "environment": environment(),
        "settings": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
        "targets": TARGETS,
        "complete": False,  # true once every part ran
    }
    if "peak" not in args.skip:
        print("[peak] matmul ...", file=sys.stderr, flush=True)
        report["matmul_peak"] = measure_matmul_peak()
    peak_flops, peak_source = ceiling_flops(report.get("matmul_peak"))
    report["mfu_denominator"] = {"flops_per_second": peak_flops, "source": peak_source}

    mesh = partitioning.create_mesh()
    rules = partitioning.logical_axis_rules(args.rules)
    report["models"] = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for dtype in args.dtypes:
            config = load_model_config(name, {**overrides, "dtype": dtype})
            key = model_key(name, dtype)
            report["models"][key] = bench_model(key, config, args, mesh, rules, peak_flops)
            write_json(args.out, report)  # partial figures survive a later failure or timeout

    if "data" not in args.skip:
        report["data"] = bench_data(args)
        for model in report["models"].values():
            if "train" in model:
                consumed = model["train"]["examples_per_second"]
                model["data_vs_training"] = {
                    key: figures["examples_per_second"] / consumed
                    for key, figures in report["data"].items()
                }
    report["environment"]["load_average_end"] = os.getloadavg()

    report["complete"] = True
    write_json(args.out, report)
    print(markdown_table(report))
    print(f"\nwrote {args.out}")
    return 0


def write_json(path: str, report: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2, default=float) + "\n")


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != value:  # nan
            return "—"
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(report: dict) -> str:
    """One row per figure, one column group per model: t5pipe | HF | ratio."""
    env = report["environment"]
    lines = [
        f"{env['platform']} ({env['device_kind']}, {env['num_devices']} device(s), "
        f"{env['cpu_count']} cores), load average {env['load_average'][0]:.2f} -> "
        f"{env['load_average_end'][0]:.2f}; batch {report['settings']['batch_size']}, "
        f"inputs {report['settings']['input_length']} / targets "
        f"{report['settings']['target_length']}, {report['settings']['dtype']} "
        "(transformers bfloat16: torch.autocast), "
        f"{report['settings']['optimizer']}",
        "",
        "| model | figure | t5pipe | transformers | t5pipe / transformers |",
        "|---|---|---:|---:|---:|",
    ]
    for name, model in report["models"].items():
        hf = model.get("hf", {})
        rows = []
        if "train" in model:
            train, hf_train = model["train"], hf.get("train", {})
            rows += [
                (
                    "train step, median (ms)",
                    1e3 * train["step_time"]["median_s"],
                    1e3 * hf_train["step_time"]["median_s"] if hf_train else None,
                    None,
                ),
                (
                    "train tokens/s (inputs + targets)",
                    train["tokens_per_second"],
                    hf_train.get("tokens_per_second"),
                    model.get("ratios", {}).get("train_tokens_per_second"),
                ),
                (
                    "MFU (%)",
                    100 * train["mfu"],
                    100 * train["mfu"] * hf_train["tokens_per_second"] / train["tokens_per_second"]
                    if hf_train
                    else None,
                    None,
                ),
                ("compile (s)", train["compile_s"], None, None),
                ("compilations of the train step", train["compilations"], None, None),
                ("peak device memory (MiB)", _mib(train["peak_device_memory_bytes"]), None, None),
                (
                    "peak host memory so far (MiB)",
                    _mib(train["peak_host_memory_bytes"]),
                    _mib(hf_train.get("peak_host_memory_bytes")),
                    None,
                ),
            ]
        for key, figures in model.get("decode", {}).items():
            theirs = hf.get("generate", {}).get(key, {})
            rows.append(
                (
                    f"decode {key} tokens/s",
                    figures["tokens_per_second"],
                    theirs.get("tokens_per_second"),
                    model.get("ratios", {}).get(f"{key}_tokens_per_second"),
                )
            )
        for key, value in model.get("data_vs_training", {}).items():
            rows.append((f"data {key} examples/s ÷ training's", value, None, None))
        for figure, ours, theirs, r in rows:
            lines.append(
                f"| {name} | {figure} | {_fmt(ours)} | {_fmt(theirs)} | "
                f"{_fmt(r, 2) if r is not None else ''} |"
            )
    for key, figures in report.get("data", {}).items():
        lines.append(
            f"| data | {key} examples/s ({figures['task']}) | "
            f"{_fmt(figures['examples_per_second'])} | | |"
        )
    if "matmul_peak" in report:
        peak = report["matmul_peak"]
        lines.append(
            f"| backend | {peak['dtype']} matmul peak {peak['size']}² (GFLOP/s) | "
            f"{_fmt(peak['flops_per_second'] / 1e9)} | | |"
        )
    return "\n".join(lines)


def _mib(value):
    return None if value is None else value / 2**20


if __name__ == "__main__":
    sys.exit(main())
