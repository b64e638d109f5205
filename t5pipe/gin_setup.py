"""t5x-style command-line flags for gin, shared by every `t5pipe` command.

    --gin_file FILE          repeatable; looked up on the gin search path
    --gin.NAME=VALUE         one binding; VALUE is a gin literal, or taken as a string
    --gin_bindings 'A = 1'   repeatable
    --gin_search_paths DIRS  comma-separated, repeatable
    --tfds_data_dir DIR      where TFDS datasets live (local or gs://)

The installed `gin/` folder (`t5pipe/gin_configs` in a wheel) is always on the
search path, so `--gin_file=models/t5_1_1/base.gin` works from anywhere.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import gin

from t5pipe.errors import UserInputError, nearest

GIN_DOT_PREFIX = "--gin."


class _DropGinPackageProbe(logging.Filter):
    """gin first tries every --gin_file as a Python package resource and logs an
    ERROR for each miss ("Path not found: models/..."), although the search path
    then finds the file. Those lines only alarm users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Path not found: %s" and "gin" in record.pathname)


logging.getLogger().addFilter(_DropGinPackageProbe())


def gin_configs_dir() -> str:
    """The shipped gin/ folder: inside the installed package, or beside it in a checkout
    (editable installs)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "gin_configs", package.parent / "gin"):
        if (candidate / "models").is_dir():
            return str(candidate)
    raise FileNotFoundError(f"t5pipe's gin/ folder is missing (looked beside {package})")


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
                raise SystemExit(f"error: {arg} needs a value (--gin.NAME=VALUE)")
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


def parse_gin(args: argparse.Namespace, dot_bindings: Sequence[str] = ()) -> None:
    """Registers search paths, then parses files and bindings (later ones win)."""
    for entry in [gin_configs_dir(), os.getcwd(), *args.gin_search_paths]:
        for path in str(entry).split(","):
            if path and path not in gin.config._LOCATION_PREFIXES:
                gin.add_config_file_search_path(path)
    if args.tfds_data_dir:
        import seqio

        seqio.set_tfds_data_dir_override(args.tfds_data_dir)
    try:
        gin.parse_config_files_and_bindings(
            args.gin_file, [*args.gin_bindings, *dot_bindings], finalize_config=False
        )
    except (ValueError, SyntaxError, OSError) as error:
        raise explain_gin_error(error) from error


def parse_command_gin(args: argparse.Namespace, dot_bindings: Sequence[str] = ()) -> None:
    """Gin as a command sees it: its configurables and every registered task known, and
    only its own flags bound (a clean slate, also when commands run in one process)."""
    import t5pipe.tasks  # noqa: F401  (registers the built-in tasks; gin files name them)

    gin.clear_config()
    register_configurables()
    parse_gin(args, dot_bindings)


def explain_gin_error(error: Exception) -> UserInputError:
    """Turns gin's parse/bind errors into one message with the location and a suggestion."""
    if isinstance(error, SyntaxError):
        where = f"{error.filename}, line {error.lineno}" if error.filename else "a --gin binding"
        text = f": {error.text.strip()}" if error.text else ""
        return UserInputError(f"gin syntax error in {where}{text} ({error.msg})")
    message = str(error).strip()
    location = re.search(r'\n\s*In file "(.*)", line (\d+)\n\s*(.*)', message)
    if location:
        message = message[: location.start()].strip()
    suggestion = ""
    unknown_parameter = re.search(
        r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", message
    )
    unknown_configurable = re.search(r"No configurable matching '([\w.]+)'", message)
    if unknown_parameter:
        configurable, parameter = unknown_parameter.groups()
        suggestion = nearest(parameter, _parameters_of(configurable))
    elif unknown_configurable:
        suggestion = nearest(unknown_configurable.group(1), _registered_configurables())
    where = ""
    if location:
        file, line, text = location.groups()
        where = f" in {file}, line {line} (`{text.strip()}`)"
    return UserInputError(f"gin configuration error{where}: {message}{suggestion}")


def explain_undefined_macro(error: TypeError) -> UserInputError | None:
    """gin reports a macro that is used but never defined only when it is called."""
    found = re.search(r"In call to configurable 'macro' .* in scope '([\w.]+)'", str(error))
    if not found:
        return None
    return UserInputError(
        f"gin macro %{found.group(1)} is used but never defined: bind it in a gin file "
        f"or with --gin.{found.group(1)}=VALUE"
    )


def _registered_configurables() -> list[str]:
    selectors = list(gin.config._REGISTRY._selector_map)
    return sorted({name for selector in selectors for name in (selector, selector.split(".")[-1])})


def _parameters_of(configurable: str) -> list[str]:
    try:
        target = gin.config._REGISTRY.get_match(configurable)
        return list(inspect.signature(target.wrapped).parameters)
    except Exception:  # noqa: BLE001 - suggestions are best effort
        return []


def register_configurables() -> None:
    """Imports the modules whose gin configurables the shipped gin files name."""
    import t5pipe.model_config  # noqa: F401
    import t5pipe.vocabularies  # noqa: F401
