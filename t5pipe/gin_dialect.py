"""t5x's gin dialect inside t5pipe's gin parser: t5x's own gin files run unchanged.

t5x's files use gin's dynamic registration: `from t5x import utils` makes
`utils.DatasetConfig` a name, and the bindings configure t5x's classes
(`network.T5Config.emb_dim`, `train_script.train.eval_period`, ...). t5pipe never
imports t5x or t5 (a real installation would be shadowed or, worse, run): the import
lines only record aliases, and every binding of a t5x name is translated here into
the t5pipe setting that does the same (`t5pipe.gin_dialect_rules`), or refused with one
line naming the t5pipe equivalent or saying why there is none.

The parser (`t5pipe.gin_setup`) hands this dialect each statement it does not own:
    - import lines of t5x, t5, seqio, optax, `__main__` and `__gin__`;
    - bindings whose selector starts with such an alias (`utils.`, `network.`, ...);
    - references to t5x names inside values (`@utils.DatasetConfig()`), which the
      parser delegate turns into `T5xReference` placeholders;
    - includes of t5x's own paths that are not on the search path
      (`t5x/examples/t5/t5_1_1/base.gin` -> t5pipe's shipped `models/t5_1_1/base.gin`).
Settings that depend on a value (`mlp_activations`, `num_partitions`) are applied
once every file and flag is read, with the macros resolved.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import gin
from gin import config as gin_config

from t5pipe.errors import UserInputError, nearest

# Aliases t5x's files use, known before any import line (flags such as
# `--gin.network.T5Config.emb_dim=8` then work whatever was imported).
CONVENTIONAL_ALIASES = {
    "utils": "utils",
    "models": "models",
    "network": "network",
    "partitioning": "partitioning",
    "trainer": "trainer",
    "adafactor": "adafactor",
    "gin_utils": "gin_utils",
    "optimizers": "optimizers",
    "checkpoints": "checkpoints",
    "export_lib": "export_lib",
    "seqio": "seqio",
    "optax": "optax",
    "train_script": "__main__",
    "eval_script": "__main__",
    "infer_script": "__main__",
}
# `__main__` names: how t5x's run files spell them.
SCRIPT_ALIASES = {"train": "train_script", "evaluate": "eval_script", "infer": "infer_script"}
T5X_MODEL_FAMILIES = ("t5_1_0", "t5_1_1", "mt5", "byt5")
T5X_RUN_FILES = ("finetune", "pretrain", "eval", "infer")

Binding = tuple[str, str, str, Any]  # scope, selector, parameter, value


@dataclasses.dataclass(frozen=True)
class T5xReference:
    """`@scope/name()` of a t5x name, before translation (`name` canonical, e.g.
    `utils.DatasetConfig`, `__main__.train`)."""

    name: str
    scope: str
    evaluate: bool

    def __repr__(self) -> str:
        scope = f"{self.scope}/" if self.scope else ""
        return f"@{scope}{display_name(self.name)}{'()' if self.evaluate else ''}"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One line of the mapping a parse applied."""

    where: str
    t5x: str
    value: str
    t5pipe: str
    status: str  # mapped | no effect | refused
    note: str = ""


def display_name(canonical: str) -> str:
    """`__main__.train` -> `train_script.train` (how t5x's files spell it)."""
    module, _, rest = canonical.partition(".")
    if module == "__main__":
        return f"{SCRIPT_ALIASES.get(rest.split('.')[0], 'train_script')}.{rest}"
    return canonical


def canonical_module(module: str) -> str | None:
    """The dialect's name of an imported module, or None when it is not t5x's world."""
    if module == "__main__":
        return "__main__"
    if module == "t5x" or module.startswith("t5x."):
        return module.rsplit(".", 1)[-1]
    if module in ("seqio", "optax") or module.startswith(("seqio.", "optax.")):
        return module.split(".")[0]
    if module == "t5" or module.startswith("t5."):
        return "t5"
    return None


def native_reference(name: str, evaluate: bool = True, scope: str = "") -> Any:
    """A reference to a t5pipe configurable, as gin's parser would build it."""
    return gin_config.ConfigurableReference(f"{scope}/{name}" if scope else name, evaluate)


def resolve(value: Any) -> Any:
    """`value` with macros (and gin constants such as gin.REQUIRED) replaced by what
    they are bound to now; lists, tuples and dicts element by element."""
    if isinstance(value, gin_config.ConfigurableReference):
        if value.selector == "gin.macro":
            name = value.scoped_selector.rsplit("/", 1)[0]
            return resolve(gin.query_parameter(f"{name}/gin.macro.value"))
        if value.selector == "gin.constant":
            return copy.deepcopy(value)  # gin evaluates a constant's reference on copy
        return value
    if isinstance(value, list | tuple):
        return type(value)(resolve(item) for item in value)
    if isinstance(value, dict):
        return {key: resolve(item) for key, item in value.items()}
    return value


class Dialect:
    """The t5x names one parse has seen, the settings it applied, and what remains to
    apply once every file and flag is read."""

    def __init__(self):
        self.aliases: dict[str, str] = dict(CONVENTIONAL_ALIASES)
        self.entries: list[Entry] = []
        self._deferred: list[tuple[str, str, Any, Callable[[Any], list[Binding]]]] = []
        self.state: dict[str, Any] = {}  # settings that depend on each other

    # ------------------------------------------------------------------ statements

    def on_import(self, module: str, alias: str | None, is_from: bool, where: str) -> bool:
        """Records a t5x-world import line (never importing it); False: not ours."""
        if module == "__gin__.dynamic_registration":
            self.note(where, "from __gin__ import dynamic_registration", "", "t5x dialect",
                      "mapped", "t5x names are translated, none imported")  # fmt: skip
            return True
        canonical = canonical_module(module)
        if canonical is None:
            return False
        name = alias or (module.rsplit(".", 1)[-1] if is_from else module)
        self.aliases[name] = canonical
        if canonical == "t5":
            self.note(where, f"import {module}", "", "t5pipe.tasks", "mapped",
                      "T5's task names are registered by t5pipe (T5's preprocessing)")  # fmt: skip
        return True

    def owns(self, selector: str) -> str | None:
        """The canonical t5x name of `selector` (`utils.DatasetConfig`), or None."""
        for alias in sorted(self.aliases, key=len, reverse=True):
            if selector.startswith(alias + "."):
                return f"{self.aliases[alias]}.{selector[len(alias) + 1 :]}"
        return None

    def binding(self, scope: str, selector: str, parameter: str, value: Any, where: str):
        """The t5pipe bindings that do what t5x's `scope/selector.parameter = value`
        does (some applied later, see `finish`); raises UserInputError when refused."""
        from t5pipe import gin_dialect_rules as gin_rules

        name = self.owns(selector)
        rule = gin_rules.rule_for(name, parameter)
        shown = f"{scope + '/' if scope else ''}{display_name(name)}.{parameter}"
        if rule is None:
            known = [p for (n, p) in gin_rules.RULES if n == name]
            why = (
                f"of {display_name(name)}, t5pipe maps {', '.join(known)}"
                if known
                else gin_rules.unknown_reason(name)
            )
            raise UserInputError(
                f"{where}: t5x's `{shown}` has no t5pipe equivalent"
                f"{nearest(parameter, known) if known else ''} ({why}; see docs/t5x_gin.md)"
            )
        context = RuleContext(self, scope, shown, where, rule)
        prelude = [] if name in self.state else gin_rules.PRELUDES.get(name, [])
        self.state.setdefault(name, True)
        return [*prelude, *rule.apply(context, value)]

    def macro_value(self, value: Any, where: str) -> Any:
        """A macro's value (`MODEL = @models.EncoderDecoderModel()`) in t5pipe's terms."""
        return self.native(value, where, "a macro")

    def native(self, value: Any, where: str, what: str) -> Any:
        """`value` with every t5x reference replaced by its t5pipe counterpart."""
        from t5pipe import gin_dialect_rules as gin_rules

        if isinstance(value, T5xReference):
            target = gin_rules.reference_for(value.name, value.evaluate)
            if target is None:
                raise UserInputError(
                    f"{where}: {value!r} has no t5pipe counterpart as {what} "
                    f"({gin_rules.unknown_reason(value.name)})"
                )
            name, evaluate = target
            scope = value.scope if name in gin_rules.SCOPED_TARGETS else ""
            return native_reference(name, evaluate, scope)
        if isinstance(value, list | tuple):
            return type(value)(self.native(item, where, what) for item in value)
        if isinstance(value, dict):
            return {key: self.native(item, where, what) for key, item in value.items()}
        return value

    def include(self, name: str) -> str | None:
        """t5pipe's shipped file for an include of t5x's own path, or None."""
        parts = name.replace("\\", "/").split("/")
        shipped = None
        if parts[:3] == ["t5x", "examples", "t5"] and len(parts) == 5:
            if parts[3] in T5X_MODEL_FAMILIES:
                shipped = f"models/{parts[3]}/{parts[4]}"
        elif parts[:3] == ["t5x", "configs", "runs"] and len(parts) == 4:
            if parts[3].removesuffix(".gin") in T5X_RUN_FILES:
                shipped = f"runs/{parts[3]}"
        return shipped

    # ------------------------------------------------------------------ bookkeeping

    def note(self, where, t5x, value, t5pipe, status, note="") -> None:
        self.entries.append(Entry(where, t5x, value, t5pipe, status, note))

    def defer(self, where: str, shown: str, value: Any, apply: Callable[[Any], list[Binding]]):
        """`apply(resolved value)` once every file and flag is read."""
        self._deferred.append((where, shown, value, apply))

    def finish(self) -> list[Binding]:
        """The settings that depend on values (macros resolved); raises when one of
        them is refused."""
        bindings: list[Binding] = []
        for where, shown, value, apply in self._deferred:
            resolved = resolve(value)
            if resolved is gin.REQUIRED:
                continue  # reported as a required macro by the caller
            try:
                bindings.extend(apply(resolved))
            except Refused as refusal:
                raise UserInputError(
                    f"{where}: t5x's `{shown}` = {resolved!r}: {refusal}"
                ) from None
        self._deferred.clear()
        return bindings

    def without_effect(self) -> list[str]:
        """The t5x settings accepted that change nothing in t5pipe."""
        return list(dict.fromkeys(e.t5x for e in self.entries if e.status == "no effect"))

    def summary(self) -> str:
        """The mapping applied, one line per t5x setting."""
        lines = []
        for entry in self.entries:
            value = f" = {entry.value}" if entry.value else ""
            note = f"  ({entry.note})" if entry.note else ""
            lines.append(f"  {entry.t5x}{value} -> {entry.t5pipe or '-'} [{entry.status}]{note}")
        return "\n".join(lines)


class Refused(Exception):
    """A t5x setting t5pipe cannot honour; the message says what to use instead."""


class RuleContext:
    """What a rule needs to turn one t5x binding into t5pipe bindings."""

    def __init__(self, dialect: Dialect, scope: str, shown: str, where: str, rule):
        self.dialect, self.scope, self.shown, self.where, self.rule = (
            dialect, scope, shown, where, rule,
        )  # fmt: skip

    def native(self, value: Any) -> Any:
        return self.dialect.native(value, self.where, f"`{self.shown}`")

    def record(self, value: Any, status: str = "mapped", t5pipe: str | None = None, note=None):
        self.dialect.note(
            self.where, self.shown, _shown_value(value),
            self.rule.t5pipe if t5pipe is None else t5pipe, status,
            self.rule.note if note is None else note,
        )  # fmt: skip

    def refuse(self, message: str):
        raise UserInputError(f"{self.where}: t5x's `{self.shown}`: {message}")

    def defer(self, value: Any, apply: Callable[[Any], list[Binding]]) -> None:
        self.dialect.defer(self.where, self.shown, value, apply)


def _shown_value(value: Any) -> str:
    if isinstance(value, gin_config.ConfigurableReference) and value.selector == "gin.macro":
        return "%" + value.scoped_selector.rsplit("/", 1)[0]
    if isinstance(value, gin_config.ConfigurableReference) and value.selector == "gin.constant":
        return "%" + value.scoped_selector.rsplit("/", 1)[0]
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class DialectDelegate(gin_config.ParserDelegate):
    """gin's parser delegate, with t5x names inside values kept as placeholders."""

    def __init__(self, dialect: Dialect):
        super().__init__()
        self.dialect = dialect

    def configurable_reference(self, scoped_selector, evaluate):
        scope, _, selector = scoped_selector.rpartition("/")
        name = self.dialect.owns(selector)
        if name is not None:
            return T5xReference(name, scope, evaluate)
        return super().configurable_reference(scoped_selector, evaluate)
