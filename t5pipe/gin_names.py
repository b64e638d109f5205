"""Names that gin files may use for t5pipe's settings besides their own.

`GIN_NAME_CHANGES` maps a binding `selector.parameter` of an earlier t5pipe release onto
the setting that does the same now: `train` took every setting as a keyword argument
before they were grouped into `DataConfig`, `OptimizationConfig`, `CheckpointConfig` and
`EvalConfig`, and gin files written then keep working unchanged. Settings added to
those since (`train.with_optimizer_state`) take the same `train.` spelling.
"""

from __future__ import annotations

import inspect
import re

import gin

from t5pipe.errors import nearest

# Bindings of earlier t5pipe releases -> the setting that does the same now.
GIN_NAME_CHANGES: dict[tuple[str, str], tuple[str, str]] = {
    **{
        ("train", old): ("DataConfig", new)
        for old, new in (
            ("mixture_or_task_name", "mixture_or_task_name"),
            ("mixture_or_task_module", "mixture_or_task_module"),
            ("task_feature_lengths", "task_feature_lengths"),
            ("batch_size", "batch_size"),
            ("use_cached_tasks", "use_cached"),
            ("pack", "pack"),
            ("shuffle", "shuffle"),
            ("input_shards", "input_shards"),
        )
    },
    **{
        ("train", name): ("OptimizationConfig", name)
        for name in (
            "optimizer",
            "learning_rate",
            "z_loss",
            "label_smoothing",
            "loss_normalizing_factor",
            "num_microbatches",
            "trainable_params",
            "on_nonfinite",
        )
    },
    **{
        ("train", old): ("CheckpointConfig", new)
        for old, new in (
            ("checkpoint_period", "period"),
            ("checkpoints_to_keep", "keep"),
            ("best_checkpoint_metric", "best_metric"),
            ("best_checkpoint_mode", "best_mode"),
            ("async_checkpointing", "async_save"),
            ("initial_checkpoint_path", "initial_checkpoint_path"),
            ("allow_partial_initial_checkpoint", "allow_partial_initial_checkpoint"),
            ("initial_prompt_path", "initial_prompt_path"),
            ("with_optimizer_state", "with_optimizer_state"),
        )
    },
    **{
        ("train", old): ("EvalConfig", new)
        for old, new in (
            ("eval_period", "period"),
            ("eval_batch_size", "batch_size"),
            ("eval_max_examples", "max_examples"),
            ("eval_with_decoding", "with_decoding"),
            ("early_stopping_metric", "early_stopping_metric"),
            ("early_stopping_mode", "early_stopping_mode"),
            ("early_stopping_patience", "early_stopping_patience"),
        )
    },
}


def suggestion(message: str) -> str:
    """' (did you mean ...?)' for gin's message about an unknown name, else ''."""
    unknown_parameter = re.search(
        r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", message
    )
    if unknown_parameter:
        configurable, parameter = unknown_parameter.groups()
        return nearest(parameter, _parameters_of(configurable))
    unknown_configurable = re.search(
        r"No configurable matching (?:reference )?'@?([\w.]+)", message
    )
    if unknown_configurable:
        return nearest(unknown_configurable.group(1), registered_configurables())
    return ""


def registered_configurables() -> list[str]:
    names = set()
    for selector in gin.config._REGISTRY._selector_map:  # gin has no public listing
        names.update((selector, selector.split(".")[-1]))
    return sorted(names)


def _parameters_of(configurable: str) -> list[str]:
    """The parameters a binding of `configurable` may name (old names included)."""
    renamed = [old for selector, old in GIN_NAME_CHANGES if selector == configurable]
    try:
        target = gin.config.get_configurable(configurable)
        return [*inspect.signature(target).parameters, *renamed]
    except Exception:  # noqa: BLE001 - suggestions are best effort
        return renamed
