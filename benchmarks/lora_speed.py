"""A LoRA training step next to full fine-tuning's: step time and memory.

    python -m benchmarks.lora_speed --models small --batch_size 8 --input_length 128 \\
        --target_length 32 --steps 10 --warmup 2 --out lora_speed.json

Each mode (full fine-tuning, then LoRA) runs `train_speed.measure_train_step` in a
process of its own, so that each process's peak resident memory (`ru_maxrss`) is that
mode's alone; imports are the same in both, and the resident memory after them is
recorded too. LoRA trains as `t5pipe train` with `train.lora_config = @LoraConfig()`
does: adapters on the kernels `--targets` selects (default attention query and value),
the base frozen with no optimizer state. Random weights, dropout 0, random tokens.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MODES = ("full", "lora")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.lora_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="JSON file to write the figures to")
    parser.add_argument("--models", default="small", help="a t5_1_1 size or a gin file")
    parser.add_argument(
        "--config", action="append", default=[], metavar="FIELD=VALUE",
        help="T5Config override (repeatable)",
    )  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--input_length", type=int, default=128)
    parser.add_argument("--target_length", type=int, default=32)
    parser.add_argument("--optimizer", default="adafactor", choices=("adafactor", "adamw"))
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rank", type=int, default=8, help="LoraConfig.rank")
    parser.add_argument("--alpha", type=float, default=16.0, help="LoraConfig.alpha")
    parser.add_argument("--targets", default=None, help="LoraConfig.targets (a regex)")
    parser.add_argument(
        "--mode", default="both", choices=("both", *MODES),
        help="both: each mode in a process of its own (the default); full / lora: this process",
    )  # fmt: skip
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> dict:
    """One mode's figures, measured in this process."""
    from benchmarks import run, train_speed
    from benchmarks.measure import peak_host_memory_bytes
    from t5pipe import lora, partitioning

    after_imports = peak_host_memory_bytes()
    config = run.load_model_config(args.models, run.config_overrides(args.config))
    config = config.replace(dropout_rate=0.0)
    lora_config = None
    if args.mode == "lora":
        options = {} if args.targets is None else {"targets": args.targets}
        lora_config = lora.LoraConfig(rank=args.rank, alpha=args.alpha, **options)
    mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules(args.rules)
    params = train_speed.sharded_params(config, mesh, rules, lora_config=lora_config)
    figures = train_speed.measure_train_step(
        config, params, batch_size=args.batch_size, input_length=args.input_length,
        target_length=args.target_length, optimizer_name=args.optimizer,
        learning_rate=args.learning_rate, steps=args.steps, warmup=args.warmup,
        mesh=mesh, rules=rules, peak_flops=1.0, lora_config=lora_config,
    )  # fmt: skip
    figures.pop("mfu")  # no FLOP/s ceiling is measured here
    figures.pop("flops_per_second")
    return {
        "mode": args.mode,
        "lora": lora_config.to_dict() if lora_config else None,
        "parameters": train_speed.tree_size(params),
        "host_memory_after_imports_bytes": after_imports,
        **figures,
    }


def child(argv: list[str], mode: str, out: Path) -> dict:
    """`measure` for `mode` in a fresh Python process (its own peak RSS); the later
    --mode and --out override those in `argv`."""
    command = [sys.executable, "-m", "benchmarks.lora_speed", *argv, "--mode", mode,
               "--out", str(out)]  # fmt: skip
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def _mib(key: str, digits: int):
    return lambda r: f"{r[key] / 2**20:.{digits}f}"


def table(results: dict) -> str:
    full, adapted = results["full"], results["lora"]
    rows = [
        ("train step, median (s)", lambda r: f"{r['step_time']['median_s']:.3f}"),
        ("train tokens/s", lambda r: f"{r['tokens_per_second']:.1f}"),
        ("trainable parameters", lambda r: f"{r['trainable_parameters']:,}"),
        ("optimizer state (MiB)", _mib("optimizer_state_bytes", 2)),
        ("train state (MiB)", _mib("state_bytes", 1)),
        ("peak RSS of the process (MiB)", _mib("peak_host_memory_bytes", 0)),
        ("RSS after imports (MiB)", _mib("host_memory_after_imports_bytes", 0)),
    ]
    lines = ["| figure | full fine-tuning | LoRA | LoRA / full |", "|---|---:|---:|---:|"]
    for name, cell in rows:
        lines.append(f"| {name} | {cell(full)} | {cell(adapted)} | |")
    step = adapted["step_time"]["median_s"] / full["step_time"]["median_s"]
    peak = adapted["peak_host_memory_bytes"] / full["peak_host_memory_bytes"]
    lines[2] = lines[2].replace("| |", f"| {step:.2f} |")
    lines[7] = lines[7].replace("| |", f"| {peak:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.rules = "standard"
    out = Path(args.out)
    if args.mode != "both":
        out.write_text(json.dumps(measure(args), indent=2) + "\n")
        return 0
    results = {mode: child(argv, mode, out.with_suffix(f".{mode}.json")) for mode in MODES}
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
