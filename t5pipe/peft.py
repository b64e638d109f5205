"""Parameter-efficient fine-tuning: train only the parameters whose path matches a regex.

Frozen parameters go through `optax.set_to_zero()` inside `optax.multi_transform`,
so they get exactly-zero updates (bit-identical after training) and carry no
optimizer state. Prompt tuning (Lester et al. 2021) is the special case
`trainable = "^prompt$"` with `T5Config.prompt_length > 0`: the model prepends a
learned [prompt_length, embed] soft prompt to the encoder's input embeddings.

Parameter paths are the '/'-joined keys, e.g. `encoder/layers_0/attention/query`
or `prompt`; the regex is matched with `re.search`. LoRA adapters (t5pipe.lora) train
with `freeze_except(..., lora.TRAINABLE)`.

`initial_prompt` makes the starting prompt the three ways Lester et al. compare.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from t5pipe.checkpoint_format import resolve_path
from t5pipe.errors import UserInputError
from t5pipe.pytrees import leaf_name

TRAIN, FREEZE = "train", "freeze"
PROMPT_FILE = "prompt.npy"


def trainable_labels(params: Any, trainable: str) -> Any:
    """A pytree like `params` of TRAIN/FREEZE labels; raises if nothing matches."""
    pattern = re.compile(trainable)
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: TRAIN if pattern.search(leaf_name(path)) else FREEZE, params
    )
    if TRAIN not in jax.tree.leaves(labels):
        names = [leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        raise UserInputError(
            f"train.trainable_params={trainable!r} matches no parameter; parameter paths look "
            f"like {names[:5]} (see model-info.txt in MODEL_DIR for all of them)"
        )
    return labels


def freeze_except(
    optimizer: optax.GradientTransformation, params: Any, trainable: str | None
) -> optax.GradientTransformation:
    """`optimizer` on the parameters matching `trainable`, zero updates elsewhere."""
    if not trainable:
        return optimizer
    labels = trainable_labels(params, trainable)
    return optax.multi_transform({TRAIN: optimizer, FREEZE: optax.set_to_zero()}, labels)


def save_prompt(directory: str | Path, params: Any) -> Path:
    """Writes the soft prompt [prompt_length, embed] on its own, as `prompt.npy`."""
    if "prompt" not in params:
        raise ValueError("the model has no soft prompt (set T5Config.prompt_length > 0)")
    path = resolve_path(directory) / PROMPT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    with tmp.open("wb") as file:
        np.save(file, np.asarray(jax.device_get(params["prompt"])))
    tmp.replace(path)  # readers never see a half-written file
    return path


def load_prompt(path: str | Path) -> np.ndarray:
    """A prompt saved by `save_prompt` (a file, or the folder holding `prompt.npy`)."""
    path = resolve_path(path)
    if path.is_dir():
        path = path / PROMPT_FILE
    with path.open("rb") as file:
        return np.load(file)


def merge_prompt(params: Any, prompt: np.ndarray) -> Any:
    """`params` (of a model with the same prompt_length) with `prompt` swapped in."""
    if "prompt" not in params:
        raise UserInputError("the model has no soft prompt (set T5Config.prompt_length > 0)")
    expected = tuple(params["prompt"].shape)
    if tuple(prompt.shape) != expected:
        raise UserInputError(
            f"soft prompt of shape {tuple(prompt.shape)} does not fit the model's {expected} "
            "([prompt_length, d_model]); check T5Config.prompt_length and d_model"
        )
    return {**params, "prompt": jax.numpy.asarray(prompt, params["prompt"].dtype)}


# ----------------------------------------------------------------------------- prompt init

PROMPT_INITS = ("random_uniform", "sampled_vocab", "class_labels")


def label_token_ids(vocabulary, labels: Sequence[str]) -> list[list[int]]:
    """Each class label's token ids (no EOS), for `initial_prompt(..., "class_labels")`."""
    ids = [list(vocabulary.encode(label)) for label in labels]
    empty = [label for label, tokens in zip(labels, ids, strict=True) if not tokens]
    if empty:
        raise UserInputError(f"prompt init: class labels {empty} encode to no tokens")
    return ids


def initial_prompt(
    method: str,
    embedding: np.ndarray,
    prompt_length: int,
    seed: int = 0,
    label_ids: Sequence[Sequence[int]] = (),
    population_size: int = 5000,
    uniform_range: float = 0.5,
) -> np.ndarray:
    """The starting soft prompt [prompt_length, embed] (float32), as Lester et al. 2021:

    random_uniform: i.i.d. uniform in [-uniform_range, uniform_range] (paper: 0.5);
    sampled_vocab:  rows of `embedding` [vocab, embed] drawn without replacement from
                    the first `population_size` ids (T5's SentencePiece ids run from
                    frequent to rare: the paper's "5,000 most common tokens");
    class_labels:   row i is the mean embedding of class label i's tokens (`label_ids`,
                    see `label_token_ids`); rows past the labels are sampled_vocab.
    Deterministic in `seed`.
    """
    if method not in PROMPT_INITS:
        raise UserInputError(f"prompt init {method!r}: expected one of {PROMPT_INITS}")
    embedding = np.asarray(embedding, np.float32)
    rng = np.random.default_rng(seed)
    if method == "random_uniform":
        shape = (prompt_length, embedding.shape[1])
        return rng.uniform(-uniform_range, uniform_range, shape).astype(np.float32)
    population = min(population_size, embedding.shape[0])
    ids = rng.choice(population, prompt_length, replace=prompt_length > population)
    prompt = embedding[ids]
    if method == "class_labels":
        if not label_ids:
            raise UserInputError("prompt init 'class_labels' needs the class labels' token ids")
        if len(label_ids) > prompt_length:
            raise UserInputError(
                f"prompt init 'class_labels': {len(label_ids)} labels do not fit in "
                f"prompt_length={prompt_length}"
            )
        for row, tokens in enumerate(label_ids):
            prompt[row] = embedding[np.asarray(tokens)].mean(axis=0)
    return prompt
