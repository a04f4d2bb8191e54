"""Durability order of every file faery creates or renames: the data is fsynced before its rename, and the directory
holding a new or renamed entry is fsynced before anything depends on that entry (a power cut loses an entry whose
directory was never fsynced, even when the file's own bytes were). A kill -9 cannot show this, so the test records
the file-system calls (fsync targets, renames, creations) and checks their order."""

from __future__ import annotations

import builtins
import io
import os
from pathlib import Path

import numpy as np
import pytest

from recmine.faery import Index, ShardedIndex
from recmine.faery.service import RetrievalCore

COMMITS = ("CURRENT", "manifest.json", "sharded.json")  # renames that publish what came before them


class Trace:
    """Records fsync / rename / create / mkdir calls (absolute real paths) and 'ack' markers, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def install(self, mp: pytest.MonkeyPatch) -> None:
        real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename
        real_open, real_mkdir, real_bopen = os.open, os.mkdir, builtins.open

        def fsync(fd: int) -> None:
            self.events.append(("fsync", os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
            real_fsync(fd)

        def replace(src, dst, *a, **kw):  # noqa: ANN001, ANN202
            real_replace(src, dst, *a, **kw)
            self.events.append(("rename", os.path.realpath(dst)))

        def rename(src, dst, *a, **kw):  # noqa: ANN001, ANN202
            real_rename(src, dst, *a, **kw)
            self.events.append(("rename", os.path.realpath(dst)))

        def open_(path, flags, *a, **kw):  # noqa: ANN001, ANN202
            new = bool(flags & os.O_CREAT) and not os.path.exists(path)
            fd = real_open(path, flags, *a, **kw)
            if new:
                self.events.append(("create", os.path.realpath(path)))
            return fd

        def mkdir(path, *a, **kw):  # noqa: ANN001, ANN202
            real_mkdir(path, *a, **kw)
            self.events.append(("create", os.path.realpath(path)))

        def bopen(file, mode="r", *a, **kw):  # noqa: ANN001, ANN202
            new = isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wxa") \
                and not os.path.exists(file)
            fh = real_bopen(file, mode, *a, **kw)
            if new:
                self.events.append(("create", os.path.realpath(file)))
            return fh

        mp.setattr(os, "fsync", fsync)
        mp.setattr(os, "replace", replace)
        mp.setattr(os, "rename", rename)
        mp.setattr(os, "open", open_)
        mp.setattr(os, "mkdir", mkdir)
        mp.setattr(builtins, "open", bopen)
        mp.setattr(io, "open", bopen)  # pathlib's write_text / open go through io.open

    def ack(self, what: str) -> None:
        self.events.append(("ack", what))

    def check(self, root: Path) -> int:
        """Assert the order; returns how many durable entries were checked."""
        root = Path(os.path.realpath(root))
        ev = [(k, p) for k, p in self.events if k == "ack" or Path(p).is_relative_to(root.parent)]
        checked, bad = 0, []
        for i, (kind, path) in enumerate(ev):
            if kind not in ("create", "rename"):
                continue
            p = Path(path)
            if p.name.endswith(".tmp") or p.name == "LOCK":  # temporary names and the lock need no durability
                continue
            parent = str(p.parent)
            synced = next((j for j in range(i + 1, len(ev)) if ev[j] == ("fsync", parent)), None)
            depends = next((j for j in range(i + 1, len(ev)) if ev[j][0] == "ack"
                            or (ev[j][0] == "rename" and (Path(ev[j][1]).name in COMMITS
                                                          or Path(ev[j][1]).name.startswith("snap-")))), None)
            if synced is None:
                bad.append(f"{kind} of {p} is never made durable (no fsync of {parent} after it)")
            elif depends is not None and synced > depends:
                bad.append(f"{kind} of {p}: {ev[depends]} happens before its directory {parent} is fsynced")
            if kind == "rename" and not p.name.startswith("snap-"):  # a file: its data synced before the rename
                data = next((j for j in range(i - 1, -1, -1) if ev[j] in (("fsync", f"{p}.tmp"), ("rename", path))),
                            None)
                if data is None or ev[data][0] != "fsync":
                    bad.append(f"{p} was renamed into place without fsyncing its data first")
            checked += 1
        assert not bad, "\n".join(bad)
        return checked


def test_every_create_and_rename_is_followed_by_a_directory_fsync(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    idx = Index(8, storage="fp16")
    idx.add(x)
    sharded = ShardedIndex(8, 2)
    sharded.add(x)
    trace = Trace()
    trace.install(monkeypatch)
    # a saved Index in directories that do not exist yet, and a saved ShardedIndex
    idx.save(tmp_path / "new" / "idx")
    trace.ack("Index.save")
    sharded.save(tmp_path / "sharded")
    trace.ack("ShardedIndex.save")
    # a new service directory: first checkpoint, log creation, acknowledged writes, checkpoint (log trimmed), close
    core = RetrievalCore(tmp_path / "svc", dim=8, background=False)
    for n in range(3):
        core.upsert(np.arange(10 * n, 10 * n + 10), x[10 * n: 10 * n + 10])
        trace.ack(f"upsert {n}")
    core.checkpoint()
    trace.ack("checkpoint")
    core.delete([0, 1])
    trace.ack("delete")
    core.close()
    monkeypatch.undo()
    sharded.close()
    checked = trace.check(tmp_path)
    names = {Path(p).name for k, p in trace.events if k in ("create", "rename")}
    assert {"wal.log", "CURRENT", "manifest.json", "sharded.json", "ids.npy", "svc", "new", "idx"} <= names
    assert checked >= 30
    back = RetrievalCore(tmp_path / "svc", background=False)
    assert len(back) == 28
    back.close()
