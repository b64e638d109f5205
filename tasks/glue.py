"""GLUE tasks (`glue_<name>_v002`) and the `glue_v002_proportional` mixture, as T5 has them.

Data: $T5PIPE_GLUE_DIR (original GLUE TSV layout) or TFDS glue/<name>:2.0.0 (see sources.py).
"""

from __future__ import annotations

import functools

import seqio

from t5pipe.tasks import metrics, postprocessors, preprocessors
from t5pipe.tasks.features import t5_output_features, text_to_text_preprocessors
from t5pipe.tasks.sources import GLUE_LAYOUTS, glue_source

GLUE_METRICS = {
    "cola": [metrics.matthews_corrcoef],
    "sst2": [metrics.accuracy],
    "mrpc": [metrics.f1_score_with_invalid, metrics.accuracy],
    "qqp": [metrics.f1_score_with_invalid, metrics.accuracy],
    "stsb": [metrics.pearson_corrcoef, metrics.spearman_corrcoef],
    "mnli": [metrics.accuracy],
    "mnli_matched": [metrics.accuracy],
    "mnli_mismatched": [metrics.accuracy],
    "qnli": [metrics.accuracy],
    "rte": [metrics.accuracy],
    "wnli": [metrics.accuracy],
    "ax": [],  # test set only
}

# Mixing rates: training-set sizes; WNLI is left out and eval-only tasks get 0, as T5.
GLUE_RATES = {
    "glue_cola_v002": 8_551.0,
    "glue_sst2_v002": 67_349.0,
    "glue_mrpc_v002": 3_668.0,
    "glue_qqp_v002": 363_849.0,
    "glue_stsb_v002": 5_749.0,
    "glue_mnli_v002": 392_702.0,
    "glue_qnli_v002": 104_743.0,
    "glue_rte_v002": 2_490.0,
    "glue_mnli_mismatched_v002": 0.0,
    "glue_mnli_matched_v002": 0.0,
    "glue_ax_v002": 0.0,
}


def glue_text_preprocessor(name: str):
    """T5's formatting for GLUE `name`: STS-B's own; the MNLI variants and AX read as "mnli"."""
    if name == "stsb":
        return preprocessors.stsb
    benchmark = "mnli" if name.startswith("mnli") or name == "ax" else name
    return functools.partial(
        preprocessors.glue, benchmark_name=benchmark, label_names=GLUE_LAYOUTS[name].label_classes
    )


def glue_postprocessor(name: str):
    if name == "stsb":
        return postprocessors.string_to_float
    return postprocessors.label_postprocessor(GLUE_LAYOUTS[name].label_classes)


def glue_task_name(name: str) -> str:
    return f"glue_{name}_v002"


def _register() -> None:
    features = t5_output_features()
    for name in GLUE_LAYOUTS:
        seqio.TaskRegistry.add(
            glue_task_name(name),
            source=glue_source(name),
            preprocessors=text_to_text_preprocessors(glue_text_preprocessor(name)),
            output_features=features,
            postprocess_fn=glue_postprocessor(name),
            metric_fns=GLUE_METRICS[name],
        )
    seqio.MixtureRegistry.add("glue_v002_proportional", list(GLUE_RATES.items()))


_register()
