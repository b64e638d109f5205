"""Where task data comes from: local files when configured, else TFDS.

    T5PIPE_GLUE_DIR=/data/glue    GLUE in its original layout (<Task>/{train,dev}.tsv,
                                  as the GLUE download script writes it)
    T5PIPE_SQUAD_DIR=/data/squad  {train,dev}-v1.1.json as published
    otherwise                     TFDS, under `--tfds_data_dir` (seqio's override),
                                  $TFDS_DATA_DIR or ~/tensorflow_datasets

The local readers yield the same examples, with the same features, as the TFDS
builders, so tasks do not care where their data came from. Sources are
`FunctionSource`s whose choice is made when a dataset is requested, never
at registration. Missing data raises `DataNotFoundError`, whose message names the
dataset, where we looked, and how to prepare it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import seqio
import tensorflow as tf

from t5pipe.errors import UserInputError

GLUE_DIR_ENV = "T5PIPE_GLUE_DIR"
SQUAD_DIR_ENV = "T5PIPE_SQUAD_DIR"


class FunctionSource(seqio.FunctionDataSource):
    """`seqio.FunctionDataSource` without its "uncached FunctionDataset" warning.

    seqio warns because a function's data may come back in the same order after a
    restart. t5pipe's functions read small data into memory (GLUE TSVs, SQuAD, the
    built-in tasks, user examples), which the task shuffles whole, or take
    `shuffle_files` with the seed (TFDS, user text files); a restart resumes in the
    seeded order. So the warning would only ever be noise here.
    """

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **unused):
        if shard_info and shard_info.num_shards > 1:
            raise ValueError("a FunctionSource has no low-level shards; use Dataset.shard")
        if seed is None:
            return self._dataset_fn(split=split, shuffle_files=shuffle)
        return self._dataset_fn(split=split, shuffle_files=shuffle, seed=seed)


class DataNotFoundError(UserInputError, FileNotFoundError):
    """A task's data is not where we looked; the message says how to get it (the
    command line prints it without a traceback)."""


# ---------------------------------------------------------------- TFDS


def tfds_data_dir() -> str:
    """The TFDS folder in effect: --tfds_data_dir, else $TFDS_DATA_DIR, else TFDS's default."""
    override = seqio.utils._get_data_dir_override(None)  # set by t5pipe's --tfds_data_dir
    if override:
        return override
    import tensorflow_datasets as tfds

    return os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR


def load_tfds(tfds_name: str, split: str, shuffle_files: bool, seed: int | None, hint: str = ""):
    """tfds `name:version` split as a tf.data.Dataset, or a DataNotFoundError that says
    where we looked and how to prepare the dataset (instead of TFDS's traceback)."""
    import tensorflow_datasets as tfds

    data_dir = tfds_data_dir()
    how = (
        f"Prepare it with `tfds build {tfds_name.split(':')[0]} --data_dir={data_dir}` "
        f"(on a machine with internet; copy the folder over otherwise) and pass "
        f"--tfds_data_dir={data_dir}"
    )
    if hint:
        how += f", or {hint}"
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except Exception as error:  # noqa: BLE001 - TFDS' own errors are deep and vague
        raise DataNotFoundError(
            f"TFDS dataset {tfds_name} is unavailable under {data_dir} ({error}). {how}."
        ) from None
    if not prepared:
        raise DataNotFoundError(f"TFDS dataset {tfds_name} is not prepared in {data_dir}. {how}.")
    if split not in builder.info.splits:
        raise DataNotFoundError(
            f"TFDS dataset {tfds_name} in {data_dir} has no split {split!r} "
            f"(it has {sorted(builder.info.splits)})"
        )
    read_config = tfds.ReadConfig(shuffle_seed=seed) if seed is not None else None
    return builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config)


def tfds_source(tfds_name: str, splits: Sequence[str], hint: str = "") -> seqio.FunctionDataSource:
    """A TFDS dataset that is looked up only when read (unlike seqio.TfdsDataSource,
    whose missing-data errors come from deep inside TFDS)."""

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        return load_tfds(tfds_name, split, shuffle_files, seed, hint)

    dataset_fn.__name__ = f"tfds:{tfds_name}"
    dataset_fn.description = f"TFDS {tfds_name}"
    return FunctionSource(dataset_fn, splits=list(splits))


# ---------------------------------------------------------------- GLUE from TSV files


@dataclasses.dataclass(frozen=True)
class GlueLayout:
    """How one TFDS `glue/<name>` config is laid out in the original GLUE files.

    folder: the task's folder, e.g. "CoLA".
    files: TFDS split -> file in that folder.
    text_features: TFDS feature -> TSV column (header name, or index for headerless CoLA).
    label_column: column holding the label ("" when there is none).
    label_classes: label names (the class id is their index); None for STS-B's float.
    """

    folder: str
    files: dict[str, str]
    text_features: dict[str, str | int]
    label_column: str | int
    label_classes: tuple[str, ...] | None


_STANDARD_SPLITS = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_MNLI_FEATURES = {"premise": "sentence1", "hypothesis": "sentence2"}
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")

_PAIR = {"sentence1": "sentence1", "sentence2": "sentence2"}
_MNLI_MATCHED = {"validation": "dev_matched.tsv", "test": "test_matched.tsv"}
_MNLI_MISMATCHED = {"validation": "dev_mismatched.tsv", "test": "test_mismatched.tsv"}
_MNLI_SPLITS = {
    "train": "train.tsv",
    **{f"{split}_matched": file for split, file in _MNLI_MATCHED.items()},
    **{f"{split}_mismatched": file for split, file in _MNLI_MISMATCHED.items()},
}

GLUE_LAYOUTS: dict[str, GlueLayout] = {
    "cola": GlueLayout("CoLA", _STANDARD_SPLITS, {"sentence": 3}, 1,
                       ("unacceptable", "acceptable")),
    "sst2": GlueLayout("SST-2", _STANDARD_SPLITS, {"sentence": "sentence"}, "label",
                       ("negative", "positive")),
    "mrpc": GlueLayout("MRPC", _STANDARD_SPLITS,
                       {"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality",
                       ("not_equivalent", "equivalent")),
    "qqp": GlueLayout("QQP", _STANDARD_SPLITS,
                      {"question1": "question1", "question2": "question2"}, "is_duplicate",
                      ("not_duplicate", "duplicate")),
    "stsb": GlueLayout("STS-B", _STANDARD_SPLITS, _PAIR, "score", None),
    "mnli": GlueLayout("MNLI", _MNLI_SPLITS, _MNLI_FEATURES, "gold_label", _NLI3),
    "mnli_matched": GlueLayout("MNLI", _MNLI_MATCHED, _MNLI_FEATURES, "gold_label", _NLI3),
    "mnli_mismatched": GlueLayout("MNLI", _MNLI_MISMATCHED, _MNLI_FEATURES, "gold_label", _NLI3),
    "qnli": GlueLayout("QNLI", _STANDARD_SPLITS, {"question": "question", "sentence": "sentence"},
                       "label", _NLI2),
    "rte": GlueLayout("RTE", _STANDARD_SPLITS, _PAIR, "label", _NLI2),
    "wnli": GlueLayout("WNLI", _STANDARD_SPLITS, _PAIR, "label", ("not_entailment", "entailment")),
    "ax": GlueLayout("diagnostic", {"test": "diagnostic.tsv"}, _MNLI_FEATURES, "", _NLI3),
}  # fmt: skip


def read_glue_tsv(name: str, split: str, glue_dir: str | os.PathLike) -> list[dict]:
    """Rows of one GLUE split as TFDS `glue/<name>` examples: text features, `label`
    (class id, -1 when unlabelled; a float for STS-B) and `idx` (row number).

    Like TFDS: no CSV quoting (quotes are text), CoLA's train/dev files have no header,
    MRPC's files start with a UTF-8 byte-order mark, and rows missing a field are dropped.
    """
    layout = GLUE_LAYOUTS[name]
    path = Path(glue_dir) / layout.folder / layout.files[split]
    if not path.is_file():
        raise DataNotFoundError(
            f"GLUE {name} {split}: {path} not found ({GLUE_DIR_ENV}={glue_dir}). The folder "
            f"should hold GLUE in its original layout, e.g. {layout.folder}/"
            f"{layout.files[split]} (as the GLUE download script writes it); or unset "
            f"{GLUE_DIR_ENV} to read TFDS glue/{name}:2.0.0 instead"
        )
    headerless = name == "cola" and split != "test"
    if name == "cola" and split == "test":
        layout = dataclasses.replace(layout, text_features={"sentence": "sentence"})
    examples = []
    # csv refuses fields over 128 KiB by default; no field is longer than the file.
    csv.field_size_limit(max(csv.field_size_limit(), os.path.getsize(path)))
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = None if headerless else next(reader)
        for index, row in enumerate(reader):
            if header is not None:
                row = dict(zip(header, row, strict=False))  # short rows: fields missing
            example = _glue_example(row, layout)
            if example is not None:
                example["idx"] = index  # row number, as TFDS numbers them
                examples.append(example)
    return examples


def _glue_example(row, layout: GlueLayout) -> dict | None:
    def field(column):
        if isinstance(row, dict):
            return row.get(column)
        return row[column] if column < len(row) else None

    example = {feature: field(column) for feature, column in layout.text_features.items()}
    label = field(layout.label_column) if layout.label_column != "" else None
    if layout.label_column == "" or (isinstance(row, dict) and layout.label_column not in row):
        example["label"] = -1.0 if layout.label_classes is None else -1
    elif label is None or label == "":
        return None
    elif layout.label_classes is None:
        example["label"] = float(label)
    elif label in layout.label_classes:
        example["label"] = layout.label_classes.index(label)
    else:
        example["label"] = int(label)
    if any(value is None for value in example.values()):
        return None  # a truncated row, as TFDS drops them
    return example


def glue_source(name: str) -> seqio.FunctionDataSource:
    """GLUE `name` from $T5PIPE_GLUE_DIR when set, else TFDS glue/<name>:2.0.0."""
    layout = GLUE_LAYOUTS[name]
    tfds_name = f"glue/{name}:2.0.0"

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        glue_dir = os.environ.get(GLUE_DIR_ENV)
        if not glue_dir:
            return load_tfds(
                tfds_name, split, shuffle_files, seed,
                hint=f"set {GLUE_DIR_ENV} to a folder of GLUE TSV files "
                     f"({layout.folder}/{layout.files[split]})",
            )  # fmt: skip
        return _glue_dataset(read_glue_tsv(name, split, glue_dir), layout)

    dataset_fn.__name__ = f"glue:{name}"
    dataset_fn.description = f"${GLUE_DIR_ENV}/{layout.folder} or TFDS {tfds_name}"
    return FunctionSource(dataset_fn, splits=list(layout.files))


def _glue_dataset(examples: list[dict], layout: GlueLayout) -> tf.data.Dataset:
    label_dtype = tf.float32 if layout.label_classes is None else tf.int64
    columns = {
        feature: tf.constant([e[feature] for e in examples], tf.string, shape=[len(examples)])
        for feature in layout.text_features
    }
    n = len(examples)
    columns["label"] = tf.constant([e["label"] for e in examples], label_dtype, shape=[n])
    columns["idx"] = tf.constant([e["idx"] for e in examples], tf.int32, shape=[n])
    return tf.data.Dataset.from_tensor_slices(columns)


# ---------------------------------------------------------------- SQuAD from JSON


def read_squad_json(path: str | os.PathLike) -> list[dict]:
    """SQuAD v1.1 JSON -> TFDS squad/v1.1 examples (id, title, context, question,
    answers {text, answer_start}, every gold answer kept)."""
    with open(path, encoding="utf-8") as f:
        articles = json.load(f)["data"]
    examples = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                examples.append(
                    {
                        "id": qa["id"],
                        "title": article["title"],
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": {
                            "text": [a["text"] for a in qa["answers"]],
                            "answer_start": [a["answer_start"] for a in qa["answers"]],
                        },
                    }
                )
    return examples


SQUAD_FILES = {"train": "train-v1.1.json", "validation": "dev-v1.1.json"}


def squad_source() -> seqio.FunctionDataSource:
    """SQuAD v1.1 from $T5PIPE_SQUAD_DIR when set, else TFDS squad/v1.1:3.0.0."""

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        squad_dir = os.environ.get(SQUAD_DIR_ENV)
        if not squad_dir:
            return load_tfds(
                "squad/v1.1:3.0.0", split, shuffle_files, seed,
                hint=f"set {SQUAD_DIR_ENV} to a folder holding {SQUAD_FILES[split]}",
            )  # fmt: skip
        path = Path(squad_dir) / SQUAD_FILES[split]
        if not path.is_file():
            raise DataNotFoundError(
                f"SQuAD v1.1 {split}: {path} not found ({SQUAD_DIR_ENV}={squad_dir}); put the "
                f"official {SQUAD_FILES[split]} there "
                f"(https://rajpurkar.github.io/SQuAD-explorer/) "
                f"or unset {SQUAD_DIR_ENV} to read TFDS squad/v1.1:3.0.0"
            )
        return _squad_dataset(read_squad_json(path))

    dataset_fn.__name__ = "squad:v1.1"
    dataset_fn.description = f"${SQUAD_DIR_ENV} or TFDS squad/v1.1:3.0.0"
    return FunctionSource(dataset_fn, splits=list(SQUAD_FILES))


def _squad_dataset(examples: list[dict]) -> tf.data.Dataset:
    text = tf.TensorSpec([], tf.string)
    signature = {
        "id": text, "title": text, "context": text, "question": text,
        "answers": {"text": tf.TensorSpec([None], tf.string),
                    "answer_start": tf.TensorSpec([None], tf.int32)},
    }  # fmt: skip
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)


# ---------------------------------------------------------------- in-memory examples


def examples_source(
    read_examples: Callable[[str], list[dict]],
    splits: Sequence[str],
    name: str,
    description: str = "",
) -> seqio.FunctionDataSource:
    """A source over `read_examples(split) -> [ {feature: str}, ... ]`, read when the
    dataset is built (user files, see user_data.py). All features are strings."""

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        examples = read_examples(split)
        if not examples:
            raise DataNotFoundError(f"{name}: split {split!r} has no examples")
        columns = {key: tf.constant([e[key] for e in examples], tf.string) for key in examples[0]}
        return tf.data.Dataset.from_tensor_slices(columns)

    dataset_fn.__name__ = name
    dataset_fn.description = description or f"in-memory examples ({name})"
    return FunctionSource(dataset_fn, splits=list(splits))


# ---------------------------------------------------------------- descriptions


def describe_source(task: seqio.Task) -> str:
    """Where a task's data comes from, in a few words (for listings and error messages)."""
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
