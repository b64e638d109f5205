"""The user's own text files (inputs to infer, TSV/JSONL/text task data): read as UTF-8,
and a decoding error reported as `file:line:column` with the byte that broke it."""

from __future__ import annotations

import os
from pathlib import Path

from t5pipe.errors import UserInputError


def read_utf8(path: str | os.PathLike) -> str:
    """The file's text, or a UserInputError naming file:line:column of the first byte
    that is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise utf8_error(path, data, error) from None


def utf8_error(path: str | os.PathLike, data: bytes, error: UnicodeDecodeError) -> UserInputError:
    line_start = data.rfind(b"\n", 0, error.start) + 1
    line = data.count(b"\n", 0, error.start) + 1
    column = error.start - line_start + 1  # 1-based, in bytes
    bad = data[error.start : error.end]
    return UserInputError(
        f"{path}:{line}:{column}: not UTF-8 text: byte offset {error.start} holds {bad!r} "
        f"({error.reason}). Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)."
    )
