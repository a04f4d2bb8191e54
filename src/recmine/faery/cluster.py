"""Replicas and shards of faery indexes (the Faiss IndexShards / IndexReplicas shape), on local worker threads
(shared memory: the numba kernels release the GIL, nothing is copied) or on Ray actors across machines.

- `ShardedIndex`: each shard holds a slice of the corpus (rendezvous hashing of the id picks the shard, so adding a
  shard moves only the rows that now belong to it); every query fans out, per-shard top-K merge exactly.
- `ReplicatedIndex`: each replica holds the whole corpus; writes go to all; a query batch is split across replicas.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Container, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from recmine.faery import durable, filters
from recmine.faery.corpus import check_attr_name
from recmine.faery.index import Index, check_attrs, check_ids

_M64 = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays: a stable hash (unlike Python's hash, the same in every process)."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def shard_of(ids: np.ndarray, n_shards: int) -> np.ndarray:
    """Rendezvous (highest-random-weight) hashing: the shard whose hash with the id is largest. Adding shard n
    moves exactly the ids whose weight for n beats all others (about 1/(n+1) of them)."""
    ids = np.asarray(ids, np.int64).astype(np.uint64)
    w = np.stack([_mix(ids ^ _mix(np.full(ids.shape, s + 1, np.uint64))) for s in range(n_shards)])
    return np.argmax(w, axis=0) if ids.size else np.zeros(0, np.int64)


class _RWLock:
    """Many readers (searches) or one writer (a layout swap); a waiting writer blocks new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


def merge_topk(scores: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int, metric: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact merge of per-part top-k lists (nq, k_i) into (nq, k): best score first, ties by smaller id, padding
    (id -1) last."""
    s = np.concatenate(scores, axis=1)
    i = np.concatenate(ids, axis=1)
    key = s.astype(np.float64) if metric == "l2" else -s.astype(np.float64)
    key = np.where(i < 0, np.inf, key)
    id_key = np.where(i < 0, np.iinfo(np.int64).max, i)
    order = np.lexsort((id_key, key), axis=-1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


class _RayPart:
    """A Ray actor handle made to look like an Index (blocking calls)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def call(self, method: str, *args: Any) -> Any:
        import ray

        return ray.get(self.actor.call.remote(method, *args))

    def submit(self, method: str, *args: Any) -> Any:
        return self.actor.call.remote(method, *args)


def _ray_actor_class() -> Any:
    import ray

    @ray.remote
    class IndexActor:
        """One shard or replica: an Index living in a Ray worker process."""

        def __init__(self, dim: int, metric: str, storage: str, directory: str | None = None) -> None:
            self.index = Index.load(directory) if directory else Index(dim, metric, storage)

        def call(self, method: str, *args: Any) -> Any:
            return getattr(self.index, method)(*args)

    return IndexActor


class _Group:
    """Parts (Index objects or Ray actors) and a way to call a method on several of them in parallel."""

    def __init__(self, dim: int, n: int, metric: str, storage: str, backend: str, ray_address: str | None,
                 dirs: Sequence[str] | None = None) -> None:
        if backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
        self.backend = backend
        self.dim, self.metric, self.storage = dim, metric, storage
        self.ray_address = ray_address
        self.parts: list[Any] = [self.make(dirs[j] if dirs else None) for j in range(n)]
        self.pool = ThreadPoolExecutor(max_workers=max(2, n)) if backend == "local" else None

    def make(self, directory: str | None = None) -> Any:
        if self.backend == "local":
            return Index.load(directory) if directory else Index(self.dim, self.metric, self.storage)
        import ray

        if not ray.is_initialized():
            if self.ray_address:
                ray.init(address=self.ray_address, ignore_reinit_error=True, log_to_driver=False)
            else:
                ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        return _RayPart(_ray_actor_class().remote(self.dim, self.metric, self.storage, directory))

    def call(self, part: Any, method: str, *args: Any) -> Any:
        if self.backend == "local":
            return getattr(part, method)(*args)
        return part.call(method, *args)

    def fan(self, calls: Sequence[tuple[Any, str, tuple]]) -> list[Any]:
        """Run (part, method, args) calls in parallel; results in order. The first error is raised."""
        if self.backend == "ray":
            import ray

            return ray.get([p.submit(m, *a) for p, m, a in calls])
        assert self.pool is not None
        if len(calls) == 1:  # no hand-off for a single part
            p, m, a = calls[0]
            return [getattr(p, m)(*a)]
        futs = [self.pool.submit(getattr(p, m), *a) for p, m, a in calls]
        return [f.result() for f in futs]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False)
        if self.backend == "ray":
            import ray

            for p in self.parts:
                ray.kill(p.actor)
        self.parts = []


class _Base:
    """Shared validation (before anything is sent, so a rejected call changes nothing) and the write mutex."""

    def __init__(self, dim: int, metric: str, storage: str) -> None:
        self._probe = Index(dim, metric, storage)  # validation rules of a single Index, on no data
        self._dim, self._metric, self._storage = dim, metric, storage
        self._mut = threading.Lock()
        self._next_id = 0
        self._attrs: set[str] = set()  # every part has every column (created everywhere at once)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def metric(self) -> str:
        """ip | cosine | l2."""
        return self._metric

    @property
    def attributes(self) -> tuple[str, ...]:
        """Names of the per-row integer attributes (filterable with `where=`)."""
        return tuple(sorted(self._attrs))

    def _vectors(self, vectors: Any) -> np.ndarray:
        return self._probe.corpus.check_vectors(vectors)

    def _attr_cols(self, attrs: Any, n: int) -> dict[str, np.ndarray]:
        cols = check_attrs(attrs, n)
        for name in cols:
            check_attr_name(name)
        return cols

    def _queries(self, queries: Any, k: int, allow: Any, where: Any) -> tuple[np.ndarray, Any, dict[str, Any]]:
        """Validated (queries (nq, dim), allow, predicates), exactly as Index.search checks them."""
        q = np.asarray(queries)
        self._probe.search(q, k)  # shape, NaN and k, on no data: cheap
        q = q[None, :] if q.ndim == 1 else q
        return q, filters.check_allow(allow), filters.check_where(where, self._attrs)

    def _ids(self, ids: Any) -> np.ndarray:
        return check_ids(ids)

    def _new_ids(self, v: np.ndarray, ids: Any, live: Container[int]) -> np.ndarray:
        """Ids for an add of v's rows (new consecutive ones when None); ValueError on a count mismatch or a clash."""
        arr = np.arange(self._next_id, self._next_id + v.shape[0], dtype=np.int64) if ids is None else check_ids(ids)
        if arr.size != v.shape[0]:
            raise ValueError(f"{arr.size} ids for {v.shape[0]} vectors")
        clash = [i for i in arr.tolist() if i in live]
        if clash:
            raise ValueError(f"id {clash[0]} is already in the index (use update)")
        return arr

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # type: ignore[attr-defined]


class ShardedIndex(_Base):
    """A corpus split over `n_shards` Index objects (local threads or Ray actors); same API as Index."""

    def __init__(self, dim: int, n_shards: int, metric: str = "ip", storage: str = "int8", backend: str = "local",
                 ray_address: str | None = None, _dirs: Sequence[str] | None = None) -> None:
        if not isinstance(n_shards, int) or n_shards < 1:
            raise ValueError(f"n_shards must be a positive integer, got {n_shards!r}")
        super().__init__(dim, metric, storage)
        self._group = _Group(dim, n_shards, metric, storage, backend, ray_address, _dirs)
        self._rw = _RWLock()
        self._owner: dict[int, int] = {}  # id -> shard, for O(1) contains / routing checks
        if _dirs:
            for s, part in enumerate(self._group.parts):
                for i in self._group.call(part, "ids").tolist():
                    self._owner[int(i)] = s
            self._next_id = max(self._owner, default=-1) + 1
            self._attrs = set(self._group.call(self._group.parts[0], "attributes_tuple"))

    @property
    def n_shards(self) -> int:
        """Number of shards."""
        return len(self._group.parts)

    def __len__(self) -> int:
        return len(self._owner)

    def contains(self, id_: int) -> bool:
        """Whether id_ is live."""
        return int(id_) in self._owner

    def ids(self) -> np.ndarray:
        """Live ids, sorted."""
        return np.array(sorted(self._owner), np.int64)

    def _split(self, ids: np.ndarray) -> list[np.ndarray]:
        where = shard_of(ids, self.n_shards)
        return [np.flatnonzero(where == s) for s in range(self.n_shards)]

    def add(self, vectors: Any, ids: Any = None, attrs: Any = None) -> np.ndarray:
        """Add rows (ids default to new consecutive integers; attrs as Index.add); each goes to its hashed shard."""
        v = self._vectors(vectors)
        cols = self._attr_cols(attrs, v.shape[0])
        with self._mut:
            arr = self._new_ids(v, ids, self._owner)
            parts = self._split(arr)
            g = self._group
            g.fan([(g.parts[s], "add", (v[sel], arr[sel], {k: c[sel] for k, c in cols.items()}))
                   for s, sel in enumerate(parts) if sel.size])
            self._new_columns(cols, [s for s, sel in enumerate(parts) if not sel.size])
            for s, sel in enumerate(parts):
                for i in arr[sel].tolist():
                    self._owner[i] = s
            if arr.size:
                self._next_id = max(self._next_id, int(arr.max()) + 1)
        return arr

    def _known(self, arr: np.ndarray, what: str = "unknown id") -> None:
        for i in arr.tolist():
            if i not in self._owner:
                raise KeyError(f"{what} {i}" if what == "unknown id" else f"{what} {i} is not in the index")

    def remove(self, ids: Any) -> int:
        """Delete ids; KeyError naming an unknown id (then nothing is removed)."""
        arr = self._ids(ids)
        with self._mut:
            self._known(arr)
            by = [arr[[self._owner[i] == s for i in arr.tolist()]] for s in range(self.n_shards)]
            g = self._group
            g.fan([(g.parts[s], "remove", (sel,)) for s, sel in enumerate(by) if sel.size])
            for i in arr.tolist():
                del self._owner[i]
        return int(arr.size)

    def update(self, ids: Any, vectors: Any) -> None:
        """Replace the vectors of existing ids."""
        arr = self._ids(ids)
        v = self._vectors(vectors)
        if arr.size != v.shape[0]:
            raise ValueError(f"{arr.size} ids for {v.shape[0]} vectors")
        with self._mut:
            self._known(arr)
            own = np.array([self._owner[i] for i in arr.tolist()], np.int64)
            g = self._group
            g.fan([(g.parts[s], "update", (arr[own == s], v[own == s])) for s in range(self.n_shards)
                   if (own == s).any()])

    def _new_columns(self, cols: dict[str, np.ndarray], parts: list[int]) -> None:
        """New attribute names become columns on the given parts too (the others got them with their rows)."""
        new = [name for name in cols if name not in self._attrs]
        if new and parts:
            g = self._group
            empty = np.zeros(0, np.int64)
            g.fan([(g.parts[s], "set_attributes", (empty, {name: empty for name in new})) for s in parts])
        self._attrs.update(cols)

    def set_attributes(self, ids: Any, attrs: Any) -> None:
        """Set per-row attribute values of existing ids (as Index.set_attributes)."""
        arr = self._ids(ids)
        cols = self._attr_cols(attrs, arr.size)
        with self._mut:
            self._known(arr)
            own = np.array([self._owner[i] for i in arr.tolist()], np.int64)
            g = self._group
            g.fan([(g.parts[s], "set_attributes", (arr[own == s], {k: c[own == s] for k, c in cols.items()}))
                   for s in range(self.n_shards)])
            self._attrs.update(cols)

    def get(self, ids: Any) -> np.ndarray:
        """Stored vectors of ids (float32 master copy)."""
        arr = self._ids(ids)
        self._known(arr)
        out = np.empty((arr.size, self.dim), np.float32)
        own = np.array([self._owner[i] for i in arr.tolist()], np.int64)
        for s in range(self.n_shards):
            sel = np.flatnonzero(own == s)
            if sel.size:
                out[sel] = self._group.call(self._group.parts[s], "get", arr[sel])
        return out

    def search(self, queries: Any, k: int, allow: Any = None, where: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over every shard, merged exactly: (scores (nq, k), ids (nq, k)) as Index.search, including
        `allow` (an id set is split by owner; an unknown id is a KeyError) and `where`."""
        q, allow_arr, _ = self._queries(queries, k, allow, where)
        self._rw.acquire_read()
        try:
            g = self._group
            if allow_arr is not None and allow_arr.dtype != np.bool_:
                self._known(allow_arr, "allow-list id")
                where_s = shard_of(allow_arr, self.n_shards)
                allows = [allow_arr[where_s == s] for s in range(self.n_shards)]
            else:
                allows = [allow_arr] * self.n_shards
            res = g.fan([(p, "search", (q, k, allows[s], where)) for s, p in enumerate(g.parts)])
        finally:
            self._rw.release_read()
        return merge_topk([r[0] for r in res], [r[1] for r in res], int(k), self._metric)

    def add_shard(self) -> None:
        """Grow by one shard: the rows that now hash to it are copied there off to the side, then one swap (while no
        search runs) publishes the new layout and drops them from their old shards; no search sees a partial corpus."""
        with self._mut:
            n = self.n_shards
            all_ids = self.ids()
            moved = all_ids[shard_of(all_ids, n + 1) == n] if all_ids.size else all_ids
            g = self._group
            new = g.make()
            if self._attrs:
                empty = np.zeros(0, np.int64)
                g.call(new, "set_attributes", empty, {name: empty for name in self._attrs})
            if moved.size:
                vecs = self.get(moved)
                from_part = np.array([self._owner[i] for i in moved.tolist()], np.int64)
                cols = {name: np.zeros(moved.size, np.int64) for name in self._attrs}
                for s in range(n):
                    sel = np.flatnonzero(from_part == s)
                    if sel.size and cols:
                        got = g.call(g.parts[s], "get_attributes", moved[sel])
                        for name in cols:
                            cols[name][sel] = got[name]
                g.call(new, "add", vecs, moved, cols)
            from_shard = np.array([self._owner[i] for i in moved.tolist()], np.int64)
            self._rw.acquire_write()
            try:
                for s in range(n):
                    sel = moved[from_shard == s]
                    if sel.size:
                        g.call(g.parts[s], "remove", sel)
                g.parts.append(new)
                if g.pool is not None and g.pool._max_workers < n + 1:
                    g.pool = ThreadPoolExecutor(max_workers=n + 1)
                for i in moved.tolist():
                    self._owner[i] = n
            finally:
                self._rw.release_write()

    def stats(self) -> dict[str, Any]:
        """Rows per shard and backend."""
        return {"shards": self.n_shards, "backend": self._group.backend, "rows": len(self),
                "rows_per_shard": np.bincount(np.array(list(self._owner.values()), np.int64),
                                              minlength=self.n_shards).tolist()}

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Each shard in directory/shard_<i> plus a manifest."""
        d = durable.make_dirs(directory)
        for s, p in enumerate(self._group.parts):
            self._group.call(p, "save", str(d / f"shard_{s}"))
        text = json.dumps({"n_shards": self.n_shards, "dim": self.dim, "metric": self._metric,
                           "storage": self._storage}).encode()
        durable.atomic_write(d / "sharded.json", lambda fh: fh.write(text))

    @classmethod
    def load(cls, directory: str | os.PathLike[str], backend: str = "local",
             ray_address: str | None = None) -> ShardedIndex:
        """Open a saved ShardedIndex."""
        d = Path(directory)
        man = d / "sharded.json"
        if not man.exists():
            raise FileNotFoundError(f"{d}: not a saved ShardedIndex (no sharded.json)")
        m = json.loads(man.read_text())
        return cls(m["dim"], m["n_shards"], m["metric"], m["storage"], backend, ray_address,
                   _dirs=[str(d / f"shard_{s}") for s in range(m["n_shards"])])

    def close(self) -> None:
        """Stop workers (kill Ray actors)."""
        self._group.close()


class ReplicatedIndex(_Base):
    """`n_replicas` full copies (local threads or Ray actors): writes go to every replica, a query batch is split
    into contiguous blocks, one per replica; single queries go round-robin."""

    def __init__(self, dim: int, n_replicas: int, metric: str = "ip", storage: str = "int8", backend: str = "local",
                 ray_address: str | None = None) -> None:
        if not isinstance(n_replicas, int) or n_replicas < 1:
            raise ValueError(f"n_replicas must be a positive integer, got {n_replicas!r}")
        super().__init__(dim, metric, storage)
        self._group = _Group(dim, n_replicas, metric, storage, backend, ray_address)
        self._rr = 0
        self._live: set[int] = set()

    def __len__(self) -> int:
        return len(self._live)

    def contains(self, id_: int) -> bool:
        """Whether id_ is live."""
        return int(id_) in self._live

    def _all(self, method: str, *args: Any) -> list[Any]:
        g = self._group
        return g.fan([(p, method, args) for p in g.parts])

    def add(self, vectors: Any, ids: Any = None, attrs: Any = None) -> np.ndarray:
        """Add rows to every replica (attrs as Index.add)."""
        v = self._vectors(vectors)
        cols = self._attr_cols(attrs, v.shape[0])
        with self._mut:
            arr = self._new_ids(v, ids, self._live)
            self._all("add", v, arr, cols)
            self._attrs.update(cols)
            self._live.update(arr.tolist())
            if arr.size:
                self._next_id = max(self._next_id, int(arr.max()) + 1)
        return arr

    def remove(self, ids: Any) -> int:
        """Delete ids from every replica; KeyError naming an unknown id (then nothing is removed)."""
        arr = self._ids(ids)
        with self._mut:
            for i in arr.tolist():
                if i not in self._live:
                    raise KeyError(f"unknown id {i}")
            self._all("remove", arr)
            self._live.difference_update(arr.tolist())
        return int(arr.size)

    def update(self, ids: Any, vectors: Any) -> None:
        """Replace vectors on every replica."""
        arr = self._ids(ids)
        v = self._vectors(vectors)
        with self._mut:
            for i in arr.tolist():
                if i not in self._live:
                    raise KeyError(f"unknown id {i}")
            self._all("update", arr, v)

    def set_attributes(self, ids: Any, attrs: Any) -> None:
        """Set per-row attribute values on every replica (as Index.set_attributes)."""
        arr = self._ids(ids)
        cols = self._attr_cols(attrs, arr.size)
        with self._mut:
            for i in arr.tolist():
                if i not in self._live:
                    raise KeyError(f"unknown id {i}")
            self._all("set_attributes", arr, cols)
            self._attrs.update(cols)

    def get(self, ids: Any) -> np.ndarray:
        """Stored vectors (from replica 0)."""
        return self._group.call(self._group.parts[0], "get", ids)

    def search(self, queries: Any, k: int, allow: Any = None, where: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k: the batch split across replicas, results in query order (allow/where as Index.search)."""
        q, allow_arr, _ = self._queries(queries, k, allow, where)
        if allow_arr is not None and allow_arr.dtype != np.bool_:
            for i in allow_arr.tolist():
                if i not in self._live:
                    raise KeyError(f"allow-list id {i} is not in the index")
        g = self._group
        n = len(g.parts)
        blocks = np.array_split(np.arange(q.shape[0]), min(n, max(1, q.shape[0])))
        start = self._rr
        self._rr = (self._rr + 1) % n
        res = g.fan([(g.parts[(start + j) % n], "search", (q[b], k, allow, where)) for j, b in enumerate(blocks)])
        return np.concatenate([r[0] for r in res]), np.concatenate([r[1] for r in res])

    def stats(self) -> dict[str, Any]:
        """Replicas and backend."""
        return {"replicas": len(self._group.parts), "backend": self._group.backend, "rows": len(self)}

    def close(self) -> None:
        """Stop workers (kill Ray actors)."""
        self._group.close()

