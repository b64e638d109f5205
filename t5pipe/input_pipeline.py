"""seqio tasks -> host-local numpy batches -> global `jax.Array`s.

Every process reads its own shard (`seqio.ShardInfo(process_index, process_count)`)
and contributes `batch_size / process_count` rows to each global batch.

Exact resume: the training stream is a pure function of (task, seed, step). It
is shuffled with a fixed seed and repeated forever; after a restart at step k
the first k batches are skipped (`Dataset.skip`, which re-reads but does not
train on them), so steps k+1.. see the same batches as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf

from t5pipe import partitioning

NumpyBatch = dict[str, np.ndarray]


def _shard_info() -> seqio.ShardInfo:
    return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


def host_batch_size(batch_size: int) -> int:
    processes = jax.process_count()
    if batch_size % processes:
        raise ValueError(
            f"BATCH_SIZE={batch_size} must be divisible by the number of processes ({processes})"
        )
    return batch_size // processes


def get_mixture_or_task(name: str) -> seqio.Task | seqio.Mixture:
    """The registered task or mixture, or an error naming the closest registered names."""
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        import difflib

        known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"MIXTURE_OR_TASK_NAME={name!r} is not a registered seqio task or mixture.{hint} "
            "Tasks register when their module is imported: add an `import` line to your gin "
            "file or set MIXTURE_OR_TASK_MODULE; `t5pipe tasks` lists what is registered."
        ) from None


def train_batches(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    *,
    pack: bool = True,
    seed: int = 0,
    start_step: int = 0,
    split: str = "train",
    use_cached: bool = False,
    shuffle: bool = True,
    sharding: jax.sharding.Sharding | None = None,
    num_input_shards: int | None = None,
) -> Iterator[NumpyBatch]:
    """An endless iterator of this host's training batches, from batch `start_step` on.

    The dataset is read as `num_input_shards` seqio shards; shard n fills rows
    [n * B / N, (n + 1) * B / N) of every global batch, and a process reads the shards
    of the rows its devices hold (`sharding`: the global batch's; without it, process p
    holds block p of process_count). The default is one shard per distinct row block
    (per process, under data parallelism). A fixed `num_input_shards` makes the global
    batches independent of the process count: a 2-process run and a 1-process run with
    num_input_shards=2 see the same batches.
    """
    if sharding is not None:
        start, stop = partitioning.process_batch_rows(sharding, batch_size)
        blocks = partitioning.num_batch_blocks(sharding, batch_size)
    else:
        rows = host_batch_size(batch_size)
        start, stop = jax.process_index() * rows, (jax.process_index() + 1) * rows
        blocks = jax.process_count()
    shards = num_input_shards or blocks
    rows_per_shard = batch_size // shards
    if batch_size % shards or start % rows_per_shard or stop % rows_per_shard:
        raise ValueError(
            f"train.input_shards={shards} does not fit BATCH_SIZE={batch_size} over "
            f"{blocks} process row block(s): each shard fills batch/{shards} rows and this "
            f"process's rows [{start}, {stop}) must be whole shards"
        )

    def shard_batches(index: int) -> tf.data.Dataset:
        dataset = seqio.get_dataset(
            mixture_or_task_name,
            task_feature_lengths=dict(task_feature_lengths),
            dataset_split=split,
            shuffle=shuffle,
            num_epochs=None,
            feature_converter=seqio.EncDecFeatureConverter(pack=pack),
            shard_info=seqio.ShardInfo(index=index, num_shards=shards),
            use_cached=use_cached,
            seed=seed,
        )
        return dataset.batch(rows_per_shard, drop_remainder=True)

    parts = [shard_batches(n) for n in range(start // rows_per_shard, stop // rows_per_shard)]
    dataset = parts[0]
    if len(parts) > 1:  # this process's rows: its shards' batches, in shard order
        dataset = tf.data.Dataset.zip(tuple(parts)).map(
            lambda *batches: {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]}
        )
    dataset = dataset.skip(start_step).prefetch(tf.data.AUTOTUNE)
    return dataset.as_numpy_iterator()


def eval_batches(
    task_name: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    *,
    split: str = "validation",
    max_examples: int | None = None,
    use_cached: bool = False,
) -> list[NumpyBatch]:
    """All of this host's examples of a split, unpacked, in fixed-size batches.

    The last batch is filled with all-zero rows (zero loss weights: they count
    nowhere); every process returns the same number of batches.
    """
    dataset = seqio.get_dataset(
        task_name,
        task_feature_lengths=dict(task_feature_lengths),
        dataset_split=split,
        shuffle=False,
        num_epochs=1,
        feature_converter=seqio.EncDecFeatureConverter(pack=False),
        shard_info=_shard_info(),
        use_cached=use_cached,
    )
    if max_examples is not None:
        dataset = dataset.take(max(max_examples // jax.process_count(), 1))
    rows = host_batch_size(batch_size)
    batches = [dict(b) for b in dataset.batch(rows).as_numpy_iterator()]
    count = len(batches)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        count = int(np.max(multihost_utils.process_allgather(np.int32(count))))
    if not batches:
        raise ValueError(f"task {task_name!r} has no examples in split {split!r}")
    template = batches[0]
    while len(batches) < count:
        batches.append({k: np.zeros_like(v) for k, v in template.items()})
    last = batches[-1]
    missing = rows - next(iter(last.values())).shape[0]
    if missing:
        batches[-1] = {
            k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)])
            for k, v in last.items()
        }
    return batches


def to_global(batch: NumpyBatch, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Host-local rows -> one global array per feature, split over the mesh's batch axes."""
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in batch.items()
    }


def validation_tasks(mixture_or_task_name: str, split: str = "validation") -> list[seqio.Task]:
    """The task itself, or each task of the mixture, that has `split`."""
    task_or_mixture = get_mixture_or_task(mixture_or_task_name)
    tasks = (
        task_or_mixture.tasks if isinstance(task_or_mixture, seqio.Mixture) else [task_or_mixture]
    )
    return [task for task in tasks if split in task.splits]
