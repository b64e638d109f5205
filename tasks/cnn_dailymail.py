"""CNN/DailyMail summarisation as T5 has it: `cnn_dailymail_v002` ("summarize: <article>"
-> highlights, ROUGE-1/2/Lsum). Data: TFDS cnn_dailymail:3.4.0 (the version TFDS
builds now; T5 used 3.1.0, which has the same articles and highlights)."""

from __future__ import annotations

import functools

import seqio

from t5pipe.tasks import metrics, preprocessors
from t5pipe.tasks.features import t5_output_features, text_to_text_preprocessors
from t5pipe.tasks.sources import tfds_source

seqio.TaskRegistry.add(
    "cnn_dailymail_v002",
    source=tfds_source("cnn_dailymail:3.4.0", splits=("train", "validation", "test")),
    preprocessors=text_to_text_preprocessors(
        functools.partial(preprocessors.summarize, article_key="article", summary_key="highlights")
    ),
    output_features=t5_output_features(),
    metric_fns=[metrics.rouge],
)
