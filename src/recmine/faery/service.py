"""The faery retrieval service: exact top-K search over a live index, with upserts, deletes and crash safety.

Consistency (read-copy-update): the state is an immutable `Snapshot` = a base `Index` (never mutated once
published) + a small fp32 delta of rows written since (append-only buffer; a snapshot sees its first `m` rows) +
an overlay (id -> LSN of its last write) whose base ids are tombstones. A write builds the next snapshot from the
head under a writer lock (O(delta), never O(corpus)), logs it, waits for the group-committed fsync, then publishes
the newest durable snapshot by one reference swap. A search reads that reference once, over-fetches
k + |tombstones| from the base, drops tombstoned ids and merges the delta exactly (float64 re-scoring, ties by the
smaller id). So a search never sees a write acknowledged after it began as missing, nor a row deleted before it
began, and never waits for a writer. A background thread folds the delta into a fresh copy of the base when it
grows past a threshold, publishes it by swap, and checkpoints it (see wal.py) so the log stays short.

`RetrievalCore` is all of this without the network (unit-testable); `RetrievalServer` puts gRPC in front of it."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from recmine.auth import Auth

from recmine.faery import durable, kernels
from recmine.faery.corpus import ARRAYS, Corpus
from recmine.faery.index import Index, check_ids, check_queries
from recmine.faery.wal import (
    CURRENT,
    OP_DELETE,
    OP_UPSERT,
    SNAP_PREFIX,
    WalRecord,
    WriteAheadLog,
    checkpoint,
    read_checkpoint,
    write_checkpoint,
)

log = logging.getLogger(__name__)

WAL_FILE = "wal.log"
LOCK_FILE = "LOCK"


# ---------------------------------------------------------------------------------------------------------------
# immutable snapshots
def _clone(index: Index) -> Index:
    """A private, writable copy of an index (the published one is shared with searches and never mutated)."""
    c = index.corpus
    new = Index(index.dim, index.metric, index.storage)
    nc: Corpus = new.corpus
    for name in ARRAYS:
        if name == "packed" and c.storage == "fp32":
            continue
        setattr(nc, name, np.array(getattr(c, name)[: c.size]))
    if c.storage == "fp32":
        nc.packed = nc.master
    nc.size = c.size
    nc.slot_of = dict(c.slot_of)
    new._next_id = getattr(index, "_next_id", 0)
    return new


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One consistent version: base + delta rows + overlay. Never mutated after construction."""

    base: Index
    base_version: int  # the base holds exactly the state after every write <= base_version
    version: int  # LSN of the last write included
    overlay: dict[int, int]  # id -> LSN of its last write since the base (upserted or deleted)
    tomb: np.ndarray  # overlay ids that are live in the base: hidden there
    buf_ids: np.ndarray  # append-only delta buffer (shared along a chain of snapshots; rows < m are frozen)
    buf_raw: np.ndarray  # vectors as written (what a fold adds to the base)
    buf_vecs: np.ndarray  # vectors as stored (normalised for cosine; the same array otherwise)
    m: int  # buffer rows this snapshot may read
    rows: np.ndarray  # live delta rows (int64 indices into the buffer)
    delta_pos: dict[int, int]  # live delta id -> buffer row
    live: int

    @classmethod
    def of_base(cls, base: Index, version: int) -> Snapshot:
        """A snapshot that is just `base` at `version`."""
        return cls(base, version, version, {}, np.zeros(0, np.int64), np.zeros(0, np.int64),
                   np.zeros((0, base.dim), np.float32), np.zeros((0, base.dim), np.float32), 0,
                   np.zeros(0, np.int64), {}, len(base))

    def contains(self, id_: int) -> bool:
        """True when the id is live in this version."""
        return id_ in self.delta_pos or (id_ not in self.overlay and self.base.contains(id_))

    @property
    def delta_rows(self) -> int:
        """Live rows in the delta."""
        return int(self.rows.size)

    def _touch(self, ids: list[int], lsn: int) -> tuple[dict[int, int], np.ndarray]:
        overlay = dict(self.overlay)
        fresh = [i for i in ids if i not in self.overlay and self.base.contains(i)]
        for i in ids:
            overlay[i] = lsn
        tomb = np.concatenate([self.tomb, np.array(fresh, np.int64)]) if fresh else self.tomb
        return overlay, tomb

    def with_upsert(self, ids: np.ndarray, raw: np.ndarray, vecs: np.ndarray, lsn: int) -> Snapshot:
        """The next version: ids inserted or replaced."""
        id_list = ids.tolist()
        n = len(id_list)
        added = sum(1 for i in id_list if not self.contains(i))
        overlay, tomb = self._touch(id_list, lsn)
        buf_ids, buf_raw, buf_vecs = self.buf_ids, self.buf_raw, self.buf_vecs
        if self.m + n > buf_ids.shape[0]:  # grow into new arrays: older snapshots keep the old ones
            cap = max(64, 2 * (self.m + n))
            buf_ids = np.zeros(cap, np.int64)
            buf_ids[: self.m] = self.buf_ids[: self.m]
            buf_raw = np.zeros((cap, raw.shape[1]), np.float32)
            buf_raw[: self.m] = self.buf_raw[: self.m]
            if self.buf_vecs is self.buf_raw:
                buf_vecs = buf_raw
            else:
                buf_vecs = np.zeros((cap, raw.shape[1]), np.float32)
                buf_vecs[: self.m] = self.buf_vecs[: self.m]
        buf_ids[self.m: self.m + n] = ids  # rows >= self.m: no published snapshot reads them
        buf_raw[self.m: self.m + n] = raw
        if buf_vecs is not buf_raw:
            buf_vecs[self.m: self.m + n] = vecs
        replaced = [self.delta_pos[i] for i in id_list if i in self.delta_pos]
        rows = self.rows[~np.isin(self.rows, replaced)] if replaced else self.rows
        rows = np.concatenate([rows, np.arange(self.m, self.m + n, dtype=np.int64)])
        delta_pos = dict(self.delta_pos)
        delta_pos.update(zip(id_list, range(self.m, self.m + n), strict=True))
        return replace(self, version=lsn, overlay=overlay, tomb=tomb, buf_ids=buf_ids, buf_raw=buf_raw,
                       buf_vecs=buf_vecs, m=self.m + n, rows=rows, delta_pos=delta_pos, live=self.live + added)

    def with_delete(self, ids: np.ndarray, lsn: int) -> Snapshot:
        """The next version: ids (all live) removed."""
        id_list = ids.tolist()
        overlay, tomb = self._touch(id_list, lsn)
        gone = [self.delta_pos[i] for i in id_list if i in self.delta_pos]
        rows, delta_pos = self.rows, self.delta_pos
        if gone:
            rows = rows[~np.isin(rows, gone)]
            delta_pos = dict(self.delta_pos)
            for i in id_list:
                delta_pos.pop(i, None)
        return replace(self, version=lsn, overlay=overlay, tomb=tomb, rows=rows, delta_pos=delta_pos,
                       live=self.live - len(id_list))

    def folded(self) -> Index:
        """A new base index holding exactly this version (an O(corpus) copy; run it off the write path)."""
        idx = _clone(self.base)
        if self.tomb.size:
            idx.remove(self.tomb)
        if self.rows.size:
            idx.add(self.buf_raw[self.rows], self.buf_ids[self.rows])
        c = idx.corpus
        if c.size - len(c) > max(1024, c.size // 4):
            idx.compact()
        return idx

    def rebased(self, base: Index, base_version: int) -> Snapshot:
        """This same version expressed over `base` (= an older snapshot at base_version, folded): only writes
        after base_version stay in the overlay and delta."""
        overlay = {i: v for i, v in self.overlay.items() if v > base_version}
        keep = np.array([r for i, r in self.delta_pos.items() if i in overlay], np.int64)
        keep.sort()
        n = keep.size
        cap = max(64, 2 * n)
        buf_ids = np.zeros(cap, np.int64)
        buf_raw = np.zeros((cap, base.dim), np.float32)
        buf_ids[:n] = self.buf_ids[keep]
        buf_raw[:n] = self.buf_raw[keep]
        if self.buf_vecs is self.buf_raw:
            buf_vecs = buf_raw
        else:
            buf_vecs = np.zeros((cap, base.dim), np.float32)
            buf_vecs[:n] = self.buf_vecs[keep]
        delta_pos = {int(i): r for r, i in enumerate(buf_ids[:n].tolist())}
        # a delete of an id the new base does not hold is already reflected in it
        overlay = {i: v for i, v in overlay.items() if i in delta_pos or base.contains(i)}
        tomb = np.array([i for i in overlay if base.contains(i)], np.int64)
        snap = Snapshot(base, base_version, self.version, overlay, tomb, buf_ids, buf_raw, buf_vecs, n,
                        np.arange(n, dtype=np.int64), delta_pos, self.live)
        expect = len(base) - tomb.size + n
        if expect != self.live:
            raise AssertionError(f"rebase lost rows: {expect} live after, {self.live} before")
        return snap

    def ids(self) -> np.ndarray:
        """Live ids (base order, then delta order)."""
        base_ids = self.base.ids()
        if self.tomb.size:
            base_ids = base_ids[~np.isin(base_ids, self.tomb)]
        return np.concatenate([base_ids, self.buf_ids[self.rows]])

    def get(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of live ids; KeyError naming an unknown one."""
        out = np.empty((ids.size, self.base.dim), np.float32)
        for j, i in enumerate(ids.tolist()):
            if i in self.delta_pos:
                out[j] = self.buf_vecs[self.delta_pos[i]]
            elif i not in self.overlay and self.base.contains(i):
                out[j] = self.base.get([i])[0]
            else:
                raise KeyError(f"unknown id {i}")
        return out

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over this version; q is (nq, dim) finite float32, k >= 1 (validated by the caller)."""
        base = self.base
        if self.rows.size == 0 and self.tomb.size == 0:
            return base.search(q, k)
        _, base_ids = base.search(q, k + int(self.tomb.size))
        metric = base.metric
        if metric == "cosine":  # exactly as Index.search prepares queries
            n = np.linalg.norm(q.astype(np.float64), axis=1)
            q = (q / np.where(n > 0, n, 1.0)[:, None]).astype(np.float32)
        nq = q.shape[0]
        pad = np.inf if metric == "l2" else -np.inf
        scores = np.full((nq, k), pad, np.float32)
        out = np.full((nq, k), -1, np.int64)
        d_rows = self.rows
        d_ids = self.buf_ids[d_rows]
        exact = kernels.exact_l2 if metric == "l2" else kernels.exact_scores
        sign = 1.0 if metric == "l2" else -1.0  # sort key: ascending
        for i in range(nq):
            b = base_ids[i]
            b = b[b >= 0]
            if self.tomb.size:
                b = b[~np.isin(b, self.tomb)]
            b = b[:k]
            q64 = q[i].astype(np.float64)
            b_rows = base.get(b) if b.size else np.zeros((0, base.dim), np.float32)
            key_b = sign * exact(q64, b_rows, np.arange(b.size, dtype=np.int64))
            key_d = sign * exact(q64, self.buf_vecs, d_rows) if d_rows.size else np.zeros(0)
            key = np.concatenate([key_b, key_d])
            cand = np.concatenate([b, d_ids])
            order = np.lexsort((cand, key))[:k]
            scores[i, : order.size] = (sign * key[order]).astype(np.float32)
            out[i, : order.size] = cand[order]
        return scores, out


# ---------------------------------------------------------------------------------------------------------------
# the core: snapshots + log + background fold/checkpoint, no network
class RetrievalCore:
    """A live, crash-safe retrieval index in a directory (snapshots + CURRENT + wal.log); see module docstring.

    dim/metric/storage only matter when the directory holds no index yet (then dim is required)."""

    def __init__(self, index_dir: str | os.PathLike[str], dim: int | None = None, metric: str | None = None,
                 storage: str | None = None, *, fold_rows: int = 4096, fold_tombstones: int = 512,
                 checkpoint_bytes: int = 64 << 20, fsync: bool = True, background: bool = True,
                 checkpoint_on_close: bool = True, poll_s: float = 0.2) -> None:
        self.root = Path(index_dir)
        durable.make_dirs(self.root)
        self.fold_rows = int(fold_rows)
        self.fold_tombstones = int(fold_tombstones)
        self.checkpoint_bytes = int(checkpoint_bytes)
        self.checkpoint_on_close = checkpoint_on_close
        self._lock_fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise RuntimeError(f"{self.root} is in use by another faery server (lock held on {LOCK_FILE})") from None
        try:
            self._open(dim, metric, storage, fsync)
        except BaseException:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            raise
        self._closed = False
        self.failed: BaseException | None = None
        self.folds = 0
        self.checkpoints = 0
        self.searches = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._poll_s = poll_s
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._maintain, name="faery-fold", daemon=True)
            self._thread.start()
            if self._fold_due() or self._checkpoint_due():
                self._wake.set()

    def _open(self, dim: int | None, metric: str | None, storage: str | None, fsync: bool) -> None:
        for junk in self.root.glob(f"{SNAP_PREFIX}*.tmp"):  # a checkpoint interrupted by a crash
            shutil.rmtree(junk, ignore_errors=True)
        (self.root / (CURRENT + ".tmp")).unlink(missing_ok=True)
        snap_dir, lsn = read_checkpoint(self.root)
        if snap_dir is not None:
            base = Index.load(snap_dir)
        elif (self.root / "manifest.json").exists():  # a plain saved Index (e.g. `recmine retrieve build`)
            base = Index.load(self.root)
        else:
            if dim is None:
                raise ValueError(f"{self.root} holds no faery index; give dim (and metric/storage) to create one")
            base = Index(int(dim), metric or "ip", storage or "int8")
            write_checkpoint(self.root, base, 0)
        if dim is not None and int(dim) != base.dim:
            raise ValueError(f"the index in {self.root} has dim {base.dim}, not {dim}")
        for name, want, have in (("metric", metric, base.metric), ("storage", storage, base.storage)):
            if want is not None and want != have:
                log.warning("%s: existing index has %s %s; ignoring %s", self.root, name, have, want)
        self._checkpoint_lsn = lsn
        self.wal, records = WriteAheadLog.open(self.root / WAL_FILE, after_lsn=lsn, fsync=fsync)
        if records and records[0].lsn != lsn + 1:
            log.warning("%s: the log resumes at LSN %d but the checkpoint covers only up to %d: writes %d..%d are "
                        "missing", self.root, records[0].lsn, lsn, lsn + 1, records[0].lsn - 1)
        head = Snapshot.of_base(base, lsn)
        next_id = max(getattr(base, "_next_id", 0), int(base.ids().max()) + 1 if len(base) else 0)
        for rec in records:
            head = self._replay(head, rec)
            if rec.ids.size:
                next_id = max(next_id, int(rec.ids.max()) + 1)
            if head.delta_rows >= self.fold_rows or head.tomb.size >= self.fold_tombstones:
                head = head.rebased(head.folded(), head.version)
        if records:
            log.info("%s: replayed %d logged writes (LSN %d..%d) over the checkpoint at LSN %d", self.root,
                     len(records), records[0].lsn, records[-1].lsn, lsn)
        self._next_id = next_id
        self._head = head
        self._published = head
        self._pending: dict[int, Snapshot] = {}
        self._write_lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._maint_lock = threading.Lock()

    @staticmethod
    def _replay(head: Snapshot, rec: WalRecord) -> Snapshot:
        if rec.op == OP_UPSERT:
            raw = head.base.corpus.check_vectors(rec.vectors)
            return head.with_upsert(rec.ids, raw, head.base._prepare(raw), rec.lsn)
        known = np.array([i for i in rec.ids.tolist() if head.contains(i)], np.int64)
        if known.size != rec.ids.size:
            log.warning("log record %d deletes %d ids that are not live; skipped", rec.lsn, rec.ids.size - known.size)
        return head.with_delete(known, rec.lsn)

    # ---- properties
    @property
    def dim(self) -> int:
        """Vector width."""
        return self._published.base.dim

    @property
    def metric(self) -> str:
        """ip, cosine or l2."""
        return self._published.base.metric

    @property
    def storage(self) -> str:
        """The base index's scan tier (int8, fp16, fp32)."""
        return self._published.base.storage

    @property
    def version(self) -> int:
        """LSN of the newest published (acknowledged-or-acknowledgeable) write."""
        return self._published.version

    def snapshot(self) -> Snapshot:
        """The current published snapshot (immutable)."""
        return self._published

    def __len__(self) -> int:
        return self._published.live

    def contains(self, id_: int) -> bool:
        """True when the id is live."""
        return self._published.contains(int(id_))

    def ids(self) -> np.ndarray:
        """Live ids."""
        return self._published.ids()

    def get(self, ids: Any) -> np.ndarray:
        """Stored fp32 vectors (normalised for cosine) of live ids; KeyError naming an unknown id."""
        return self._published.get(np.atleast_1d(np.asarray(ids, np.int64)))

    # ---- validation
    def _check_ids(self, ids: Any) -> np.ndarray:
        arr = check_ids(ids)
        if arr.size == 0:
            raise ValueError("empty batch: no ids given")
        if (arr < 0).any():
            raise ValueError(f"ids must be non-negative (-1 marks padding), got {int(arr[arr < 0][0])}")
        return arr

    def _check_queries(self, queries: Any, k: Any) -> tuple[np.ndarray, int]:
        q = check_queries(queries, k, self.dim)
        if q.shape[0] == 0:
            raise ValueError("empty batch: no queries given")
        return q, int(k)

    def _check_writable(self) -> None:
        if self._closed:
            raise RuntimeError("the retrieval core is closed")
        if self.failed is not None:
            raise OSError(f"writes are disabled after a log failure: {self.failed}")

    # ---- reads
    def search_versioned(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Top-k per query from one consistent version: (scores, ids, version)."""
        q, k = self._check_queries(queries, k)
        snap = self._published  # the only shared state a search reads: one reference, taken once
        self.searches += 1
        scores, ids = snap.search(q, k)
        return scores, ids, snap.version

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query, exactly as Index.search on the live rows."""
        scores, ids, _ = self.search_versioned(queries, k)
        return scores, ids

    # ---- writes
    def upsert(self, ids: Any, vectors: Any) -> tuple[np.ndarray, int]:
        """Insert or replace rows (ids None: new consecutive ids). Returns (ids, LSN) once the write is durable
        and visible to every later search. ValueError on bad input (then nothing changes)."""
        with self._write_lock:
            self._check_writable()
            head = self._head
            if np.asarray(vectors).size == 0:
                raise ValueError("empty batch: no vectors given")
            raw = head.base.corpus.check_vectors(vectors)
            vecs = head.base._prepare(raw)
            if ids is None:
                arr = np.arange(self._next_id, self._next_id + raw.shape[0], dtype=np.int64)
            else:
                arr = self._check_ids(ids)
            if arr.size != raw.shape[0]:
                raise ValueError(f"{arr.size} ids for {raw.shape[0]} vectors")
            lsn = self._log(OP_UPSERT, arr, raw)
            self._advance(head.with_upsert(arr, raw, vecs, lsn))
            self._next_id = max(self._next_id, int(arr.max()) + 1)
        self._commit(lsn)
        return arr, lsn

    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        """Index-shaped upsert: returns the ids."""
        return self.upsert(ids, vectors)[0]

    def delete(self, ids: Any) -> tuple[int, int]:
        """Remove live ids; returns (count, LSN) once durable. KeyError naming an unknown id (nothing removed)."""
        with self._write_lock:
            self._check_writable()
            head = self._head
            arr = self._check_ids(ids)
            missing = [i for i in arr.tolist() if not head.contains(i)]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise KeyError(f"unknown id {missing[0]}{more}; nothing was deleted")
            lsn = self._log(OP_DELETE, arr, None)
            self._advance(head.with_delete(arr, lsn))
        self._commit(lsn)
        return int(arr.size), lsn

    def remove(self, ids: Any) -> int:
        """Index-shaped delete: returns the count."""
        return self.delete(ids)[0]

    def _log(self, op: int, ids: np.ndarray, vectors: np.ndarray | None) -> int:
        try:
            return self.wal.append(op, ids, vectors)
        except OSError as exc:
            self.failed = exc
            raise

    def _advance(self, snap: Snapshot) -> None:
        self._head = snap
        with self._publish_lock:
            self._pending[snap.version] = snap

    def _commit(self, lsn: int) -> None:
        """Wait for the group fsync covering lsn, then publish the newest durable snapshot."""
        try:
            self.wal.wait_durable(lsn)
        except OSError as exc:
            self.failed = exc
            raise
        self._publish_upto(self.wal.durable_lsn)
        if self._fold_due() or self._checkpoint_due():
            self._wake.set()

    def _publish_upto(self, durable: int) -> None:
        with self._publish_lock:
            ready = [v for v in self._pending if v <= durable]
            if not ready:
                return
            best = self._pending[max(ready)]
            for v in ready:
                del self._pending[v]
            if best.version > self._published.version:
                self._published = best  # the swap every later search sees

    # ---- fold and checkpoint
    def _fold_due(self) -> bool:
        s = self._published
        return (s.delta_rows >= self.fold_rows or s.tomb.size >= self.fold_tombstones
                or len(s.overlay) >= 4 * max(self.fold_rows, self.fold_tombstones))

    def _checkpoint_due(self) -> bool:
        return self.wal.size_bytes >= self.checkpoint_bytes

    def fold(self, checkpoint_after: bool = False) -> None:
        """Fold the delta into a fresh base (built off the write path) and publish it by swap; with
        checkpoint_after, also save it and trim the log. Searches never wait; writers wait for one fsync."""
        with self._maint_lock:
            snap = self._published
            if snap.overlay:
                # the O(corpus) part, with no lock held; an overlay of only deletes of non-base ids is a no-op
                base = snap.folded() if snap.rows.size or snap.tomb.size else snap.base
                with self._write_lock:
                    self.wal.sync()
                    self._publish_upto(self.wal.durable_lsn)  # every logged write is now published
                    head = self._head.rebased(base, snap.version)
                    with self._publish_lock:
                        self._pending.clear()
                        self._head = head
                        self._published = head
                self.folds += 1
            else:
                base = snap.base
            bv = self._published.base_version
            if checkpoint_after and (bv > self._checkpoint_lsn or self.wal.size_bytes > 0):
                checkpoint(self.root, base, bv, self.wal)
                self._checkpoint_lsn = bv
                self.checkpoints += 1

    def checkpoint(self) -> None:
        """Fold everything published and checkpoint it now."""
        self.fold(checkpoint_after=True)

    def _maintain(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            ckpt = self._checkpoint_due()
            if not (ckpt or self._fold_due()):
                continue
            try:
                self.fold(checkpoint_after=ckpt)
            except Exception:  # keep serving from the current snapshot; the next round retries
                log.exception("%s: background fold/checkpoint failed", self.root)
                time.sleep(self._poll_s)

    # ---- stats / lifetime
    def stats(self) -> dict[str, Any]:
        """Live rows, version, delta/tombstone sizes, log and checkpoint counters."""
        s = self._published
        return {"live": s.live, "dim": s.base.dim, "metric": s.base.metric, "storage": s.base.storage,
                "version": s.version, "base_rows": len(s.base), "delta_rows": s.delta_rows,
                "tombstones": int(s.tomb.size), "checkpoint_lsn": self._checkpoint_lsn,
                "wal_bytes": self.wal.size_bytes, "wal_records": self.wal.records, "wal_syncs": self.wal.syncs,
                "folds": self.folds, "checkpoints": self.checkpoints, "searches": self.searches}

    def close(self, checkpoint: bool | None = None) -> None:
        """Stop the background thread, optionally fold + checkpoint (default: checkpoint_on_close), close the log
        and release the directory lock. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if (self.checkpoint_on_close if checkpoint is None else checkpoint) and self.failed is None:
                self.fold(checkpoint_after=True)
        finally:
            with self._write_lock:
                self._closed = True
                self.wal.close()
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)

    def __enter__(self) -> RetrievalCore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# gRPC
class _Servicer:
    """gRPC methods over a RetrievalCore; bad input -> a status code with a message, the server keeps serving."""

    def __init__(self, server: RetrievalServer) -> None:
        self.server = server
        self.core = server.core
        self.pb2 = server.pb2

    def _run(self, context: Any, fn: Callable[[], Any]) -> Any:
        import grpc

        try:
            return fn()
        except ValueError as exc:
            code, msg = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except KeyError as exc:
            code, msg = grpc.StatusCode.NOT_FOUND, str(exc.args[0]) if exc.args else "not found"
        except _TooLarge as exc:
            code, msg = grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
        except RuntimeError as exc:
            code, msg = grpc.StatusCode.UNAVAILABLE, str(exc)
        except OSError as exc:
            code, msg = grpc.StatusCode.INTERNAL, f"write-ahead log failure: {exc}"
        context.abort(code, msg)

    def Search(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        def run() -> Any:
            dim = self.core.dim
            if request.dim != dim:
                raise ValueError(f"queries have dim {request.dim}, the index has dim {dim}")
            if request.nq < 1:
                raise ValueError(f"empty batch: nq must be >= 1, got {request.nq}")
            if len(request.queries) != request.nq * dim * 4:
                raise ValueError(f"{len(request.queries)} query bytes for nq={request.nq} x dim={dim} float32")
            if request.k < 1:
                raise ValueError(f"k must be a positive integer, got {request.k}")
            reply_bytes = request.nq * request.k * 12 + 64
            if reply_bytes > self.server.max_message_bytes:
                raise _TooLarge(f"the reply would be {reply_bytes} bytes (nq={request.nq} x k={request.k}), over "
                                f"the {self.server.max_message_bytes}-byte message limit; split the batch")
            q = np.frombuffer(request.queries, "<f4").reshape(request.nq, dim)
            scores, ids, version = self.core.search_versioned(q, int(request.k))
            return self.pb2.SearchReply(scores=np.ascontiguousarray(scores, "<f4").tobytes(),
                                        ids=np.ascontiguousarray(ids, "<i8").tobytes(), nq=scores.shape[0],
                                        k=scores.shape[1], version=version)

        return self._run(context, run)

    def Upsert(self, request: Any, context: Any) -> Any:  # noqa: N802
        def run() -> Any:
            dim = self.core.dim
            if request.n < 1:
                raise ValueError(f"empty batch: n must be >= 1, got {request.n}")
            if request.dim != dim:
                raise ValueError(f"vectors have dim {request.dim}, the index has dim {dim}")
            if len(request.vectors) != request.n * dim * 4:
                raise ValueError(f"{len(request.vectors)} vector bytes for n={request.n} x dim={dim} float32")
            if len(request.ids) not in (0, request.n):
                raise ValueError(f"{len(request.ids)} ids for {request.n} vectors")
            vecs = np.frombuffer(request.vectors, "<f4").reshape(request.n, dim)
            ids = np.array(request.ids, np.int64) if len(request.ids) else None
            out, version = self.core.upsert(ids, vecs)
            return self.pb2.UpsertReply(ids=out.tolist(), version=version)

        return self._run(context, run)

    def Delete(self, request: Any, context: Any) -> Any:  # noqa: N802
        def run() -> Any:
            n, version = self.core.delete(np.array(request.ids, np.int64))
            return self.pb2.DeleteReply(deleted=n, version=version)

        return self._run(context, run)

    def Stats(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self.pb2.StatsReply(**self.core.stats())

    def Health(self, request: Any, context: Any) -> Any:  # noqa: N802
        status = self.pb2.HealthCheckResponse.SERVING if self.server.serving else \
            self.pb2.HealthCheckResponse.NOT_SERVING
        return self.pb2.HealthCheckResponse(status=status)


class _TooLarge(Exception):
    """A reply that would exceed the message limit (RESOURCE_EXHAUSTED)."""


class RetrievalServer:
    """gRPC server over a RetrievalCore(index_dir, **core_kwargs); port 0 picks a free one (`.port` after start()).
    lifetime_s makes it stop by itself after that many seconds (tests, demos)."""

    def __init__(self, index_dir: str | os.PathLike[str], port: int = 0, host: str = "127.0.0.1",
                 max_message_mb: float = 64, workers: int = 16, lifetime_s: float | None = None,
                 auth: Auth | None = None, **core_kwargs: Any) -> None:
        from recmine.auth import Auth as _Auth
        from recmine.faery.client import stubs

        self.pb2, self.pb2_grpc = stubs()
        self.auth = auth or _Auth()
        self.auth.check_listen(host)  # before opening the index: plaintext beyond loopback needs insecure
        self.host = host
        self.requested_port = int(port)
        self.port = 0
        self.max_message_bytes = int(max_message_mb * (1 << 20))
        self.workers = workers
        self.lifetime_s = lifetime_s
        self.core = RetrievalCore(index_dir, **core_kwargs)
        self.serving = False
        self._server: Any = None
        self._timer: threading.Timer | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def address(self) -> str:
        """host:port to dial."""
        return f"{self.host}:{self.port}"

    def start(self) -> int:
        """Bind and start serving; returns the bound port."""
        from concurrent.futures import ThreadPoolExecutor

        import grpc

        opts = [("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes), ("grpc.so_reuseport", 0)]
        self._server = grpc.server(ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="faery-rpc"),
                                   options=opts, interceptors=self.auth.server_interceptors())
        self.pb2_grpc.add_RetrievalServicer_to_server(_Servicer(self), self._server)
        try:
            self.port = self.auth.add_port(self._server, f"{self.host}:{self.requested_port}")
        except RuntimeError as exc:
            self.core.close(checkpoint=False)
            raise OSError(f"cannot listen on {self.host}:{self.requested_port}: {exc}") from None
        if self.port == 0:
            self.core.close(checkpoint=False)
            raise OSError(f"cannot listen on {self.host}:{self.requested_port}")
        self._server.start()
        self.serving = True
        if self.lifetime_s is not None:
            self._timer = threading.Timer(self.lifetime_s, self.stop)
            self._timer.daemon = True
            self._timer.start()
        log.info("faery retrieval server on %s (%d rows, dim %d)", self.address, len(self.core), self.core.dim)
        return self.port

    def stop(self, grace: float = 1.0, checkpoint: bool | None = None) -> None:
        """Stop accepting calls, let running ones finish (up to `grace` s), close the core. Idempotent."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self.serving = False
            if self._timer is not None:
                self._timer.cancel()
            if self._server is not None:
                self._server.stop(grace).wait()
            self.core.close(checkpoint=checkpoint)
            self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped (True) or timeout (False)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> RetrievalServer:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(index_dir: str | os.PathLike[str], port: int = 0, host: str = "127.0.0.1",
          for_seconds: float | None = None, max_message_mb: float = 64,
          on_ready: Callable[[RetrievalServer], None] | None = None, auth: Auth | None = None,
          **core_kwargs: Any) -> None:
    """Run a server until SIGTERM/SIGINT (main thread only) or `for_seconds` elapse, then stop cleanly
    (checkpointing). on_ready(server) runs once it listens."""
    server = RetrievalServer(index_dir, port=port, host=host, max_message_mb=max_message_mb,
                             lifetime_s=for_seconds, auth=auth, **core_kwargs)
    server.start()
    restore: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            restore[sig] = signal.signal(sig, lambda *_: threading.Thread(target=server.stop, daemon=True).start())
    try:
        if on_ready is not None:
            on_ready(server)
        while not server.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in restore.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
