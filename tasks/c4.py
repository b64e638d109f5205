"""C4 span-corruption pretraining: `c4_v220_span_corruption`, the T5 paper's final
objective, on the C4 version current TFDS builds (c4/en:3.1.0; T5 used 2.2.0, which
TFDS no longer prepares). Feature lengths {"inputs": 512, "targets": 114} match
exactly (see span_corruption.py). No metrics: pretraining only."""

from __future__ import annotations

import seqio

from t5pipe.tasks.features import t5_output_features
from t5pipe.tasks.sources import tfds_source
from t5pipe.tasks.span_corruption import span_corruption_preprocessors

seqio.TaskRegistry.add(
    "c4_v220_span_corruption",
    source=tfds_source("c4/en:3.1.0", splits=("train", "validation")),
    preprocessors=span_corruption_preprocessors(),
    output_features=t5_output_features(),
    metric_fns=[],
)
