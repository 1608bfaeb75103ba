"""Writing files and folders so that a crash never leaves half of one: the one helper every writer uses.

    write_text(path, text)                       # a file: temporary sibling, fsync, rename
    with atomic_dir(out) as tmp: ...             # a folder: fill tmp; it becomes `out` when the block ends
    tmp = temp_dir(out); ...; publish_dir(tmp, out)   # the same in two steps (several ranks write into tmp)

A folder is written into ``.<name>.tmp`` beside ``out``, every file in it is fsynced, and it is
renamed into place; the parent folder is fsynced after each rename. An existing ``out`` is replaced
only when ``may_replace(out)`` accepts it (it raises ValueError with the reason otherwise); without
one, only an empty folder is replaced, so a writer never deletes what a user put there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

ReplaceCheck = Callable[[Path], None]  # raises ValueError when an existing output must not be replaced


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new file in ``path`` durable (POSIX: fsync the folder)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: readers see the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # e.g. a full disk: no partial temporary file is left behind
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def temp_path(out_dir: str | os.PathLike) -> Path:
    """Where ``out_dir`` is written before it is renamed into place: ``.<name>.tmp`` beside it."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.tmp"


def temp_dir(out_dir: str | os.PathLike) -> Path:
    """A fresh, empty ``temp_path(out_dir)`` (one left by an interrupted write is removed)."""
    tmp = temp_path(out_dir)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def only_empty(out_dir: Path) -> None:
    """The default rule: an existing output is replaced only when it is an empty folder."""
    if not out_dir.is_dir() or any(out_dir.iterdir()):
        raise ValueError(f"{out_dir}: exists and is not empty; nothing there is deleted: write to a new folder")


def publish_dir(tmp: Path, out_dir: str | os.PathLike, may_replace: ReplaceCheck | None = None) -> None:
    """fsync every file under ``tmp``, then rename it to ``out_dir``; an existing ``out_dir`` must pass
    ``may_replace`` (checked here, as the last guard before anything is deleted)."""
    out_dir = Path(out_dir)
    if os.path.lexists(out_dir):
        (may_replace or only_empty)(out_dir)
    for folder, _, files in os.walk(tmp):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(folder)
    old = out_dir.parent / f".{out_dir.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if os.path.lexists(out_dir):
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    fsync_dir(out_dir.parent)
    if old.exists():
        shutil.rmtree(old)


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike, may_replace: ReplaceCheck | None = None) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``out_dir`` only when the block completes (removed if it raises)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out_dir)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, out_dir, may_replace)
