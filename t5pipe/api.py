"""A small Python API for notebooks: load a checkpoint once, then predict and score.

from t5pipe import api
model = api.load("/path/to/CKPT")
model.predict(["translate English to German: Hello"])            # -> ["Hallo"]
model.predict(texts, method="beam", num_beams=4, num_decodes=2)  # -> [[best, second], ...]
model.score(["question: ..."], ["an answer"])                    # -> log-likelihoods
model.classify(["rte sentence1: ... sentence2: ..."], ["entailment", "not_entailment"])

Several LoRA adapters on one base (each merged copy repeats only the adapted kernels):
tuned = {path: model.with_adapter(path) for path in ["runs/a/adapter", "peft_folder"]}
tuned["runs/a/adapter"].predict(texts)       # adapter a's outputs; `model` stays the base
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import seqio
from jax.sharding import Mesh

from t5pipe import adapters, partitioning
from t5pipe.decoding import DecodingOptions
from t5pipe.inference import load_for_inference, predict_texts
from t5pipe.model_config import T5Config
from t5pipe.scoring import rank_classification, score_texts


@dataclasses.dataclass
class LoadedModel:
    """Parameters (placed on `mesh`), their config and vocabulary, loaded once."""

    params: Any
    config: T5Config
    vocabulary: seqio.Vocabulary
    mesh: Mesh
    rules: tuple
    batch_size: int = 32
    max_input_length: int = 512
    adapter: str | None = None  # the adapter merged in by `with_adapter`, as given

    def with_adapter(self, path: str | Path) -> LoadedModel:
        """This model with a LoRA adapter merged in: a t5pipe adapter folder (a LoRA
        run's MODEL_DIR/adapter), a Hugging Face PEFT folder or a LoRA run's checkpoint
        (`t5pipe.adapters`). The base (`self`) is unchanged; an adapter made for another
        model shape is a UserInputError naming its file."""
        adapter = adapters.read_adapter(path, self.config)
        return dataclasses.replace(
            self, params=adapters.merged(self.params, adapter), adapter=adapter.name
        )

    def predict(
        self, inputs: Sequence[str], *, seed: int = 0, with_scores: bool = False, **options
    ) -> list:
        """Decodes each input text. `options` are `DecodingOptions` fields (method,
        max_decode_length, num_beams, alpha, temperature, top_k, top_p, num_decodes).

        Returns one text per input, or a list of texts per input when num_decodes > 1;
        with `with_scores`, the decodes as [{"text", "score", "log_prob"}, ...] per input.
        """
        inputs = _as_texts(inputs)
        decoding = DecodingOptions(**options)
        results = predict_texts(
            self.params, self.config, self.vocabulary, inputs, decoding,
            batch_size=self.batch_size, max_input_length=self.max_input_length,
            mesh=self.mesh, rules=self.rules, rng=jax.random.PRNGKey(seed),
        )  # fmt: skip
        if with_scores:
            return results
        if decoding.num_decodes == 1:
            return [decodes[0]["text"] for decodes in results]
        return [[d["text"] for d in decodes] for decodes in results]

    def score(self, inputs: Sequence[str], targets: Sequence[str]) -> np.ndarray:
        """log p(target + EOS | input) for each pair -> float32 [n]."""
        return score_texts(
            self.params, self.config, self.vocabulary, _as_texts(inputs), _as_texts(targets),
            batch_size=self.batch_size, max_input_length=self.max_input_length,
            mesh=self.mesh, rules=self.rules,
        )  # fmt: skip

    def classify(self, inputs: Sequence[str], labels: Sequence[str]) -> list[str]:
        """Rank classification: the likeliest of `labels` for each input (zero-shot works)."""
        chosen, _ = rank_classification(
            self.params, self.config, self.vocabulary, _as_texts(inputs), labels,
            batch_size=self.batch_size, max_input_length=self.max_input_length,
            mesh=self.mesh, rules=self.rules,
        )  # fmt: skip
        return chosen


def _as_texts(texts: Sequence[str] | str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("expected a list of strings, got one string; wrap it in a list")
    return list(texts)


def load(
    checkpoint_path: str | Path,
    *,
    mesh_shape: Sequence[int] = (-1, 1, 1),
    rules: str = "standard",
    batch_size: int = 32,
    max_input_length: int = 512,
    gin_file: str | Sequence[str] = (),
) -> LoadedModel:
    """Loads a checkpoint onto all local devices (batch split over them by default).

    `checkpoint_path`: a self-describing t5pipe checkpoint (trained, or imported with
    `t5pipe convert`), a MODEL_DIR (its latest), or a t5x checkpoint, whose model and
    vocabulary come from `gin_file` (model gin files, e.g. t5x's t5_1_1/base.gin) or
    else from the t5x run's config.gin beside it.
    """
    from t5pipe import checkpoint_paths

    files = (gin_file,) if isinstance(gin_file, str) else tuple(gin_file)
    checkpoint = checkpoint_paths.locate(checkpoint_path, "checkpoint_path", gin_files=files)
    mesh = partitioning.create_mesh(mesh_shape)
    axis_rules = partitioning.logical_axis_rules(rules)
    params, config, vocabulary = load_for_inference(checkpoint, mesh, axis_rules)
    # Batches split evenly over the devices.
    batch_size = partitioning.round_up(
        batch_size, partitioning.data_parallel_size(mesh, axis_rules)
    )
    return LoadedModel(params, config, vocabulary, mesh, axis_rules, batch_size, max_input_length)
