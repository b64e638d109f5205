"""The training loop: pretrain or fine-tune on a seqio task or mixture.

`train` checks what it was given (task, lengths, vocabulary, batch layout, the
checkpoint it starts from, a first look at the data) before it writes anything into
MODEL_DIR; then it restores the latest checkpoint there (else initialises, from
INITIAL_CHECKPOINT_PATH when set) and repeats `jit(train_step)` on global batches:
log every `stats_period` steps, evaluate every EVAL_PERIOD steps, save every
CHECKPOINT_PERIOD steps (asynchronously) and at the end.

SIGTERM (or Ctrl-C) saves at the step it arrives and raises `Preempted`; a NaN/Inf loss, gradient
or update raises `NonFiniteLoss` (or is skipped with on_nonfinite='skip'); the update
of such a step is never applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
from pathlib import Path
from typing import Any

import gin
import jax
import numpy as np
import seqio

from t5pipe import (
    best_checkpoint,
    checkpoint_manager,
    initial_optimizer,
    input_pipeline,
    input_state,
    lora,
    model_dir_lock,
    model_vocabulary,
    partitioning,
    peft,
    train_logging,
    train_state,
    vocabularies,
)
from t5pipe.checkpoint_format import make_meta, resolve_path
from t5pipe.checkpoint_manager import CheckpointConfig
from t5pipe.errors import NonFiniteLoss, Preempted, UserInputError
from t5pipe.input_pipeline import DataConfig
from t5pipe.lora import LoraConfig
from t5pipe.model_config import T5Config
from t5pipe.models import abstract_params, model_for
from t5pipe.train_eval import EvalConfig, TrainEvaluator, check_options
from t5pipe.train_step import OptimizationConfig, train_step

ADAPTER_DIR = "adapter"  # MODEL_DIR/adapter: the trained LoRA adapter alone
MODEL_FEATURES = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "encoder_segment_ids",
    "decoder_segment_ids",
)


@gin.configurable
def train(
    *,
    model_dir: str,
    train_steps: int | None = None,
    model: T5Config,
    data: DataConfig,
    optimization: OptimizationConfig,
    checkpoint: CheckpointConfig,
    evaluation: EvalConfig,
    vocabulary: seqio.Vocabulary | None = None,
    seed: int = 0,
    stats_period: int = 100,
    peak_flops_per_device: float | None = None,
    dry_run: bool = False,
    lora_config: LoraConfig | None = None,
    train_steps_relative: int | None = None,
) -> dict[str, Any]:
    """Trains `model` to step `train_steps` (TRAIN_STEPS) into `model_dir` (MODEL_DIR).

    As in t5x, the steps count from the initial checkpoint's step when it carries one
    (INITIAL_CHECKPOINT_PATH of a training run or a t5x checkpoint): from step 400,
    TRAIN_STEPS=430 runs 30 steps. `train_steps_relative` (TRAIN_STEPS_RELATIVE), when
    set, replaces TRAIN_STEPS with the run's first step plus it; unlike t5x, a resumed
    run keeps the end step of the run it resumes.

    `vocabulary`: what checkpoints record (default: the task's targets vocabulary);
    `seed` (RANDOM_SEED): parameter init and dropout; `stats_period` (STATS_PERIOD).
    Returns {"step", "eval" (last eval metrics), "stopped", "train_step_compilations",
    "checkpoint", "tokens_per_second", "best", "state"}; with `dry_run`, only checks (the data's
    first examples read too) and returns {"start": how the run would start, "step": None},
    writing nothing.
    `lora_config` (e.g. `train.lora_config = @LoraConfig()`): LoRA adapters on the
    kernels it selects; only they train (no optimizer state for the frozen base), they
    are saved inside each checkpoint and alone in MODEL_DIR/adapter at the end.
    """
    check_steps(train_steps, train_steps_relative, stats_period)
    model_dir = resolve_path(model_dir)  # gs://... stays remote
    checkpoint = best_checkpoint.ranked_by(checkpoint, evaluation)
    train_logging.check_writable(model_dir)
    task = input_pipeline.check_task(data)
    mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
    partitioning.check_batch_layout(data.batch_size, optimization.num_microbatches, mesh, rules)
    source = checkpoint_manager.latest_checkpoint(model_dir) or checkpoint.initial_checkpoint_path
    model_vocabulary.adopt_checkpoint_vocabulary(task, model, source, train_logging.say)
    vocabulary = _checked_vocabulary(task, vocabulary, model)
    trainable = optimization.trainable_params
    if getattr(model, "prompt_length", 0) > 0 and trainable is None:
        trainable = "^prompt$"  # prompt tuning: only the soft prompt learns
    if lora_config is not None and trainable is None:
        trainable = lora.TRAINABLE  # LoRA: only the adapters learn
    optimization = dataclasses.replace(optimization, trainable_params=trainable)
    with_adapters = _lora_scope(lora_config)  # traces that create or read the adapters
    with with_adapters():
        start = train_state.plan_start(model_dir, checkpoint, model)
        optimizer = optimization.make_optimizer()
        optimizer = initial_optimizer.in_view(optimizer, start, model, lora_config)
        tx = peft.freeze_except(optimizer, abstract_params(model)[0], trainable)
        layout = train_state.state_layout(model, tx, seed, mesh, rules)
    if start.with_optimizer_state:
        initial_optimizer.check(start, tx, layout)
    train_steps = _end_step(start, train_steps, train_steps_relative)
    input_pipeline.check_first_examples(task, data, count_truncation=start.kind != "resume")
    check_options(evaluation, data.mixture_or_task_name)  # rank-classification labels
    if dry_run:
        return {"start": start, "step": None}

    # Everything was checked: from here on MODEL_DIR is written, by this run only.
    with model_dir_lock.acquire(model_dir, say=train_logging.say) as lock:
        loop, step_fn = _run(
            model_dir, train_steps, model, data, optimization, checkpoint, evaluation,
            vocabulary, seed, stats_period, peak_flops_per_device, mesh, rules, tx, layout,
            start, lock, lora_config,
        )  # fmt: skip
    train_logging.write_operative_config(model_dir)
    if getattr(model, "prompt_length", 0) > 0:
        peft.save_prompt(model_dir / "prompt", jax.device_get(loop.state["params"]))
    if lora_config is not None:
        _, adapter = lora.split_adapter(jax.device_get(loop.state["params"]))
        lora.save_adapter(model_dir / ADAPTER_DIR, adapter, lora_config)
    return {
        "step": loop.step,
        "eval": loop.last_eval,
        "stopped": loop.stopped,
        "train_step_compilations": step_fn._cache_size(),
        "checkpoint": str(checkpoint_manager.checkpoints_dir(model_dir) / str(loop.step)),
        "tokens_per_second": loop.tokens_per_second,
        "best": loop.best.best,
        "state": loop.state,
    }


def _run(
    model_dir, train_steps, model, data, optimization, checkpoint, evaluation, vocabulary,
    seed, stats_period, peak_flops_per_device, mesh, rules, tx, layout, start, lock,
    lora_config,
):  # fmt: skip
    """Restores or initialises the state, then runs the loop; returns (loop, step_fn)."""
    manager = checkpoint_manager.make_manager(model_dir, checkpoint, lock.start_time)
    log = train_logging.MetricsLog(model_dir, train_steps)
    try:
        log.message(start.describe(train_steps))
        with partitioning.activation_rules(mesh, rules), _lora_scope(lora_config)():
            state = train_state.start_state(
                start, layout, model, tx, seed, manager, checkpoint, say=log.message
            )
        log.start(int(jax.device_get(state["step"])))
        train_logging.write_model_info(
            model_dir,
            partitioning.describe_params(
                layout.abstract["params"], layout.param_specs, mesh, rules
            ),
        )
        batch_sharding = partitioning.batch_sharding(mesh, rules)
        step = functools.partial(
            train_step,
            model=model_for(model),
            optimizer=tx,
            learning_rate=optimization.schedule(),
            z_loss=optimization.z_loss,
            label_smoothing=optimization.label_smoothing,
            loss_normalizing_factor=optimization.loss_normalizing_factor,
            num_microbatches=optimization.num_microbatches,
            trainable_params=optimization.trainable_params,
        )
        step_fn = jax.jit(
            lora.with_lora(step, lora_config) if lora_config is not None else step,
            in_shardings=(layout.shardings, batch_sharding),
            out_shardings=(layout.shardings, partitioning.replicated(mesh)),
            donate_argnums=(0,),
        )
        meta = make_meta(
            model, vocabulary, kind="train", mixture_or_task_name=data.mixture_or_task_name,
            task_feature_lengths=dict(data.task_feature_lengths),
            **({"lora": lora_config.to_dict()} if lora_config is not None else {}),
            **{train_state.RUN_START_KEY: start.run_start},
            **initial_optimizer.meta(start.optimizer_view),
        )  # fmt: skip
        loop = _Loop(
            model_dir, train_steps, stats_period, state, step_fn, manager, meta, log,
            on_nonfinite=optimization.on_nonfinite, best_metric=checkpoint.best_metric,
            best_mode=checkpoint.best_mode, checkpoint_period=checkpoint.period,
            lora_config=lora_config,
        )  # fmt: skip
        # The data position counts from the run's first step, not the global step: a
        # fine-tune from step 1M starts at its task's first batch. A resume restores the
        # position saved with the checkpoint it restored.
        saved = manager.directory / str(loop.step) / input_state.ITEM
        batches = input_pipeline.train_batches(
            data, start_step=start.data_position(loop.step), sharding=batch_sharding,
            saved_position=saved if start.kind == "resume" else None, say=log.message,
        )  # fmt: skip
        evaluator = TrainEvaluator(
            evaluation, data.mixture_or_task_name, data.task_feature_lengths, data.batch_size,
            model, vocabulary, mesh, rules,
        )  # fmt: skip
        throughput = train_logging.Throughput(
            model, data.batch_size, data.task_feature_lengths, peak_flops_per_device
        )
        log.message(f"training {data.mixture_or_task_name} from step {loop.step} to {train_steps}")
        with partitioning.activation_rules(mesh, rules):
            loop.run(batches, batch_sharding, evaluator, throughput)
    except checkpoint_manager.SaveFailed:
        _close_quietly(manager)  # the failure is reported once, not again by orbax
        raise
    finally:
        log.close()
        manager.wait_until_finished()
        manager.close()
    return loop, step_fn


def _close_quietly(manager) -> None:
    for close in (manager.wait_until_finished, manager.close):
        try:
            close()
        except Exception:  # noqa: BLE001, S110 - already reported as SaveFailed
            pass


def _lora_scope(config: LoraConfig | None):
    """A context factory: `lora.attach(config)`, or nothing without LoRA."""
    return (lambda: lora.attach(config)) if config is not None else contextlib.nullcontext


def check_steps(train_steps, train_steps_relative, stats_period=1) -> None:
    """TRAIN_STEPS / TRAIN_STEPS_RELATIVE (one of them set) and STATS_PERIOD are whole
    numbers >= 1."""
    steps = {"TRAIN_STEPS": train_steps, "TRAIN_STEPS_RELATIVE": train_steps_relative}
    for name, value in {**steps, "STATS_PERIOD": stats_period}.items():
        unset = value is None and name != "STATS_PERIOD"
        if not unset and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserInputError(f"{name}={value!r}: expected a whole number >= 1")
    if train_steps is None and train_steps_relative is None:
        raise UserInputError(
            "TRAIN_STEPS is required but not set: --gin.TRAIN_STEPS=... (the step to stop "
            "at, counting the initial checkpoint's steps) or --gin.TRAIN_STEPS_RELATIVE=... "
            "(steps beyond the initial checkpoint's)"
        )


def _end_step(start: train_state.Start, train_steps, train_steps_relative) -> int:
    """The step to stop at: TRAIN_STEPS, or the run's first step + TRAIN_STEPS_RELATIVE."""
    if train_steps_relative is not None:
        return start.run_start + train_steps_relative
    if start.kind == "initial" and train_steps <= start.step:
        raise UserInputError(
            f"TRAIN_STEPS={train_steps} leaves nothing to train: the initial checkpoint "
            f"{start.path} is at step {start.step}, and TRAIN_STEPS counts its steps, as in "
            f"t5x. For N fine-tuning steps set TRAIN_STEPS={start.step} + N, or "
            "TRAIN_STEPS_RELATIVE=N"
        )
    return train_steps


def _checked_vocabulary(task, vocabulary, model: T5Config) -> seqio.Vocabulary:
    """Every vocabulary of the task loads; the recorded one fits the model's embedding."""
    for leaf in input_pipeline.leaf_tasks(task):
        for feature in leaf.output_features.values():
            vocabularies.check_vocabulary(feature.vocabulary, f"task {task.name}")
    if vocabulary is not None:
        vocabularies.check_vocabulary(vocabulary, "train.vocabulary (VOCABULARY)")
    else:
        vocabulary = task.output_features["targets"].vocabulary
    vocabularies.check_fits_model(vocabulary, model.vocab_size)
    return vocabulary


class _Loop:
    """The steps of one run, from the state's step to `train_steps`."""

    def __init__(
        self, model_dir, train_steps, stats_period, state, step_fn, manager, meta, log, *,
        on_nonfinite, best_metric, checkpoint_period, lora_config=None, best_mode="max",
    ):  # fmt: skip
        self.model_dir, self.train_steps, self.stats_period = model_dir, train_steps, stats_period
        self.state, self.step_fn, self.manager, self.meta, self.log = (
            state, step_fn, manager, meta, log,
        )  # fmt: skip
        self.on_nonfinite, self.best_metric = on_nonfinite, best_metric
        self.best = best_checkpoint.Tracker(
            model_dir, best_metric, best_mode, train_logging.is_primary()
        )
        self.eval_step: int | None = None  # the step `last_eval` evaluated
        self.checkpoint_period, self.lora_config = checkpoint_period, lora_config
        self.step = self.start_step = int(jax.device_get(state["step"]))
        self.last_eval: dict[str, float] = {}
        self.tokens_per_second = float("nan")  # over the whole run, compilation excluded
        self.stopped: str | None = None
        self._pending: tuple[int, dict[str, Any]] | None = None
        self._saving: int | None = None  # the step of the save last started
        self.batches = None  # the training stream, once `run` starts

    def run(self, batches, batch_sharding, evaluator: TrainEvaluator, throughput) -> None:
        sigterm = _SigtermFlag()
        history: list[dict[str, Any]] = []
        self.batches = batches  # its position is saved with each checkpoint
        try:
            while self.step < self.train_steps:
                if sigterm.should_stop(self.step):
                    self._check_nonfinite()
                    self._save()
                    self._wait()
                    path = checkpoint_manager.checkpoints_dir(self.model_dir) / str(self.step)
                    raise Preempted(self.step, path)
                host_batch = next(batches)
                batch = input_pipeline.to_global(
                    {k: host_batch[k] for k in MODEL_FEATURES if k in host_batch}, batch_sharding
                )
                self.state, metrics = self.step_fn(self.state, batch)
                self.step += 1
                self._check_nonfinite()
                self._pending = (self.step, metrics)
                history.append(metrics)
                if self.step == self.start_step + 1:
                    jax.block_until_ready(metrics)  # rates exclude compilation
                    throughput.start(self.step)
                    train_logging.write_operative_config(self.model_dir)
                if self.step % self.stats_period == 0 or self.step == self.train_steps:
                    logged = {**_mean_metrics(history), **throughput.measure(self.step)}
                    history = []
                    self.log.write(self.step, logged)
                    self.log.progress(self.step, logged)
                if evaluator.due(self.step, self.train_steps):
                    self._check_nonfinite()
                    self.last_eval = evaluator.run(self._eval_params())
                    self.eval_step = self.step
                    self.log.write(self.step, self.last_eval, prefix="eval")
                    self.log.message(
                        f"eval at step {self.step}: "
                        + "  ".join(f"{k} {v:.4f}" for k, v in self.last_eval.items())
                    )
                    if evaluator.early_stopping is not None:
                        self.stopped = evaluator.early_stopping.update(self.last_eval, self.step)
                at_period = self.step % self.checkpoint_period == 0
                if at_period or self.step == self.train_steps or self.stopped:
                    self._check_nonfinite()
                    self._save()
                if self.stopped:
                    self.log.message(self.stopped)
                    break
            self._check_nonfinite()
            self._wait()
            self.tokens_per_second = throughput.overall(self.step)
        finally:
            sigterm.restore()

    def _eval_params(self) -> Any:
        """The parameters evaluation runs (adapters merged: decoding needs no LoRA)."""
        params = self.state["params"]
        if self.lora_config is None:
            return params
        base, adapter = lora.split_adapter(params)
        return lora.merge(base, adapter, self.lora_config)

    def _save(self) -> None:
        # The eval of this very step goes into its checkpoint's metadata (and ranks it).
        metrics = self.last_eval if self.eval_step == self.step else None
        if metrics and self.best_metric and self.best_metric not in metrics:
            raise UserInputError(
                f"CheckpointConfig.best_metric={self.best_metric!r} is not among the eval "
                f"metrics {sorted(metrics)}"
            )
        try:  # orbax first waits for the previous (asynchronous) save: its failure shows here
            meta = {**self.meta, "eval_metrics": metrics} if metrics else self.meta
            snapshot = getattr(self.batches, "snapshot", None)  # None: a plain iterator
            position = snapshot() if snapshot else None
            checkpoint_manager.save(self.manager, self.state, meta, metrics, data_position=position)
        except Exception as error:
            previous_done = self._saving is None or checkpoint_manager.is_complete(
                Path(self.manager.directory) / str(self._saving)
            )
            failed = self.step if previous_done else self._saving
            raise checkpoint_manager.save_failed(self.manager, failed, error) from error
        self._saving = self.step
        if self.best.offer(self.step, metrics or {}):
            self.log.message(self.best.describe())

    def _wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            raise checkpoint_manager.save_failed(self.manager, self._saving, error) from error

    def _check_nonfinite(self) -> None:
        """Acts on the previous step's non-finite flag (read one step late, so the host
        never waits for the device right after dispatch)."""
        if self._pending is None:
            return
        step, metrics = self._pending
        self._pending = None
        if not bool(jax.device_get(metrics["nonfinite"])):
            return
        if self.on_nonfinite == "stop":
            self._wait()
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                self.state,
            )
            good, verified = checkpoint_manager.newest_verified(self.manager, abstract)
            raise NonFiniteLoss(_nonfinite_message(step, good, verified, self.model_dir))
        self.log.message(
            f"step {step}: non-finite loss, gradient or update; update skipped "
            f"({int(jax.device_get(metrics['skipped_steps']))} skipped so far)"
        )


class _SigtermFlag:
    """Turns SIGTERM, and Ctrl-C (SIGINT), into a flag the loop checks at each step
    boundary: both save at that step and exit 75.

    With several processes JAX's coordination service receives the signal and
    `reached_preemption_sync_point` makes all processes stop at the same step.
    """

    def __init__(self):
        self.received = False
        self._previous = {}
        self.multiprocess = jax.process_count() > 1
        if not self.multiprocess:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.received = True

    def should_stop(self, step: int) -> bool:
        if self.multiprocess:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.received

    def restore(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _nonfinite_message(
    step: int, last_checkpoint: int | None, verified: bool, model_dir: Path
) -> str:
    last_path = checkpoint_manager.checkpoints_dir(model_dir) / str(last_checkpoint)
    how = "verified against its checksums" if verified else "it records no checksums"
    where = (
        f"the newest checkpoint that reads back intact is {last_path} ({how}; rerunning the "
        "command resumes from it)"
        if last_checkpoint is not None
        else "no checkpoint that reads back intact was saved yet"
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
        if name == "nonfinite":
            continue
        values = np.asarray([m[name] for m in fetched], np.float64)
        out[name] = values[-1] if name in ("skipped_steps", "learning_rate") else values.mean()
    out["loss"] = float(np.float32(out["loss"]))  # one step: its float32 loss, exactly
    # Over the logged steps, per token: each step's mean weighted by its token count.
    tokens = np.asarray([m["num_target_tokens"] for m in fetched], np.float64)
    per_token = np.asarray([m["loss_per_token"] for m in fetched], np.float64)
    del out["loss_per_token"]
    out[train_logging.LOSS_PER_TOKEN] = float(np.sum(per_token * tokens) / max(np.sum(tokens), 1.0))
    return {k: float(v) for k, v in out.items()}
