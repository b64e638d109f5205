"""Data-pipeline speed: packed training batches per second from the real input pipeline
(`t5pipe.input_pipeline.train_batches`: seqio task -> EncDecFeatureConverter(pack=True)
-> batches), in examples per second, where an example is a row of a packed batch (a
training step consumes batch_size of them; each holds one or more task examples).

Tasks:
- GLUE: `glue_v002_proportional`. Where some of its data is missing (the shared test
  data has no MNLI, QQP or QNLI train), the proportional mixture of the GLUE training
  tasks whose data loads, at T5's rates; the figure says which tasks it covered.
- span corruption: a user-data text task (`user_data.text_pretraining_task`, the same
  preprocessors as `c4_v220_span_corruption`) over a local text file.
"""

from __future__ import annotations

import time

import seqio

from benchmarks.measure import summarize

GLUE_MIXTURE = "glue_v002_proportional"
GLUE_AVAILABLE_MIXTURE = "benchmark_glue_v002_available_proportional"
SPAN_CORRUPTION_TASK = "benchmark_text_span_corruption"


def glue_mixture_name() -> tuple[str, list[str]]:
    """`glue_v002_proportional` when all its training data loads, else a mixture of the
    GLUE tasks that load, at the same rates. -> (mixture name, its task names)."""
    import t5pipe.tasks  # noqa: F401 - registers the GLUE tasks
    from t5pipe.tasks.glue import GLUE_RATES
    from t5pipe.tasks.sources import DataNotFoundError

    available = []
    for task_name, rate in GLUE_RATES.items():
        if rate <= 0:
            continue
        try:
            seqio.get_mixture_or_task(task_name).get_dataset(
                sequence_length=None, split="train", shuffle=False
            )
        except DataNotFoundError:
            continue
        available.append(task_name)
    if not available:
        raise RuntimeError(
            f"no GLUE training data found for {GLUE_MIXTURE}: set T5PIPE_GLUE_DIR to a folder "
            "in the original GLUE layout, or prepare TFDS glue/*:2.0.0"
        )
    if len(available) == sum(rate > 0 for rate in GLUE_RATES.values()):
        return GLUE_MIXTURE, available
    if GLUE_AVAILABLE_MIXTURE not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(
            GLUE_AVAILABLE_MIXTURE, [(name, GLUE_RATES[name]) for name in available]
        )
    return GLUE_AVAILABLE_MIXTURE, available


def span_corruption_task_name(text_file: str) -> str:
    """Registers (once) span corruption over `text_file`, one document per line."""
    from t5pipe.tasks import user_data

    user_data.text_pretraining_task(
        SPAN_CORRUPTION_TASK, files={"train": text_file}, document="line", overwrite=True
    )
    return SPAN_CORRUPTION_TASK


def measure_pipeline(
    mixture_or_task_name: str,
    *,
    batch_size: int,
    input_length: int,
    target_length: int,
    batches: int,
) -> dict:
    """Times `batches` packed batches after the first (which pays for setup: reading files,
    loading the vocabulary, building the tf.data graph)."""
    from t5pipe.input_pipeline import DataConfig, train_batches

    data = DataConfig(
        mixture_or_task_name,
        {"inputs": input_length, "targets": target_length},
        batch_size=batch_size,
        pack=True,
        seed=0,
    )
    start = time.perf_counter()
    iterator = train_batches(data)
    first = next(iterator)
    setup_s = time.perf_counter() - start
    times, real_targets, packed_examples = [], 0, 0
    for _ in range(batches):
        start = time.perf_counter()
        batch = next(iterator)
        times.append(time.perf_counter() - start)
        real_targets += int((batch["decoder_loss_weights"] > 0).sum())
        packed_examples += int(batch["decoder_segment_ids"].max(axis=1).sum())
    total = sum(times)
    rows = first["encoder_input_tokens"].shape[0]
    return {
        "task": mixture_or_task_name,
        "setup_s": setup_s,
        "batches": batches,
        "batch_time": summarize(times),
        # Rows of packed batches: what one training step consumes batch_size of.
        "examples_per_second": rows * batches / total,
        # Task examples packed into those rows.
        "task_examples_per_second": packed_examples / total,
        "real_target_tokens_per_batch": real_targets / batches,
    }
