"""`t5pipe train`: pretrain or fine-tune T5 on a seqio task or mixture, configured by gin.

    t5pipe train --gin_file=runs/quickstart.gin --gin.MODEL_DIR=/tmp/t5pipe_quickstart

The loop: restore the latest checkpoint in MODEL_DIR (else initialise, from
INITIAL_CHECKPOINT_PATH if set), then repeat `jit(train_step)` on global batches;
log every STATS_PERIOD steps, evaluate every EVAL_PERIOD steps, save every
CHECKPOINT_PERIOD steps (asynchronously) and at the end.

Exit codes (`main`):
    0   finished (TRAIN_STEPS reached, or stopped early on the eval metric)
    1   error
    2   bad command line or configuration
    65  stopped on a non-finite loss (train.on_nonfinite = 'stop')
    75  preempted (SIGTERM): a checkpoint was saved at the current step; rerun the
        same command to resume
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from t5pipe import checkpointing, flops, input_pipeline, partitioning, peft, train_logging
from t5pipe.checkpoints import make_meta, resolve_path
from t5pipe.model import T5, abstract_params
from t5pipe.model_config import T5Config
from t5pipe.train_step import eval_step, init_train_state, train_step

log = logging.getLogger("t5pipe.train")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NONFINITE, EXIT_PREEMPTED = 0, 1, 2, 65, 75
MODEL_FEATURES = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "encoder_segment_ids",
    "decoder_segment_ids",
)


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm was NaN/Inf and train.on_nonfinite = 'stop'."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message  # gin appends its call site to str(error); this stays clean


class Preempted(RuntimeError):
    """SIGTERM arrived; the state at `step` was saved."""

    def __init__(self, step: int, path: Path):
        self.message = (
            f"preempted at step {step}: saved checkpoint {path}; rerun the same command to resume"
        )
        super().__init__(self.message)
        self.step, self.path = step, path


# ------------------------------------------------------------------------ sharding


def state_shardings(abstract_state, param_specs, mesh, rules):
    """NamedShardings for the train state: params by their logical specs, optimizer
    leaves derived from their parameter's (`partitioning.state_logical_specs`: moments
    like the parameter, Adafactor's factored statistics keep the remaining axis),
    counters and rng replicated."""
    specs = partitioning.state_logical_specs(abstract_state, abstract_state["params"], param_specs)
    return partitioning.logical_to_sharding(specs, mesh, rules)


def _with_shardings(abstract_tree, shardings):
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract_tree,
        shardings,
    )


# ------------------------------------------------------------------------ helpers


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks at each step boundary.

    With several processes JAX's coordination service receives the signal and
    `reached_preemption_sync_point` makes all processes stop at the same step.
    """

    def __init__(self):
        self.received = False
        self._previous = None
        self.multiprocess = jax.process_count() > 1
        if not self.multiprocess:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.received = True

    def should_stop(self, step: int) -> bool:
        if self.multiprocess:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.received

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _check_feature_lengths(lengths: Mapping[str, int]) -> dict[str, int]:
    lengths = dict(lengths)
    missing = {"inputs", "targets"} - set(lengths)
    if missing:
        raise ValueError(
            f"TASK_FEATURE_LENGTHS={lengths} lacks {sorted(missing)}; an encoder-decoder needs "
            "e.g. {'inputs': 512, 'targets': 114}"
        )
    return lengths


def _ensure_writable(model_dir: Path) -> None:
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        probe = model_dir / f".write_test_{jax.process_index()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ValueError(
            f"MODEL_DIR={str(model_dir)!r} is not writable ({error.strerror}); choose another "
            "folder with --gin.MODEL_DIR=..."
        ) from None


def _nonfinite_message(step, last_checkpoint, model_dir) -> str:
    last_path = checkpointing.checkpoints_dir(model_dir) / str(last_checkpoint)
    where = (
        f"the last good checkpoint is {last_path} (rerunning the command resumes from it)"
        if last_checkpoint is not None
        else "no checkpoint was saved yet"
    )
    return (
        f"non-finite loss or gradient (NaN/Inf) at step {step}; training stopped and the "
        f"update of that step was not applied; {where}. Likely knobs: a lower learning rate "
        "(train.learning_rate / its schedule's base rate, e.g. rsqrt_schedule.base_learning_rate)"
        ", gradient clipping (adafactor.clipping_threshold, adamw.global_norm_clip), ACTIVATION_"
        "DTYPE='float32' instead of float16/bfloat16, a larger Z_LOSS, LOSS_NORMALIZING_FACTOR; "
        "or skip such steps with --gin.train.on_nonfinite=\"'skip'\"."
    )


def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    fetched = jax.device_get(history)
    out = {}
    for name in fetched[0]:
        if name in ("nonfinite",):
            continue
        values = np.asarray([m[name] for m in fetched], np.float64)
        out[name] = values[-1] if name in ("skipped_steps", "learning_rate") else values.mean()
    out["loss"] = float(np.float32(out["loss"]))  # one step: its float32 loss, exactly
    return {k: float(v) for k, v in out.items()}


# ------------------------------------------------------------------------ evaluation


def _teacher_forced_eval(eval_fn, params, batches_by_task, sharding) -> dict[str, float]:
    results = {}
    for task_name, batches in batches_by_task.items():
        sums = None
        for batch in batches:
            out = eval_fn(params, input_pipeline.to_global(batch, sharding))
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        sums = {k: float(v) for k, v in jax.device_get(sums).items()}
        tokens, sequences = max(sums["num_tokens"], 1.0), max(sums["num_sequences"], 1.0)
        results[f"{task_name}/teacher_forced_loss"] = sums["loss_sum"] / tokens
        results[f"{task_name}/teacher_forced_token_accuracy"] = sums["correct_tokens"] / tokens
        # Rows whose every token is the argmax: the exact-match rate of greedy decoding.
        results[f"{task_name}/teacher_forced_exact_match"] = sums["sequences_correct"] / sequences
    return results


def _decoding_eval(
    params, config, vocabulary, task_name, lengths, batch_size, mesh, rules, max_examples
) -> dict[str, float]:
    """Decoding + the task's metrics (t5pipe.evaluate, as `t5pipe eval` runs them)."""
    from t5pipe import evaluate  # imports the decoding stack only when evaluating

    result = evaluate.run_evaluation(
        params,
        config,
        vocabulary,
        task_name,
        split="validation",
        feature_lengths=lengths,
        batch_size=batch_size,
        mesh=mesh,
        rules=rules,
        max_examples=max_examples,
    )
    return {
        f"{task}/{metric}": float(value)
        for task, metrics in result["metrics"].items()
        for metric, value in metrics.items()
        if isinstance(value, int | float)
    }


# ------------------------------------------------------------------------ the loop


@gin.configurable
def train(
    *,
    model_dir: str = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    batch_size: int = 128,
    vocabulary: Any = None,
    model_config: T5Config | None = None,
    mixture_or_task_module: str | None = None,
    use_cached_tasks: bool = False,
    pack: bool = True,
    shuffle: bool = True,
    input_shards: int | None = None,
    seed: int = 0,
    optimizer: Callable[..., optax.GradientTransformation] | None = None,
    learning_rate: optax.Schedule | float | None = None,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
    loss_normalizing_factor: float | str | None = None,
    num_microbatches: int = 1,
    initial_checkpoint_path: str | None = None,
    allow_partial_initial_checkpoint: bool = False,
    trainable_params: str | None = None,
    initial_prompt_path: str | None = None,
    checkpoint_period: int = 1000,
    checkpoints_to_keep: int | None = None,
    best_checkpoint_metric: str | None = None,
    best_checkpoint_mode: str = "max",
    async_checkpointing: bool = True,
    stats_period: int = 100,
    eval_period: int | None = 1000,
    eval_batch_size: int | None = None,
    eval_max_examples: int | None = None,
    eval_with_decoding: bool = True,
    early_stopping_metric: str | None = None,
    early_stopping_mode: str = "max",
    early_stopping_patience: int | None = None,
    on_nonfinite: str = "stop",
    peak_flops_per_device: float | None = None,
) -> dict[str, Any]:
    """Trains and returns a summary: {"step", "eval" (last eval metrics), "stopped",
    "train_step_compilations", "checkpoint"}.

    Macro-bound arguments (t5x names): model_dir=MODEL_DIR, mixture_or_task_name=
    MIXTURE_OR_TASK_NAME, task_feature_lengths=TASK_FEATURE_LENGTHS, train_steps=
    TRAIN_STEPS, batch_size=BATCH_SIZE, initial_checkpoint_path=INITIAL_CHECKPOINT_PATH,
    eval_period=EVAL_PERIOD, use_cached_tasks=USE_CACHED_TASKS, z_loss=Z_LOSS,
    label_smoothing=LABEL_SMOOTHING, loss_normalizing_factor=LOSS_NORMALIZING_FACTOR,
    mixture_or_task_module=MIXTURE_OR_TASK_MODULE, stats_period=STATS_PERIOD,
    checkpoint_period=CHECKPOINT_PERIOD. The model is `T5Config()` as gin binds it.
    `input_shards`: how many seqio shards the training data is read as (default: one
    per process); fixing it makes the global batches the same for any process count
    (see `input_pipeline.train_batches`).
    """
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"train.on_nonfinite={on_nonfinite!r}: expected 'stop' or 'skip'")
    if mixture_or_task_module:
        importlib.import_module(mixture_or_task_module)
    model_dir = resolve_path(model_dir)  # gs://... stays remote
    _ensure_writable(model_dir)
    lengths = _check_feature_lengths(task_feature_lengths)
    task = input_pipeline.get_mixture_or_task(mixture_or_task_name)
    config = model_config or T5Config()
    if vocabulary is None:
        vocabulary = task.output_features["targets"].vocabulary
    if vocabulary.vocab_size > config.vocab_size:
        raise ValueError(
            f"the vocabulary has {vocabulary.vocab_size} ids but T5Config.vocab_size is "
            f"{config.vocab_size}; use a model gin file that matches the task's vocabulary"
        )
    trainable = trainable_params
    if config.prompt_length > 0 and trainable is None:
        trainable = "^prompt$"  # prompt tuning: only the soft prompt learns
    schedule = learning_rate if learning_rate is not None else 1e-3
    schedule_fn = schedule if callable(schedule) else optax.constant_schedule(float(schedule))
    make_optimizer = optimizer
    if make_optimizer is None:
        from t5pipe.optimizers import adafactor

        make_optimizer = adafactor

    mesh = partitioning.create_mesh()
    rules = partitioning.logical_axis_rules()
    model = T5(config)
    abstract_param_tree, param_specs = abstract_params(config)
    tx = peft.freeze_except(
        make_optimizer(learning_rate=schedule_fn), abstract_param_tree, trainable
    )

    def init_state(rng):
        tokens = jnp.ones((1, 8), jnp.int32)
        params = jax.tree.map(
            lambda x: getattr(x, "value", x),
            model.init(rng, tokens, tokens)["params"],
            is_leaf=lambda x: hasattr(x, "value"),
        )
        return init_train_state(params, tx, seed)

    abstract_state = jax.eval_shape(init_state, jax.random.PRNGKey(seed))
    shardings = state_shardings(abstract_state, param_specs, mesh, rules)
    abstract_state = _with_shardings(abstract_state, shardings)

    manager = checkpointing.make_manager(
        model_dir,
        keep=checkpoints_to_keep,
        best_metric=best_checkpoint_metric,
        best_mode=best_checkpoint_mode,
        async_save=async_checkpointing,
    )
    metrics_log = train_logging.MetricsLog(model_dir, train_steps)
    latest = manager.latest_step()
    with partitioning.activation_rules(mesh, rules):
        if latest is not None:
            state = checkpointing.restore(manager, latest, abstract_state)
            restored_from = checkpointing.checkpoints_dir(model_dir) / str(latest)
            metrics_log.message(f"restored {restored_from}")
        else:
            state = jax.jit(init_state, out_shardings=shardings)(jax.random.PRNGKey(seed))
            if initial_checkpoint_path:
                params, report = checkpointing.load_initial_params(
                    initial_checkpoint_path,
                    abstract_state["params"],
                    state["params"],
                    allow_partial=allow_partial_initial_checkpoint,
                )
                for kind in ("missing", "unexpected"):
                    if report[kind]:
                        metrics_log.message(
                            f"initial checkpoint: {len(report[kind])} {kind} parameter(s): "
                            + ", ".join(report[kind])
                        )
                state = {
                    **state,
                    "params": params,
                    "opt_state": jax.jit(tx.init, out_shardings=shardings["opt_state"])(params),
                }
            if initial_prompt_path:
                params = peft.merge_prompt(state["params"], peft.load_prompt(initial_prompt_path))
                state = {**state, "params": jax.device_put(params, shardings["params"])}
    start_step = int(jax.device_get(state["step"]))

    train_logging.write_model_info(
        model_dir, partitioning.describe_params(abstract_state["params"], param_specs, mesh, rules)
    )
    meta = make_meta(
        config,
        vocabulary,
        kind="train",
        mixture_or_task_name=mixture_or_task_name,
        task_feature_lengths=lengths,
    )

    batch_sharding = partitioning.batch_sharding(mesh, rules)
    step_fn = jax.jit(
        functools.partial(
            train_step,
            model=model,
            optimizer=tx,
            learning_rate=schedule_fn,
            z_loss=z_loss,
            label_smoothing=label_smoothing,
            loss_normalizing_factor=loss_normalizing_factor,
            num_microbatches=num_microbatches,
        ),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, partitioning.replicated(mesh)),
        donate_argnums=(0,),
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, model=model),
        in_shardings=(shardings["params"], batch_sharding),
        out_shardings=partitioning.replicated(mesh),
    )

    batches = input_pipeline.train_batches(
        mixture_or_task_name,
        lengths,
        batch_size,
        pack=pack,
        seed=seed,
        start_step=start_step,
        use_cached=use_cached_tasks,
        shuffle=shuffle,
        sharding=batch_sharding,
        num_input_shards=input_shards,
    )
    eval_tasks = input_pipeline.validation_tasks(mixture_or_task_name) if eval_period else []
    eval_batches_by_task: dict[str, list] = {}

    step_flops = flops.train_flops_per_step(
        config, batch_size, lengths["inputs"], lengths["targets"]
    )
    peak = peak_flops_per_device or flops.peak_flops_per_device()
    tokens_per_step = batch_size * (lengths["inputs"] + lengths["targets"])

    def run_eval(state, step) -> dict[str, float]:
        if not eval_tasks:
            return {}
        for eval_task in eval_tasks:
            if eval_task.name not in eval_batches_by_task:
                eval_batches_by_task[eval_task.name] = input_pipeline.eval_batches(
                    eval_task.name,
                    lengths,
                    eval_batch_size or batch_size,
                    max_examples=eval_max_examples,
                    use_cached=use_cached_tasks,
                )
        with partitioning.activation_rules(mesh, rules):
            results = _teacher_forced_eval(
                eval_fn, state["params"], eval_batches_by_task, batch_sharding
            )
            if eval_with_decoding:
                for eval_task in eval_tasks:
                    results.update(
                        _decoding_eval(
                            state["params"],
                            config,
                            vocabulary,
                            eval_task.name,
                            lengths,
                            eval_batch_size or batch_size,
                            mesh,
                            rules,
                            eval_max_examples,
                        )
                    )
        metrics_log.write(step, results, prefix="eval")
        metrics_log.message(
            f"eval at step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in results.items())
        )
        return results

    def save(state, eval_metrics) -> int:
        metrics = {k: v for k, v in eval_metrics.items()} if best_checkpoint_metric else None
        if best_checkpoint_metric and best_checkpoint_metric not in (metrics or {}):
            metrics = None
        return checkpointing.save(manager, state, meta, metrics)

    sigterm = _SigtermFlag()
    history: list[dict[str, Any]] = []
    pending: tuple[int, dict[str, Any]] | None = None
    last_eval: dict[str, float] = {}
    best_value, evals_without_improvement = None, 0
    stopped = None
    step = start_step
    last_log_time, last_log_step = None, step
    metrics_log.message(f"training {mixture_or_task_name} from step {step} to {train_steps}")

    def check_nonfinite(entry):
        if entry is None:
            return
        at_step, metrics = entry
        if bool(jax.device_get(metrics["nonfinite"])):
            if on_nonfinite == "stop":
                manager.wait_until_finished()
                raise NonFiniteLossError(
                    _nonfinite_message(at_step, manager.latest_step(), model_dir)
                )
            metrics_log.message(
                f"step {at_step}: non-finite loss or gradient; update skipped "
                f"({int(jax.device_get(metrics['skipped_steps']))} skipped so far)"
            )

    try:
        with partitioning.activation_rules(mesh, rules):
            while step < train_steps:
                if sigterm.should_stop(step):
                    check_nonfinite(pending)
                    save(state, last_eval)
                    manager.wait_until_finished()
                    raise Preempted(step, checkpointing.checkpoints_dir(model_dir) / str(step))
                host_batch = next(batches)
                batch = input_pipeline.to_global(
                    {k: host_batch[k] for k in MODEL_FEATURES if k in host_batch}, batch_sharding
                )
                state, metrics = step_fn(state, batch)
                step += 1
                check_nonfinite(pending)
                pending = (step, metrics)
                history.append(metrics)
                if step == start_step + 1:
                    jax.block_until_ready(metrics)  # rates exclude compilation
                    last_log_time, last_log_step = time.time(), step
                    train_logging.write_operative_config(model_dir)

                if step % stats_period == 0 or step == train_steps:
                    logged = _mean_metrics(history)
                    history = []
                    now = time.time()
                    if step > last_log_step and last_log_time is not None:
                        rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
                    else:
                        rate = float("nan")
                    last_log_time, last_log_step = now, step
                    logged["steps_per_second"] = rate
                    logged["tokens_per_second"] = rate * tokens_per_step
                    logged["mfu"] = (
                        step_flops * rate / (peak * jax.device_count())
                        if peak and math.isfinite(rate)
                        else None
                    )
                    metrics_log.write(step, logged)
                    metrics_log.progress(step, logged)

                if eval_period and (step % eval_period == 0 or step == train_steps):
                    check_nonfinite(pending)
                    last_eval = run_eval(state, step)
                    if early_stopping_metric and early_stopping_patience:
                        value = last_eval.get(early_stopping_metric)
                        if value is None:
                            raise ValueError(
                                f"train.early_stopping_metric={early_stopping_metric!r} is not "
                                f"among the eval metrics {sorted(last_eval)}"
                            )
                        better = best_value is None or (
                            value > best_value
                            if early_stopping_mode == "max"
                            else value < best_value
                        )
                        best_value = value if better else best_value
                        evals_without_improvement = 0 if better else evals_without_improvement + 1
                        if evals_without_improvement >= early_stopping_patience:
                            stopped = (
                                f"early stop at step {step}: {early_stopping_metric} has "
                                f"not improved for {early_stopping_patience} evaluations"
                            )

                if step % checkpoint_period == 0 or step == train_steps or stopped:
                    check_nonfinite(pending)
                    save(state, last_eval)
                if stopped:
                    metrics_log.message(stopped)
                    break
            check_nonfinite(pending)
            manager.wait_until_finished()
    finally:
        sigterm.restore()
        metrics_log.close()
        manager.wait_until_finished()
        manager.close()

    train_logging.write_operative_config(model_dir)
    if config.prompt_length > 0:
        peft.save_prompt(model_dir / "prompt", jax.device_get(state["params"]))
    compilations = step_fn._cache_size()
    if compilations > 1:
        log.warning("the train step compiled %d times (expected once)", compilations)
    final_checkpoint = checkpointing.checkpoints_dir(model_dir) / str(step)
    return {
        "step": step,
        "eval": last_eval,
        "stopped": stopped,
        "train_step_compilations": compilations,
        "checkpoint": str(final_checkpoint),
        "state": state,
    }


# ------------------------------------------------------------------------ command line


def _parse_flags(argv: list[str]):
    from t5pipe import distributed, gin_setup

    parser = argparse.ArgumentParser(
        prog="t5pipe train",
        description="Train or fine-tune T5 (gin-configured; t5x flags and macro names).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gin_setup.add_gin_flags(parser)
    distributed.add_distributed_flags(parser)
    rest, dot_bindings = gin_setup.split_gin_dot_flags(argv)
    args = parser.parse_args(rest)
    if not args.gin_file and not args.gin_bindings and not dot_bindings:
        parser.error("give at least one --gin_file (e.g. --gin_file=runs/quickstart.gin)")
    distributed.initialize(args)
    return args, dot_bindings


def configure(argv: list[str]) -> None:
    """Parses flags and gin files (the registered tasks and configurables imported first)."""
    from t5pipe import gin_setup, optimizers  # noqa: F401  (gin configurables)

    args, dot_bindings = _parse_flags(argv)
    gin_setup.parse_command_gin(args, dot_bindings)


def _quiet_libraries() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("absl", "jax", "orbax", "tensorflow", "seqio", "jax._src"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass


def main(argv: list[str]) -> int:
    _quiet_libraries()
    try:
        configure(argv)
    except (ValueError, OSError, SyntaxError) as error:
        train_logging.print_error(f"t5pipe train: configuration error: {error}")
        return EXIT_USAGE
    from t5pipe import preflight  # bad input (issue 8) stops here, before MODEL_DIR is touched

    preflight.check_train_config(train)
    try:
        summary = train()
    except Preempted as error:
        train_logging.print_error(f"t5pipe train: {error.message} (exit code {EXIT_PREEMPTED})")
        return EXIT_PREEMPTED
    except NonFiniteLossError as error:
        train_logging.print_error(f"t5pipe train: {error.message} (exit code {EXIT_NONFINITE})")
        return EXIT_NONFINITE
    except (ValueError, FileNotFoundError) as error:
        train_logging.print_error(f"t5pipe train: error: {error}")
        return EXIT_ERROR
    _print_final(summary)
    return EXIT_OK


def _print_final(summary: dict[str, Any]) -> None:
    if jax.process_index() != 0:
        return
    print(f"finished at step {summary['step']}; checkpoint {summary['checkpoint']}")
    teacher_forced = ("teacher_forced_loss", "teacher_forced_token_accuracy")
    for name, value in summary["eval"].items():
        task, metric = name.rsplit("/", 1)
        if metric not in teacher_forced and metric != "teacher_forced_exact_match":
            print(f"held-out {task} validation {metric} (decoded): {value:.4g}")
    for name, value in summary["eval"].items():
        task, metric = name.rsplit("/", 1)
        if metric == "teacher_forced_exact_match":
            print(
                f"held-out {task} validation exact match: {100 * value:.1f}% "
                "(every target token the model's first choice = what greedy decoding returns)"
            )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
