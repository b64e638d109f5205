"""SuperGLUE tasks (`super_glue_<name>_v102`) and `super_glue_v102_proportional`, as T5.

Formatting is GLUE's ("<name> <key>: <text> ..." -> label name) except ReCoRD (one
example per gold entity) and WSC, which T5 recasts as "simple" referent generation
(`super_glue_wsc_v102_simple_train` / `_simple_eval`, plus DPR as extra training
data). Data: TFDS super_glue/<name>:1.0.2.
"""

from __future__ import annotations

import functools

import seqio

from t5pipe.tasks import metrics, postprocessors, preprocessors
from t5pipe.tasks.features import t5_output_features, text_to_text_preprocessors
from t5pipe.tasks.sources import tfds_source

BOOLEAN = ("False", "True")
# name -> (label names, fixed feature order or None for sorted, metric functions)
SUPER_GLUE = {
    "boolq": (BOOLEAN, None, [metrics.accuracy]),
    "cb": (("entailment", "contradiction", "neutral"), None,
           [metrics.mean_multiclass_f1(num_classes=3), metrics.accuracy]),
    "copa": (("choice1", "choice2"), None, [metrics.accuracy]),
    "multirc": (BOOLEAN, ("question", "answer", "paragraph"),
                [metrics.multirc_f1_over_all_answers, metrics.multirc_exact_match]),
    "rte": (("entailment", "not_entailment"), None, [metrics.accuracy]),
    # WiC's word offsets are left out of the text, as T5 does.
    "wic": (BOOLEAN, ("sentence1", "sentence2", "word"), [metrics.accuracy]),
    "axb": (("entailment", "not_entailment"), None, []),  # test set only
    "axg": (("entailment", "not_entailment"), None, []),  # test set only
}  # fmt: skip

# Mixing rates: training-set sizes, eval-only tasks at 0 (T5's SUPER_GLUE_WEIGHT_MAPPING).
SUPER_GLUE_RATES = {
    "dpr_v001_simple": 1_322.0,
    "super_glue_wsc_v102_simple_train": 259.0,
    "super_glue_wsc_v102_simple_eval": 0.0,
    "super_glue_boolq_v102": 9_427.0,
    "super_glue_cb_v102": 250.0,
    "super_glue_copa_v102": 400.0,
    "super_glue_multirc_v102": 27_243.0,
    "super_glue_record_v102": 138_854.0,
    "super_glue_rte_v102": 2_490.0,
    "super_glue_wic_v102": 5_428.0,
    "super_glue_axb_v102": 0.0,
    "super_glue_axg_v102": 0.0,
}

_ALL_SPLITS = ("train", "validation", "test")


def _source(config: str, splits=_ALL_SPLITS) -> seqio.FunctionDataSource:
    return tfds_source(f"super_glue/{config}:1.0.2", splits=splits)


def _register() -> None:
    features = t5_output_features()
    for name, (labels, feature_names, metric_fns) in SUPER_GLUE.items():
        # The diagnostics are read as RTE; AX-b's sentence pair becomes premise/hypothesis.
        benchmark = "rte" if name in ("axb", "axg") else name
        formatting = [
            functools.partial(
                preprocessors.glue, benchmark_name=benchmark, label_names=labels,
                feature_names=feature_names,
            )
        ]  # fmt: skip
        if name == "axb":
            key_map = {
                "premise": "sentence1",
                "hypothesis": "sentence2",
                "label": "label",
                "idx": "idx",
            }
            formatting.insert(0, functools.partial(preprocessors.rekey, key_map=key_map))
        postprocess = (
            postprocessors.multirc
            if name == "multirc"
            else postprocessors.label_postprocessor(labels)
        )
        seqio.TaskRegistry.add(
            f"super_glue_{name}_v102",
            source=_source(name, ("test",) if name in ("axb", "axg") else _ALL_SPLITS),
            preprocessors=text_to_text_preprocessors(*formatting),
            output_features=features,
            postprocess_fn=postprocess,
            metric_fns=metric_fns,
        )

    seqio.TaskRegistry.add(
        "super_glue_record_v102",
        source=_source("record"),
        preprocessors=text_to_text_preprocessors(preprocessors.record),
        output_features=features,
        postprocess_fn=postprocessors.record,
        metric_fns=[metrics.record],
    )
    seqio.TaskRegistry.add(
        "super_glue_wsc_v102_simple_train",
        source=_source("wsc.fixed", ("train",)),
        preprocessors=text_to_text_preprocessors(
            functools.partial(preprocessors.wsc_simple, correct_referent_only=True)
        ),
        output_features=features,
        metric_fns=[],
    )
    seqio.TaskRegistry.add(
        "super_glue_wsc_v102_simple_eval",
        source=_source("wsc.fixed", ("validation", "test")),
        preprocessors=text_to_text_preprocessors(preprocessors.wsc_simple),
        output_features=features,
        postprocess_fn=postprocessors.wsc_simple,
        metric_fns=[metrics.accuracy],
    )
    seqio.TaskRegistry.add(
        "dpr_v001_simple",
        source=tfds_source("definite_pronoun_resolution:1.1.0", splits=("train", "test")),
        preprocessors=text_to_text_preprocessors(preprocessors.definite_pronoun_resolution_simple),
        output_features=features,
        metric_fns=[metrics.accuracy],
    )
    seqio.MixtureRegistry.add("super_glue_v102_proportional", list(SUPER_GLUE_RATES.items()))


_register()
