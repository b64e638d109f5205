"""seqio tasks -> host-local numpy batches -> global `jax.Array`s; and the checks of a
task, its feature lengths and its data, made here because this is where they are read.

    DataConfig           what to read: task or mixture, lengths, batch, packing, seed, ...
    get_task             the one lookup of a task or mixture name ("did you mean ...")
    check_task           the task (its module imported), and lengths that fit it
    check_first_examples a first look at the training data, before a run writes anything
    train_batches        the endless, resumable training stream of this host's rows
    read_split           one unpacked read of an evaluation split (decoding and scoring share it)

Every process reads its own shard (`seqio.ShardInfo`) and contributes its rows of each
global batch. Exact resume: the training stream is a pure function of (task, seed,
step); a restart at step k restores the stream's position saved with checkpoint k
(`t5pipe.input_state`), or, without a usable one, reads and drops the first k batches,
so steps k+1.. see the same batches as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from t5pipe import input_state, partitioning
from t5pipe.errors import UserInputError, first_line, nearest

log = logging.getLogger(__name__)

NumpyBatch = dict[str, np.ndarray]
LENGTHS_EXAMPLE = "{'inputs': 512, 'targets': 114}"
# Examples read per task, once before a fresh run, to count those longer than the lengths.
TRUNCATION_SAMPLE = 1000


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What a training run reads (t5x's macros in brackets).

    mixture_or_task_name (MIXTURE_OR_TASK_NAME), task_feature_lengths
    (TASK_FEATURE_LENGTHS: {'inputs': n, 'targets': m}), batch_size (BATCH_SIZE: global,
    split over processes and devices), mixture_or_task_module (MIXTURE_OR_TASK_MODULE:
    imported first, registers your tasks), pack (several examples per row), shuffle,
    seed (data order), use_cached (USE_CACHED_TASKS), input_shards (how many seqio shards
    the data is read as; default one per process row block: fixing it makes the global
    batches the same for any process count).
    """

    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    batch_size: int = 128
    mixture_or_task_module: str | None = None
    pack: bool = True
    shuffle: bool = True
    seed: int = 0
    use_cached: bool = False
    input_shards: int | None = None

    def __post_init__(self):
        if not isinstance(self.mixture_or_task_name, str) or not self.mixture_or_task_name:
            raise UserInputError(
                f"MIXTURE_OR_TASK_NAME={self.mixture_or_task_name!r}: expected the name of a "
                "seqio task or mixture"
            )
        object.__setattr__(self, "task_feature_lengths", _check_lengths(self.task_feature_lengths))
        if not _positive_int(self.batch_size):
            raise UserInputError(
                f"BATCH_SIZE={self.batch_size!r}: expected a positive whole number"
            )
        if self.input_shards is not None and not _positive_int(self.input_shards):
            raise UserInputError(
                f"DataConfig.input_shards={self.input_shards!r}: expected a positive whole number"
            )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_lengths(lengths: Any, setting: str = "TASK_FEATURE_LENGTHS") -> dict[str, int]:
    """{'inputs': n, 'targets': m} with whole positive numbers, else an error."""
    if not isinstance(lengths, Mapping):
        raise UserInputError(f"{setting}={lengths!r}: expected a dict such as {LENGTHS_EXAMPLE}")
    lengths = dict(lengths)
    missing = [key for key in ("inputs", "targets") if key not in lengths]
    if missing:
        raise UserInputError(
            f"{setting}={lengths} lacks {', '.join(map(repr, missing))}; an encoder-decoder "
            f"needs both, e.g. {LENGTHS_EXAMPLE}"
        )
    for key, value in lengths.items():
        if not _positive_int(value):
            raise UserInputError(f"{setting}[{key!r}]={value!r}: expected a positive whole number")
    return lengths


# ----------------------------------------------------------------------------- tasks


def import_task_modules(modules: str | Sequence[str] | None, setting: str) -> None:
    """Imports the modules that register the user's tasks. The current directory is
    searched last, so `my_tasks.py` beside the command works without shadowing installed
    modules."""
    if isinstance(modules, str):
        modules = [modules]
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for module in modules or ():
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise UserInputError(
                f"{setting}={module!r} cannot be imported ({error}); give a module on the "
                "Python path (or in the current folder) that registers your tasks"
            ) from None


def get_task(name: Any, setting: str = "MIXTURE_OR_TASK_NAME") -> seqio.Task | seqio.Mixture:
    """The registered task or mixture `name` (`<task>_<k>shot` registers the k-shot
    variant of a registered task, `t5pipe.tasks.few_shot`), or an error naming the
    nearest ones."""
    if not isinstance(name, str) or not name:
        raise UserInputError(f"{setting}={name!r}: expected the name of a seqio task or mixture")
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        from t5pipe.tasks import few_shot

        k_shot = few_shot.resolve(name)  # `<task>_<k>shot` of a registered task
        if k_shot is not None:
            return k_shot
        known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
        raise UserInputError(
            f"{setting}={name!r} is not a registered seqio task or mixture"
            f"{nearest(name, known, n=5)}. `t5pipe tasks list` shows the registered names; "
            "tasks of your own register when their module is imported (--module NAME, "
            "MIXTURE_OR_TASK_MODULE, or an `import` line in your gin file)."
        ) from None


def leaf_tasks(task_or_mixture: seqio.Task | seqio.Mixture) -> list[seqio.Task]:
    return list(seqio.get_subtasks(task_or_mixture))


def tasks_with_split(task_or_mixture: seqio.Task | seqio.Mixture, split: str) -> list[seqio.Task]:
    """The tasks of a task or mixture that have `split`; an error when none has."""
    tasks = [task for task in leaf_tasks(task_or_mixture) if split in task.splits]
    if not tasks:
        have = "; ".join(f"{t.name}: {', '.join(t.splits)}" for t in leaf_tasks(task_or_mixture))
        raise UserInputError(
            f"{task_or_mixture.name} has no {split!r} split (splits: {have}); pick a task or "
            "split that has data"
        )
    return tasks


def _length_rule(task: seqio.Task):
    """The preprocessor that cuts examples to fit the lengths and needs a targets length
    of its own (span corruption), if the task has one."""
    for preprocessor in task.preprocessors:
        if hasattr(preprocessor, "required_target_length"):
            return preprocessor
    return None


def check_feature_lengths(
    task_or_mixture: seqio.Task | seqio.Mixture,
    lengths: Mapping[str, int],
    setting: str = "TASK_FEATURE_LENGTHS",
) -> dict[str, int]:
    """Lengths every task of the mixture can use: room for a token plus EOS, and the
    targets that length-fitting preprocessing (span corruption) produces."""
    lengths = _check_lengths(lengths, setting)
    for task in leaf_tasks(task_or_mixture):
        for key, feature in task.output_features.items():
            minimum = 2 if feature.add_eos else 1
            if key in lengths and lengths[key] < minimum:
                raise UserInputError(
                    f"{setting}[{key!r}]={lengths[key]} is too small for task {task.name}: its "
                    f"{key} end in EOS, so {minimum} is the least that holds any token. "
                    f'Raise it, e.g. --gin.{setting}="{LENGTHS_EXAMPLE}".'
                )
        rule = _length_rule(task)
        if rule is not None:
            needed = rule.required_target_length(lengths["inputs"])
            if lengths["targets"] < needed:
                how = rule.describe() if hasattr(rule, "describe") else type(rule).__name__
                raise UserInputError(
                    f"{setting}['targets']={lengths['targets']} is too small for task "
                    f"{task.name}: {how} of inputs {lengths['inputs']} tokens long makes "
                    f"targets {needed} tokens long. Set {setting}['targets'] to at least "
                    f"{needed} (inputs 512 need targets {rule.required_target_length(512)})."
                )
    return lengths


# ----------------------------------------------------------------------------- data checks


def data_error(task: seqio.Task, split: str, error: BaseException) -> UserInputError:
    """A data-reading failure as a user error that names task, split and source."""
    from t5pipe.tasks.sources import DataNotFoundError, describe_source

    if isinstance(error, UserInputError | ValueError | OSError):
        message = getattr(error, "message", None) or str(error)
    else:
        message = first_line(error)
    advice = ""
    if isinstance(error, DataNotFoundError):
        advice = " Check that the data exists and holds examples for this split."
    elif isinstance(error, ValueError) and not isinstance(error, UserInputError):
        advice = " Fix the file at that line (or drop the row) and rerun."
    return UserInputError(
        f"task {task.name}, split {split!r} ({describe_source(task)}): {message}{advice}"
    )


def check_task(data: DataConfig) -> seqio.Task | seqio.Mixture:
    """The task or mixture `data` names (its module imported first), with lengths that fit
    every task of it. Reads no data."""
    import_task_modules(data.mixture_or_task_module, "MIXTURE_OR_TASK_MODULE")
    task_or_mixture = get_task(data.mixture_or_task_name)
    check_feature_lengths(task_or_mixture, data.task_feature_lengths)
    _check_rates(task_or_mixture)
    return task_or_mixture


def _check_rates(mixture) -> None:
    """A mixture samples its tasks by rate; all zero, it could never yield an example."""
    if not isinstance(mixture, seqio.Mixture):
        return
    try:
        total = mixture.total_rate
    except Exception:  # noqa: BLE001 - a rate function that fails is seqio's to report
        return
    if total <= 0:
        rates = ", ".join(f"{name}={rate}" for name, rate in mixture.rate_per_task_name.items())
        raise UserInputError(
            f"mixture {mixture.name}: the rates of its tasks sum to {total} ({rates}); it can "
            "never yield an example. Give at least one task a positive rate."
        )


def check_first_examples(
    task_or_mixture: seqio.Task | seqio.Mixture, data: DataConfig, *, count_truncation: bool
) -> dict[str, dict[str, Any]]:
    """Each task yields a first training example on this host's shard, so the first batch
    will arrive (reading it also surfaces malformed rows and missing data with their
    file:line). With `count_truncation` (a fresh run), the first TRUNCATION_SAMPLE examples
    of each task are measured, once, and the number the lengths will cut is logged.

    Returns the truncation counts {task: {"examples", "whole_split", "truncated", and per
    feature {"truncated", "longest"}}} of the tasks counted.
    """
    lengths = data.task_feature_lengths
    reports = {}
    for task in tasks_with_split(task_or_mixture, "train"):
        sample = TRUNCATION_SAMPLE if count_truncation and _length_rule(task) is None else 1
        sizes = _read_sizes(task, "train", lengths, sample, data.use_cached)
        if not sizes:
            _no_examples(task, "train")
        if sample > 1:
            reports[task.name] = _log_truncation(task, "train", lengths, sizes, sample)
    return reports


def _no_examples(task: seqio.Task, split: str):
    from t5pipe.tasks.sources import describe_source

    raise UserInputError(
        f"task {task.name} has no examples in split {split!r} (data source: "
        f"{describe_source(task)}{', after preprocessing' if task.preprocessors else ''}"
        "), so the first batch would never arrive. Check that the data holds rows for "
        "this split (a TSV needs a header and at least one row), or pick another task "
        "or split."
    )


def _read_sizes(task, split, lengths, sample, use_cached) -> list[dict[str, int]]:
    """Token counts of the first `sample` examples of this host's shard (untrimmed, except
    for tasks whose preprocessing fits the lengths, which are read as training reads
    them)."""
    from t5pipe.tasks.sources import DataNotFoundError

    features = [key for key in lengths if key in task.output_features]
    fits = _length_rule(task) is not None
    try:
        dataset = _split_dataset(task, split, lengths if fits else None, use_cached, _shard_info())
        sizes = dataset.take(sample).map(lambda ex: {k: tf.size(ex[k]) for k in features})
        return [{k: int(v) for k, v in ex.items()} for ex in sizes.as_numpy_iterator()]
    except DataNotFoundError as error:
        if "no examples" in str(error):
            return []
        raise data_error(task, split, error) from error
    except (UserInputError, ValueError, OSError, tf.errors.OpError) as error:
        raise data_error(task, split, error) from error


def _split_dataset(task, split, lengths, use_cached=False, shard_info=None) -> tf.data.Dataset:
    """One pass over a split in order, trimmed to `lengths` (EOS kept) when given."""
    return task.get_dataset(
        sequence_length=dict(lengths) if lengths else None,
        split=split,
        shuffle=False,
        num_epochs=1,
        trim_output_features=bool(lengths),
        use_cached=use_cached,
        shard_info=shard_info,
    )


def _log_truncation(task, split, lengths, sizes, sample) -> dict[str, Any]:
    whole = len(sizes) < sample
    scope = "the whole split" if whole else f"the first {len(sizes)}"
    over = {key: [s[key] > lengths[key] for s in sizes] for key in sizes[0]}
    truncated = sum(any(flags) for flags in zip(*over.values(), strict=True))
    report = {
        "examples": len(sizes),
        "whole_split": whole,
        "truncated": truncated,
        **{
            key: {"truncated": sum(flags), "longest": max(s[key] for s in sizes)}
            for key, flags in over.items()
        },
    }
    if jax.process_index() != 0:
        return report
    if truncated:
        details = ", ".join(
            f"{key} {report[key]['truncated']} (longest {report[key]['longest']} tokens, "
            f"limit {lengths[key]})"
            for key in over
        )
        log.warning(
            "truncation: task %s, split %r: %d of %d examples (%s) are longer than "
            "TASK_FEATURE_LENGTHS and will be truncated: %s",
            task.name, split, truncated, len(sizes), scope, details,
        )  # fmt: skip
    else:
        log.info(
            "truncation: task %s, split %r: none of %d examples (%s) is truncated",
            task.name, split, len(sizes), scope,
        )  # fmt: skip
    return report


def _shard_info() -> seqio.ShardInfo | None:
    if jax.process_count() == 1:
        return None
    return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


# ----------------------------------------------------------------------------- training


def train_batches(
    data: DataConfig,
    *,
    start_step: int = 0,
    sharding: jax.sharding.Sharding | None = None,
    split: str = "train",
    saved_position=None,
    say=None,
) -> input_state.TrainStream:
    """An endless iterator of this host's training batches, from batch `start_step` on:
    restored from `saved_position` (a checkpoint's `input` folder) when usable, else read
    up to it (`input_state.open_stream`; `say` reports why).

    The dataset is read as N seqio shards (`data.input_shards`, default one per distinct
    row block of `sharding`); shard n fills rows [n * B / N, (n + 1) * B / N) of every
    global batch, and a process reads the shards of the rows its devices hold (without
    `sharding`, process p holds block p of process_count). A fixed N makes the global
    batches independent of the process count: a 2-process run and a 1-process run with
    input_shards=2 see the same batches.
    """
    batch_size = data.batch_size
    if sharding is not None:
        start, stop = partitioning.process_batch_rows(sharding, batch_size)
        blocks = partitioning.num_batch_blocks(sharding, batch_size)
    else:
        rows = batch_size // jax.process_count()
        start, stop = jax.process_index() * rows, (jax.process_index() + 1) * rows
        blocks = jax.process_count()
    shards = data.input_shards or blocks
    rows_per_shard = batch_size // shards
    if batch_size % shards or start % rows_per_shard or stop % rows_per_shard:
        raise UserInputError(
            f"DataConfig.input_shards={shards} does not fit BATCH_SIZE={batch_size} over "
            f"{blocks} process row block(s): each shard fills batch/{shards} rows and this "
            f"process's rows [{start}, {stop}) must be whole shards"
        )

    def shard_batches(index: int) -> tf.data.Dataset:
        dataset = seqio.get_dataset(
            data.mixture_or_task_name,
            task_feature_lengths=dict(data.task_feature_lengths),
            dataset_split=split,
            shuffle=data.shuffle,
            num_epochs=None,
            feature_converter=EncDecConverter(pack=data.pack),
            shard_info=seqio.ShardInfo(index=index, num_shards=shards),
            use_cached=data.use_cached,
            seed=data.seed,
        )
        return dataset.batch(rows_per_shard, drop_remainder=True)

    def process_batches() -> tf.data.Dataset:  # this process's rows, in shard order
        parts = [shard_batches(n) for n in range(start // rows_per_shard, stop // rows_per_shard)]
        return parts[0] if len(parts) == 1 else tf.data.Dataset.zip(tuple(parts)).map(
            lambda *batches: {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]}
        )  # fmt: skip

    settings = input_state.stream_settings(data, split, [shards, start, stop])
    return input_state.open_stream(process_batches, settings, start_step, saved_position, say)


class EncDecConverter(seqio.EncDecFeatureConverter):
    """seqio's encoder-decoder converter, given only the features it converts: packing
    would drop the rest anyway (`idx`, `*_pretokenized`), with a warning on every run."""

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths):
        keep = set(task_feature_lengths)
        ds = ds.map(
            lambda example: {key: value for key, value in example.items() if key in keep},
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return super()._convert_features(ds, task_feature_lengths)


def to_global(batch: NumpyBatch, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Host-local rows -> one global array per feature, split over the mesh's batch axes."""
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in batch.items()
    }


# ----------------------------------------------------------------------------- evaluation


def validation_tasks(task_or_mixture: str, split: str = "validation") -> list[seqio.Task]:
    """The task itself, or each task of the mixture, that has `split`."""
    return [task for task in leaf_tasks(get_task(task_or_mixture)) if split in task.splits]


def read_split(
    task: seqio.Task,
    split: str,
    lengths: Mapping[str, int] | None,
    max_examples: int | None = None,
) -> list[dict[str, Any]]:
    """The split's preprocessed, tokenized examples, in order, as numpy dicts: the one
    read that decoding, scoring and teacher-forced evaluation all use. With `lengths`,
    seqio trims inputs and targets to them (keeping EOS last); every process reads the
    whole split."""
    if split not in task.splits:
        raise UserInputError(
            f"task {task.name!r} has no split {split!r}; it has {list(task.splits)}"
        )
    try:
        dataset = _split_dataset(task, split, lengths)
        if max_examples is not None:
            dataset = dataset.take(max_examples)
        examples = list(dataset.as_numpy_iterator())
    except (UserInputError, ValueError, OSError, tf.errors.OpError) as error:
        raise data_error(task, split, error) from error
    if not examples:
        _no_examples(task, split)
    return examples


def teacher_forced_batch(
    examples: Sequence[Mapping[str, np.ndarray]], input_length: int, target_length: int, rows: int
) -> NumpyBatch:
    """Unpacked model features [rows, length] of `examples` (what seqio's
    EncDecFeatureConverter makes), zero rows filling the batch: they count nowhere."""
    encoder = np.zeros((rows, input_length), np.int32)
    targets = np.zeros((rows, target_length), np.int32)
    for i, example in enumerate(examples):
        encoder[i, : len(example["inputs"])] = example["inputs"][:input_length]
        targets[i, : len(example["targets"])] = example["targets"][:target_length]
    decoder_inputs = np.concatenate([np.zeros((rows, 1), np.int32), targets[:, :-1]], axis=1)
    return {
        "encoder_input_tokens": encoder,
        "decoder_input_tokens": decoder_inputs,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.int32),
    }
