"""Write-ahead log and checkpoints for the faery service: acknowledged writes survive a crash.

Log file: a sequence of records `[len u32][crc32 u32][payload]` (little-endian, CRC over the payload), payload =
`[op u8][lsn u64][n u32][dim u32][ids int64 * n][vectors float32 * n * dim]` (deletes carry dim 0, no vectors);
an upsert with attributes (op 3) continues with `[count u16]` and per attribute `[name length u8][name][int64 * n]`.
LSNs increase by one per record. On open, a record that is short, fails its CRC or does not decode ends the log:
it and everything after it are cut off the file (with a logged warning), never loaded.

Group commit: `append` writes a record without syncing; `wait_durable(lsn)` returns once an fsync covering it has
finished. The first waiter becomes the leader and fsyncs everything written so far while later writers queue; they
are all released by that one fsync (or lead the next one).

Checkpoint (crash-safe ordering): save the index into `snap-<lsn>.tmp/`, fsync, rename to `snap-<lsn>/` and fsync
the directory, then atomically replace `CURRENT` (names the snapshot and the LSN it covers), and only then drop log records with
lsn <= that LSN and older snapshots. A crash at any point leaves either the old CURRENT with the full log or the
new CURRENT with a log whose covered prefix replay skips."""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recmine.faery import durable
from recmine.faery.index import Index

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")  # payload length, crc32(payload)
BODY = struct.Struct("<BQII")  # op, lsn, n, dim
OP_UPSERT = 1
OP_DELETE = 2
OP_UPSERT_ATTRS = 3  # an upsert carrying per-row integer attributes
MAX_PAYLOAD = 1 << 31
CURRENT = "CURRENT"
SNAP_PREFIX = "snap-"


@dataclass(frozen=True)
class WalRecord:
    """One logged write: upsert (ids + float32 vectors) or delete (ids)."""

    lsn: int
    op: int
    ids: np.ndarray
    vectors: np.ndarray | None = None
    attrs: dict[str, np.ndarray] | None = None


def encode(rec: WalRecord) -> bytes:
    """The record's payload bytes (without the length/CRC header)."""
    ids = np.ascontiguousarray(rec.ids, "<i8")
    if rec.op in (OP_UPSERT, OP_UPSERT_ATTRS):
        vec = np.ascontiguousarray(rec.vectors, "<f4")
        if vec.ndim != 2 or vec.shape[0] != ids.shape[0]:
            raise ValueError(f"upsert record: {ids.shape[0]} ids for vectors of shape {vec.shape}")
        op = OP_UPSERT_ATTRS if rec.attrs else OP_UPSERT
        out = BODY.pack(op, rec.lsn, ids.shape[0], vec.shape[1]) + ids.tobytes() + vec.tobytes()
        if rec.attrs:
            out += struct.pack("<H", len(rec.attrs))
            for name, col in rec.attrs.items():
                raw = name.encode()
                col = np.ascontiguousarray(col, "<i8")
                if len(raw) > 255 or col.shape != ids.shape:
                    raise ValueError(f"upsert record: attribute {name!r} with {col.shape} values for {ids.shape[0]} ids")
                out += struct.pack("<B", len(raw)) + raw + col.tobytes()
        return out
    if rec.op == OP_DELETE:
        return BODY.pack(OP_DELETE, rec.lsn, ids.shape[0], 0) + ids.tobytes()
    raise ValueError(f"unknown log op {rec.op}")


def decode(payload: bytes) -> WalRecord:
    """Payload bytes -> record; ValueError when the payload is not a well-formed record."""
    if len(payload) < BODY.size:
        raise ValueError(f"record of {len(payload)} bytes is shorter than its {BODY.size}-byte body header")
    op, lsn, n, dim = BODY.unpack_from(payload)
    if op not in (OP_UPSERT, OP_DELETE, OP_UPSERT_ATTRS) or (op == OP_DELETE and dim != 0):
        raise ValueError(f"bad record op {op} (dim {dim})")
    want = BODY.size + 8 * n + 4 * n * dim
    if len(payload) != want if op != OP_UPSERT_ATTRS else len(payload) < want + 2:
        raise ValueError(f"record holds {len(payload)} bytes, its header implies {want}")
    ids = np.frombuffer(payload, "<i8", count=n, offset=BODY.size).astype(np.int64)
    vecs = None
    attrs = None
    if op in (OP_UPSERT, OP_UPSERT_ATTRS):
        vecs = np.frombuffer(payload, "<f4", count=n * dim, offset=BODY.size + 8 * n).reshape(n, dim)
        vecs = vecs.astype(np.float32)
    if op == OP_UPSERT_ATTRS:
        attrs = {}
        (count,) = struct.unpack_from("<H", payload, want)
        pos = want + 2
        for _ in range(count):
            if pos >= len(payload):
                raise ValueError("attribute section cut short")
            size = payload[pos]
            name = payload[pos + 1: pos + 1 + size].decode(errors="replace")
            pos += 1 + size
            if pos + 8 * n > len(payload):
                raise ValueError(f"attribute {name!r} cut short")
            attrs[name] = np.frombuffer(payload, "<i8", count=n, offset=pos).astype(np.int64)
            pos += 8 * n
        if pos != len(payload):
            raise ValueError(f"record holds {len(payload)} bytes, its attributes end at {pos}")
        op = OP_UPSERT
    return WalRecord(int(lsn), int(op), ids, vecs, attrs)


def frame(payload: bytes) -> bytes:
    """`[len][crc32][payload]`."""
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def scan(path: str | os.PathLike[str]) -> tuple[list[tuple[int, WalRecord]], int, str | None]:
    """Read a log: ([(offset, record)] of the intact prefix, the byte length of that prefix, why it ended early
    or None). Stops at the first short, CRC-failing, undecodable or out-of-order record."""
    p = Path(path)
    if not p.exists():
        return [], 0, None
    data = p.read_bytes()
    out: list[tuple[int, WalRecord]] = []
    pos, reason, last = 0, None, -1
    while pos < len(data):
        if pos + HEADER.size > len(data):
            reason = f"torn header ({len(data) - pos} of {HEADER.size} bytes)"
            break
        n, crc = HEADER.unpack_from(data, pos)
        body = data[pos + HEADER.size: pos + HEADER.size + n]
        if n == 0 or n > MAX_PAYLOAD:
            reason = f"bad record length {n}"
            break
        if len(body) < n:
            reason = f"torn record ({len(body)} of {n} payload bytes)"
            break
        if zlib.crc32(body) != crc:
            reason = "CRC mismatch"
            break
        try:
            rec = decode(body)
        except ValueError as exc:
            reason = f"undecodable record ({exc})"
            break
        if rec.lsn <= last:
            reason = f"LSN {rec.lsn} after {last} (out of order)"
            break
        last = rec.lsn
        out.append((pos, rec))
        pos += HEADER.size + n
    return out, pos, reason


class WriteAheadLog:
    """An append-only record log with group-committed fsyncs; open it with `WriteAheadLog.open`."""

    def __init__(self, path: str | os.PathLike[str], next_lsn: int, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._fd = durable.open_append(self.path)  # a new log's directory entry is fsynced before any write
        self._size = os.fstat(self._fd).st_size
        self._cond = threading.Condition(threading.Lock())
        self._next = next_lsn
        self._written = next_lsn - 1
        self._durable = next_lsn - 1
        self._syncing = False
        self._error: BaseException | None = None
        self.records = 0
        self.syncs = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str], after_lsn: int = 0,
             fsync: bool = True) -> tuple[WriteAheadLog, list[WalRecord]]:
        """Open (or create) a log; returns it and the intact records with lsn > after_lsn, in order. A torn or
        corrupt tail is truncated away with a warning."""
        p = Path(path)
        Path(str(p) + ".tmp").unlink(missing_ok=True)  # a rewrite interrupted by a crash: the original is intact
        recs, end, reason = scan(p)
        if reason is not None:
            size = p.stat().st_size
            log.warning("%s: dropping %d bytes at offset %d: %s (a write interrupted by a crash, or corruption); "
                        "%d intact records kept", p, size - end, end, reason, len(recs))
            with open(p, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
        last = recs[-1][1].lsn if recs else 0
        wal = cls(p, max(last, after_lsn) + 1, fsync=fsync)
        return wal, [r for _, r in recs if r.lsn > after_lsn]

    # ---- state
    @property
    def next_lsn(self) -> int:
        """The LSN the next append gets."""
        return self._next

    @property
    def durable_lsn(self) -> int:
        """Every record with lsn <= this is on disk."""
        return self._durable

    @property
    def size_bytes(self) -> int:
        """Current length of the log file."""
        return self._size

    def _check(self) -> None:
        if self._error is not None:
            raise OSError(f"write-ahead log {self.path} failed earlier: {self._error}")

    # ---- writing
    def append(self, op: int, ids: np.ndarray, vectors: np.ndarray | None = None,
               attrs: dict[str, np.ndarray] | None = None) -> int:
        """Write one record (not yet synced); returns its LSN. Pair with wait_durable before acknowledging."""
        with self._cond:
            self._check()
            lsn = self._next
            data = frame(encode(WalRecord(lsn, op, ids, vectors, attrs)))
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:  # a partial record may be on disk: refuse every later write
                self._error = exc
                raise
            self._next = lsn + 1
            self._written = lsn
            self._size += len(data)
            self.records += 1
            return lsn

    def wait_durable(self, lsn: int) -> None:
        """Block until record `lsn` is fsynced; one fsync serves every writer queued behind it."""
        with self._cond:
            if lsn > self._written:
                raise ValueError(f"LSN {lsn} was never written (last written {self._written})")
            while self._durable < lsn:
                self._check()
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                target, fd = self._written, self._fd
                self._cond.release()
                err: BaseException | None = None
                try:
                    if self.fsync:
                        os.fsync(fd)
                except OSError as exc:
                    err = exc
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    if err is None:
                        self._durable = max(self._durable, target)
                        self.syncs += 1
                    else:
                        self._error = err
                    self._cond.notify_all()

    def sync(self) -> int:
        """Make everything written so far durable; returns the durable LSN."""
        with self._cond:
            target = self._written
        self.wait_durable(target)
        return target

    def truncate_through(self, lsn: int) -> int:
        """Drop records with lsn <= `lsn` (they are covered by a checkpoint): the remaining tail is copied to a
        temporary file, fsynced and renamed over the log. Returns the bytes removed."""
        with self._cond:
            while self._syncing:
                self._cond.wait()
            self._check()
            recs, end, _ = scan(self.path)
            keep_from = next((off for off, r in recs if r.lsn > lsn), end)
            if keep_from == 0:
                return 0
            with open(self.path, "rb") as fh:
                fh.seek(keep_from)
                tail = fh.read()
            durable.atomic_write(self.path, lambda fh: fh.write(tail))
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            self._durable = self._written  # the new file was fsynced with every record written so far
            removed = self._size - len(tail)
            self._size = len(tail)
            self._cond.notify_all()
            return removed

    def close(self) -> None:
        """Sync and close the file (idempotent)."""
        with self._cond:
            while self._syncing:
                self._cond.wait()
            if self._fd < 0:
                return
            try:
                if self.fsync and self._error is None:
                    os.fsync(self._fd)
                    self._durable = self._written
            finally:
                os.close(self._fd)
                self._fd = -1
                if self._error is None:
                    self._error = OSError("log closed")
                self._cond.notify_all()


# ---- checkpoints
def snapshot_name(lsn: int) -> str:
    """Directory name of the snapshot covering writes up to `lsn`."""
    return f"{SNAP_PREFIX}{lsn:020d}"


def read_checkpoint(root: str | os.PathLike[str]) -> tuple[Path | None, int]:
    """(snapshot directory, covered LSN) named by root/CURRENT, or (None, 0) when there is none."""
    cur = Path(root) / CURRENT
    if not cur.exists():
        return None, 0
    try:
        info = json.loads(cur.read_text())
        return Path(root) / info["snapshot"], int(info["lsn"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{cur}: corrupt checkpoint pointer ({exc})") from None


def write_checkpoint(root: str | os.PathLike[str], index: Index, lsn: int) -> Path:
    """Save `index` (the state after every write <= lsn) as root/snap-<lsn>/ and point CURRENT at it; both steps
    atomic and fsynced. Does not touch the log."""
    root = Path(root)
    final = root / snapshot_name(lsn)
    _, cur_lsn = read_checkpoint(root)
    if final.exists() and cur_lsn == lsn:
        return final
    tmp = root / (final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    index.save(tmp)  # every file fsynced, and the directory
    if final.exists():  # left by a crash between this rename and CURRENT: not referenced, replace it
        shutil.rmtree(final)
    durable.replace(tmp, final)  # the snapshot's name is on disk before CURRENT can point at it
    pointer = json.dumps({"snapshot": final.name, "lsn": int(lsn), "format": 1}).encode()
    durable.atomic_write(root / CURRENT, lambda fh: fh.write(pointer))
    return final


def prune_checkpoints(root: str | os.PathLike[str], keep: Path | None) -> None:
    """Remove snapshot directories other than `keep` (and interrupted *.tmp ones)."""
    for d in Path(root).glob(f"{SNAP_PREFIX}*"):
        if d.is_dir() and (keep is None or d.name != keep.name):
            shutil.rmtree(d, ignore_errors=True)


def checkpoint(root: str | os.PathLike[str], index: Index, lsn: int, wal: WriteAheadLog) -> Path:
    """Full checkpoint in crash-safe order: snapshot + CURRENT first, then trim the log, then old snapshots."""
    snap = write_checkpoint(root, index, lsn)
    wal.truncate_through(lsn)
    prune_checkpoints(root, snap)
    return snap
