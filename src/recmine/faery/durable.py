"""Crash-durable file creation and renames for the faery index files, the write-ahead log and CURRENT.

fsync of a file makes its bytes durable, not its name: a new file, a rename or a new directory is on disk only once
the directory holding the entry is fsynced too (a power cut can otherwise lose it even after the data was synced).
Every place faery creates or renames a file for durability goes through these helpers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so the entries created or renamed inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str | os.PathLike[str]) -> Path:
    """mkdir -p, then fsync the parent of every directory it created (top-down) so the new entries survive."""
    p = Path(path).absolute()
    missing = []
    q = p
    while not q.exists():
        missing.append(q)
        q = q.parent
    p.mkdir(parents=True, exist_ok=True)
    for d in reversed(missing):
        fsync_dir(d.parent)
    return p


def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str], sync_dir: bool = True) -> None:
    """Rename src over dst (atomic) and fsync dst's directory; sync_dir=False when the caller fsyncs the
    directory once after several renames (before anything that depends on them)."""
    os.replace(src, dst)
    if sync_dir:
        fsync_dir(Path(dst).parent)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object], sync_dir: bool = True) -> None:
    """Write `path` whole or not at all: write(fh) into path.tmp, fsync it, rename it over path, fsync the
    directory (see `replace` for sync_dir)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    replace(tmp, p, sync_dir=sync_dir)


def open_append(path: str | os.PathLike[str]) -> int:
    """An O_APPEND write descriptor on path; when this call creates the file, its directory is fsynced."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        fsync_dir(Path(path).parent)
    except BaseException:
        os.close(fd)
        raise
    return fd
