"""Which vocabulary a run of a non-T5 model family tokenises with.

Task definitions name T5's SentencePiece vocabulary (`tasks.features`), but a umT5 or
T5Gemma checkpoint was trained with its own, which `t5pipe convert` embeds in the
checkpoint. When every task of the run uses T5's default vocabulary and the model's
checkpoint records a SentencePiece vocabulary, that one stands in for T5's
(`vocabularies.stand_in_for_t5`): the same tasks then fine-tune and evaluate the
checkpoint in its own vocabulary. T5 models keep the task's vocabulary, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import seqio

from t5pipe import checkpoint_format, input_pipeline, vocabularies
from t5pipe.model_config import T5Config


def _uses_t5_default(task: seqio.Task | seqio.Mixture) -> bool:
    return all(
        vocabularies.is_t5_default(feature.vocabulary)
        for leaf in input_pipeline.leaf_tasks(task)
        for feature in leaf.output_features.values()
    )


def adopt_checkpoint_vocabulary(
    task: seqio.Task | seqio.Mixture,
    config,
    checkpoint: str | Path | None,
    say: Callable[[str], None],
) -> None:
    """Makes `checkpoint`'s vocabulary stand in for T5's default when the rule above
    applies, and says in one line which vocabulary the run uses (nothing for T5)."""
    vocabularies.stand_in_for_t5(None)  # one run's choice never leaks into the next
    if isinstance(config, T5Config):
        return
    if not _uses_t5_default(task):
        say(f"vocabulary: the task's own ({task.name} does not use T5's default)")
        return
    # A path that is no checkpoint is left to the run's start to report.
    readable = checkpoint and checkpoint_format.is_checkpoint(checkpoint)
    recorded = checkpoint_format.load_vocabulary(checkpoint) if readable else None
    if not isinstance(recorded, seqio.SentencePieceVocabulary):
        say(
            f"vocabulary: T5's default, as task {task.name} says (no SentencePiece "
            f"vocabulary recorded in {checkpoint or 'a checkpoint: the run starts fresh'})"
        )
        return
    vocabularies.stand_in_for_t5(recorded)
    say(
        f"vocabulary: the checkpoint's ({checkpoint}: SentencePiece, {recorded.vocab_size} "
        f"ids) in place of T5's default that task {task.name} names"
    )
