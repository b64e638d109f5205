"""What each t5x gin name means in t5pipe: mapped, accepted without effect, or refused.

`RULES[(t5x configurable, parameter)]` translates one binding (`t5pipe.gin_dialect`
applies it); `REFERENCES` translates `@name()` values. docs/t5x_gin.md is this table
in prose. Canonical t5x names drop the module path: `utils.DatasetConfig`,
`network.T5Config`, `__main__.train` (t5x's `train_script.train`).
"""

from __future__ import annotations

from t5pipe.gin_dialect import Refused
from t5pipe.gin_dialect_kinds import (
    T5_MODULES,
    Binding,
    Rule,
    _binding,
    _decodes,
    _dtype,
    _infer_lengths,
    _mesh_from_partitions,
    _mesh_from_submesh,
    _microbatches,
    _mlp_activations,
    _restore_path,
    _seed,
    _task_module,
    by_scope,
    is_ref,
    noop,
    only,
    optax_name,
    to,
)

TRAIN = "t5pipe trains on the task's 'train' split"
NO_SCRIPT = "t5pipe has no such entry point"
SAME_TASK = "t5pipe's train-time evaluation reads the training task's 'validation' split"
EVAL_BATCH = "EvalConfig.batch_size: t5pipe's teacher-forced and decoded evaluations share it"
LOGGERS = "t5pipe writes metrics.json, predictions JSONL and TensorBoard events itself"

# t5x's utils.DatasetConfig, unscoped (eval / infer files) or scoped (run files).
_DATASET = {
    "mixture_or_task_name": by_scope({
        "train": to("DataConfig.mixture_or_task_name"),
        "": to("evaluate.mixture_or_task_name", "infer.mixture_or_task_name"),
        "train_eval": noop(SAME_TASK), "infer_eval": noop(SAME_TASK),
    }),
    "task_feature_lengths": by_scope({
        "train": to("DataConfig.task_feature_lengths"),
        "": Rule("evaluate.task_feature_lengths, infer.max_input_length, "
                 "DecodingOptions.max_decode_length", "mapped", "", lambda ctx, value: (
                     ctx.record(value), ctx.defer(value, _infer_lengths),
                     [_binding("evaluate.task_feature_lengths", ctx.native(value))])[-1]),
        "train_eval": noop("the training lengths (TASK_FEATURE_LENGTHS)"),
        "infer_eval": noop("decoded evaluation decodes up to the longest target"),
    }),
    "split": by_scope({
        "train": only(lambda v: v == "train", TRAIN),
        "": to("evaluate.split", "infer.split"),
        "train_eval": only(lambda v: v == "validation", SAME_TASK),
        "infer_eval": only(lambda v: v == "validation", SAME_TASK),
    }),
    "batch_size": by_scope({
        "train": to("DataConfig.batch_size"),
        "": to("evaluate.batch_size", "infer.batch_size"),
        "train_eval": to("EvalConfig.batch_size"),
        "infer_eval": noop(EVAL_BATCH),
    }),
    "shuffle": by_scope({"train": to("DataConfig.shuffle"),
                         "*": noop("t5pipe reads evaluation splits in order")}),
    "seed": by_scope({"train": to("DataConfig.seed", convert=_seed,
                                  note="None (t5x: a new seed each run) -> 0: t5pipe's data "
                                  "order is always seeded, so a resumed run reads on exactly"),
                      "*": noop("t5pipe reads evaluation splits in order")}),
    "use_cached": by_scope({"train": to("DataConfig.use_cached"),
                            "*": noop("t5pipe's evaluation reads the split as registered")}),
    "pack": by_scope({"train": to("DataConfig.pack"),
                      "*": noop("t5pipe evaluates unpacked examples")}),
    "use_custom_packing_ops": noop("t5pipe packs with its own ops"),
    "module": by_scope({"train": to("DataConfig.mixture_or_task_module", convert=_task_module,
                                    note=T5_MODULES),
                        "": to("evaluate.mixture_or_task_module", "infer.mixture_or_task_module",
                               convert=_task_module, note=T5_MODULES),
                        "*": noop("the training task's module is imported already")}),
}  # fmt: skip

_T5CONFIG = {
    "vocab_size": to("T5Config.vocab_size"),
    "dtype": to("T5Config.dtype", convert=_dtype, note="activation dtype; parameters float32"),
    "emb_dim": to("T5Config.d_model"),
    "num_heads": to("T5Config.num_heads"),
    "num_encoder_layers": to("T5Config.num_encoder_layers"),
    "num_decoder_layers": to("T5Config.num_decoder_layers"),
    "head_dim": to("T5Config.d_kv"),
    "mlp_dim": to("T5Config.d_ff"),
    "mlp_activations": to("T5Config.feed_forward_proj", convert=_mlp_activations),
    "dropout_rate": to("T5Config.dropout_rate"),
    "logits_via_embedding": to(
        "T5Config.tie_word_embeddings", note="True: shared output layer, decoder output scaled"
    ),
    "float32_attention_logits": noop("t5pipe's softmax always runs in float32"),
    "scan_layers": to("T5Config.scan_layers"),
}

_PREDICT = {
    "num_decodes": Rule("DecodingOptions.method, DecodingOptions.num_beams", "mapped",
                        "t5x beam-searches num_decodes beams (1: greedy)",
                        lambda ctx, value: (ctx.record(value), ctx.defer(value, _decodes), [])[-1]),
    "return_all_decodes": to("DecodingOptions.num_decodes", convert=lambda v: _refuse_all(v),
                             note="the best decode; more: DecodingOptions.num_decodes"),
}  # fmt: skip


def _refuse_all(value):
    if value:
        raise Refused("t5pipe returns the best decode; set DecodingOptions.num_decodes = N instead")
    return 1


RULES: dict[tuple[str, str], Rule] = {
    **{("utils.DatasetConfig", p): r for p, r in _DATASET.items()},
    **{("network.T5Config", p): r for p, r in _T5CONFIG.items()},
    **{("models.EncoderDecoderModel.predict_batch_with_aux", p): r for p, r in _PREDICT.items()},
    ("models.EncoderDecoderModel", "module"): only(
        is_ref("network.Transformer"), "t5pipe's network is T5 (MODEL = @T5Config())", "MODEL"
    ),
    ("models.EncoderDecoderModel", "input_vocabulary"): to(
        "train.vocabulary", note="eval/infer take the checkpoint's vocabulary"
    ),
    ("models.EncoderDecoderModel", "output_vocabulary"): to("train.vocabulary"),
    ("models.EncoderDecoderModel", "optimizer_def"): to("OptimizationConfig.optimizer"),
    ("models.EncoderDecoderModel", "z_loss"): to("OptimizationConfig.z_loss"),
    ("models.EncoderDecoderModel", "label_smoothing"): to("OptimizationConfig.label_smoothing"),
    ("models.EncoderDecoderModel", "loss_normalizing_factor"): to(
        "OptimizationConfig.loss_normalizing_factor"
    ),
    ("network.Transformer", "config"): only(
        is_ref("network.T5Config"), "t5pipe's network takes a T5Config", "MODEL = @T5Config()"
    ),
    ("adafactor.Adafactor", "decay_rate"): to("adafactor.decay_rate"),
    ("adafactor.Adafactor", "beta1"): to("adafactor.momentum"),
    ("adafactor.Adafactor", "clipping_threshold"): to("adafactor.clipping_threshold"),
    ("adafactor.Adafactor", "multiply_by_parameter_scale"): to(
        "adafactor.multiply_by_parameter_scale"
    ),
    ("adafactor.Adafactor", "factored"): to("adafactor.factored"),
    ("adafactor.Adafactor", "min_dim_size_to_factor"): to("adafactor.min_dim_size_to_factor"),
    ("adafactor.Adafactor", "weight_decay_rate"): to("adafactor.weight_decay_rate"),
    ("adafactor.Adafactor", "step_offset"): only(
        lambda v: v == 0, "t5pipe's Adafactor has no step offset (only 0)"
    ),
    ("adafactor.Adafactor", "logical_factor_rules"): only(
        is_ref("adafactor.standard_logical_factor_rules"),
        "only the standard rules: t5pipe factors each matrix over its two largest axes, as "
        "they do for T5's parameters",
        note="standard rules: same factoring for T5",
    ),
    **{
        ("utils.create_learning_rate_scheduler", p): to(f"factor_schedule.{p}")
        for p in (
            "factors",
            "base_learning_rate",
            "warmup_steps",
            "decay_factor",
            "steps_per_decay",
            "steps_per_cycle",
            "step_offset",
            "min_learning_rate",
        )
    },  # fmt: skip
    ("trainer.Trainer", "num_microbatches"): to(
        "OptimizationConfig.num_microbatches", convert=_microbatches, note="None/0 -> 1"
    ),
    ("trainer.Trainer", "learning_rate_fn"): to("OptimizationConfig.learning_rate"),
    ("trainer.TerminateOnNanAction", "task"): noop(
        "t5pipe stops at the first non-finite training step (OptimizationConfig.on_nonfinite)"
    ),
    ("partitioning.PjitPartitioner", "num_partitions"): to(
        "create_mesh.mesh_shape", convert=_mesh_from_partitions, note="N -> (-1, 1, N)"
    ),
    ("partitioning.PjitPartitioner", "model_parallel_submesh"): Rule(
        "create_mesh.mesh_shape",
        "mapped",
        "(a, b, c, d) -> (-1, 1, a*b*c*d)",
        lambda ctx, value: (ctx.record(value), ctx.defer(value, _mesh_from_submesh), [])[-1],
    ),
    ("partitioning.PjitPartitioner", "logical_axis_rules"): only(
        is_ref("partitioning.standard_logical_axis_rules"),
        "t5pipe's rule sets are logical_axis_rules.name = 'standard', 'fsdp', "
        "'tensor_parallel', 'data_parallel'",
        "logical_axis_rules.name = 'standard'",
        then=lambda v: [_binding("logical_axis_rules.name", "standard")],
    ),
    ("partitioning.standard_logical_axis_rules", "activation_partitioning_dims"): only(
        lambda v: v == 1, "t5pipe's standard rules split activations over one axis"
    ),
    ("partitioning.standard_logical_axis_rules", "parameter_partitioning_dims"): only(
        lambda v: v == 1,
        "t5pipe's standard rules split parameters over one axis "
        "(logical_axis_rules.name = 'fsdp' adds FSDP)",
    ),
    ("partitioning.PjitPartitioner", "params_on_devices"): noop("parameters are on devices"),
    ("partitioning.PjitPartitioner", "backend"): noop("JAX's default backend is used"),
    ("utils.CheckpointConfig", "restore"): only(
        lambda v: v is None or is_ref("utils.RestoreCheckpointConfig")(v),
        "expected @utils.RestoreCheckpointConfig() or None",
        "CheckpointConfig.initial_checkpoint_path",
        note="None: no initial checkpoint (MODEL_DIR's own are still resumed)",
        then=lambda v: [] if v else [_binding("CheckpointConfig.initial_checkpoint_path", None)],
    ),
    ("utils.CheckpointConfig", "save"): only(
        lambda v: v is None or is_ref("utils.SaveCheckpointConfig")(v),
        "expected @utils.SaveCheckpointConfig() or None",
        "CheckpointConfig.period",
        note="None: t5pipe still saves the last step (t5x saves none)",
        then=lambda v: [] if v else [_binding("CheckpointConfig.period", 2**31 - 1)],
    ),
    ("utils.RestoreCheckpointConfig", "path"): to(
        "CheckpointConfig.initial_checkpoint_path",
        "evaluate.checkpoint_path",
        "infer.checkpoint_path",
        convert=_restore_path,
        note="[] -> None (from scratch)",
    ),
    ("utils.RestoreCheckpointConfig", "mode"): only(
        lambda v: v == "specific",
        "t5pipe restores the one checkpoint given (mode 'specific'); "
        "for the latest or every checkpoint use t5pipe eval --model_dir DIR [--all_checkpoints]",
    ),
    ("utils.RestoreCheckpointConfig", "dtype"): noop(
        "t5pipe restores parameters in float32; activations follow T5Config.dtype"
    ),
    ("utils.RestoreCheckpointConfig", "strict"): to(
        "CheckpointConfig.allow_partial_initial_checkpoint", convert=lambda v: not v
    ),
    ("utils.RestoreCheckpointConfig", "restore_dataset"): noop(
        "t5pipe restores the data position of MODEL_DIR's own checkpoints, never an initial one's"
    ),
    ("utils.RestoreCheckpointConfig", "checkpointer_cls"): noop(
        "t5pipe reads t5pipe, T5X and Orbax layouts itself"
    ),
    ("utils.SaveCheckpointConfig", "period"): to("CheckpointConfig.period"),
    ("utils.SaveCheckpointConfig", "keep"): to("CheckpointConfig.keep"),
    ("utils.SaveCheckpointConfig", "dtype"): only(
        lambda v: v == "float32", "t5pipe saves float32 parameters"
    ),
    ("utils.SaveCheckpointConfig", "save_dataset"): noop(
        "every t5pipe checkpoint records the data position (a step count), not the iterator"
    ),
    ("utils.SaveCheckpointConfig", "keep_dataset_checkpoints"): noop("no iterator checkpoints"),
    ("utils.SaveCheckpointConfig", "checkpointer_cls"): noop("t5pipe writes its own layout"),
    ("seqio.Evaluator", "num_examples"): to("EvalConfig.max_examples", "evaluate.max_examples"),
    ("seqio.Evaluator", "use_memory_cache"): noop("t5pipe reads each evaluation split once"),
    ("seqio.Evaluator", "logger_cls"): noop(LOGGERS),
    ("seqio.JSONLogger", "write_n_results"): only(
        lambda v: v is None, "t5pipe writes every prediction (there is no limit)"
    ),
    ("seqio.SentencePieceVocabulary", "sentencepiece_model_file"): to(
        "sentencepiece_vocabulary.sentencepiece_model_file"
    ),
    ("seqio.SentencePieceVocabulary", "extra_ids"): to("sentencepiece_vocabulary.extra_ids"),
    ("seqio.ByteVocabulary", "extra_ids"): to("byt5_vocabulary.extra_ids"),
    ("optimizers.chain", "transformations"): to(
        "optax_chain.transformations", note="optax's transformations, learning rate inside"
    ),
}

_TRAIN = {
    "model": to("train.model"),
    "model_dir": to("train.model_dir"),
    "train_dataset_cfg": only(is_ref("utils.DatasetConfig"), "expected "
                              "@train/utils.DatasetConfig()", "train.data = @DataConfig()",
                              then=lambda v: [_binding("train.data", _native("DataConfig"))]),
    "train_eval_dataset_cfg": only(lambda v: v is None or is_ref("utils.DatasetConfig")(v),
                                   "expected @train_eval/utils.DatasetConfig() or None",
                                   "EvalConfig (teacher-forced)", note=SAME_TASK),
    "infer_eval_dataset_cfg": to("EvalConfig.with_decoding", convert=lambda v: v is not None,
                                 note="None: no decoded evaluation"),
    "checkpoint_cfg": only(is_ref("utils.CheckpointConfig"), "expected @utils.CheckpointConfig()",
                           "train.checkpoint = @CheckpointConfig()",
                           then=lambda v: [_binding("train.checkpoint",
                                                    _native("CheckpointConfig"))]),
    "partitioner": only(is_ref("partitioning.PjitPartitioner"), "expected "
                        "@partitioning.PjitPartitioner()", "create_mesh, logical_axis_rules"),
    "trainer_cls": only(is_ref("trainer.Trainer"), "t5pipe's training loop is its own",
                        "t5pipe.train"),
    "total_steps": to("train.train_steps", note="includes the initial checkpoint's steps"),
    "eval_steps": noop("t5pipe's teacher-forced evaluation covers the examples that "
                       "EvalConfig.max_examples (EVALUATOR_NUM_EXAMPLES) allows"),
    "eval_period": to("EvalConfig.period"),
    "stats_period": to("train.stats_period"),
    "random_seed": to("train.seed", convert=_seed, note="None -> 0 (runs repeat exactly)"),
    "use_hardware_rng": noop("t5pipe uses JAX's default PRNG"),
    "summarize_config_fn": noop("t5pipe writes MODEL_DIR/config.gin itself"),
    "inference_evaluator_cls": only(is_ref("seqio.Evaluator"), "t5pipe's evaluator computes the "
                                    "task's metrics", "EvalConfig"),
    "actions": only(lambda v: _only_nan_actions(v), "t5pipe's only action is stopping on "
                    "non-finite values (OptimizationConfig.on_nonfinite = 'stop')",
                    "OptimizationConfig.on_nonfinite = 'stop'"),
    "run_eval_before_training": only(lambda v: not v, "t5pipe evaluates every EVAL_PERIOD "
                                     "steps and at the end; evaluate a checkpoint with t5pipe "
                                     "eval"),
    "gc_period": noop("t5pipe leaves Python's garbage collector alone"),
}  # fmt: skip


def _only_nan_actions(value) -> bool:
    if not isinstance(value, dict):
        return False
    return all(is_ref("trainer.TerminateOnNanAction")(a) for acts in value.values() for a in acts)


_TRAIN["relative_steps"] = to("train.train_steps_relative",
                              note="steps beyond the initial checkpoint's")  # fmt: skip

_EVALUATE = {
    "model": noop("the model comes with the checkpoint"),
    "dataset_cfg": only(is_ref("utils.DatasetConfig"), "expected @utils.DatasetConfig()",
                        "evaluate.*"),
    "partitioner": _TRAIN["partitioner"],
    "restore_checkpoint_cfg": only(is_ref("utils.RestoreCheckpointConfig"),
                                   "expected @utils.RestoreCheckpointConfig()",
                                   "evaluate.checkpoint_path"),
    "output_dir": to("evaluate.output_dir"),
    "inference_evaluator_cls": _TRAIN["inference_evaluator_cls"],
    "use_hardware_rng": _TRAIN["use_hardware_rng"],
}  # fmt: skip

_INFER = {
    "mode": only(lambda v: v == "predict", "t5pipe infer decodes (mode 'predict'); to score "
                 "labels use t5pipe eval with EvalOptions.rank_classification = True"),
    "model": noop("the model comes with the checkpoint"),
    "output_dir": to("infer.output_file", convert=lambda v: f"{v.rstrip('/')}/infer.jsonl",
                     note="one JSONL file: OUTPUT_DIR/infer.jsonl"),
    "dataset_cfg": _EVALUATE["dataset_cfg"],
    "partitioner": _TRAIN["partitioner"],
    "restore_checkpoint_cfg": _EVALUATE["restore_checkpoint_cfg"],
    "checkpoint_period": noop("t5pipe infer writes each batch as it is decoded"),
    "shard_id": only(lambda v: v == 0, "t5pipe infer decodes the whole split in one job"),
    "num_shards": only(lambda v: v == 1, "t5pipe infer decodes the whole split in one job"),
}  # fmt: skip

RULES.update({("__main__.train", p): r for p, r in _TRAIN.items()})
RULES.update({("__main__.evaluate", p): r for p, r in _EVALUATE.items()})
RULES.update({("__main__.infer", p): r for p, r in _INFER.items()})


def _native(name: str):
    from t5pipe.gin_dialect import native_reference

    return native_reference(name)


# `@name()` of t5x (called or not) -> the t5pipe configurable it becomes.
REFERENCES: dict[tuple[str, bool], tuple[str, bool]] = {
    ("models.EncoderDecoderModel", True): ("T5Config", True),
    ("network.T5Config", True): ("T5Config", True),
    ("seqio.SentencePieceVocabulary", True): ("sentencepiece_vocabulary", True),
    ("seqio.ByteVocabulary", True): ("byt5_vocabulary", True),
    ("adafactor.Adafactor", True): ("adafactor", False),  # t5pipe passes the schedule
    ("utils.create_learning_rate_scheduler", True): ("factor_schedule", True),
    ("utils.CheckpointConfig", True): ("CheckpointConfig", True),
    ("optimizers.chain", True): ("optax_chain", True),
}
SCOPED_TARGETS: frozenset[str] = frozenset()

WHY_NOT = {
    "optimizers": "of t5x's optax wrappers t5pipe maps optimizers.chain (with optax.* inside); "
    "its own optimizers are @adafactor and @adamw",
    "optax": "optax has no such function",
    "export_lib": "t5pipe does not export TensorFlow SavedModels",
    "seqio.Feature": "features are built in t5x's export and TFExample-inference run files; "
    "t5pipe does not export TensorFlow SavedModels nor read TFExample files for inference",
    "__main__.precompile": "t5pipe compiles on the first step; there is no precompile mode",
    "__main__.create_task_from_tfexample_file": "t5pipe infer reads a text file "
    "(--input_file) or a registered task, not TFExample files",
    "models.get_input_vocabulary": "t5pipe takes the vocabulary from the checkpoint",
    "models.get_output_vocabulary": "t5pipe takes the vocabulary from the checkpoint",
}


# What t5x's entry points imply before their first binding: t5pipe's config objects.
PRELUDES: dict[str, list[Binding]] = {
    "__main__.train": [
        _binding("train.data", _native("DataConfig")),
        _binding("train.optimization", _native("OptimizationConfig")),
        _binding("train.checkpoint", _native("CheckpointConfig")),
        _binding("train.evaluation", _native("EvalConfig")),
    ],
}


def rule_for(name: str, parameter: str) -> Rule | None:
    if name.startswith("optax.") and optax_name(name):
        return to(f"{name}.{parameter}", note="optax itself")
    return RULES.get((name, parameter))


def reference_for(name: str, evaluate: bool) -> tuple[str, bool] | None:
    """The t5pipe configurable `@name()` of t5x becomes, or None."""
    if name.startswith("optax.") and optax_name(name):
        return name, evaluate
    return REFERENCES.get((name, evaluate))


def unknown_reason(name: str) -> str:
    for prefix, reason in WHY_NOT.items():
        if name == prefix or name.startswith(prefix + "."):
            return reason
    return f"t5pipe's t5x dialect does not map `{name}`"
