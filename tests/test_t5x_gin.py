"""t5x's gin dialect: gin files written as t5x writes them configure t5pipe the same way.

The files here are written in t5x's dialect for these tests (t5x's own files are not
committed); they use t5x's names, import lines, include paths and block syntax.
"""

from __future__ import annotations

import math
import sys
import textwrap

import gin
import numpy as np
import pytest

from t5pipe import gin_setup
from t5pipe.errors import UserInputError

MODEL = """\
    # A T5.1.1-style model file, t5x's dialect.
    from __gin__ import dynamic_registration
    import seqio
    from t5x import adafactor
    from t5x import models
    from t5x.examples.t5 import network

    Z_LOSS = 0.0002
    LABEL_SMOOTHING = 0.1
    LOSS_NORMALIZING_FACTOR = 233472
    DROPOUT_RATE = %gin.REQUIRED
    VOCABULARY = @seqio.SentencePieceVocabulary()
    seqio.SentencePieceVocabulary.sentencepiece_model_file = "gs://bucket/spm.model"

    OPTIMIZER = @adafactor.Adafactor()
    adafactor.Adafactor:
      decay_rate = 0.7
      step_offset = 0
      logical_factor_rules = @adafactor.standard_logical_factor_rules()

    MODEL = @models.EncoderDecoderModel()
    models.EncoderDecoderModel:
      module = @network.Transformer()
      input_vocabulary = %VOCABULARY
      output_vocabulary = %VOCABULARY
      optimizer_def = %OPTIMIZER
      z_loss = %Z_LOSS
      label_smoothing = %LABEL_SMOOTHING
      loss_normalizing_factor = %LOSS_NORMALIZING_FACTOR

    network.Transformer.config = @network.T5Config()
    network.T5Config:
      vocab_size = 32128
      dtype = 'bfloat16'
      emb_dim = 24
      num_heads = 3
      num_encoder_layers = 2
      num_decoder_layers = 1
      head_dim = 5
      mlp_dim = 40
      mlp_activations = ('gelu', 'linear')
      dropout_rate = %DROPOUT_RATE
      logits_via_embedding = False
"""

RUN = """\
    # A fine-tuning run file, t5x's dialect.
    from __gin__ import dynamic_registration
    import __main__ as train_script
    import seqio
    from t5x import gin_utils
    from t5x import partitioning
    from t5x import utils
    from t5x import trainer

    MODEL_DIR = %gin.REQUIRED
    MIXTURE_OR_TASK_NAME = %gin.REQUIRED
    TASK_FEATURE_LENGTHS = %gin.REQUIRED
    TRAIN_STEPS = %gin.REQUIRED
    INITIAL_CHECKPOINT_PATH = %gin.REQUIRED
    DROPOUT_RATE = 0.1
    BATCH_SIZE = 16
    EVAL_STEPS = 20
    EVALUATOR_NUM_EXAMPLES = None
    EVALUATOR_USE_MEMORY_CACHE = True
    USE_CACHED_TASKS = False
    RANDOM_SEED = None
    TRAIN_STEPS_RELATIVE = None
    MIXTURE_OR_TASK_MODULE = None

    train_script.train:
      model = %MODEL
      model_dir = %MODEL_DIR
      train_dataset_cfg = @train/utils.DatasetConfig()
      train_eval_dataset_cfg = @train_eval/utils.DatasetConfig()
      infer_eval_dataset_cfg = @infer_eval/utils.DatasetConfig()
      checkpoint_cfg = @utils.CheckpointConfig()
      partitioner = @partitioning.PjitPartitioner()
      trainer_cls = @trainer.Trainer
      total_steps = %TRAIN_STEPS
      eval_steps = %EVAL_STEPS
      eval_period = 300
      relative_steps = %TRAIN_STEPS_RELATIVE
      random_seed = %RANDOM_SEED
      summarize_config_fn = @gin_utils.summarize_gin_config
      inference_evaluator_cls = @seqio.Evaluator

    partitioning.PjitPartitioner:
      num_partitions = 2
      logical_axis_rules = @partitioning.standard_logical_axis_rules()

    seqio.Evaluator:
      logger_cls = [@seqio.PyLoggingLogger, @seqio.JSONLogger]
      num_examples = %EVALUATOR_NUM_EXAMPLES
      use_memory_cache = %EVALUATOR_USE_MEMORY_CACHE

    train/utils.DatasetConfig:
      mixture_or_task_name = %MIXTURE_OR_TASK_NAME
      task_feature_lengths = %TASK_FEATURE_LENGTHS
      split = 'train'
      batch_size = %BATCH_SIZE
      shuffle = True
      seed = None
      use_cached = %USE_CACHED_TASKS
      pack = True
      module = %MIXTURE_OR_TASK_MODULE

    train_eval/utils.DatasetConfig:
      mixture_or_task_name = %MIXTURE_OR_TASK_NAME
      split = 'validation'
      batch_size = 8

    infer_eval/utils.DatasetConfig:
      split = 'validation'
      pack = False

    utils.CheckpointConfig:
      restore = @utils.RestoreCheckpointConfig()
      save = @utils.SaveCheckpointConfig()
    utils.RestoreCheckpointConfig:
      path = %INITIAL_CHECKPOINT_PATH
      mode = 'specific'
      dtype = 'float32'
    utils.SaveCheckpointConfig:
      period = 250
      dtype = 'float32'
      keep = 3
      save_dataset = False

    trainer.Trainer:
      num_microbatches = 4
      learning_rate_fn = @utils.create_learning_rate_scheduler()
    utils.create_learning_rate_scheduler:
      factors = 'constant * rsqrt_decay'
      base_learning_rate = 2.0
      warmup_steps = 100
"""

REQUIRED = [
    "MODEL_DIR = '/tmp/t5x_gin_model'",
    "MIXTURE_OR_TASK_NAME = 'wmt19_ende_v003'",
    "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 32}",
    "TRAIN_STEPS = 1000100",
    "INITIAL_CHECKPOINT_PATH = 'gs://bucket/t5x_run/checkpoint_1000000'",
]


@pytest.fixture
def t5x_tree(tmp_path):
    """A folder laid out as t5x's repository: t5x/examples/t5/... and t5x/configs/runs/."""

    def write(relative: str, text: str):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    write("t5x/examples/t5/t5_1_1/mini.gin", MODEL)
    write("t5x/configs/runs/finetune.gin", RUN)
    write.root = tmp_path
    return write


def _train_arguments():
    from t5pipe.train import train

    return gin_setup.resolved_arguments(train, "train")


def test_model_and_run_files_map_onto_t5pipe_settings(t5x_tree):
    example = t5x_tree(
        "my_finetune.gin",
        """\
        from __gin__ import dynamic_registration
        import t5.data.mixtures
        import __main__ as train_script
        include 't5x/examples/t5/t5_1_1/mini.gin'
        include 't5x/configs/runs/finetune.gin'
        EVALUATOR_NUM_EXAMPLES = 10
        train_script.train.eval_period = 100
        """,
    )
    parsed = gin_setup.parse([str(example)], REQUIRED, [str(t5x_tree.root)])
    arguments = _train_arguments()
    model = arguments["model"]
    assert (model.d_model, model.num_heads, model.d_kv, model.d_ff) == (24, 3, 5, 40)
    assert (model.num_encoder_layers, model.num_decoder_layers) == (2, 1)
    assert model.feed_forward_proj == "gated-gelu" and not model.tie_word_embeddings
    assert model.dtype == "bfloat16" and model.dropout_rate == 0.1
    data = arguments["data"]
    assert data.mixture_or_task_name == "wmt19_ende_v003" and data.batch_size == 16
    assert dict(data.task_feature_lengths) == {"inputs": 32, "targets": 32}
    assert data.pack and data.shuffle and data.seed == 0
    optimization = arguments["optimization"]
    assert (optimization.z_loss, optimization.label_smoothing) == (0.0002, 0.1)
    assert optimization.loss_normalizing_factor == 233472
    assert optimization.num_microbatches == 4
    assert optimization.optimizer.__name__ == "adafactor"
    assert gin.query_parameter("adafactor.decay_rate") == 0.7
    schedule = optimization.schedule()
    for step in (0, 50, 100, 400, 10_000):  # t5x: 2.0 / sqrt(max(step, 100))
        assert math.isclose(float(schedule(step)), 2.0 / math.sqrt(max(step, 100)), rel_tol=1e-6)
    checkpoint = arguments["checkpoint"]
    assert (checkpoint.period, checkpoint.keep) == (250, 3)
    assert checkpoint.initial_checkpoint_path == "gs://bucket/t5x_run/checkpoint_1000000"
    evaluation = arguments["evaluation"]
    assert (evaluation.period, evaluation.batch_size, evaluation.max_examples) == (100, 8, 10)
    assert evaluation.with_decoding
    assert arguments["train_steps"] == 1000100 and arguments["seed"] == 0
    assert arguments["vocabulary"].sentencepiece_model_file == "gs://bucket/spm.model"
    assert tuple(gin.query_parameter("create_mesh.mesh_shape")) == (-1, 1, 2)
    # Every t5x setting is listed, with what it became or why it has no effect.
    statuses = {entry.t5x: entry.status for entry in parsed.dialect.entries}
    assert statuses["network.T5Config.emb_dim"] == "mapped"
    assert statuses["seqio.Evaluator.use_memory_cache"] == "no effect"
    assert statuses["train_script.train.eval_steps"] == "no effect"
    assert "t5x" not in sys.modules and "t5" not in sys.modules


def test_relative_steps_map_onto_train_steps_relative(t5x_tree):
    files = [str(t5x_tree.root / "t5x/examples/t5/t5_1_1/mini.gin")]
    files.append(str(t5x_tree.root / "t5x/configs/runs/finetune.gin"))
    gin_setup.parse(files, [*REQUIRED, "TRAIN_STEPS_RELATIVE = 30"])
    assert _train_arguments()["train_steps_relative"] == 30


def test_t5x_include_paths_fall_back_to_shipped_files(tmp_path):
    """Without t5x's files on the search path, its model and run paths are t5pipe's."""
    example = tmp_path / "example.gin"
    example.write_text(
        "include 't5x/examples/t5/t5_1_1/base.gin'\n"
        "include 't5x/configs/runs/finetune.gin'\n"
        "from t5x.examples.t5 import network\n"
        "network.T5Config.num_decoder_layers = 3\n"
    )
    parsed = gin_setup.parse([str(example)], REQUIRED[:4] + ["INITIAL_CHECKPOINT_PATH = None"])
    assert any(f.endswith("models/t5_1_1/base.gin") for f in parsed.files)
    assert any(f.endswith("runs/finetune.gin") for f in parsed.files)
    model = _train_arguments()["model"]
    assert (model.d_model, model.num_decoder_layers, model.num_encoder_layers) == (768, 3, 12)


def test_a_real_t5x_is_never_imported(tmp_path, t5x_tree):
    trap = tmp_path / "trap"
    (trap / "t5x").mkdir(parents=True)
    (trap / "t5x" / "__init__.py").write_text("raise RuntimeError('t5x was imported')\n")
    sys.path.insert(0, str(trap))
    try:
        gin_setup.parse(
            [str(t5x_tree.root / "t5x/examples/t5/t5_1_1/mini.gin")], ["DROPOUT_RATE = 0.0"]
        )
    finally:
        sys.path.remove(str(trap))
    assert "t5x" not in sys.modules


@pytest.mark.parametrize(
    "binding, message",
    [
        (
            "utils.SaveCheckpointConfig.periodd = 5",
            "`utils.SaveCheckpointConfig.periodd` has no t5pipe equivalent (did you mean: period?)",
        ),
        ("utils.RestoreCheckpointConfig.mode = 'latest'", "t5pipe eval --model_dir DIR"),
        ("OPTIMIZER = @optimizers.MultiOptimizer()", "t5pipe maps optimizers.chain"),
        ("adafactor.Adafactor.step_offset = 5", "no step offset"),
        ("network.T5Config.mlp_activations = ('tanh',)", "feed_forward_proj"),
        ("seqio.JSONLogger.write_n_results = 10", "every prediction"),
    ],
)
def test_refused_settings_say_what_to_use(t5x_tree, binding, message):
    files = [str(t5x_tree.root / "t5x/examples/t5/t5_1_1/mini.gin")]
    files.append(str(t5x_tree.root / "t5x/configs/runs/finetune.gin"))
    with pytest.raises(UserInputError) as error:
        gin_setup.parse(files, [*REQUIRED, "from t5x import optimizers", binding])
    assert message in str(error.value)
    assert "--gin flags" in str(error.value) or "line" in str(error.value)


def test_decoding_and_eval_files(t5x_tree):
    example = t5x_tree(
        "eval.gin",
        """\
        from __gin__ import dynamic_registration
        import __main__ as eval_script
        from t5x import partitioning
        from t5x import utils
        from t5x import models
        include "t5x/examples/t5/t5_1_1/mini.gin"
        CHECKPOINT_PATH = %gin.REQUIRED
        EVAL_OUTPUT_DIR = %gin.REQUIRED
        DROPOUT_RATE = 0.0
        eval_script.evaluate:
          model = %MODEL
          dataset_cfg = @utils.DatasetConfig()
          restore_checkpoint_cfg = @utils.RestoreCheckpointConfig()
          output_dir = %EVAL_OUTPUT_DIR
        utils.DatasetConfig:
          mixture_or_task_name = 'wmt14_enfr_v003'
          task_feature_lengths = {'inputs': 64, 'targets': 48}
          split = 'test'
          batch_size = 12
        utils.RestoreCheckpointConfig.path = %CHECKPOINT_PATH
        models.EncoderDecoderModel.predict_batch_with_aux.num_decodes = 4
        """,
    )
    gin_setup.parse(
        [str(example)], ["CHECKPOINT_PATH = 'gs://b/ckpt'", "EVAL_OUTPUT_DIR = '/tmp/out'"],
        [str(t5x_tree.root)],
    )  # fmt: skip
    from t5pipe.decoding import DecodingOptions

    assert gin.query_parameter("evaluate.checkpoint_path") == "gs://b/ckpt"
    assert gin.query_parameter("evaluate.split") == "test"
    assert gin.query_parameter("evaluate.batch_size") == 12
    assert gin.query_parameter("infer.max_input_length") == 64
    decoding = DecodingOptions()
    assert (decoding.method, decoding.num_beams, decoding.max_decode_length) == ("beam", 4, 48)


def test_factor_schedule_is_t5xs_product_of_factors():
    from t5pipe.optimizers import factor_schedule

    steps = np.array([0, 1, 7, 100, 101, 999, 1000, 1001, 25_000, 250_000])

    def expected(factors, base, warmup, **kw):
        out = []
        for step in steps:
            rate = 1.0
            for name in factors.split("*"):
                name = name.strip()
                if name == "constant":
                    rate *= base
                elif name == "linear_warmup":
                    rate *= min(1.0, step / warmup)
                elif name == "rsqrt_decay":
                    rate /= math.sqrt(max(step, warmup))
                elif name == "decay_every":
                    rate *= kw["decay_factor"] ** (step // kw["steps_per_decay"])
                elif name == "cosine_decay":
                    progress = max(0.0, (step - warmup) / kw["steps_per_cycle"])
                    rate *= max(0.0, 0.5 * (1 + math.cos(math.pi * (progress % 1.0))))
            out.append(max(rate, 1e-8))
        return np.array(out)

    cases = [
        ("constant", 0.001, 1000, {}),
        ("constant * rsqrt_decay", 1.0, 10_000, {}),
        ("constant * linear_warmup * rsqrt_decay", 0.01, 1000, {}),
        ("constant * decay_every", 0.5, 0, {"decay_factor": 0.5, "steps_per_decay": 1000}),
        ("constant * cosine_decay", 0.1, 100, {"steps_per_cycle": 10_000}),
    ]
    for factors, base, warmup, kw in cases:
        schedule = factor_schedule(factors, base, warmup, **kw)
        got = np.array([float(schedule(s)) for s in steps])
        np.testing.assert_allclose(got, expected(factors, base, warmup, **kw), rtol=2e-6, atol=1e-8)


def test_dry_run_reads_nothing_and_lists_remote_paths(t5x_tree, tmp_path, capsys):
    from t5pipe.commands import train as train_command

    model_dir = tmp_path / "model"
    code = train_command.main([
        "--dry_run", f"--gin_search_paths={t5x_tree.root}",
        "--gin_file=t5x/examples/t5/t5_1_1/mini.gin", "--gin_file=t5x/configs/runs/finetune.gin",
        *[f"--gin.{b.replace(' = ', '=')}" for b in REQUIRED[1:]], f"--gin.MODEL_DIR={model_dir}",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and not model_dir.exists()
    assert "initial checkpoint: gs://bucket/t5x_run/checkpoint_1000000 (remote, not checked)" in out
    assert "gs://bucket/spm.model (remote, not checked)" in out
    assert "network.T5Config.emb_dim = 24 -> T5Config.d_model [mapped]" in out
    assert "T5Config.d_model = 24" in out  # the operative config


def test_dry_run_fails_on_a_missing_local_checkpoint(t5x_tree, tmp_path, capsys):
    from t5pipe.commands import eval as eval_command

    with pytest.raises(UserInputError, match="does not exist"):
        eval_command.main([
            "--dry_run", "--task=wmt19_ende_v003", f"--checkpoint={tmp_path / 'nope'}",
            f"--output_dir={tmp_path / 'out'}",
        ])  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_t5s_wmt_task_names_are_registered():
    import seqio

    import t5pipe.tasks  # noqa: F401

    for name in ("wmt19_ende_v003", "wmt14_enfr_v003", "wmt_t2t_ende_v003"):
        task = seqio.get_mixture_or_task(name)
        assert "train" in task.splits and "validation" in task.splits
    assert "test" not in seqio.get_mixture_or_task("wmt19_ende_v003").splits


def test_optax_chains_build_optax_itself(t5x_tree):
    import jax.numpy as jnp
    import optax

    gin_setup.parse(
        [str(t5x_tree.root / "t5x/examples/t5/t5_1_1/mini.gin")],
        [
            "DROPOUT_RATE = 0.0",
            "from t5x import optimizers",
            "OPTIMIZER = @optimizers.chain()",
            "optimizers.chain.transformations = [@optax.clip(), @optax.sgd()]",
            "optax.clip.max_delta = 0.5",
            "optax.sgd.learning_rate = 0.1",
        ],
    )
    from t5pipe.train_step import OptimizationConfig

    make = gin.query_parameter("OPTIMIZER/gin.macro.value").scoped_configurable_fn()
    tx = OptimizationConfig(optimizer=make).make_optimizer()  # as train builds it
    params = {"w": jnp.zeros(3)}
    updates, _ = tx.update({"w": jnp.array([2.0, -0.2, 0.1])}, tx.init(params), params)
    expected = optax.chain(optax.clip(0.5), optax.sgd(0.1))
    want, _ = expected.update({"w": jnp.array([2.0, -0.2, 0.1])}, expected.init(params), params)
    np.testing.assert_allclose(updates["w"], want["w"])
    np.testing.assert_allclose(updates["w"], [-0.05, 0.02, -0.01], rtol=1e-6)


def test_the_docs_table_lists_every_mapped_name():
    from testlib import REPO_ROOT

    from t5pipe import gin_dialect_rules
    from t5pipe.gin_dialect import display_name

    text = (REPO_ROOT / "docs" / "t5x_gin.md").read_text()
    missing = [
        f"{display_name(name)}.{parameter}"
        for name, parameter in gin_dialect_rules.RULES
        if f"`{display_name(name)}.{parameter}`" not in text
    ]
    assert not missing
