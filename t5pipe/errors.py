"""The one exception type for mistakes in what the user gave us.

Commands raise `UserInputError` with a message that says what was wrong, where
(file:line, task name, parameter path) and what to do; `t5pipe.cli` prints it
as one paragraph without a traceback (set T5PIPE_DEBUG=1 to see one).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# Exit code of a command stopped by bad input (argparse uses 2 for bad flags too).
EXIT_BAD_INPUT = 2


class UserInputError(Exception):
    """Bad input: a clear, actionable message; no traceback by default."""


def nearest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' for the closest candidates, or ''."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""
