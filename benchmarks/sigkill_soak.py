"""SIGKILL soak: kill `t5pipe train` at random moments, rerun it each time, and check that
the run ends as an uninterrupted one does.

    python -m benchmarks.sigkill_soak --kills 20 --steps 60 --out soak.json

Each kill lands at a random moment after the run has logged its first step (so during
training, an asynchronous save or a resume's restore). After the last kill the command
is rerun to the end. Checked: every rerun finishes (exit 0) or is killed; the final
losses equal an uninterrupted run's bit for bit; metrics.jsonl has exactly one row per
step; files the user put into checkpoints/ are byte-identical at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARGS = (
    "--gin_file=runs/quickstart.gin",
    "--gin.BATCH_SIZE=8",
    "--gin.STATS_PERIOD=1",
    "--gin.EVAL_PERIOD=None",
    "--gin.CHECKPOINT_PERIOD=5",
    "--gin.CHECKPOINTS_TO_KEEP=3",
)


def _command(model_dir: Path, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "t5pipe.cli", "train", *ARGS, f"--gin.MODEL_DIR={model_dir}",
        f"--gin.TRAIN_STEPS={steps}",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _rows(model_dir: Path) -> list[dict]:
    path = model_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a line torn by the kill: the next start removes it
    return [r for r in rows if "split" not in r]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _run_to_end(model_dir: Path, steps: int, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(model_dir, steps), cwd=cwd, env=_env(), capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip


def soak(kills: int, steps: int, seed: int, work: Path) -> dict:
    rng = random.Random(seed)
    reference_dir, model_dir = work / "reference", work / "soaked"
    started = time.time()
    reference = _run_to_end(reference_dir, steps, work)
    if reference.returncode != 0:
        raise RuntimeError(f"uninterrupted run failed: {reference.stderr[-2000:]}")
    reference_seconds = time.time() - started

    # The user's own things in checkpoints/: never touched.
    user = model_dir / "checkpoints" / "my_notes"
    user.mkdir(parents=True)
    (user / "notes.txt").write_text("the run I liked\n")
    (model_dir / "checkpoints" / "60.bak").write_bytes(os.urandom(1000))
    user_before = _digest(model_dir / "checkpoints")

    killed_at, reruns, landed = [], 0, 0
    for _ in range(kills):
        process = subprocess.Popen(
            _command(model_dir, steps), cwd=work, env=_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        logged_before = len(_rows(model_dir))
        while process.poll() is None and len(_rows(model_dir)) <= logged_before:
            time.sleep(0.05)  # wait until this run has trained a step
        time.sleep(rng.uniform(0.0, 1.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            landed += 1
        _, err = process.communicate()
        if process.returncode not in (0, -signal.SIGKILL):
            raise RuntimeError(f"a rerun failed ({process.returncode}): {err[-2000:]}")
        rows = _rows(model_dir)
        killed_at.append(rows[-1]["step"] if rows else 0)
        reruns += 1
    final = _run_to_end(model_dir, steps, work)
    if final.returncode != 0:
        raise RuntimeError(f"the final rerun failed: {final.stderr[-2000:]}")

    rows, reference_rows = _rows(model_dir), _rows(reference_dir)
    steps_logged = [r["step"] for r in rows]
    same_losses = [(r["step"], r["loss"]) for r in rows] == [
        (r["step"], r["loss"]) for r in reference_rows
    ]
    after = _digest(model_dir / "checkpoints")
    user_after = {name: after.get(name) for name in user_before}
    return {
        "kills": kills,
        "steps": steps,
        "kills_landed": landed,  # kills that found the run still going (not yet finished)
        "killed_after_logged_step": killed_at,
        "one_row_per_step": steps_logged == list(range(1, steps + 1)),
        "losses_bit_identical": same_losses,
        "user_files_untouched": user_after == user_before,
        "uninterrupted_seconds": round(reference_seconds, 1),
        "soak_seconds": round(time.time() - started - reference_seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="t5pipe_soak_") as work:
        figures = soak(args.kills, args.steps, args.seed, Path(work))
    print(json.dumps(figures, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    ok = figures["one_row_per_step"] and figures["losses_bit_identical"]
    return 0 if ok and figures["user_files_untouched"] else 1


if __name__ == "__main__":
    sys.exit(main())
