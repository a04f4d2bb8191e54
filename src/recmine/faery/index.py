"""The faery Index: exact top-K retrieval by inner product, cosine or L2 over a packed, updatable corpus.

A drop-in for faiss.IndexFlatIP / IndexFlatL2 with ids: search(queries, k) -> (scores, ids), same shapes; results
equal brute force (ties broken by the smaller id), only much less memory is read per query. Searches can be limited
to an allow-list of ids or to rows whose integer attributes satisfy predicates (`allow=`, `where=`), exactly."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numba
import numpy as np

from recmine.faery import filters, kernels, pages, simd
from recmine.faery.corpus import CHUNK_ROWS, STORAGES, Corpus, check_attr_name

METRICS = ("ip", "cosine", "l2")
BATCH_MIN_QUERIES = {"int8": 8, "fp16": 8, "fp32": 8}  # batches at least this large take the tile (GEMM) path
PARALLEL_MIN_BYTES = 20 << 20  # a scan reading less (rows x bytes per row x queries): one lane, see scan_lanes
RESERVOIR_BYTES = 64 << 20  # per query group: queries are scanned in groups whose reservoirs fit this
SAMPLE_MIN_K = 256  # from this K on, a sampled starting threshold (see Index._sampled_threshold)
SAMPLE_STRIDE = 32  # the sample: one block of 64 rows in every 32 (or sparser at large K, see SAMPLE_EXPECT)
SAMPLE_EXPECT = 256  # a sparser sample while it still expects this many rows above the threshold
KEEP_SCAN_BYTES = 16 << 20  # scan buffers up to this size are kept per thread for the next scan (Index._scan_buffers)
SORT_IN_NUMPY = 2048  # re-ranked groups larger than this are ordered by numpy's (vectorised) sort


def check_queries(queries: Any, k: Any, dim: int) -> np.ndarray:
    """queries as (nq, dim) finite float32; ValueError naming a bad k, shape, dtype or a NaN/Inf query."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must have shape (nq, {dim}), got {np.asarray(queries).shape}")
    if not np.issubdtype(q.dtype, np.number):
        raise ValueError(f"queries must be numeric, got dtype {q.dtype}")
    q = q.astype(np.float32)
    bad = ~np.isfinite(q).all(axis=1)
    if bad.any():
        raise ValueError(f"query {int(np.flatnonzero(bad)[0])} contains NaN or Inf")
    return q


def as_id_array(ids: Any) -> np.ndarray:
    """ids as a 1-D int64 array; ValueError for a wrong shape or dtype."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"ids must be a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
    return arr.astype(np.int64)


def check_ids(ids: Any) -> np.ndarray:
    """ids as a 1-D int64 array; ValueError for a wrong shape or dtype, or an id given twice (named)."""
    arr = as_id_array(ids)
    if np.unique(arr).size != arr.size:
        srt = np.sort(arr)
        raise ValueError(f"duplicate id {int(srt[np.flatnonzero(np.diff(srt) == 0)[0]])} in the call")
    return arr


def check_attrs(attrs: Mapping[str, Any] | None, n: int | None) -> dict[str, np.ndarray]:
    """attrs as {name: int64 (n,)}; ValueError naming a bad column."""
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise ValueError(f"attrs must map attribute names to integer arrays, got {type(attrs).__name__}")
    out = {}
    for name, col in attrs.items():
        arr = np.asarray(col)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"attribute {name!r} must be a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
        if n is not None and arr.shape[0] != n:
            raise ValueError(f"attribute {name!r} has {arr.shape[0]} values for {n} vectors")
        out[name] = arr.astype(np.int64)
    return out


def scan_lanes(rows: int, bytes_per_row: int, nq: int, threads: int) -> int:
    """Lanes (threads) of a scan over `rows` rows for nq queries: one while it reads less than PARALLEL_MIN_BYTES
    (rows x bytes per row x queries), else every thread. A second lane costs a thread hand-off, a second reservoir
    to merge and a parallel re-rank. Swept quietly (single queries, d = 128, 2 lanes / 1): 1.20x at 12.6 MB, 0.94x
    at 22 MB, 0.83x at 31.5 MB, 0.72x at 50 MB; the 200,000 x 64 demo tier (13 MB) stays on one lane."""
    return threads if rows * bytes_per_row * max(1, nq) >= PARALLEL_MIN_BYTES else 1


def warm_up(storage: str = "int8", metric: str = "ip") -> None:
    """Load the compiled kernels a search and a write use (numba's JIT start-up and its on-disk cache: ~0.5-1 s
    once per process), so the first real request does not pay for them. Servers call it before they listen."""
    rng = np.random.default_rng(0)
    idx = Index(16, metric=metric, storage=storage)
    idx.add(rng.standard_normal((300, 16)).astype(np.float32))
    idx.add(rng.standard_normal((4, 16)), ids=[10_000, 10_001, 10_002, 10_003], attrs={"a": [1, 2, 3, 4]})
    idx.remove([0, 10_003])
    idx.search(rng.standard_normal((1, 16)), 5, where={"a": [1, 2]})
    idx.search(rng.standard_normal((1, 16)), 5)
    idx.search(rng.standard_normal((BATCH_MIN_QUERIES[storage], 16)), 5)
    idx.compact()


class Index:
    """Exact retrieval over int64-identified vectors; see module docstring.

    Parameters
    ----------
    dim
        Vector width.
    metric
        "ip" (inner product), "cosine" (rows and queries normalised) or "l2" (squared Euclidean distance).
    storage
        The scan tier: "int8" (per-row scale, 1 byte per element; the default), "fp16" or "fp32".
    master_path
        When given, the fp32 master copy (read only by the exact re-rank) lives in this file, memory-mapped, and
        grows in place; RAM then holds the scan tier and 21 bytes of row metadata per row. None: in RAM.

    Threading: searches may run concurrently from many threads; mutations (add/remove/update/compact) must not
    overlap searches — the faery service layers snapshots on top for that."""

    def __init__(self, dim: int, metric: str = "ip", storage: str = "int8",
                 master_path: str | os.PathLike[str] | None = None) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self._metric = metric
        self.corpus = Corpus(int(dim), storage, l2=metric == "l2", master_path=master_path)
        self._next_id = 0
        self._last_pass_rate = float("nan")
        self._lock = threading.Lock()
        self._local = threading.local()  # per thread: scan buffers kept for reuse

    # ---- properties
    @property
    def dim(self) -> int:
        """Vector width."""
        return self.corpus.dim

    @property
    def metric(self) -> str:
        """ip, cosine or l2."""
        return self._metric

    @property
    def storage(self) -> str:
        """int8, fp16 or fp32: the scan tier's format."""
        return self.corpus.storage

    @property
    def attributes(self) -> tuple[str, ...]:
        """Names of the per-row integer attributes (filterable with `where=`)."""
        return tuple(sorted(self.corpus.attrs))

    def attributes_tuple(self) -> tuple[str, ...]:
        """`attributes` as a method (what a Ray actor can call)."""
        return self.attributes

    def __len__(self) -> int:
        return len(self.corpus)

    def contains(self, id_: int) -> bool:
        """True when the id is live in the index."""
        return self.corpus.slot_of(int(id_)) >= 0

    def ids(self) -> np.ndarray:
        """Live ids in slot order."""
        c = self.corpus
        return np.asarray(c.ids[: c.size])[np.asarray(c.live[: c.size])].copy()

    def _slots(self, ids: np.ndarray) -> np.ndarray:
        slots = self.corpus.slots_of(ids)
        if (slots < 0).any():
            raise KeyError(f"unknown id {int(ids[np.flatnonzero(slots < 0)[0]])}")
        return slots

    def get(self, ids: Any) -> np.ndarray:
        """The stored fp32 vectors (normalised for cosine) of live ids; KeyError naming an unknown id."""
        slots = self._slots(check_ids(ids))
        return np.array(self.corpus.master[slots], np.float32)

    def get_attributes(self, ids: Any) -> dict[str, np.ndarray]:
        """{attribute: int64 values} of live ids; KeyError naming an unknown id."""
        slots = self._slots(check_ids(ids))
        return {name: np.array(col[slots]) for name, col in self.corpus.attrs.items()}

    def stats(self) -> dict[str, Any]:
        """Size, bytes read per row by the scan, and the fraction of rows the last search re-ranked exactly."""
        c = self.corpus
        return {"live": len(c), "slots": c.size, "dim": c.dim, "metric": self._metric, "storage": c.storage,
                "bytes_per_row": c.bytes_per_row(), "fp32_bytes_per_row": 4 * c.dim,
                "master": str(c.master_path) if c.master_path is not None else "ram",
                "attributes": list(self.attributes), "vnni": simd.HAS_VNNI, "filter_pass_rate": self._last_pass_rate}

    # ---- validation helpers (every check happens before any change)
    def _check_ids(self, ids: Any) -> np.ndarray:
        return check_ids(ids)

    def _prepare(self, x: Any) -> np.ndarray:
        """Rows as the index stores them (float32; normalised for cosine), validated."""
        v = self.corpus.check_vectors(x)
        return self._normalised(v)

    def _normalised(self, v: np.ndarray, offset: int = 0) -> np.ndarray:
        """Cosine: rows rounded to float32, then divided by their float64 norm and rounded again (exactly as the
        oracle stores them); other metrics: v unchanged. ValueError naming a zero row (numbered from offset)."""
        if self._metric != "cosine":
            return v
        v = v.astype(np.float32, copy=False)
        n = np.linalg.norm(v.astype(np.float64), axis=1)
        if np.any(n == 0):
            raise ValueError(f"vector {offset + int(np.flatnonzero(n == 0)[0])} has zero norm (undefined for cosine)")
        return (v / n[:, None]).astype(np.float32)

    def _chunks(self, vectors: Any) -> tuple[Iterator[np.ndarray], int | None]:
        """(chunks of at most CHUNK_ROWS validated-shape rows, total rows or None for an iterator)."""
        if isinstance(vectors, Iterator):
            def gen() -> Iterator[np.ndarray]:
                for part in vectors:
                    arr = self.corpus.check_shape(part)
                    for lo in range(0, arr.shape[0], CHUNK_ROWS):
                        yield arr[lo: lo + CHUNK_ROWS]
            return gen(), None
        arr = self.corpus.check_shape(vectors)
        return (arr[lo: lo + CHUNK_ROWS] for lo in range(0, arr.shape[0], CHUNK_ROWS)), arr.shape[0]

    # ---- mutations
    def add(self, vectors: Any, ids: Any = None, attrs: Mapping[str, Any] | None = None) -> np.ndarray:
        """Append vectors; all or nothing (a rejected call changes nothing).

        Parameters
        ----------
        vectors
            (n, dim) array of any real dtype (a memory-mapped .npy is read chunk by chunk, so a corpus larger than
            RAM can be added with `master_path`; the pages of each consumed chunk of a read-only or shared mapping
            are dropped from this process, see `pages.release`), or an iterator (e.g. a generator) of (m, dim)
            chunks.
        ids
            (n,) int64 ids; default: consecutive new integers.
        attrs
            {name: (n,) integer values}: per-row attributes for `search(where=...)`. A new name adds a column (0
            for rows added before); columns not given are 0 for these rows.

        Returns
        -------
        numpy.ndarray
            The ids of the added rows.

        Raises
        ------
        ValueError
            A wrong shape or dtype, a NaN/Inf (the row is named), an fp16 overflow, a zero vector under cosine, an
            id given twice or already present, or a count mismatch between vectors, ids and attrs.
        """
        chunks, total = self._chunks(vectors)
        arr = None if ids is None else as_id_array(ids)
        if arr is not None and total is not None and arr.size != total:
            raise ValueError(f"{arr.size} ids for {total} vectors")
        cols = check_attrs(attrs, total)
        for name in cols:
            check_attr_name(name)
        c = self.corpus
        with self._lock:
            at0 = at = c.size
            if total is not None:
                c._grow(at0 + total)
            for raw in chunks:
                part = self._normalised(np.ascontiguousarray(raw), offset=at - at0)
                c.stage(part, at, offset=at - at0)
                at += part.shape[0]
                pages.release(raw)  # a memory-mapped input's consumed rows leave this process (they stay on disk)
            n = at - at0
            if arr is None:
                arr = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            elif arr.size != n:
                raise ValueError(f"{arr.size} ids for {n} vectors")
            for name, col in cols.items():
                if col.shape[0] != n:
                    raise ValueError(f"attribute {name!r} has {col.shape[0]} values for {n} vectors")
            status, where = c.claim(arr, at0)
            if status:
                if status == 1:
                    raise ValueError(f"id {int(arr[where])} is already in the index (use update)")
                if status == 2:
                    raise ValueError(f"duplicate id {int(arr[where])} in the call")
            for name in cols:
                if name not in c.attrs:
                    c.add_attribute(name)
            c.publish(arr, at0, cols)
            if n:
                self._next_id = max(self._next_id, int(arr.max()) + 1)
        return arr

    def remove(self, ids: Any) -> int:
        """Delete ids (O(1) each: a tombstone). KeyError naming an unknown id; then nothing is removed."""
        arr = self._check_ids(ids)
        with self._lock:
            slots, where = self.corpus.release(arr)
            if where >= 0:
                raise KeyError(f"unknown id {int(arr[where])}")
            self.corpus.tombstone(slots)
        return int(arr.size)

    def update(self, ids: Any, vectors: Any) -> None:
        """Replace the vectors of existing ids in place."""
        arr = self._check_ids(ids)
        v = self._prepare(vectors)
        if arr.size != v.shape[0]:
            raise ValueError(f"{arr.size} ids for {v.shape[0]} vectors")
        with self._lock:
            self.corpus.overwrite(self._slots(arr), v)

    def set_attributes(self, ids: Any, attrs: Mapping[str, Any]) -> None:
        """Set per-row attribute values of existing ids (a new name adds a column, 0 for every other row).

        Parameters
        ----------
        ids
            Live ids.
        attrs
            {name: (len(ids),) integer values}.

        Raises
        ------
        KeyError
            An unknown id (nothing is changed).
        ValueError
            A bad name, dtype or length.
        """
        arr = self._check_ids(ids)
        cols = check_attrs(attrs, arr.size)
        for name in cols:
            check_attr_name(name)
        with self._lock:
            slots = self._slots(arr)
            for name in cols:
                if name not in self.corpus.attrs:
                    self.corpus.add_attribute(name)
            self.corpus.set_attributes(slots, cols)

    def compact(self) -> None:
        """Reclaim tombstoned rows."""
        with self._lock:
            self.corpus.compact()

    # ---- search
    def search(self, queries: Any, k: int, allow: Any = None,
               where: Mapping[str, range | Iterable[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for each query, exactly (equal to float64 brute force over the allowed rows).

        Parameters
        ----------
        queries
            (nq, dim) or (dim,) queries.
        k
            Results per query.
        allow
            Only these rows may be returned: an id set (iterable of ints or an integer array; every id must be in
            the index) or a boolean bitmap over ids (id i allowed when i < len(allow) and allow[i]).
        where
            {attribute: predicate}: a `range` (lo <= value < hi) or a set of values; every predicate must hold.

        Returns
        -------
        (scores, ids)
            float32 (nq, k) and int64 (nq, k), best first, ties by smaller id (ip/cosine: larger scores first; l2:
            squared distances, smaller first). With fewer than k allowed rows the tail is padded with id -1 and
            score -inf (+inf for l2).

        Raises
        ------
        ValueError
            A bad k, query shape, NaN/Inf query, allow-list or predicate, or an unknown attribute.
        KeyError
            An allow-list id that is not in the index.
        """
        q = check_queries(queries, k, self.dim)
        allow_arr = filters.check_allow(allow)
        preds = filters.check_where(where, self.corpus.attrs)
        if self._metric == "cosine":
            n = np.linalg.norm(q.astype(np.float64), axis=1)
            q = (q / np.where(n > 0, n, 1.0)[:, None]).astype(np.float32)
        k = int(k)
        nq = q.shape[0]
        l2 = self._metric == "l2"
        scores = np.full((nq, k), np.inf if l2 else -np.inf, np.float32)
        out_ids = np.full((nq, k), -1, np.int64)
        rows = filters.resolve(self.corpus, allow_arr, preds)
        if rows[3] == 0 or nq == 0:
            self._last_pass_rate = 0.0
            return scores, out_ids
        kk = min(k, rows[3])
        if not rows[1].shape[0]:  # a scan of every row (not of a row list): its pages mapped first
            self.corpus.settle()
        keys, ids, passed = self._scan(q, kk, *rows[:3])
        scores[:, :kk] = keys if l2 else -keys
        out_ids[:, :kk] = ids
        self._last_pass_rate = passed / (nq * max(1, self.corpus.size))
        return scores, out_ids

    def _query_terms(self, q: np.ndarray, batch: bool) -> dict[str, np.ndarray]:
        """Per-query arrays of the scan core (`kernels.query_terms`): the quantised or float query, its score
        multiplier u and its bound coefficients ca, cb, cc (see kernels' module docstring). int8 tier: the batch path
        quantises queries to int8 (the GEMM kernel multiplies bytes); the single path keeps 16 bits (two bytes), so
        the query's own rounding adds almost nothing to the bound."""
        c = self.corpus
        alpha = 2.0 if self._metric == "l2" else 1.0
        q8, q8lo, qf, corr, u, ca, cb, cc = kernels.query_terms(q, kernels.TIERS[c.storage], batch, alpha, c.pdim)
        return {"q8": q8, "q8lo": q8lo, "qf": qf, "corr": corr, "u": u, "ca": ca, "cb": cb, "cc": cc}

    @staticmethod
    def _tiles(q: np.ndarray, lanes: int) -> np.ndarray:
        """Query tiles of the batch kernel: int8 (ntiles, dim/4, lanes*4) or float32 (ntiles, dim, lanes)."""
        nq = q.shape[0]
        nt = -(-nq // lanes)
        if q.dtype == np.int8:
            d4 = -(-q.shape[1] // 4)
            pad = np.zeros((nt * lanes, d4 * 4), np.int8)
            pad[:nq, : min(q.shape[1], d4 * 4)] = q[:, : d4 * 4]
            return np.ascontiguousarray(pad.reshape(nt, lanes, d4, 4).transpose(0, 2, 1, 3).reshape(nt, d4, lanes * 4))
        pad = np.zeros((nt * lanes, q.shape[1]), np.float32)
        pad[:nq] = q
        return np.ascontiguousarray(pad.reshape(nt, lanes, q.shape[1]).transpose(0, 2, 1))

    @staticmethod
    def _query_rows(t: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(q8, q8lo, qf) of the scan kernels: the query's int8 halves or its float32 row (empty where unused)."""
        return t["q8"], t["q8lo"], t["qf"]

    @staticmethod
    def _capacities(k: int, nq: int) -> tuple[int, int]:
        """(reservoir per query, candidate buffer per lane) of a scan: 2K lower bounds (at least K + 256), and room
        for twice that many candidates per query plus a block's worth (grown on overflow)."""
        cap_r = max(2 * k, k + 256)
        return cap_r, nq * (2 * cap_r + 4096)

    def _scan_buffers(self, nlanes: int, nq: int, cap_r: int, cap_c: int) -> tuple[np.ndarray, ...]:
        """`kernels.scan_buffers`, kept per thread for the next scan of the same shape while under KEEP_SCAN_BYTES:
        a batch's buffers take megabytes, which the allocator maps afresh on every call, and the page faults of
        that cost a batch of 64 queries several percent."""
        key = (nlanes, nq, cap_r, cap_c)
        held = getattr(self._local, "scan", {})
        if key in held:
            return held[key]
        bufs = kernels.scan_buffers(nlanes, nq, cap_r, cap_c)
        if sum(b.nbytes for b in bufs) <= KEEP_SCAN_BYTES:
            self._local.scan = {**(held if len(held) < 2 else {}), key: bufs}
        return bufs

    def _run(self, t: dict[str, np.ndarray], k: int, mask: np.ndarray, rowlist: np.ndarray, bitmap: np.ndarray,
             theta0: np.ndarray, batch: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One pass of the scan core over the rows for the queries of t, then the merge: (offsets, slots,
        thresholds, failed) as kernels.merge."""
        c = self.corpus
        nq = t["u"].shape[0]
        int8 = c.storage == "int8"
        space = rowlist.shape[0] if rowlist.shape[0] else c.size
        nlanes = scan_lanes(space, c.bytes_per_row(), nq, numba.get_num_threads())
        cap_r, cap_c = self._capacities(k, nq)
        lanes = min(64, 16 * -(-nq // 16)) if batch else 1
        q8, q8lo, qf = self._query_rows(t)
        qt8 = self._tiles(q8, lanes) if batch and int8 else np.zeros((0, 1, 4), np.int8)
        qtf = self._tiles(qf, lanes) if batch and not int8 else np.zeros((0, 1, 1), np.float32)
        nt = -(-nq // lanes) if batch else 0
        qv = np.zeros((nt, 4, lanes), np.float32)  # the micro-kernel epilogue's view of the queries' terms
        corr32 = np.zeros((nt, lanes), np.int32)
        if batch:
            for j, name in enumerate(("u", "ca", "cb", "cc")):
                pad = np.zeros(nt * lanes, np.float32)
                pad[:nq] = t[name]
                qv[:, j, :] = pad.reshape(nt, lanes)
            corr32.reshape(-1)[:nq] = t["corr"]
        while True:
            out = kernels.scan(c.packed[: c.size], kernels.TIERS[c.storage], c.scale, c.norms, c.bias, mask, rowlist,
                               c.ids, bitmap, q8, q8lo, qf, qt8, qtf, qv, corr32, kernels.HALF_TABLE, t["corr"], t["u"],
                               t["ca"], t["cb"], t["cc"], theta0, batch, lanes, k, nlanes,
                               *self._scan_buffers(nlanes, nq, cap_r, cap_c))
            if not out[3][:, 1].any():
                return kernels.merge(*out, theta0, k)
            cap_c *= 4  # a candidate buffer overflowed (adversarial data): rescan with room for more

    def _sample(self, k: int, mask: np.ndarray, rowlist: np.ndarray, bitmap: np.ndarray) -> tuple[np.ndarray, int]:
        """The rows and rank of a large K's sampled starting threshold: every stride-th block of rows (SAMPLE_STRIDE,
        or sparser while SAMPLE_EXPECT rows of the sample are still expected above the threshold) and r, set so
        that about 4 standard deviations more than K rows of the whole corpus are expected above the sample's r-th
        largest lower bound. r = 0: no sample (a small K or corpus)."""
        space = rowlist.shape[0] if rowlist.shape[0] else self.corpus.size
        if k < SAMPLE_MIN_K or space < SAMPLE_STRIDE * 64 * 8:
            return np.zeros(0, np.int64), 0
        return kernels.sample_rows(k, space, max(SAMPLE_STRIDE, k // SAMPLE_EXPECT), rowlist, mask, self.corpus.ids,
                                   bitmap)

    def _sampled_threshold(self, t: dict[str, np.ndarray], k: int, mask: np.ndarray, rowlist: np.ndarray,
                           bitmap: np.ndarray, batch: bool) -> np.ndarray:
        """A starting threshold per query for large K: the r-th largest lower bound over the rows of `_sample`.
        The scan then passes few more than the final candidates from its first row on; if the guess was too high
        (fewer than K rows reach it), merge reports it and the query is scanned again."""
        nq = t["u"].shape[0]
        sample, r = self._sample(k, mask, rowlist, bitmap)
        if r == 0:
            return np.full(nq, -np.inf, np.float32)
        if not batch:  # one pass of lower bounds and a selection (no scan machinery: ~0.1 ms less a query)
            c = self.corpus
            return kernels.sample_threshold(c.packed[: c.size], kernels.TIERS[c.storage], c.scale, c.norms, c.bias,
                                            sample, *self._query_rows(t), kernels.HALF_TABLE, t["corr"], t["u"],
                                            t["ca"], t["cb"], t["cc"], r)
        _, _, theta, failed = self._run(t, r, np.zeros(0, np.uint8), sample, np.zeros(0, np.bool_),
                                        np.full(nq, -np.inf, np.float32), batch)
        return np.where(failed, -np.inf, theta).astype(np.float32)

    def _scan_one(self, t: dict[str, np.ndarray], q64: np.ndarray, k: int, mask: np.ndarray, rowlist: np.ndarray,
                  bitmap: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """One query on one lane (see `_scan`) in one compiled call (`kernels.search_one`), plus numpy's sort of a
        large group's packed keys and its unpacking."""
        c = self.corpus
        sample, r = self._sample(k, mask, rowlist, bitmap)
        gk, gi, packed, passed = kernels.search_one(
            c.packed[: c.size], kernels.TIERS[c.storage], c.scale, c.norms, c.bias, mask, rowlist, c.ids, bitmap,
            c.master, *self._query_rows(t), q64, kernels.HALF_TABLE, t["corr"], t["u"], t["ca"], t["cb"], t["cc"],
            sample, r, k, self._metric == "l2", SORT_IN_NUMPY, *self._capacities(k, 1))
        if packed.shape[0]:
            packed.sort()
            gk, gi = kernels.unpack_sorted(packed, gk, gi, k)
        if gk.shape[0] >= k:
            return gk[None, :k], gi[None, :k], int(passed)
        keys = np.full((1, k), np.inf)  # fewer: an id bitmap allowed fewer rows than it promised
        ids = np.full((1, k), -1, np.int64)
        m = gk.shape[0]
        keys[0, :m], ids[0, :m] = gk[:m], gi[:m]
        return keys, ids, int(passed)

    def _scan(self, q: np.ndarray, k: int, mask: np.ndarray, rowlist: np.ndarray, bitmap: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, int]:
        """Scan core + merge + exact re-rank for every query: (keys (nq, k) ascending-better, padded with inf / id
        -1 when fewer rows are allowed, ids, candidates)."""
        c = self.corpus
        nq = q.shape[0]
        batch = nq >= BATCH_MIN_QUERIES[c.storage]
        terms = self._query_terms(q, batch)
        q64 = q.astype(np.float64)
        nlanes = numba.get_num_threads()
        space = rowlist.shape[0] if rowlist.shape[0] else c.size
        if nq == 1 and scan_lanes(space, c.bytes_per_row(), 1, nlanes) == 1:
            return self._scan_one(terms, q64, k, mask, rowlist, bitmap)
        keys = np.full((nq, k), np.inf)
        ids = np.full((nq, k), -1, np.int64)
        passed = 0
        group = max(1, RESERVOIR_BYTES // (4 * nlanes * max(2 * k, k + 256)))
        if batch:
            group = max(64, group // 64 * 64)
        for g0 in range(0, nq, group):
            sl = slice(g0, min(nq, g0 + group))
            t = {name: v[sl] for name, v in terms.items()}
            theta0 = self._sampled_threshold(t, k, mask, rowlist, bitmap, batch)
            offsets, slots, _, failed = self._run(t, k, mask, rowlist, bitmap, theta0, batch)
            if failed.any():  # a sampled threshold was too high: those queries again, from -inf
                redo = np.flatnonzero(failed)
                t2 = {name: v[redo] for name, v in t.items()}
                o2, s2, _, _ = self._run(t2, k, mask, rowlist, bitmap, np.full(redo.size, -np.inf, np.float32),
                                         batch and redo.size >= BATCH_MIN_QUERIES[c.storage])
                parts = [slots[offsets[i]: offsets[i + 1]] for i in range(sl.stop - sl.start)]
                for j, i in enumerate(redo.tolist()):
                    parts[i] = s2[o2[j]: o2[j + 1]]
                offsets = np.concatenate([[0], np.cumsum([p.size for p in parts])]).astype(np.int64)
                slots = np.concatenate(parts).astype(np.int64)
            big = int(np.diff(offsets).max(initial=0)) > SORT_IN_NUMPY
            wide = scan_lanes(space, c.bytes_per_row(), sl.stop - sl.start, nlanes) > 1
            kg, ig, og = kernels.rerank(c.master, q64[sl], offsets, slots, c.ids, self._metric == "l2", k, not big,
                                        wide)
            for j in range(sl.stop - sl.start):
                gk, gi = kg[og[j]: og[j + 1]], ig[og[j]: og[j + 1]]
                if big:  # a large group: numpy's vectorised sort of packed keys, then runs of equal float32 keys
                    packed = kernels.pack_keys(gk)
                    packed.sort()
                    gk, gi = kernels.unpack_sorted(packed, gk, gi, k)
                m = min(k, gk.shape[0])
                keys[g0 + j, :m], ids[g0 + j, :m] = gk[:m], gi[:m]
            passed += int(slots.shape[0])
        return keys, ids, passed

    # ---- persistence
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the index to a directory (arrays + manifest with sizes and checksums)."""
        with self._lock:
            self.corpus.save(directory, {"metric": self._metric, "next_id": self._next_id})

    @classmethod
    def load(cls, directory: str | os.PathLike[str], mmap: bool = True, verify: bool = False,
             master_path: str | os.PathLike[str] | None = None) -> Index:
        """Open a saved index: every array is memory-mapped (the ids -> slots table is built on first use); the scan
        tier's pages are mapped for up to pages.SYNC_SECONDS here, the rest on a thread that the first full scan
        waits for (`pages.prefetch`), so a first search costs about what a warm one does.

        Parameters
        ----------
        directory
            What `save` wrote (format 1 or 2).
        mmap
            False reads every array into RAM.
        verify
            Also check every file's CRC32 (reads everything; see `verify`).
        master_path
            Where the master copy goes once the index is modified (default: RAM).

        Raises
        ------
        ValueError
            A missing, truncated (or, with verify, corrupt) file, or a directory that holds no index.
        """
        if verify:
            cls.verify(directory)
        corpus, manifest = Corpus.load(directory, mmap=mmap, master_path=master_path)
        idx = cls.__new__(cls)
        idx._metric = manifest["metric"]
        idx.corpus = corpus
        idx._next_id = int(manifest.get("next_id", 0))
        idx._last_pass_rate = float("nan")
        idx._lock = threading.Lock()
        idx._local = threading.local()
        return idx

    @staticmethod
    def verify(directory: str | os.PathLike[str]) -> dict[str, int]:
        """Check the size and CRC32 of every file of a saved index against its manifest.

        Returns
        -------
        dict
            {file name: bytes} of every file checked.

        Raises
        ------
        ValueError
            Naming the first missing, truncated or corrupt file.
        """
        return Corpus.verify(directory)
