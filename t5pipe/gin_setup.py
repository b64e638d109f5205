"""gin for every `t5pipe` command: t5x-style flags, and the one parser of gin files.

    --gin_file FILE          repeatable; looked up on the gin search path
    --gin.NAME=VALUE         one binding; VALUE is a gin literal, or taken as a string
    --gin_bindings 'A = 1'   repeatable
    --gin_search_paths DIRS  comma-separated, repeatable
    --tfds_data_dir DIR      where TFDS datasets live (local or gs://)

`parse` reads files and bindings statement by statement (gin's own `config_parser`)
instead of handing them to `gin.parse_config`, so that t5pipe decides:

- where an `include` or `--gin_file` is found: an absolute path as given, else the
  shipped `gin/` folder first, then the `--gin_search_paths`, then the folder of
  the including file and the current directory;
- which names a binding may use: `t5pipe.gin_names` maps names of earlier t5pipe
  releases (e.g. `train.num_microbatches`) onto the setting that does the same now;
- what a mistake says: every error names the file and line of the statement;
- which macros are defined and used, to catch `--gin.BATCH_SIZ=16` (set, never used,
  one typo from a used one) and `%TRAIN_STEP` (used, never defined) before a run.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import dataclasses
import importlib
import inspect
import io
import logging
import os
import tokenize
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
from gin import config_parser

from t5pipe import gin_state
from t5pipe.errors import UserInputError, nearest
from t5pipe.gin_dialect import Dialect, DialectDelegate
from t5pipe.gin_names import GIN_NAME_CHANGES, suggestion

log = logging.getLogger(__name__)

GIN_DOT_PREFIX = "--gin."
_MACRO = "gin.macro"
FLAGS_SOURCE = "--gin flags"

# Macros with a value before any file is read (a model gin file may override them).
DEFAULT_MACROS = {"MODEL": "@T5Config()"}
# The macro naming the user's task module(s); the commands import it themselves
# (`parse_command_gin`), so it works without a run gin file that binds it.
MODULE_MACRO = "MIXTURE_OR_TASK_MODULE"


class _DropGinPackageProbe(logging.Filter):
    """gin logs an ERROR for each file it fails to find as a Python package resource;
    t5pipe resolves files itself, but other code may still call gin's parser."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Path not found: %s" and "gin" in record.pathname)


logging.getLogger().addFilter(_DropGinPackageProbe())


# ----------------------------------------------------------------------------- flags


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration (gin, t5x-style)")
    group.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    group.add_argument(
        "--gin_bindings",
        action="append",
        default=[],
        help="gin binding 'NAME = VALUE' (repeatable)",
    )
    group.add_argument(
        "--gin_search_paths", action="append", default=[], help="comma-separated folders"
    )
    group.add_argument("--tfds_data_dir", default=None, help="TFDS data folder (local or gs://)")
    parser.epilog = (parser.epilog or "") + (
        "\nAny `--gin.NAME=VALUE` flag binds NAME (a macro such as MODEL_DIR or a "
        "parameter such as T5Config.d_model); unquoted VALUEs that are not gin literals "
        "are taken as strings."
    )


def split_gin_dot_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--gin.NAME=VALUE` flags (argparse cannot declare them) from the rest.

    Returns (other argv, bindings as 'NAME = VALUE' strings).
    """
    rest, bindings = [], []
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(GIN_DOT_PREFIX):
            body = arg[len(GIN_DOT_PREFIX) :]
            if "=" in body:
                name, value = body.split("=", 1)
            elif i + 1 < len(argv):
                name, value = body, argv[i + 1]
                i += 1
            else:
                raise UserInputError(f"{arg} needs a value (--gin.NAME=VALUE)")
            bindings.append(f"{name} = {_as_gin_value(value)}")
        else:
            rest.append(arg)
        i += 1
    return rest, bindings


def _as_gin_value(value: str) -> str:
    """Keeps VALUE if it is a gin reference or a Python literal; otherwise quotes it."""
    value = value.strip()
    if value.startswith(("@", "%")):
        return value
    try:
        ast.literal_eval(value)
        return value
    except (ValueError, SyntaxError):
        return repr(value)


def gin_configs_dir() -> str:
    """The shipped gin/ folder: inside the installed package, or beside it in a checkout
    (editable installs)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "gin_configs", package.parent / "gin"):
        if (candidate / "models").is_dir():
            return str(candidate)
    raise FileNotFoundError(f"t5pipe's gin/ folder is missing (looked beside {package})")


# ----------------------------------------------------------------------------- parsing


@dataclasses.dataclass
class ParsedGin:
    """What parsing saw: the files read and where each macro is defined and used."""

    files: list[str] = dataclasses.field(default_factory=list)
    dialect: Dialect = dataclasses.field(default_factory=Dialect)  # t5x names it mapped
    defined: dict[str, str] = dataclasses.field(default_factory=dict)  # macro -> where
    used: dict[str, str] = dataclasses.field(default_factory=dict)  # macro -> where


def parse(
    files: Sequence[str] = (),
    bindings: Sequence[str] = (),
    search_paths: Sequence[str] = (),
    *,
    warn_unused: bool = True,
) -> ParsedGin:
    """Clears gin, registers t5pipe's configurables and tasks, then parses `files` and
    `bindings` (later ones win) and checks the macros (`warn_unused`: also warn about
    macros nothing uses). Raises UserInputError."""
    import t5pipe.tasks  # noqa: F401  (registers the built-in tasks; gin files name them)

    gin.clear_config()
    register_configurables()
    parser = _Parser(_search_path(search_paths))
    for name, value in DEFAULT_MACROS.items():
        parser.parse_text(f"{name} = {value}", "t5pipe's defaults", default=True)
    for file in files:
        parser.parse_file(file)
    if bindings:
        parser.parse_text("\n".join(bindings), FLAGS_SOURCE)
    for scope, selector, parameter, value in parser.report.dialect.finish():
        gin.bind_parameter((scope, selector, parameter), value)
    if MODULE_MACRO in parser.report.defined:
        parser.report.used.setdefault(MODULE_MACRO, "the command, which imports it")
    check_macros(parser.report, exempt=set(DEFAULT_MACROS), warn_unused=warn_unused)
    gin_state.record(parser.report.defined)
    if warn_unused and parser.report.dialect.without_effect():
        log.warning("t5x settings without effect in t5pipe (--dry_run lists why): %s",
                    ", ".join(parser.report.dialect.without_effect()))  # fmt: skip
    return parser.report


def parse_command_gin(args: argparse.Namespace, dot_bindings: Sequence[str] = ()) -> ParsedGin:
    """Gin as a command sees it: its configurables and every registered task known, and
    only its own flags bound (a clean slate, also when commands run in one process)."""
    if getattr(args, "tfds_data_dir", None):
        import seqio

        seqio.set_tfds_data_dir_override(args.tfds_data_dir)
    search_paths = [p for entry in args.gin_search_paths for p in str(entry).split(",") if p]
    parsed = parse(args.gin_file, [*args.gin_bindings, *dot_bindings], search_paths)
    import_command_modules(getattr(args, "module", ()), parsed)
    return parsed


def import_command_modules(modules: Sequence[str], parsed: ParsedGin) -> None:
    """Imports the user's task modules a command names: `--module` (each), then the
    MIXTURE_OR_TASK_MODULE macro when gin sets it (a flag or any gin file)."""
    from t5pipe.input_pipeline import import_task_modules

    import_task_modules(list(modules), "--module")
    if MODULE_MACRO in parsed.defined:
        import_task_modules(_macro_value(MODULE_MACRO), MODULE_MACRO)


def _search_path(user_paths: Sequence[str]) -> list[str]:
    return [gin_configs_dir(), *user_paths]


class _Parser:
    def __init__(self, search_path: list[str]):
        self.search_path = search_path
        self.report = ParsedGin()

    def parse_file(self, name: str, including: str | None = None) -> None:
        path = self._resolve(name, including)
        self.report.files.append(path)
        with open(path, encoding="utf-8") as file:
            self._parse(file, path)

    def parse_text(self, text: str, source: str, default: bool = False) -> None:
        self._parse(io.StringIO(text), source, default=default)

    def _resolve(self, name: str, including: str | None) -> str:
        if os.path.isabs(name):
            if os.path.isfile(name):
                return name
            raise UserInputError(f"gin file {name} does not exist")
        folders = [*self.search_path]
        if including and os.path.isfile(including):
            folders.append(os.path.dirname(including))
        folders.append(os.getcwd())
        shipped = self.report.dialect.include(name)  # t5x's path, t5x's files not at hand
        tries = [(folder, name) for folder in folders]
        for folder, file in [*tries, *([(self.search_path[0], shipped)] if shipped else [])]:
            candidate = os.path.join(folder, file)
            if os.path.isfile(candidate):
                return candidate
        where = f" (included from {including})" if including else ""
        raise UserInputError(
            f"gin file {name!r}{where} not found in {', '.join(dict.fromkeys(folders))}; "
            "give a path, or add its folder with --gin_search_paths"
        )

    def _parse(self, stream, source: str, default: bool = False) -> None:
        try:
            for statement in _statements(stream, source, DialectDelegate(self.report.dialect)):
                with _located(statement.location, source):
                    self._apply(statement, source, default)
        except tokenize.TokenError as error:  # an unclosed bracket, an unterminated string
            raise UserInputError(
                f"gin syntax error in {source}: {error.args[0]} (an unclosed bracket or quote?)"
            ) from None

    def _apply(self, statement, source: str, default: bool) -> None:
        where, dialect = _describe(statement.location, source), self.report.dialect
        if isinstance(statement, config_parser.BindingStatement):
            scope, selector, parameter, value, _ = statement
            for macro in _macros_in(value):
                self.report.used.setdefault(macro, where)
            if not parameter:  # a macro: NAME = value
                name = f"{scope}/{selector}" if scope else selector
                gin.bind_parameter((name, _MACRO, "value"), dialect.macro_value(value, where))
                if not default:
                    self.report.defined[name] = where
                return
            if dialect.owns(selector):  # a t5x name: its t5pipe settings
                for binding in dialect.binding(scope, selector, parameter, value, where):
                    gin.bind_parameter(binding[:3], binding[3])
                return
            selector, parameter = GIN_NAME_CHANGES.get((selector, parameter), (selector, parameter))
            gin.bind_parameter((scope, selector, parameter), dialect.native(value, where, selector))
        elif isinstance(statement, config_parser.BlockDeclaration):
            if not dialect.owns(statement.selector):  # t5x's: checked binding by binding
                _check_configurable(statement.selector)
        elif isinstance(statement, config_parser.ImportStatement):
            module, alias, is_from = statement.module, statement.alias, statement.is_from
            if not dialect.on_import(module, alias, is_from, where):  # t5x's are never imported
                _import(module, where)
        elif isinstance(statement, config_parser.IncludeStatement):
            self.parse_file(statement.filename, source if os.path.isfile(source) else None)


def _statements(stream, source: str, delegate) -> Iterator[Any]:
    """gin's statements of `stream`; a syntax error names the file and line."""
    parser = config_parser.ConfigParser(stream, delegate)
    while True:
        try:
            statement = parser.parse_statement()
        except SyntaxError as error:
            where = f"{error.filename or source}, line {error.lineno}"
            text = f": {error.text.strip()}" if error.text else ""
            raise UserInputError(f"gin syntax error in {where}{text} ({error.msg})") from None
        if statement is None:
            return
        yield statement


def _macros_in(value: Any) -> Iterator[str]:
    """Names of the macros (%NAME) inside a bound value (nested in lists and dicts too)."""
    if isinstance(value, gin.config.ConfigurableReference):
        if value.selector == _MACRO:
            yield value.scoped_selector.rsplit("/", 1)[0]
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _macros_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _macros_in(item)


def _describe(location, source: str) -> str:
    text = (location.line_content or "").strip()
    return f"{location.filename or source}, line {location.line_num}" + (
        f" (`{text}`)" if text else ""
    )


@contextlib.contextmanager
def _located(location, source: str):
    """Errors of one statement as UserInputErrors naming its file and line."""
    try:
        yield
    except UserInputError:
        raise
    except (ValueError, TypeError, KeyError) as error:
        message = str(error).split("\n  In file", 1)[0].strip()
        raise UserInputError(
            f"gin configuration error in {_describe(location, source)}: {message}"
            f"{suggestion(message)}"
        ) from None


def _check_configurable(selector: str) -> None:
    gin.config.get_configurable(selector)  # raises ValueError naming an unknown one


def _import(module: str, where: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise UserInputError(f"{where}: cannot import {module!r} ({error})") from None


def register_configurables() -> None:
    """Imports the modules whose gin configurables the shipped gin files name."""
    import t5pipe.checkpoint_manager  # noqa: F401
    import t5pipe.decoding  # noqa: F401
    import t5pipe.evaluation  # noqa: F401
    import t5pipe.inference  # noqa: F401
    import t5pipe.input_pipeline  # noqa: F401
    import t5pipe.model_config  # noqa: F401
    import t5pipe.models
    import t5pipe.optimizers  # noqa: F401
    import t5pipe.partitioning  # noqa: F401
    import t5pipe.train  # noqa: F401
    import t5pipe.train_eval  # noqa: F401
    import t5pipe.train_step  # noqa: F401
    import t5pipe.vocabularies  # noqa: F401

    t5pipe.models.register_configurables()  # every family's config classes


# ----------------------------------------------------------------------------- checks


def check_macros(
    report: ParsedGin, exempt: set[str] = frozenset(), warn_unused: bool = True
) -> None:
    """Every macro that is used is defined; a macro that is set but never used and is
    one typo away from a used one (`--gin.TRAIN_STEP=5`) is an error, others a warning."""
    defined = set(report.defined) | set(exempt)
    for macro, where in sorted(report.used.items()):
        if macro not in defined and macro != "gin.REQUIRED":
            raise UserInputError(
                f"gin macro %{macro} (used in {where}) is never defined"
                f"{nearest(macro, defined)}; define it in a gin file or pass --gin.{macro}=VALUE"
            )
    for macro in sorted(set(report.defined) - set(report.used)):
        suggestion = nearest(macro, report.used)
        if suggestion:
            raise UserInputError(
                f"gin macro {macro} is set but nothing uses it{suggestion} — probably a "
                f"misspelling; the run would ignore it. Fix the name in your gin file or flag."
            )
        if warn_unused:
            log.warning(
                "gin macro %s (%s) is set but nothing uses it", macro, report.defined[macro]
            )


def macro_feeding(configurable: str, parameter: str) -> str | None:
    """The macro a binding `configurable.parameter = %MACRO` reads, if it is one."""
    try:
        value = gin.query_parameter(f"{configurable}.{parameter}")
    except ValueError:
        return None
    if isinstance(value, gin.config.ConfigurableReference) and value.selector == _MACRO:
        return value.scoped_selector.rsplit("/", 1)[0]
    return None


def call(
    function: Callable,
    name: str,
    explicit: Mapping[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
) -> Any:
    """Calls the gin-configurable `function` (registered as `name`) with its bindings,
    each config object built (and so checked) once, here.

    `explicit`: arguments given otherwise (a command's shorthand flags), which win over
    gin; one that contradicts a gin binding of the same argument is an error naming
    both (`flags`: argument -> the flag the user wrote). Required arguments left unset
    are reported by the macro that should set them.
    """
    explicit = {k: v for k, v in (explicit or {}).items() if v is not None}
    settings = resolved_arguments(function, name, given=set(explicit))
    defaults = inspect.signature(inspect.unwrap(function)).parameters
    for parameter, value in explicit.items():
        bound = settings.get(parameter)
        default = defaults[parameter].default if parameter in defaults else None
        if bound is None or bound == value or bound == default:
            continue
        flag = (flags or {}).get(parameter, f"{parameter}={value!r}")
        macro = macro_feeding(name, parameter) or f"{name}.{parameter}"
        raise UserInputError(
            f"conflicting settings: {flag} {value} but gin sets {macro} = {bound!r}. Give "
            f"one of them (drop {flag}, or remove the binding of {macro})."
        )
    return function(**{**settings, **explicit})  # explicit ones win


def resolved_arguments(
    function: Callable, name: str, given: set[str] = frozenset()
) -> dict[str, Any]:
    """`function`'s keyword arguments as gin would pass them: bindings with macros
    resolved and @references called. Required arguments that are neither bound nor
    `given` are reported by the macro that should set them."""
    signature = inspect.signature(inspect.unwrap(function))
    missing = []
    for parameter in signature.parameters.values():
        if parameter.name in given:
            continue
        required = parameter.default is gin.REQUIRED or parameter.default is parameter.empty
        macro = macro_feeding(name, parameter.name)
        if macro and _macro_value(macro) is gin.REQUIRED:
            missing.append(macro)
        elif required and not _is_bound(name, parameter.name):
            missing.append(f"{name}.{parameter.name}")
    if missing:
        raise UserInputError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required but not set: "
            + " ".join(f"--gin.{m}=..." for m in missing)
            + " (or set them in your gin file)"
        )
    try:
        bindings = gin.get_bindings(name)
    except UserInputError:
        raise
    except (TypeError, ValueError) as error:
        raise UserInputError(f"the gin bindings of `{name}`: {error}") from error
    return dict(bindings)


def _is_bound(name: str, parameter: str) -> bool:
    try:
        gin.query_parameter(f"{name}.{parameter}")
        return True
    except ValueError:
        return False


def _macro_value(macro: str) -> Any:
    """A macro's value, other macros and gin constants (gin.REQUIRED) resolved."""
    value = gin.query_parameter(f"{macro}/{_MACRO}.value")
    if isinstance(value, gin.config.ConfigurableReference) and value.selector in (
        _MACRO,
        "gin.constant",
    ):
        value = copy.deepcopy(value)  # gin evaluates references when they are copied
    return value


def model_config_from_gin(files: Sequence[str], bindings: Sequence[str] = ()) -> Any:
    """The model config (`MODEL`, T5Config by default) that model gin files describe,
    e.g. `model_config_from_gin(["models/t5_1_1/base.gin"])`. Leaves gin cleared."""
    parse(files, bindings, warn_unused=False)  # a model file alone: nothing uses its macros
    try:
        return gin.query_parameter(f"MODEL/{_MACRO}.value").scoped_configurable_fn()
    finally:
        gin.clear_config()
