"""The user's own text files (inputs to infer, TSV/JSONL/text task data): read as UTF-8,
and a decoding error reported as `file:line:column` with the byte that broke it.

`errors` is Python's codec argument, limited to the two policies t5pipe offers:
"strict" (the default: the error above) and "replace" (each byte that is not UTF-8
becomes U+FFFD, with one warning per file saying how many there were).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from t5pipe.errors import UserInputError

log = logging.getLogger(__name__)

ERRORS = ("strict", "replace")
_CHUNK = 1 << 24  # bytes read at a time when checking a file that is streamed later


def check_errors(errors: str, where: str) -> str:
    if errors not in ERRORS:
        raise UserInputError(f"{where}: errors={errors!r}; expected one of {ERRORS}")
    return errors


def read_utf8(path: str | os.PathLike, errors: str = "strict", hint: str = "") -> str:
    """The file's text, or a UserInputError naming file:line:column of the first byte
    that is not UTF-8 (with errors="replace": those bytes as U+FFFD, and a warning)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        if errors != "replace":
            raise utf8_error(path, data, error, hint=hint) from None
    text = data.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - data.count("\ufffd".encode())
    log.warning("%s: %d byte sequence(s) that are not UTF-8 read as U+FFFD", path, replaced)
    return text


def check_utf8(path: str | os.PathLike, hint: str = "") -> None:
    """Raises the error of `read_utf8` for a file without holding it in memory (it is
    read in blocks of whole lines): for files that are streamed afterwards."""
    lines_before, offset, rest = 0, 0, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            block = rest + chunk
            end = block.rfind(b"\n") + 1 if chunk else len(block)
            block, rest = block[:end], block[end:]
            try:
                block.decode("utf-8")
            except UnicodeDecodeError as error:
                raise utf8_error(path, block, error, lines_before, offset, hint) from None
            lines_before += block.count(b"\n")
            offset += len(block)
            if not chunk:
                return


def utf8_error(
    path: str | os.PathLike,
    data: bytes,
    error: UnicodeDecodeError,
    lines_before: int = 0,
    offset: int = 0,
    hint: str = "",
) -> UserInputError:
    """The error for `data` (the file's bytes from byte `offset`, line `lines_before` + 1);
    `hint`: another way out, appended to the advice."""
    line_start = data.rfind(b"\n", 0, error.start) + 1
    line = lines_before + data.count(b"\n", 0, error.start) + 1
    column = error.start - line_start + 1  # 1-based, in bytes
    bad = data[error.start : error.end]
    return UserInputError(
        f"{path}:{line}:{column}: not UTF-8 text: byte offset {offset + error.start} holds "
        f"{bad!r} ({error.reason}). Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 "
        f"IN > OUT`){hint}."
    )
