"""Data restore on resume: how long a run resumed at step k waits for its first batch.

The data alone (no model, no compilation): a packed span-corruption `user_data` text
task over local text files, T5's vocabulary. For each k it times, from nothing built to
the first batch of step k + 1:

- `reread`: the stream read up to batch k and the k batches dropped (a checkpoint with
  no saved position; every resume before positions were saved);
- `restore`: the stream restored from the position a checkpoint saved at step k
  (`t5pipe.input_state`), after it was saved by a stream that read k batches (untimed).

    python -m benchmarks.resume_speed --steps 10 1000 10000 --out resume.json

Run with only `--modes reread` against an older checkout to time the code before saved
positions (PYTHONPATH=that checkout).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

TASK = "benchmark_resume_text_span_corruption"
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def register_task(text_dir: Path, vocab: Path) -> str:
    import seqio

    from t5pipe.tasks import user_data

    files = sorted(str(path) for path in text_dir.iterdir() if path.is_file())
    user_data.text_pretraining_task(
        TASK,
        files={"train": files},
        vocabulary=seqio.SentencePieceVocabulary(str(vocab)),
        overwrite=True,
    )
    return TASK


def time_reread(data, step: int) -> float:
    from t5pipe import input_pipeline

    start = time.perf_counter()
    next(input_pipeline.train_batches(data, start_step=step))
    return time.perf_counter() - start


def save_positions(data, steps: list[int], root: Path) -> dict[int, dict]:
    """One stream read to the largest step, its position saved at each of `steps` as a
    checkpoint saves it (into root/<step>/input); untimed setup but for the snapshot."""
    from etils import epath

    from t5pipe import input_pipeline, input_state

    stream, saved = input_pipeline.train_batches(data), {}
    for step in sorted(steps):
        while stream.position < step:
            next(stream)
        start = time.perf_counter()
        snapshot = stream.snapshot()
        folder = epath.Path(root / str(step) / input_state.ITEM)
        input_state.InputHandler().save(folder, input_state.InputSave(snapshot))
        saved[step] = {
            "snapshot_s": time.perf_counter() - start,
            "bytes": sum(len(content) for content in snapshot.files.values()),
            "folder": Path(folder),
        }
    return saved


def time_restore(data, step: int, folder: Path) -> float:
    from t5pipe import input_pipeline

    said = []
    start = time.perf_counter()
    stream = input_pipeline.train_batches(
        data, start_step=step, saved_position=folder, say=said.append
    )
    next(stream)
    elapsed = time.perf_counter() - start
    if said or stream.restored_from is None:
        raise RuntimeError(f"the saved position was not restored: {said}")
    return elapsed


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--modes", nargs="+", default=["reread", "restore"])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--input_length", type=int, default=128)
    parser.add_argument("--target_length", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="restore timings per step")
    parser.add_argument("--text_dir", default=str(SHARED / "text"))
    parser.add_argument("--vocab", default=str(SHARED / "vocab" / "t5_spiece.model"))
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    from t5pipe.input_pipeline import DataConfig

    task = register_task(Path(args.text_dir), Path(args.vocab))
    data = DataConfig(
        task,
        {"inputs": args.input_length, "targets": args.target_length},
        batch_size=args.batch_size,
        pack=True,
    )
    time_reread(data, 0)  # warm-up, untimed: vocabulary and TensorFlow's first graph
    rows = {step: {"step": step} for step in args.steps}
    if "reread" in args.modes:
        for step in args.steps:
            rows[step]["reread_s"] = time_reread(data, step)
            print(json.dumps(rows[step]), flush=True)
    if "restore" in args.modes:
        with tempfile.TemporaryDirectory() as root:
            saved = save_positions(data, args.steps, Path(root))
            times = {step: [] for step in args.steps}
            for _ in range(args.repeats):  # interleaved: a busy machine slows all alike
                for step in args.steps:
                    times[step].append(time_restore(data, step, saved[step]["folder"]))
        for step in args.steps:
            del saved[step]["folder"]
            rows[step].update(saved[step])
            rows[step]["restore_s"] = statistics.median(times[step])
            rows[step]["restore_times_s"] = times[step]
            print(json.dumps(rows[step]), flush=True)
    rows = list(rows.values())
    report = {"task": task, "settings": vars(args), "rows": rows}
    print("\n| resume at step | re-read (s) | restore (s) | saved position |")
    print("|---:|---:|---:|---:|")
    for row in rows:
        reread = f"{row['reread_s']:.2f}" if "reread_s" in row else "-"
        restore = f"{row['restore_s']:.2f}" if "restore_s" in row else "-"
        size = f"{row['bytes'] / 1e6:.2f} MB" if "bytes" in row else "-"
        print(f"| {row['step']:,} | {reread} | {restore} | {size} |")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
