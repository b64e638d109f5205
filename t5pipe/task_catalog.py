"""The built-in tasks and mixtures, listed without importing seqio (`t5pipe tasks list`).

`t5pipe.tasks` registers these with seqio when imported, which loads TensorFlow (seconds);
a listing needs only names, splits and sources, so they are kept here too.
tests/test_task_catalog.py checks that this table equals what seqio registers: a task
added to, renamed in or removed from `tasks/` must be changed here as well.
"""

from __future__ import annotations

# (name, splits, where the data comes from: `t5pipe.tasks.sources.describe_source`)
TASKS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("builtin_reverse_v001", ("train", "validation", "test"), "dataset_fn"),
    ("builtin_sort_v001", ("train", "validation", "test"), "dataset_fn"),
    ("c4_v220_span_corruption", ("train", "validation"), "TFDS c4/en:3.1.0"),
    ("cnn_dailymail_v002", ("train", "validation", "test"), "TFDS cnn_dailymail:3.4.0"),
    ("dpr_v001_simple", ("train", "test"), "TFDS definite_pronoun_resolution:1.1.0"),
    ("glue_ax_v002", ("test",), "$T5PIPE_GLUE_DIR/diagnostic or TFDS glue/ax:2.0.0"),
    (
        "glue_cola_v002",
        ("train", "validation", "test"),
        "$T5PIPE_GLUE_DIR/CoLA or TFDS glue/cola:2.0.0",
    ),
    (
        "glue_mnli_matched_v002",
        ("validation", "test"),
        "$T5PIPE_GLUE_DIR/MNLI or TFDS glue/mnli_matched:2.0.0",
    ),
    (
        "glue_mnli_mismatched_v002",
        ("validation", "test"),
        "$T5PIPE_GLUE_DIR/MNLI or TFDS glue/mnli_mismatched:2.0.0",
    ),
    (
        "glue_mnli_v002",
        ("train", "validation_matched", "test_matched", "validation_mismatched", "test_mismatched"),
        "$T5PIPE_GLUE_DIR/MNLI or TFDS glue/mnli:2.0.0",
    ),
    (
        "glue_mrpc_v002",
        ("train", "validation", "test"),
        "$T5PIPE_GLUE_DIR/MRPC or TFDS glue/mrpc:2.0.0",
    ),
    (
        "glue_qnli_v002",
        ("train", "validation", "test"),
        "$T5PIPE_GLUE_DIR/QNLI or TFDS glue/qnli:2.0.0",
    ),
    (
        "glue_qqp_v002",
        ("train", "validation", "test"),
        "$T5PIPE_GLUE_DIR/QQP or TFDS glue/qqp:2.0.0",
    ),
    (
        "glue_rte_v002",
        ("train", "validation", "test"),
        "$T5PIPE_GLUE_DIR/RTE or TFDS glue/rte:2.0.0",
    ),
    (
        "glue_sst2_v002",
        ("train", "validation", "test"),
        "$T5PIPE_GLUE_DIR/SST-2 or TFDS glue/sst2:2.0.0",
    ),
    (
        "glue_stsb_v002",
        ("train", "validation", "test"),
        "$T5PIPE_GLUE_DIR/STS-B or TFDS glue/stsb:2.0.0",
    ),
    (
        "glue_wnli_v002",
        ("train", "validation", "test"),
        "$T5PIPE_GLUE_DIR/WNLI or TFDS glue/wnli:2.0.0",
    ),
    (
        "squad_v010_allanswers",
        ("train", "validation"),
        "$T5PIPE_SQUAD_DIR or TFDS squad/v1.1:3.0.0",
    ),
    ("super_glue_axb_v102", ("test",), "TFDS super_glue/axb:1.0.2"),
    ("super_glue_axg_v102", ("test",), "TFDS super_glue/axg:1.0.2"),
    ("super_glue_boolq_v102", ("train", "validation", "test"), "TFDS super_glue/boolq:1.0.2"),
    ("super_glue_cb_v102", ("train", "validation", "test"), "TFDS super_glue/cb:1.0.2"),
    ("super_glue_copa_v102", ("train", "validation", "test"), "TFDS super_glue/copa:1.0.2"),
    ("super_glue_multirc_v102", ("train", "validation", "test"), "TFDS super_glue/multirc:1.0.2"),
    ("super_glue_record_v102", ("train", "validation", "test"), "TFDS super_glue/record:1.0.2"),
    ("super_glue_rte_v102", ("train", "validation", "test"), "TFDS super_glue/rte:1.0.2"),
    ("super_glue_wic_v102", ("train", "validation", "test"), "TFDS super_glue/wic:1.0.2"),
    ("super_glue_wsc_v102_simple_eval", ("validation", "test"), "TFDS super_glue/wsc.fixed:1.0.2"),
    ("super_glue_wsc_v102_simple_train", ("train",), "TFDS super_glue/wsc.fixed:1.0.2"),
    ("wmt14_ende_v003", ("train", "validation", "test"), "TFDS wmt14_translate/de-en:1.0.0"),
    ("wmt14_enfr_v003", ("train", "validation", "test"), "TFDS wmt14_translate/fr-en:1.0.0"),
    ("wmt15_enfr_v003", ("train", "validation", "test"), "TFDS wmt15_translate/fr-en:1.0.0"),
    ("wmt16_enro_v003", ("train", "validation", "test"), "TFDS wmt16_translate/ro-en:1.0.0"),
    ("wmt19_ende_v003", ("train", "validation"), "TFDS wmt19_translate/de-en:1.0.0"),
    ("wmt_t2t_ende_v003", ("train", "validation", "test"), "TFDS wmt_t2t_translate/de-en:1.0.0"),
)

# (name, ((task, mixing rate), ...)) in the order seqio returns the tasks
MIXTURES: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = (
    ("builtin_mixture_v001", (("builtin_reverse_v001", 1.0), ("builtin_sort_v001", 1.0))),
    (
        "glue_v002_proportional",
        (
            ("glue_ax_v002", 0.0),
            ("glue_cola_v002", 8551.0),
            ("glue_mnli_matched_v002", 0.0),
            ("glue_mnli_mismatched_v002", 0.0),
            ("glue_mnli_v002", 392702.0),
            ("glue_mrpc_v002", 3668.0),
            ("glue_qnli_v002", 104743.0),
            ("glue_qqp_v002", 363849.0),
            ("glue_rte_v002", 2490.0),
            ("glue_sst2_v002", 67349.0),
            ("glue_stsb_v002", 5749.0),
        ),
    ),
    (
        "super_glue_v102_proportional",
        (
            ("dpr_v001_simple", 1322.0),
            ("super_glue_axb_v102", 0.0),
            ("super_glue_axg_v102", 0.0),
            ("super_glue_boolq_v102", 9427.0),
            ("super_glue_cb_v102", 250.0),
            ("super_glue_copa_v102", 400.0),
            ("super_glue_multirc_v102", 27243.0),
            ("super_glue_record_v102", 138854.0),
            ("super_glue_rte_v102", 2490.0),
            ("super_glue_wic_v102", 5428.0),
            ("super_glue_wsc_v102_simple_eval", 0.0),
            ("super_glue_wsc_v102_simple_train", 259.0),
        ),
    ),
)
