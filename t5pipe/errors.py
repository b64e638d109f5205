"""The exceptions that end a command, and the exit code each one means.

    UserInputError  2   what the user gave us is wrong: one paragraph saying what, where
                        (file:line, task name, parameter path) and what to do
    NonFiniteLoss   65  `t5pipe train` stopped on a NaN/Inf loss or gradient
    Preempted       75  `t5pipe train` saved a checkpoint on SIGTERM; rerun to resume

`t5pipe.cli` is the one place that turns them into messages and exit codes; library
code raises them and never exits. gin re-raises exceptions from inside configurables
with its call site appended to `str(error)` ("In call to configurable ..."); the
`message` attribute keeps the text without it, and `clean_message` strips it from any
exception.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2  # argparse uses 2 for bad flags too
EXIT_NONFINITE = 65
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's code for Ctrl-C

_GIN_TRAILER = re.compile(r"\s*In call to configurable '[^']*' \(.*?\)\s*$", re.DOTALL)


class T5pipeError(Exception):
    """An error with a message meant for the user and the exit code it ends a command with."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UserInputError(T5pipeError):
    """Bad input: a clear, actionable message; no traceback by default."""

    exit_code = EXIT_BAD_INPUT


class NonFiniteLoss(T5pipeError):
    """The loss or gradient norm was NaN/Inf and `train.on_nonfinite` is 'stop'."""

    exit_code = EXIT_NONFINITE


class Preempted(T5pipeError):
    """SIGTERM arrived; the state at `step` was saved to `path`."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, step: int, path):
        super().__init__(
            f"preempted at step {step}: saved checkpoint {path}; rerun the same command to resume"
        )
        self.step, self.path = step, path


def clean_message(error: BaseException) -> str:
    """The error's text for a user: its `message`, without gin's call-site trailer."""
    text = getattr(error, "message", None) or str(error)
    return _GIN_TRAILER.sub("", str(text)).strip()


def first_line(error: BaseException) -> str:
    """The first line of an error's message (library errors can be long), or its type."""
    text = clean_message(error)
    return text.splitlines()[0] if text else type(error).__name__


def nearest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' for the closest candidates, or ''."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""


# Texts by which a network failure shows itself in TensorFlow's GCS client (libcurl),
# TFDS downloads (requests/urllib3) and the socket layer.
_NETWORK_MARKERS = (
    "libcurl",
    "Error executing an HTTP request",
    "Could not resolve host",
    "Temporary failure in name resolution",
    "Name or service not known",
    "NameResolutionError",
    "Max retries exceeded",
    "Network is unreachable",
    "Connection refused",
)


def network_failure(error: BaseException) -> str | None:
    """One line for an error that a failed network access (gs://, a TFDS download) caused,
    found anywhere in its chain of causes, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = clean_message(error)
        if any(marker in text for marker in _NETWORK_MARKERS):
            where = re.search(r"(gs://\S+|https?://\S+)", text)
            what = f" reading {where.group(1).rstrip('.,;:')}" if where else ""
            return (
                f"a network access failed{what}: {first_line(error)}. This host cannot reach "
                "it: use local copies (T5PIPE_VOCAB for the vocabulary, T5PIPE_GLUE_DIR / "
                "T5PIPE_SQUAD_DIR or --tfds_data_dir for data), or run where it is reachable"
            )
        error = error.__cause__ or error.__context__
    return None
