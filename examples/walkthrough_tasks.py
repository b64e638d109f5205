"""The base model's training mixture of the README's SST-2 walkthrough.

Registers `walkthrough_base_mix`: the local GLUE tasks other than SST-2 and RTE (CoLA,
MRPC, STS-B, WNLI at their training-set sizes) and T5 span corruption over plain text
(`walkthrough_corpus`, as often as the four together). SST-2 and RTE stay out: SST-2 is
what the walkthrough fine-tunes on, RTE what it evaluates zero- and few-shot.

    T5PIPE_GLUE_DIR=/path/to/glue          # CoLA/train.tsv, MRPC/dev.tsv, ...
    T5PIPE_CORPUS=/path/to/corpus.txt      # comma-separated files or globs
"""

from __future__ import annotations

import os

from t5pipe.errors import UserInputError
from t5pipe.tasks import user_data

CORPUS_ENV = "T5PIPE_CORPUS"
GLUE_SIZES = {
    "glue_cola_v002": 8_551,
    "glue_mrpc_v002": 3_668,
    "glue_stsb_v002": 5_749,
    "glue_wnli_v002": 635,
}

_corpus = os.environ.get(CORPUS_ENV)
if not _corpus:
    raise UserInputError(
        f"examples.walkthrough_tasks: set {CORPUS_ENV} to the plain-text files the base "
        "model's span corruption reads (comma-separated paths or globs), e.g. "
        f"{CORPUS_ENV}=../shared/data/text/wikitext2.valid.tokens"
    )
user_data.text_pretraining_task(
    "walkthrough_corpus", files={"train": _corpus.split(",")}, overwrite=True
)
user_data.mixture(
    "walkthrough_base_mix",
    [*GLUE_SIZES.items(), ("walkthrough_corpus", sum(GLUE_SIZES.values()))],
    overwrite=True,
)
