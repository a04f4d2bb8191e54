"""Sharded, versioned key -> float32 vector parameter store (one per parameter-server process).

Every value carries a version (timestamp ns, origin id); merges are last-writer-wins on (ts, origin), so repeated
updates to a key collapse to one and replicas converge whatever order updates arrive in (state-based, no log).
Each shard keeps a version vector (per origin, the newest timestamp it holds everything up to), a change counter
(a peer that has seen the counter skips the shard whole), and a bounded cache of recently changed keys: "what changed
since my version vector?" is answered from the cache in O(recently changed keys); only an asker older than the
cache forces a shard scan."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VersionVector = dict[int, int]


@dataclass
class TableUpdate:
    """Rows of one table: keys, values (n, dim) float32, and their versions (ts ns, origin id)."""

    table: str
    keys: np.ndarray
    values: np.ndarray
    ts: np.ndarray
    origin: np.ndarray

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def nbytes(self) -> int:
        """Payload bytes on the wire (keys + values + versions)."""
        return int(self.keys.nbytes + self.values.nbytes + self.ts.nbytes + self.origin.nbytes)

    def take(self, idx: np.ndarray) -> TableUpdate:
        """The subset of rows at positions idx."""
        return TableUpdate(self.table, self.keys[idx], self.values[idx], self.ts[idx], self.origin[idx])


def shard_of(keys: np.ndarray, num_shards: int) -> np.ndarray:
    """Shard of each key (a multiplicative hash, so consecutive ids spread evenly)."""
    k = np.asarray(keys, dtype=np.int64).astype(np.uint64)
    return ((k * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)).astype(np.int64) % num_shards


def newest_per_key(up: TableUpdate) -> TableUpdate:
    """The rows of `up` with duplicates collapsed to each key's newest version (ts, then origin), sorted by key."""
    order = np.lexsort((up.origin, up.ts, up.keys))
    last = np.ones(order.shape[0], bool)
    k_sorted = up.keys[order]
    last[:-1] = k_sorted[1:] != k_sorted[:-1]
    return up.take(order[last])


def collapse(updates: Iterable[TableUpdate]) -> list[TableUpdate]:
    """Many updates -> one per table holding each key's newest version (last-writer-wins, as `apply` merges)."""
    by_table: dict[str, list[TableUpdate]] = {}
    for up in updates:
        if len(up):
            by_table.setdefault(up.table, []).append(up)
    return [newest_per_key(TableUpdate(t, np.concatenate([u.keys for u in ups]), np.concatenate([u.values for u in ups]),
                                       np.concatenate([u.ts for u in ups]), np.concatenate([u.origin for u in ups])))
            for t, ups in by_table.items()]


@dataclass
class ChangeSet:
    """Answer to changes_since: the rows, the responder's version vector for the shard (valid only when the
    rows are applied in full), its change counter, and how many keys were examined to build it."""

    shard: int
    updates: list[TableUpdate]
    version_vector: VersionVector
    counter: int
    examined: int
    scanned: bool
    sources: set[int] | None = None  # nodes that delivered the rows here (when asked for)
    memo: dict = field(default_factory=dict)  # a driver's work on this very set (e.g. its encoding), for reuse

    def __len__(self) -> int:
        return sum(len(u) for u in self.updates)


class _Table:
    """Column storage for one table: key -> row, values, versions, shard of each row."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self.index: dict[int, int] = {}
        self.keys = np.empty(capacity, np.int64)
        self.values = np.empty((capacity, dim), np.float32)
        self.ts = np.empty(capacity, np.int64)
        self.origin = np.empty(capacity, np.int32)
        self.src = np.empty(capacity, np.int32)  # the node that delivered this version here (self for puts)
        self.shard = np.empty(capacity, np.int32)
        self.size = 0

    def _grow(self, need: int) -> None:
        cap = self.keys.shape[0]
        if need <= cap:
            return
        new = max(need, cap * 2)
        for name in ("keys", "ts", "origin", "src", "shard"):
            arr = getattr(self, name)
            grown = np.empty(new, arr.dtype)
            grown[: self.size] = arr[: self.size]
            setattr(self, name, grown)
        vals = np.empty((new, self.dim), np.float32)
        vals[: self.size] = self.values[: self.size]
        self.values = vals

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 when absent."""
        get = self.index.get
        return np.fromiter((get(k, -1) for k in keys.tolist()), dtype=np.int64, count=keys.shape[0])


class ParamStore:
    """A parameter server's state: several tables of int64 key -> float32[dim], split into shards.

    Thread-safe (one lock); the gRPC peer serves it from an event loop and a trainer may write from another thread."""

    def __init__(self, tables: Mapping[str, int], num_shards: int = 8, node_id: int = 0,
                 cache_size: int = 65536) -> None:
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        if not tables:
            raise ValueError("a store needs at least one table")
        for name, dim in tables.items():
            if int(dim) < 1:
                raise ValueError(f"table {name!r}: dim must be >= 1, got {dim}")
        self.tables = {name: _Table(int(dim)) for name, dim in tables.items()}
        self.num_shards = num_shards
        self.node_id = int(node_id)
        self.cache_size = int(cache_size)
        self._lock = threading.RLock()
        self._counter = np.zeros(num_shards, np.int64)
        self._vv: list[VersionVector] = [{} for _ in range(num_shards)]
        # recent changes per shard: (table, key) -> shard counter value when it last changed, oldest first
        self._recent: list[OrderedDict[tuple[str, int], int]] = [OrderedDict() for _ in range(num_shards)]
        self._floor: list[VersionVector] = [{} for _ in range(num_shards)]  # versions evicted from the cache
        self._floor_seq = np.zeros(num_shards, np.int64)  # counter value of the newest evicted entry
        self._last_ts = 0
        self.src_epoch = 0  # bumped when rows change hands (forget_source): no-echo answers computed before differ
        # callables(changed: {shard: origins of the changed rows}, source: the node they came from) run after every
        # change (e.g. to wake the long polls it concerns)
        self.listeners: list = []
        # (table, keys, ts, origin, applied wall clock ns) per applied batch, when log_applies is on
        self.apply_log: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.log_applies = False

    # ---- helpers
    def dim(self, table: str) -> int:
        """Vector width of a table (KeyError naming it when unknown)."""
        return self._table(table).dim

    def _table(self, table: str) -> _Table:
        try:
            return self.tables[table]
        except KeyError:
            raise KeyError(f"unknown table {table!r}; tables are {sorted(self.tables)}") from None

    def shard_of(self, keys: np.ndarray) -> np.ndarray:
        """Shard of each key (see the module function `shard_of`)."""
        return shard_of(keys, self.num_shards)

    def next_ts(self) -> int:
        """A fresh local timestamp (ns), strictly increasing on this node."""
        with self._lock:
            self._last_ts = max(time.time_ns(), self._last_ts + 1)
            return self._last_ts

    def _validate(self, table: str, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self._table(table)
        keys = np.asarray(keys)
        values = np.asarray(values)
        if keys.ndim != 1 or not np.issubdtype(keys.dtype, np.integer):
            raise ValueError(f"table {table!r}: keys must be a 1-D integer array")
        if values.ndim != 2 or values.shape != (keys.shape[0], t.dim):
            raise ValueError(f"table {table!r}: values must have shape ({keys.shape[0]}, {t.dim}), got {values.shape}")
        values = values.astype(np.float32, copy=False)
        if not np.isfinite(values).all():
            bad = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
            raise ValueError(f"table {table!r}: non-finite value (NaN/Inf) for key {int(keys[bad])}")
        return keys.astype(np.int64, copy=False), values

    # ---- writes
    def put(self, table: str, keys: np.ndarray, values: np.ndarray, ts: int | None = None) -> int:
        """Local write (trainer): stamp the rows with a new version of this node and apply them. Returns the stamp
        used: `ts` (e.g. the trainer's apply time) raised when needed so this node's stamps strictly increase, which
        version vectors rely on. The whole call is validated first: a rejected put changes nothing."""
        keys, values = self._validate(table, keys, values)
        with self._lock:
            stamp = self.next_ts() if ts is None else max(int(ts), self._last_ts + 1)
            self._last_ts = stamp
            n = keys.shape[0]
            self.apply([TableUpdate(table, keys, values, np.full(n, stamp, np.int64),
                                    np.full(n, self.node_id, np.int32))])
            for s in np.unique(self.shard_of(keys)).tolist():
                vv = self._vv[s]
                vv[self.node_id] = max(vv.get(self.node_id, 0), stamp)
            return stamp

    def apply_own(self, table: str, keys: np.ndarray, values: np.ndarray, ts: int) -> None:
        """Re-apply this node's own write with its exact original stamp (write-ahead-log replay)."""
        keys, values = self._validate(table, keys, values)
        with self._lock:
            n = keys.shape[0]
            self.apply([TableUpdate(table, keys, values, np.full(n, ts, np.int64),
                                    np.full(n, self.node_id, np.int32))])
            self._last_ts = max(self._last_ts, int(ts))
            for s in np.unique(self.shard_of(keys)).tolist():
                vv = self._vv[s]
                vv[self.node_id] = max(vv.get(self.node_id, 0), int(ts))

    def apply(self, updates: Iterable[TableUpdate], version_vectors: Mapping[int, VersionVector] | None = None,
              source: int | None = None) -> int:
        """Merge rows last-writer-wins; then, if given, raise each shard's version vector entries to the
        responder's (valid for the origins whose newer rows were all sent). `source` is the node the rows came
        from (default: this node). Returns rows changed."""
        src_id = self.node_id if source is None else int(source)
        changed = 0
        touched: dict[int, set[int]] = {}  # shard -> origins of the rows that changed there
        now = time.time_ns()
        with self._lock:
            for up in updates:
                t = self._table(up.table)
                if len(up) == 0:
                    continue
                if up.values.shape != (len(up), t.dim):
                    raise ValueError(f"table {up.table!r}: values must have shape ({len(up)}, {t.dim})")
                newest = newest_per_key(up)  # duplicates within the batch collapse first
                keys, ts, origin, values = newest.keys, newest.ts, newest.origin, newest.values
                rows = t.rows_of(keys)
                new = rows < 0
                win = new.copy()
                old = ~new
                if old.any():
                    r = rows[old]
                    win[old] = (ts[old] > t.ts[r]) | ((ts[old] == t.ts[r]) & (origin[old] > t.origin[r]))
                if not win.any():
                    continue
                shards = self.shard_of(keys)
                nn = int(new.sum())
                if nn:
                    t._grow(t.size + nn)
                    new_rows = np.arange(t.size, t.size + nn)
                    for k, r in zip(keys[new].tolist(), new_rows.tolist(), strict=True):
                        t.index[k] = r
                    t.keys[new_rows] = keys[new]
                    t.shard[new_rows] = shards[new]
                    rows[new] = new_rows
                    t.size += nn
                wr = rows[win]
                t.values[wr] = values[win]
                t.ts[wr] = ts[win]
                t.origin[wr] = origin[win]
                t.src[wr] = src_id
                changed += int(win.sum())
                if self.log_applies:
                    self.apply_log.append((up.table, keys[win].copy(), ts[win].copy(), origin[win].copy(),
                                           np.full(int(win.sum()), now, np.int64)))
                for s, k, o in zip(shards[win].tolist(), keys[win].tolist(), origin[win].tolist(), strict=True):
                    if s not in touched:
                        touched[s] = set()
                        self._counter[s] += 1
                    touched[s].add(o)
                    self._remember(s, up.table, k, int(self._counter[s]))
            if version_vectors:
                for s, vv in version_vectors.items():
                    mine = self._vv[s]
                    for o, tsv in vv.items():
                        if tsv > mine.get(o, 0):
                            mine[o] = tsv
        if touched:
            for fn in self.listeners:
                fn(touched, src_id)
        return changed

    def forget_source(self, node: int) -> int:
        """Stop withholding from `node` the rows it delivered here (it restarted and may no longer hold them: the
        no-echo rule would hide them from it forever while its version vector rises over them). Returns rows."""
        n = 0
        with self._lock:
            self.src_epoch += 1
            for t in self.tables.values():
                mine = np.flatnonzero(t.src[: t.size] == node)
                t.src[mine] = self.node_id
                n += int(mine.size)
        return n

    def _remember(self, shard: int, table: str, key: int, seq: int) -> None:
        recent = self._recent[shard]
        ident = (table, key)
        if ident in recent:
            recent.move_to_end(ident)
        recent[ident] = seq
        if len(recent) > self.cache_size:
            (etable, ekey), eseq = recent.popitem(last=False)
            self._floor_seq[shard] = max(int(self._floor_seq[shard]), eseq)
            t = self.tables[etable]
            r = t.index[ekey]
            floor = self._floor[shard]
            o, tsv = int(t.origin[r]), int(t.ts[r])
            if tsv > floor.get(o, 0):
                floor[o] = tsv

    # ---- reads
    def get(self, table: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values (n, dim), found mask, ts of each value; 0 when missing). Missing keys read as zeros."""
        t = self._table(table)
        keys = np.asarray(keys, dtype=np.int64)
        with self._lock:
            rows = t.rows_of(keys)
            found = rows >= 0
            out = np.zeros((keys.shape[0], t.dim), np.float32)
            out[found] = t.values[rows[found]]
            ts = np.zeros(keys.shape[0], np.int64)
            ts[found] = t.ts[rows[found]]
        return out, found, ts

    def versions(self, table: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ts, origin) of each key; (0, -1) when missing."""
        t = self._table(table)
        rows = t.rows_of(np.asarray(keys, dtype=np.int64))
        ts = np.zeros(rows.shape[0], np.int64)
        origin = np.full(rows.shape[0], -1, np.int32)
        ok = rows >= 0
        ts[ok] = t.ts[rows[ok]]
        origin[ok] = t.origin[rows[ok]]
        return ts, origin

    def counter(self, shard: int) -> int:
        """Change counter of one shard."""
        return int(self._counter[shard])

    def counters(self) -> np.ndarray:
        """Change counter of every shard."""
        with self._lock:
            return self._counter.copy()

    def version_vector(self, shard: int) -> VersionVector:
        """The shard's version vector: per origin, the newest ts up to which this store holds everything."""
        with self._lock:
            return dict(self._vv[shard])

    def changes_since(self, shard: int, vv: Mapping[int, int], since_counter: int | None = None,
                      exclude_source: int | None = None, origins: Iterable[int] | None = None,
                      sources: bool = False) -> ChangeSet:
        """Rows of `shard` whose version is newer than the asker's version vector.

        `since_counter`: this store's shard counter from the asker's last complete answer from this store; then only
        keys changed after it are examined (O(changed)). Otherwise the recent-change cache is filtered when the asker
        is at least as new as the cache's floor, and only an asker older than the cache causes a shard scan.
        `exclude_source` leaves out rows that came from that node (the asker: no echo); `origins` keeps only rows
        born at those nodes, and the returned version vector then covers just them. `sources` also returns the
        set of nodes that delivered the rows here."""
        keep = None if origins is None else np.array(sorted(set(origins)), np.int32)
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"shard {shard} out of range [0, {self.num_shards})")
        with self._lock:
            floor = self._floor[shard]
            recent = self._recent[shard]
            incremental = since_counter is not None and since_counter >= int(self._floor_seq[shard])
            use_cache = incremental or all(vv.get(o, 0) >= tsv for o, tsv in floor.items())
            updates: list[TableUpdate] = []
            srcs: set[int] | None = set() if sources else None
            if use_cache:
                by_table: dict[str, list[int]] = {}
                examined = 0
                for (table, key), seq in reversed(recent.items()):
                    if incremental and seq <= since_counter:
                        break
                    examined += 1
                    by_table.setdefault(table, []).append(key)
                for table, keys in by_table.items():
                    t = self.tables[table]
                    rows = t.rows_of(np.array(keys, np.int64))
                    sel = rows[self._wanted(t, rows, vv, exclude_source, keep)]
                    if sel.size:
                        updates.append(TableUpdate(table, t.keys[sel].copy(), t.values[sel].copy(),
                                                   t.ts[sel].copy(), t.origin[sel].copy()))
                        if srcs is not None:
                            srcs.update(np.unique(t.src[sel]).tolist())
            else:
                examined = 0
                for table, t in self.tables.items():
                    rows = np.flatnonzero(t.shard[: t.size] == shard)
                    examined += rows.size
                    sel = rows[self._wanted(t, rows, vv, exclude_source, keep)]
                    if sel.size:
                        updates.append(TableUpdate(table, t.keys[sel].copy(), t.values[sel].copy(),
                                                   t.ts[sel].copy(), t.origin[sel].copy()))
                        if srcs is not None:
                            srcs.update(np.unique(t.src[sel]).tolist())
            resp_vv = dict(self._vv[shard])
            if keep is not None:
                resp_vv = {o: v for o, v in resp_vv.items() if o in set(keep.tolist())}
            return ChangeSet(shard, updates, resp_vv, int(self._counter[shard]), examined, not use_cache, srcs)

    @staticmethod
    def _wanted(t: _Table, rows: np.ndarray, vv: Mapping[int, int], exclude_source: int | None,
                keep: np.ndarray | None) -> np.ndarray:
        if rows.size == 0:
            return np.zeros(0, bool)
        mask = ParamStore._newer(t, rows, vv)
        if exclude_source is not None:
            mask &= t.src[rows] != exclude_source
        if keep is not None:
            mask &= np.isin(t.origin[rows], keep)
        return mask

    @staticmethod
    def _newer(t: _Table, rows: np.ndarray, vv: Mapping[int, int]) -> np.ndarray:
        if rows.size == 0:
            return np.zeros(0, bool)
        origins = t.origin[rows]
        known = np.zeros(rows.size, np.int64)
        for o in np.unique(origins).tolist():
            known[origins == o] = vv.get(int(o), 0)
        return t.ts[rows] > known

    def __len__(self) -> int:
        return sum(t.size for t in self.tables.values())

    def state_digest(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per table (keys, values, ts, origin) sorted by key: what convergence tests compare."""
        out = {}
        with self._lock:
            for name, t in self.tables.items():
                order = np.argsort(t.keys[: t.size])
                out[name] = (t.keys[order].copy(), t.values[order].copy(), t.ts[order].copy(), t.origin[order].copy())
        return out

    def dump(self, table: str) -> TableUpdate:
        """Every row of a table with its version (for full snapshots and checkpoints)."""
        t = self._table(table)
        with self._lock:
            n = t.size
            return TableUpdate(table, t.keys[:n].copy(), t.values[:n].copy(), t.ts[:n].copy(), t.origin[:n].copy())

    # ---- persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a snapshot file (atomic rename): rows with versions plus shard version vectors."""
        p = Path(path)
        arrays: dict[str, np.ndarray] = {}
        with self._lock:
            for name in self.tables:
                d = self.dump(name)
                arrays[f"{name}/keys"], arrays[f"{name}/values"] = d.keys, d.values
                arrays[f"{name}/ts"], arrays[f"{name}/origin"] = d.ts, d.origin
            meta = {"tables": {n: t.dim for n, t in self.tables.items()}, "num_shards": self.num_shards,
                    "node_id": self.node_id, "vv": [{str(k): v for k, v in vv.items()} for vv in self._vv]}
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        tmp = p.with_name(p.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)

    @classmethod
    def load(cls, path: str | os.PathLike[str], node_id: int | None = None, cache_size: int = 65536) -> ParamStore:
        """Read a snapshot written by save(); a damaged file raises ValueError naming it."""
        p = Path(path)
        try:
            with np.load(p) as z:
                meta = json.loads(bytes(z["__meta__"]).decode())
                store = cls(meta["tables"], meta["num_shards"], meta["node_id"] if node_id is None else node_id,
                            cache_size)
                ups = [TableUpdate(n, z[f"{n}/keys"], z[f"{n}/values"], z[f"{n}/ts"], z[f"{n}/origin"])
                       for n in meta["tables"]]
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise ValueError(f"{p}: not a readable ekko snapshot ({exc})") from None
        store.apply(ups)
        with store._lock:
            store._vv = [{int(k): int(v) for k, v in vv.items()} for vv in meta["vv"]]
            store._last_ts = max([store._last_ts, *[max(vv.values(), default=0) for vv in store._vv]])
        return store


@dataclass
class StoreConfig:
    """Tables and sharding shared by every PS of a deployment."""

    tables: dict[str, int] = field(default_factory=lambda: {"emb": 64})
    num_shards: int = 8
