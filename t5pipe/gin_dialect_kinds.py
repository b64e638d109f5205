"""The kinds of rule the t5x dialect's table is made of, and the value conversions.

`to` (a t5pipe setting), `noop` (accepted, no effect, with the reason), `refuse`,
`only` (some values), `by_scope` (t5x's `train/`, `train_eval/`, ... scopes); and the
configurables t5x's files reach through the dialect (`sentencepiece_vocabulary`,
`optax_chain`, optax's own functions). The table itself is `t5pipe.gin_dialect_rules`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import gin

from t5pipe.gin_dialect import Refused, T5xReference

Binding = tuple[str, str, str, Any]


@gin.configurable
def sentencepiece_vocabulary(
    sentencepiece_model_file: str = gin.REQUIRED,
    extra_ids: int = 0,
    reverse_extra_ids: bool = True,
) -> Any:
    """seqio.SentencePieceVocabulary as t5x's model files configure it (seqio's
    defaults); the model file is read on first use, not here."""
    import seqio

    return seqio.SentencePieceVocabulary(
        sentencepiece_model_file, extra_ids=extra_ids, reverse_extra_ids=reverse_extra_ids
    )


@gin.configurable
def optax_chain(transformations: Any = gin.REQUIRED) -> Callable[..., Any]:
    """t5x's `optimizers.chain`: optax transformations applied in order. As in t5x, the
    learning rate is the one inside them (`optax.adamw.learning_rate`), not the
    training loop's schedule."""

    def make(learning_rate):
        del learning_rate  # the transformations carry their own
        import optax

        return optax.chain(*transformations)

    make.__name__ = "optax_chain"
    return make


def optax_name(name: str) -> str | None:
    """`optax.adamw` registered with gin under its own name (optax itself, configured
    from gin as t5x's files do); None when optax has no such function."""
    import optax

    function = getattr(optax, name.removeprefix("optax."), None)
    if not name.startswith("optax.") or not callable(function):
        return None
    if name not in _REGISTERED_OPTAX:
        gin.external_configurable(function, name=name.removeprefix("optax."), module="optax")
        _REGISTERED_OPTAX.add(name)
    return name


_REGISTERED_OPTAX: set[str] = set()


@dataclasses.dataclass(frozen=True)
class Rule:
    t5pipe: str
    status: str  # mapped | no effect | refused
    note: str
    apply: Callable[..., list[Binding]]
    requires: str = ""  # the values t5pipe accepts, when not every one


def _binding(target: str, value: Any) -> Binding:
    selector, parameter = target.rsplit(".", 1)
    return ("", selector, parameter, value)


def to(*targets: str, note: str = "", convert: Callable[[Any], Any] | None = None) -> Rule:
    """Binds each t5pipe `Selector.parameter` in `targets` to the value (`convert`ed,
    with macros resolved, once every file is read)."""

    def apply(ctx, value):
        ctx.record(value)
        if convert is None:
            native = ctx.native(value)
            return [_binding(target, native) for target in targets]
        ctx.defer(value, lambda resolved: [_binding(t, convert(resolved)) for t in targets])
        return []

    return Rule(", ".join(targets), "mapped", note, apply)


def noop(reason: str, t5pipe: str = "") -> Rule:
    """Accepted and listed: the setting has no role in t5pipe (`reason` says why)."""

    def apply(ctx, value):
        ctx.record(value, "no effect")
        return []

    return Rule(t5pipe, "no effect", reason, apply)


def refuse(message: str) -> Rule:
    def apply(ctx, value):
        ctx.refuse(message)

    return Rule("", "refused", message, apply)


def only(allowed: Callable[[Any], bool], message: str, t5pipe: str = "", note: str = "",
         then: Callable[[Any], list[Binding]] | None = None) -> Rule:  # fmt: skip
    """Accepted for the values `allowed` accepts (checked with macros resolved),
    refused with `message` otherwise; `then(value)` gives bindings."""

    def apply(ctx, value):
        ctx.record(value, "mapped")

        def check(resolved):
            if not allowed(resolved):
                raise Refused(message)
            return then(resolved) if then else []

        ctx.defer(value, check)
        return []

    return Rule(t5pipe, "mapped", note, apply, requires=message)


def is_ref(*names: str) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, T5xReference) and value.name in names


def by_scope(rules: dict[str, Rule]) -> Rule:
    """A rule per gin scope (`train/utils.DatasetConfig` vs unscoped)."""

    def apply(ctx, value):
        rule = rules.get(ctx.scope, rules.get("*"))
        if rule is None:
            ctx.refuse(f"scope {ctx.scope!r} is not one of t5x's {sorted(rules)}")
        ctx.rule = rule
        return rule.apply(ctx, value)

    shown = "; ".join(
        f"{scope or 'unscoped'}: {r.t5pipe or r.status}" for scope, r in rules.items()
    )
    status = "mapped" if any(r.status == "mapped" for r in rules.values()) else rules[""].status
    return Rule(shown, status, "", apply)


# ----------------------------------------------------------------------------- values


def _mlp_activations(value) -> str:
    kinds = {("relu",): "relu", ("gelu",): "gelu", ("gelu", "linear"): "gated-gelu",
             ("relu", "linear"): "gated-relu", ("silu", "linear"): "gated-silu",
             ("swish", "linear"): "gated-silu"}  # fmt: skip
    key = tuple(value) if isinstance(value, list | tuple) else (value,)
    if key not in kinds:
        raise Refused(
            f"t5pipe's feed-forward kinds are {sorted(kinds)} (T5Config.feed_forward_proj)"
        )
    return kinds[key]


def _dtype(value) -> str:
    name = getattr(value, "__name__", None) or str(value)
    name = name.removeprefix("jnp.").removeprefix("jax.numpy.")
    if name not in ("float32", "bfloat16", "float16"):
        raise Refused("expected 'float32', 'bfloat16' or 'float16' (T5Config.dtype)")
    return name


def _microbatches(value) -> int:
    return 1 if value in (None, 0) else int(value)


def _mesh_from_partitions(value) -> tuple[int, int, int]:
    if not isinstance(value, int) or value < 1:
        raise Refused("expected a whole number >= 1 (create_mesh.mesh_shape = (-1, 1, N))")
    return (-1, 1, value)


def _mesh_from_submesh(value) -> list[Binding]:
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(v, int) for v in value):
        raise Refused("expected a tuple of whole numbers (the model-parallel submesh)")
    return [_binding("create_mesh.mesh_shape", (-1, 1, math.prod(value)))]


def _decodes(value) -> list[Binding]:
    """t5x decodes with beam search of `num_decodes` beams (1: greedy)."""
    if not isinstance(value, int) or value < 1:
        raise Refused("expected a whole number >= 1")
    if value == 1:
        return [_binding("DecodingOptions.method", "greedy")]
    return [
        _binding("DecodingOptions.method", "beam"),
        _binding("DecodingOptions.num_beams", value),
    ]


def _restore_path(value):
    if value in ([], (), None, ""):
        return None
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise Refused(
                "t5pipe starts from one checkpoint (CheckpointConfig.initial_checkpoint_path)"
            )
        return value[0]
    return value


def _seed(value) -> int:
    return 0 if value is None else value


T5_MODULES = "T5's task modules (t5.data.mixtures) are not imported: t5pipe registers T5's tasks"


def _task_module(value):
    """T5's own task modules -> None (t5pipe registers T5's task names itself)."""
    if isinstance(value, str) and (value == "t5" or value.startswith("t5.")):
        return None
    if isinstance(value, list | tuple):
        return [v for v in value if not (v == "t5" or str(v).startswith("t5."))] or None
    return value


def _infer_lengths(value) -> list[Binding]:
    if not isinstance(value, dict):
        return []  # None: as long as the inputs (t5pipe infer's own limit)
    bindings = []
    if "inputs" in value:
        bindings.append(_binding("infer.max_input_length", value["inputs"]))
    if "targets" in value:
        bindings.append(_binding("DecodingOptions.max_decode_length", value["targets"]))
    return bindings
