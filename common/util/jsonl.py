"""JSON Lines: the project's one reader and writer (prompt files, fixed responses, metrics.jsonl,
rollouts.jsonl, data.prepare's input).

A JSON Lines file is UTF-8 text with one JSON value per line, and only ``"\\n"`` ends a line (a
``"\\r\\n"`` ending is accepted: ``\\r`` is JSON whitespace). U+2028, U+2029 and U+0085 are valid
inside JSON strings and real web text holds them; ``str.splitlines`` and text-mode line readers
that follow it split there and break the row, so files are read as bytes and split on ``b"\\n"``.

The writer keeps text readable (``ensure_ascii=False``) but escapes those three characters, so a
tool that does split on them still reads our files; the values read back are unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# JSON text never holds these outside strings, so replacing them in the dumped text is safe.
_LINE_BREAKERS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"}
_TRANSLATE = str.maketrans(_LINE_BREAKERS)


def dumps(obj: Any) -> str:
    """One JSON Lines row, without its ``"\\n"``."""
    return json.dumps(obj, ensure_ascii=False).translate(_TRANSLATE)


def loads(line: str | bytes, where: str) -> Any:
    """Parse one line; ``where`` (e.g. ``"p.jsonl row 3"``) names it in the error."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{where}: invalid UTF-8 ({e.reason} at byte {e.start} of the line); re-encode the file as UTF-8"
            ) from e
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{where}: invalid JSON ({e.msg} at column {e.colno}); each line must be one complete JSON object"
        ) from e


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """``(1-based row, raw line)``, split on ``b"\\n"`` only; the file is streamed."""
    with open(path, "rb") as f:
        yield from enumerate(f, start=1)  # binary files split on b"\n" and nothing else


def read(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """``(1-based row, value)`` of every non-blank line; blank lines still count as rows."""
    for row, line in iter_lines(path):
        if line.strip():
            yield row, loads(line, f"{path} row {row}")


def read_all(path: str | os.PathLike) -> list:
    """Every value of the file, in order (blank lines skipped)."""
    return [value for _, value in read(path)]


def parse_text(text: str, where: str) -> Iterator[tuple[int, Any]]:
    """``(1-based row, value)`` of JSON Lines already in memory as text (split on ``"\\n"`` only)."""
    for row, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield row, loads(line, f"{where} row {row}")


class Appender:
    """Rows appended to a JSON Lines file and flushed at once, so a crashed run's file is readable."""

    def __init__(self, path: str | os.PathLike):
        self._f = open(path, "a", encoding="utf-8", newline="\n")

    def write(self, rows: Iterable[Any]) -> None:
        self._f.writelines(dumps(r) + "\n" for r in rows)
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def write(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """Write a whole JSON Lines file."""
    Path(path).write_text("".join(dumps(r) + "\n" for r in rows), encoding="utf-8", newline="\n")


def text(rows: Iterable[Any]) -> str:
    """The file content for ``rows`` (for atomic writers)."""
    return "".join(dumps(r) + "\n" for r in rows)
