"""SQuAD v1.1 as T5 trains and scores it: `squad_v010_allanswers`.

"question: <q> context: <c>" -> the first gold answer, punctuation padded; scored by
SQuAD EM/F1 taking the max over all gold answers. Data: $T5PIPE_SQUAD_DIR or TFDS
squad/v1.1:3.0.0 (see sources.py).
"""

from __future__ import annotations

import seqio

from t5pipe.tasks import metrics, postprocessors, preprocessors
from t5pipe.tasks.features import t5_output_features, text_to_text_preprocessors
from t5pipe.tasks.sources import squad_source

seqio.TaskRegistry.add(
    "squad_v010_allanswers",
    source=squad_source(),
    preprocessors=text_to_text_preprocessors(preprocessors.squad),
    output_features=t5_output_features(),
    postprocess_fn=postprocessors.qa,
    metric_fns=[metrics.squad],
)
