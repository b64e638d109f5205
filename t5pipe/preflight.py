"""Checks of what the user asked for, run before any work starts.

Each check raises `UserInputError` with one paragraph: what is wrong, where
(macro or parameter, file:line, task name, parameter path) and what to do.
Nothing here writes to MODEL_DIR or deletes anything; the only file created is
a probe, removed at once, that shows MODEL_DIR (or the folder it will be made
in) is writable.

    check_train_config(train_fn)  the hook `t5pipe train` runs after parsing gin:
                                  gin macros, required settings, MODEL_DIR, task,
                                  feature lengths, vocabulary, batch layout,
                                  checkpoint shapes, data (first example, rows),
                                  and a count of the examples that will be truncated.

The pieces (`get_task`, `check_feature_lengths`, `check_vocabulary`,
`check_checkpoint_fits`, `check_split_has_examples`, `check_utf8`, ...) serve
`t5pipe eval` and `t5pipe infer` too.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import gin
import seqio

from t5pipe.errors import UserInputError, nearest

log = logging.getLogger("t5pipe.preflight")

# train() parameters that t5x-style gin files bind through these macros.
TRAIN_MACROS = {
    "model_dir": "MODEL_DIR",
    "mixture_or_task_name": "MIXTURE_OR_TASK_NAME",
    "task_feature_lengths": "TASK_FEATURE_LENGTHS",
    "train_steps": "TRAIN_STEPS",
    "batch_size": "BATCH_SIZE",
    "initial_checkpoint_path": "INITIAL_CHECKPOINT_PATH",
    "mixture_or_task_module": "MIXTURE_OR_TASK_MODULE",
    "stats_period": "STATS_PERIOD",
    "checkpoint_period": "CHECKPOINT_PERIOD",
    "eval_period": "EVAL_PERIOD",
}
# Examples read per task to count those longer than the feature lengths.
TRUNCATION_SCAN_EXAMPLES = 1000
_MACRO_SELECTOR = "gin.macro"


def _setting(parameter: str, function: str = "train") -> str:
    """How the user names a train() argument: its macro, else function.parameter."""
    return TRAIN_MACROS.get(parameter, f"{function}.{parameter}")


# ------------------------------------------------------------------ gin


def _macro_references(value: Any) -> Iterator[str]:
    """Names of the macros (%NAME) inside a bound value (nested in lists and dicts too)."""
    if isinstance(value, gin.config.ConfigurableReference):
        if value.selector == _MACRO_SELECTOR:
            yield value.scoped_selector.rsplit("/", 1)[0]
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _macro_references(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _macro_references(item)


def check_gin_macros() -> None:
    """Every macro that is used is defined; a macro that is set but never used and is
    one typo away from a used one (`--gin.TRAIN_STEP=5`) is an error, others a warning."""
    config = gin.config._CONFIG  # gin has no public view of its parsed bindings
    defined = {scope for scope, selector in config if selector == _MACRO_SELECTOR}
    used: dict[str, str] = {}  # macro -> a binding that uses it
    for (scope, selector), bindings in config.items():
        for parameter, value in bindings.items():
            for macro in _macro_references(value):
                where = (
                    f"{scope} = ..."
                    if selector == _MACRO_SELECTOR
                    else f"{scope + '/' if scope else ''}{selector.rsplit('.', 1)[-1]}.{parameter}"
                )
                used.setdefault(macro, where)
    for macro, where in sorted(used.items()):
        if macro not in defined:
            raise UserInputError(
                f"gin macro %{macro} (used by `{where}`) is never defined"
                f"{nearest(macro, defined)}; define it in a gin file or pass --gin.{macro}=VALUE"
            )
    for macro in sorted(defined - set(used)):
        suggestion = nearest(macro, used)
        if suggestion:
            raise UserInputError(
                f"gin macro {macro} is set but nothing uses it{suggestion} — probably a "
                f"misspelling; the run would ignore it. Fix the name in your gin file or flag."
            )
        log.warning("gin macro %s is set but nothing uses it", macro)


def bound_arguments(function: Callable, name: str) -> dict[str, Any]:
    """`function`'s keyword arguments as gin would call it: defaults, then bindings
    (macros resolved, @references evaluated). Unset required ones are gin.REQUIRED."""
    settings = {
        parameter.name: parameter.default
        for parameter in inspect.signature(function).parameters.values()
        if parameter.default is not inspect.Parameter.empty
    }
    try:
        settings.update(gin.get_bindings(name))
    except (TypeError, ValueError) as error:
        raise UserInputError(
            f"the gin bindings of `{name}` cannot be evaluated: {error}"
        ) from error
    return settings


def require(settings: Mapping[str, Any], parameters: list[str], function: str) -> None:
    missing = [p for p in parameters if settings.get(p) is gin.REQUIRED]
    if missing:
        names = [_setting(p, function) for p in missing]
        raise UserInputError(
            f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} required but not set: "
            + " ".join(f"--gin.{n}=..." for n in names)
            + " (or set them in your gin file)"
        )


# ------------------------------------------------------------------ MODEL_DIR


def check_model_dir_writable(model_dir: str | os.PathLike, macro: str = "MODEL_DIR") -> None:
    """MODEL_DIR, or the nearest folder it would be created in, accepts new files.

    A probe file is created and removed; nothing that exists is changed. Remote
    paths (gs://...) are left to the first write.
    """
    text = os.fspath(model_dir)
    if "://" in text:
        return
    path = Path(text).absolute()
    existing, where = path, ""
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        where = "" if existing == path else f" (it would be created inside {existing})"
        if not existing.is_dir():
            raise UserInputError(
                f"{macro}={text!r} cannot be a folder: {existing} is a file. Choose another "
                f"folder with --gin.{macro}=..."
            )
        handle, probe = tempfile.mkstemp(prefix=".t5pipe_write_probe_", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:  # no permission to look into, or to write in, the folder
        raise UserInputError(
            f"{macro}={text!r} is not writable{where}: {error.strerror}. Choose a folder you "
            f"can write with --gin.{macro}=..., or give yourself write permission there."
        ) from None


# ------------------------------------------------------------------ tasks


def get_task(name: Any, macro: str = "MIXTURE_OR_TASK_NAME") -> seqio.Task | seqio.Mixture:
    """The registered task or mixture `name`, or an error naming the nearest ones."""
    if not isinstance(name, str) or not name:
        raise UserInputError(f"{macro}={name!r}: expected the name of a seqio task or mixture")
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
        raise UserInputError(
            f"{macro}={name!r} is not a registered seqio task or mixture"
            f"{nearest(name, known, n=5)}. `t5pipe tasks` lists the registered names; tasks "
            "of your own register when their module is imported (an `import` line in your "
            "gin file, or MIXTURE_OR_TASK_MODULE)."
        ) from None


def import_task_module(module: str | None, macro: str = "MIXTURE_OR_TASK_MODULE") -> None:
    if not module:
        return
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise UserInputError(
            f"{macro}={module!r} cannot be imported ({error}); give a module on the Python "
            "path that registers your tasks"
        ) from None


def leaf_tasks(task_or_mixture: seqio.Task | seqio.Mixture) -> list[seqio.Task]:
    if isinstance(task_or_mixture, seqio.Mixture):
        return list(task_or_mixture.tasks)
    return [task_or_mixture]


def _span_corruption_options(task: seqio.Task) -> dict[str, float] | None:
    """The span-corruption settings of a task that applies it, else None."""
    try:
        from t5pipe.tasks import span_corruption as sc
    except ImportError:
        return None
    for preprocessor in task.preprocessors:
        function, keywords = preprocessor, {}
        if isinstance(preprocessor, functools.partial):
            function, keywords = preprocessor.func, preprocessor.keywords
        if function is sc.span_corruption:
            return {
                "noise_density": keywords.get("noise_density", sc.NOISE_DENSITY),
                "mean_noise_span_length": keywords.get(
                    "mean_noise_span_length", sc.MEAN_NOISE_SPAN_LENGTH
                ),
            }
    return None


def check_feature_lengths(
    task_or_mixture: seqio.Task | seqio.Mixture,
    lengths: Any,
    macro: str = "TASK_FEATURE_LENGTHS",
) -> dict[str, int]:
    """Lengths for "inputs" and "targets" that every task of the mixture can use: whole
    numbers, room for a token plus EOS, and the targets span corruption produces."""
    example = "{'inputs': 512, 'targets': 114}"
    if not isinstance(lengths, Mapping):
        raise UserInputError(f"{macro}={lengths!r}: expected a dict such as {example}")
    lengths = dict(lengths)
    missing = [key for key in ("inputs", "targets") if key not in lengths]
    if missing:
        raise UserInputError(
            f"{macro}={lengths} lacks {', '.join(map(repr, missing))}; an encoder-decoder needs "
            f"both, e.g. {example}"
        )
    for key, value in lengths.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserInputError(f"{macro}[{key!r}]={value!r}: expected a positive whole number")
    for task in leaf_tasks(task_or_mixture):
        for key, feature in task.output_features.items():
            if key not in lengths:
                continue
            minimum = 2 if feature.add_eos else 1
            if lengths[key] < minimum:
                raise UserInputError(
                    f"{macro}[{key!r}]={lengths[key]} is too small for task {task.name}: its "
                    f"{key} end in EOS, so {minimum} is the least that holds any token. "
                    f'Raise it, e.g. --gin.{macro}="{example}".'
                )
        options = _span_corruption_options(task)
        if options is not None:
            from t5pipe.tasks.span_corruption import random_spans_helper

            _, needed = random_spans_helper(lengths["inputs"], **options)
            if lengths["targets"] < needed:
                raise UserInputError(
                    f"{macro}['targets']={lengths['targets']} is too small for task {task.name}: "
                    f"span corruption of inputs {lengths['inputs']} tokens long (noise density "
                    f"{options['noise_density']}, mean span {options['mean_noise_span_length']}) "
                    f"makes targets {needed} tokens long. Set {macro}['targets'] to at least "
                    f"{needed} (T5 uses inputs 512 / targets 114)."
                )
    return lengths


# ------------------------------------------------------------------ vocabulary


def check_vocabulary(vocabulary: Any, where: str) -> None:
    """A SentencePiece vocabulary's model file exists and loads."""
    if not isinstance(vocabulary, seqio.SentencePieceVocabulary):
        return
    from t5pipe.vocabularies import VOCAB_ENV, DeferredSentencePieceVocabulary

    path = vocabulary.sentencepiece_model_file
    try:
        vocabulary.tokenizer  # noqa: B018 - loading the model is the check
    except Exception as error:  # noqa: BLE001 - any failure to load means unusable
        local = "://" not in str(path)
        problem = (
            "does not exist"
            if local and not Path(path).exists()
            else f"cannot be read as a SentencePiece model ({_first_line(error)})"
        )
        if isinstance(vocabulary, DeferredSentencePieceVocabulary):
            fix = (
                f"Point t5pipe at T5's spiece.model: set {VOCAB_ENV}=/path/to/spiece.model, or "
                "bind --gin.t5_vocabulary.path=/path/to/spiece.model"
            )
        else:
            fix = (
                "Fix the path given to the vocabulary (its gin binding, e.g. "
                "t5_vocabulary.path or mt5_vocabulary.path)"
            )
        raise UserInputError(f"{where}: the vocabulary file {path} {problem}. {fix}.") from None


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "message", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_vocabulary_fits_model(vocabulary: Any, config: Any) -> None:
    if vocabulary.vocab_size > config.vocab_size:
        raise UserInputError(
            f"the vocabulary has {vocabulary.vocab_size} ids but T5Config.vocab_size is "
            f"{config.vocab_size}: tokens would index past the embedding. Use the model gin "
            "file that matches the task's vocabulary, or raise T5Config.vocab_size."
        )


# ------------------------------------------------------------------ batch layout


def check_batch_layout(batch_size: Any, num_microbatches: Any = 1) -> None:
    """BATCH_SIZE splits evenly over processes, data-parallel devices and microbatches."""
    import flax.linen as nn
    import jax

    from t5pipe import partitioning

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserInputError(f"BATCH_SIZE={batch_size!r}: expected a positive whole number")
    if not isinstance(num_microbatches, int) or num_microbatches < 1:
        raise UserInputError(f"train.num_microbatches={num_microbatches!r}: expected >= 1")
    try:
        mesh = partitioning.create_mesh()
        rules = partitioning.logical_axis_rules()
    except ValueError as error:
        raise UserInputError(f"device mesh: {error}") from None
    batch_axes = nn.logical_to_mesh_axes(("batch",), rules)[0] or ()
    batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
    shards = math.prod(mesh.shape[axis] for axis in batch_axes)
    for divisor, what in (
        (jax.process_count(), "the number of processes"),
        (shards, f"the data-parallel devices (mesh axes {', '.join(batch_axes)})"),
        (num_microbatches, "train.num_microbatches"),
    ):
        if batch_size % divisor:
            lower = batch_size - batch_size % divisor
            raise UserInputError(
                f"BATCH_SIZE={batch_size} does not divide evenly over {what} ({divisor}); "
                f"use a multiple of {divisor}, e.g. --gin.BATCH_SIZE={max(lower, divisor)}"
            )


def check_periods(settings: Mapping[str, Any]) -> None:
    for parameter in ("train_steps", "stats_period", "checkpoint_period"):
        value = settings.get(parameter)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserInputError(f"{_setting(parameter)}={value!r}: expected a whole number >= 1")
    eval_period = settings.get("eval_period")
    if eval_period is not None and (not isinstance(eval_period, int) or eval_period < 0):
        raise UserInputError(f"EVAL_PERIOD={eval_period!r}: expected >= 0 (0 or None: no eval)")
    if settings.get("early_stopping_metric") and not eval_period:
        raise UserInputError(
            "train.early_stopping_metric is set but EVAL_PERIOD is 0/None, so no evaluation "
            "would ever run: set EVAL_PERIOD, or unset the early stopping metric"
        )


# ------------------------------------------------------------------ checkpoints


def latest_checkpoint(model_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in MODEL_DIR/checkpoints, if any (local paths)."""
    from t5pipe.checkpointing import checkpoints_dir, is_complete

    if "://" in os.fspath(model_dir):
        return None
    directory = checkpoints_dir(model_dir)
    if not directory.is_dir():
        return None
    steps = [entry for entry in directory.iterdir() if entry.is_dir() and is_complete(entry)]
    return max(steps, key=lambda entry: int(entry.name)) if steps else None


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    import jax

    return {
        "/".join(str(getattr(key, "key", key)) for key in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _config_differences(path: str | os.PathLike, config: Any) -> str:
    """' The checkpoint was trained with d_model=64 (this run: 32), ...', best effort."""
    from t5pipe.checkpoints import read_meta

    try:
        stored = read_meta(path)["model_config"]
    except Exception:  # noqa: BLE001 - the hint is optional; the shapes say enough
        return ""
    wanted = config.to_dict()
    changed = [
        f"{key}={stored[key]!r} (this run: {wanted[key]!r})"
        for key in sorted(set(stored) & set(wanted))
        if stored[key] != wanted[key] and key not in ("dtype", "dropout_rate")
    ]
    return f" The checkpoint's model config has {', '.join(changed)}." if changed else ""


def check_checkpoint_fits(
    path: str | os.PathLike,
    config: Any,
    role: str,
    *,
    allow_missing: bool = False,
    allow_unexpected: bool = False,
) -> None:
    """Every parameter of `config`'s model is in the checkpoint with the same shape.

    role: how the user gave the path (e.g. "INITIAL_CHECKPOINT_PATH=...").
    Raises UserInputError listing each mismatch: path, model shape, checkpoint shape.
    """
    from t5pipe.checkpointing import stored_param_shapes
    from t5pipe.checkpoints import is_checkpoint
    from t5pipe.model import abstract_params

    if not is_checkpoint(path):
        raise UserInputError(
            f"{role}: {path} is not a t5pipe checkpoint (expected state/ and meta/ inside); "
            "import a Hugging Face model with `t5pipe convert --from_hf DIR --out CKPT`"
        )
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns about metadata files it can do without
    try:
        stored = {name: shape for name, (shape, _) in stored_param_shapes(path).items()}
    except Exception as error:  # noqa: BLE001 - unreadable metadata is the user's to fix
        raise UserInputError(
            f"{role}: cannot read the parameter shapes of {path} ({_first_line(error)})"
        ) from None
    finally:
        absl_logger.setLevel(level)
    wanted = _flat_shapes(abstract_params(config)[0])
    problems = [
        f"{name}: model {wanted[name]}, checkpoint {stored[name]}"
        for name in sorted(set(wanted) & set(stored))
        if wanted[name] != stored[name]
    ]
    if not allow_missing:
        problems += [
            f"{name}: model {wanted[name]}, not in the checkpoint"
            for name in sorted(set(wanted) - set(stored))
        ]
    if not allow_unexpected:
        problems += [
            f"{name}: not in the model, checkpoint {stored[name]}"
            for name in sorted(set(stored) - set(wanted))
        ]
    if problems:
        raise UserInputError(
            f"{role}: the checkpoint {path} does not fit the model config "
            f"({len(problems)} parameter(s) differ).{_config_differences(path, config)} "
            "Use the model gin file the checkpoint was trained with. The differences: "
            + "; ".join(problems)
            + "."
        )


# ------------------------------------------------------------------ data


def describe_source(task: seqio.Task) -> str:
    source = task.source
    function = getattr(source, "_dataset_fn", None)
    if function is not None:
        return getattr(function, "description", None) or getattr(function, "__name__", "")
    tfds_dataset = getattr(source, "tfds_dataset", None)
    if tfds_dataset is not None:
        return f"TFDS {tfds_dataset.name}"
    patterns = getattr(source, "_split_to_filepattern", None)
    if patterns:
        return f"files {patterns}"
    return type(source).__name__


def _tasks_with_split(task_or_mixture, split: str) -> list[seqio.Task]:
    tasks = [task for task in leaf_tasks(task_or_mixture) if split in task.splits]
    if not tasks:
        have = "; ".join(f"{t.name}: {', '.join(t.splits)}" for t in leaf_tasks(task_or_mixture))
        raise UserInputError(
            f"{task_or_mixture.name} has no {split!r} split (splits: {have}); pick a task or "
            "split that has data"
        )
    return tasks


def _shard_info() -> seqio.ShardInfo | None:
    import jax

    if jax.process_count() == 1:
        return None
    return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


def _data_error(task: seqio.Task, split: str, error: BaseException) -> UserInputError:
    """A data-reading failure as a user error that names task, split and source."""
    from t5pipe.tasks.sources import DataNotFoundError

    message = _first_line(error) if not isinstance(error, ValueError | OSError) else str(error)
    advice = ""
    if isinstance(error, DataNotFoundError):
        advice = " Check that the data exists and holds examples for this split."
    elif isinstance(error, ValueError):
        advice = " Fix the file at that line (or drop the row) and rerun."
    return UserInputError(
        f"task {task.name}, split {split!r} ({describe_source(task)}): {message}{advice}"
    )


def check_split_has_examples(
    task_or_mixture: seqio.Task | seqio.Mixture,
    split: str,
    lengths: Mapping[str, int],
    use_cached: bool = False,
) -> None:
    """Each task of the mixture yields a first example of `split` (on this host's shard),
    so the first batch will arrive; reading it also surfaces malformed rows and missing
    data with their file:line."""
    import tensorflow as tf

    from t5pipe.tasks.sources import DataNotFoundError

    for task in _tasks_with_split(task_or_mixture, split):
        try:
            dataset = task.get_dataset(
                sequence_length=dict(lengths),
                split=split,
                shuffle=False,
                num_epochs=1,
                use_cached=use_cached,
                shard_info=_shard_info(),
            )
            first = next(iter(dataset.take(1)), None)
        except (DataNotFoundError, ValueError, OSError, tf.errors.OpError) as error:
            if isinstance(error, DataNotFoundError) and "no examples" in str(error):
                first = None
            else:
                raise _data_error(task, split, error) from error
        if first is None:
            raise UserInputError(
                f"task {task.name} has no examples in split {split!r} (data source: "
                f"{describe_source(task)}{', after preprocessing' if task.preprocessors else ''}"
                "), so the first batch would never arrive. Check that the data holds rows for "
                "this split (a TSV needs a header and at least one row), or pick another task "
                "or split."
            )


def _length_dependent(task: seqio.Task) -> bool:
    """True when a preprocessor besides EOS-after-trim reads the sequence lengths (e.g.
    span corruption cuts documents to fit them, so nothing is truncated)."""
    for preprocessor in task.preprocessors:
        function = preprocessor
        if isinstance(preprocessor, functools.partial):
            function = preprocessor.func
        if function is seqio.preprocessors.append_eos_after_trim:
            continue
        try:
            parameters = inspect.signature(function).parameters
        except (TypeError, ValueError):
            continue
        if "sequence_length" in parameters:
            return True
    return False


def count_truncated(
    task_or_mixture: seqio.Task | seqio.Mixture,
    split: str,
    lengths: Mapping[str, int],
    max_examples: int = TRUNCATION_SCAN_EXAMPLES,
    use_cached: bool = False,
) -> dict[str, dict[str, Any]]:
    """Counts, over the first `max_examples` examples of each task, those longer than
    `lengths` (which the pipeline truncates), and logs the counts.

    Returns {task: {"examples": n scanned, "whole_split": bool, "truncated": n,
    feature: {"truncated": n, "longest": tokens}}}; tasks whose preprocessing fits
    examples to the lengths (span corruption) are left out.
    """
    import numpy as np

    report = {}
    for task in _tasks_with_split(task_or_mixture, split):
        if _length_dependent(task):
            continue
        features = [key for key in lengths if key in task.output_features]
        dataset = task.get_dataset(
            sequence_length=None,
            split=split,
            shuffle=False,
            num_epochs=1,
            trim_output_features=False,
            use_cached=use_cached,
        )
        dataset = dataset.take(max_examples + 1).map(_sizes_of(features))
        sizes = {key: [] for key in features}
        for example in dataset.as_numpy_iterator():
            for key in features:
                sizes[key].append(int(example[key]))
        seen = len(sizes[features[0]]) if features else 0
        whole = seen <= max_examples
        seen = min(seen, max_examples)
        entry: dict[str, Any] = {"examples": seen, "whole_split": whole}
        over_any = np.zeros(seen, bool)
        for key in features:
            values = np.asarray(sizes[key][:seen], np.int64)
            over = values > lengths[key]
            over_any |= over
            entry[key] = {
                "truncated": int(over.sum()),
                "longest": int(values.max()) if seen else 0,
            }
        entry["truncated"] = int(over_any.sum())
        report[task.name] = entry
        scope = "the whole split" if whole else f"the first {seen}"
        details = ", ".join(
            f"{key} {entry[key]['truncated']} (longest {entry[key]['longest']} tokens, "
            f"limit {lengths[key]})"
            for key in features
        )
        if _secondary_process():
            continue
        if entry["truncated"]:
            log.warning(
                "truncation: task %s, split %r: %d of %d examples (%s) are longer than "
                "TASK_FEATURE_LENGTHS and will be truncated: %s",
                task.name,
                split,
                entry["truncated"],
                seen,
                scope,
                details,
            )
        else:
            log.info(
                "truncation: task %s, split %r: none of %d examples (%s) is truncated",
                task.name,
                split,
                seen,
                scope,
            )
    return report


def _secondary_process() -> bool:
    import jax

    return jax.process_index() != 0


def _sizes_of(features: list[str]) -> Callable:
    import tensorflow as tf

    return lambda example: {key: tf.size(example[key]) for key in features}


# ------------------------------------------------------------------ text files


def check_utf8(path: str | os.PathLike) -> None:
    """A user text file decodes as UTF-8, else an error naming file:line:column and the
    byte offset of the first bad byte."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise utf8_error(path, data, error) from None


def utf8_error(path: str | os.PathLike, data: bytes, error: UnicodeDecodeError) -> UserInputError:
    line_start = data.rfind(b"\n", 0, error.start) + 1
    line = data.count(b"\n", 0, error.start) + 1
    column = error.start - line_start + 1
    bad = data[error.start : error.end]
    return UserInputError(
        f"{path}:{line}:{column}: not UTF-8 text: byte offset {error.start} holds {bad!r} "
        f"({error.reason}). Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)."
    )


# ------------------------------------------------------------------ the train hook


def check_train_config(train_fn: Callable) -> dict[str, Any]:
    """Everything `t5pipe train` can check before it starts, in the order a user would
    fix things; returns train()'s resolved arguments. Call after gin is parsed."""
    from t5pipe.model_config import T5Config

    check_gin_macros()
    settings = bound_arguments(train_fn, "train")
    require(settings, list(TRAIN_MACROS)[:4], "train")
    check_model_dir_writable(settings["model_dir"])
    import_task_module(settings.get("mixture_or_task_module"))
    task = get_task(settings["mixture_or_task_name"])
    lengths = check_feature_lengths(task, settings["task_feature_lengths"])
    check_periods(settings)
    check_batch_layout(settings.get("batch_size"), settings.get("num_microbatches", 1))

    vocabularies = {id(v): v for t in leaf_tasks(task) for v in _vocabularies(t)}
    for vocabulary in vocabularies.values():
        check_vocabulary(vocabulary, f"task {settings['mixture_or_task_name']}")
    vocabulary = settings.get("vocabulary")
    if vocabulary is not None:
        check_vocabulary(vocabulary, "train.vocabulary (VOCABULARY)")
    else:
        vocabulary = task.output_features["targets"].vocabulary
    config = settings.get("model_config") or T5Config()
    check_vocabulary_fits_model(vocabulary, config)

    resume_from = latest_checkpoint(settings["model_dir"])
    initial = settings.get("initial_checkpoint_path")
    if resume_from is not None:
        if initial:
            log.warning(
                "INITIAL_CHECKPOINT_PATH=%s is ignored: MODEL_DIR already has checkpoint %s, "
                "and training resumes from it (use a new MODEL_DIR to start from %s)",
                initial,
                resume_from,
                initial,
            )
        check_checkpoint_fits(
            resume_from,
            config,
            f"MODEL_DIR={settings['model_dir']} (resuming from its latest checkpoint)",
        )
    elif initial:
        check_checkpoint_fits(
            initial,
            config,
            f"INITIAL_CHECKPOINT_PATH={initial}",
            allow_missing=bool(settings.get("allow_partial_initial_checkpoint")),
            allow_unexpected=True,
        )

    use_cached = bool(settings.get("use_cached_tasks"))
    check_split_has_examples(task, "train", lengths, use_cached)
    count_truncated(task, "train", lengths, use_cached=use_cached)
    return settings


def _vocabularies(task: seqio.Task) -> list[Any]:
    return [feature.vocabulary for feature in task.output_features.values()]


# ------------------------------------------------------------------ the eval / infer hook

# Shorthand flags of `t5pipe eval/infer` and the gin macro each stands for.
FLAG_MACROS = {
    "checkpoint_path": ("--checkpoint", "CHECKPOINT_PATH"),
    "mixture_or_task_name": ("--task", "MIXTURE_OR_TASK_NAME"),
    "model_dir": ("--model_dir", "MODEL_DIR"),
    "output_dir": ("--output_dir", "OUTPUT_DIR"),
}


def check_decode_config(function: Callable, name: str, flags: Mapping[str, Any]) -> None:
    """`t5pipe eval` / `t5pipe infer` before loading anything: gin macros, a shorthand
    flag that contradicts the gin binding of the same setting, a checkpoint together
    with MODEL_DIR, and a UTF-8 --input_file. `flags`: the shorthand flags given."""
    check_gin_macros()
    try:
        bound = gin.get_bindings(name)
    except (TypeError, ValueError) as error:
        raise UserInputError(
            f"the gin bindings of `{name}` cannot be evaluated: {error}"
        ) from error
    for parameter, value in flags.items():
        other = bound.get(parameter)
        if value is None or other in (None, gin.REQUIRED) or other == value:
            continue
        flag, macro = FLAG_MACROS.get(parameter, (f"--{parameter}", f"{name}.{parameter}"))
        raise UserInputError(
            f"conflicting settings: {flag} {value} but gin sets {macro} = {other!r}. Give "
            f"one of them (drop {flag}, or remove the binding of {macro})."
        )
    settings = {**bound, **{k: v for k, v in flags.items() if v is not None}}
    if settings.get("checkpoint_path") and settings.get("model_dir"):
        raise UserInputError(
            f"conflicting settings: both a checkpoint ({settings['checkpoint_path']}) and "
            f"MODEL_DIR ({settings['model_dir']}, meaning its checkpoints) are given; give one"
        )
    # The task itself is checked by the command (its own message, with the split).
    input_file = settings.get("input_file")
    if input_file and input_file != "-" and Path(input_file).is_file():
        check_utf8(input_file)  # a missing file, or --task as well, the command reports
