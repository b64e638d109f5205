"""WMT translation tasks under T5's names ("translate English to German: <en>" -> <de>,
scored by BLEU):

    wmt_t2t_ende_v003   TFDS wmt_t2t_translate/de-en   (the T2T En-De split T5 reports)
    wmt14_ende_v003     TFDS wmt14_translate/de-en
    wmt15_enfr_v003     TFDS wmt15_translate/fr-en     (T5's En-Fr)
    wmt14_enfr_v003     TFDS wmt14_translate/fr-en
    wmt16_enro_v003     TFDS wmt16_translate/ro-en     (T5's En-Ro)
    wmt19_ende_v003     TFDS wmt19_translate/de-en     (t5x's examples; no test split)
"""

from __future__ import annotations

import functools

import seqio

from t5pipe.tasks import metrics, preprocessors
from t5pipe.tasks.features import t5_output_features, text_to_text_preprocessors
from t5pipe.tasks.sources import tfds_source

# task name -> (TFDS name, source language, target language)
WMT_TASKS = {
    "wmt_t2t_ende_v003": ("wmt_t2t_translate/de-en:1.0.0", "en", "de"),
    "wmt14_ende_v003": ("wmt14_translate/de-en:1.0.0", "en", "de"),
    "wmt15_enfr_v003": ("wmt15_translate/fr-en:1.0.0", "en", "fr"),
    "wmt14_enfr_v003": ("wmt14_translate/fr-en:1.0.0", "en", "fr"),
    "wmt16_enro_v003": ("wmt16_translate/ro-en:1.0.0", "en", "ro"),
    "wmt19_ende_v003": ("wmt19_translate/de-en:1.0.0", "en", "de"),
}
# WMT19 publishes no test split in TFDS.
SPLITS = {"wmt19_ende_v003": ("train", "validation")}

for _name, (_tfds_name, _source, _target) in WMT_TASKS.items():
    seqio.TaskRegistry.add(
        _name,
        source=tfds_source(_tfds_name, splits=SPLITS.get(_name, ("train", "validation", "test"))),
        preprocessors=text_to_text_preprocessors(
            functools.partial(
                preprocessors.translate, source_language=_source, target_language=_target
            )
        ),
        output_features=t5_output_features(),
        metric_fns=[metrics.bleu],
    )
