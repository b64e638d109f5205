"""What the live gin config came from, and reading other gin files without losing it.

    gin_state.defined_by_user("MODEL")   # the command's gin files or flags define MODEL
    with gin_state.isolated():           # parse a t5x run's config.gin, query it, ...
        ...                              # ... and the command's config is back afterwards

`t5pipe.gin_setup.parse` records the macros each parse defines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import gin

_defined: frozenset[str] = frozenset()  # macros the live config's files and flags define


def record(defined: Mapping[str, str]) -> None:
    global _defined
    _defined = frozenset(defined)


def defined_by_user(macro: str) -> bool:
    """Whether the live gin config's files or flags define `macro` (not a t5pipe default)."""
    return macro in _defined


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Runs the body, then puts gin's state back as it was before it.

    For reading another run's gin files (a t5x run's config.gin) while a command's own
    configuration is live. gin has no API for this, so its module-level tables are
    saved and restored.
    """
    global _defined
    config = gin.config
    saved = (
        {key: dict(values) for key, values in config._CONFIG.items()},
        set(config._IMPORTS),
        dict(config._OPERATIVE_CONFIG),
        dict(config._SINGLETONS),
        config.config_is_locked(),
        _defined,
    )
    try:
        yield
    finally:
        table, imports, operative, singletons, locked, _defined = saved
        config._set_config_is_locked(False)
        for live, kept in (
            (config._CONFIG, table),
            (config._IMPORTS, imports),
            (config._OPERATIVE_CONFIG, operative),
            (config._SINGLETONS, singletons),
        ):
            live.clear()
            live.update(kept)
        config._set_config_is_locked(locked)
