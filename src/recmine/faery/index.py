"""The faery Index: exact top-K retrieval by inner product, cosine or L2 over a packed, updatable corpus.

A drop-in for faiss.IndexFlatIP / IndexFlatL2 with ids: search(queries, k) -> (scores, ids), same shapes; results
equal brute force (ties broken by the smaller id), only much less memory is read per query."""

from __future__ import annotations

import os
import threading
from typing import Any

import numba
import numpy as np

from recmine.faery import kernels
from recmine.faery.corpus import STORAGES, Corpus

METRICS = ("ip", "cosine", "l2")
BATCH_BLOCK = 16384  # rows per block of the batched path
BATCH_MIN_QUERIES = {"int8": 8, "fp16": 8, "fp32": 32}  # batches at least this large take the batched path


def scan_chunks(n: int, k: int, threads: int | None = None) -> int:
    """Chunks a single-query scan splits n rows into: a few per thread, each much larger than k so that its
    running K-th bound becomes selective early."""
    t = numba.get_num_threads() if threads is None else threads
    return max(1, min(64, t * 4, n // max(2048, 16 * k)))


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


def check_ids(ids: Any) -> np.ndarray:
    """ids as a 1-D int64 array; ValueError for a wrong shape or dtype, or an id given twice (named)."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"ids must be a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
    arr = arr.astype(np.int64)
    if np.unique(arr).size != arr.size:
        srt = np.sort(arr)
        raise ValueError(f"duplicate id {int(srt[np.flatnonzero(np.diff(srt) == 0)[0]])} in the call")
    return arr

class Index:
    """Exact retrieval over int64-identified vectors; see module docstring.

    Threading: searches may run concurrently from many threads; mutations (add/remove/update/compact) must not
    overlap searches — the faery service layers snapshots on top for that."""

    def __init__(self, dim: int, metric: str = "ip", storage: str = "int8") -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self._metric = metric
        self.corpus = Corpus(int(dim), storage, l2=metric == "l2")
        self._next_id = 0
        self._last_pass_rate = float("nan")
        self._lock = threading.Lock()

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

    def __len__(self) -> int:
        return len(self.corpus)

    def contains(self, id_: int) -> bool:
        """True when the id is live in the index."""
        return int(id_) in self.corpus.slot_of

    def ids(self) -> np.ndarray:
        """Live ids in slot order."""
        c = self.corpus
        return np.asarray(c.ids[: c.size])[np.asarray(c.live[: c.size])].copy()

    def get(self, ids: Any) -> np.ndarray:
        """The stored fp32 vectors (normalised for cosine) of live ids; KeyError naming an unknown id."""
        arr = self._check_ids(ids)
        self._require_known(arr)
        slots = np.fromiter((self.corpus.slot_of[i] for i in arr.tolist()), np.int64, count=arr.size)
        return np.array(self.corpus.master[slots], np.float32)

    def stats(self) -> dict[str, Any]:
        """Size, bytes read per row by the scan, and the filter pass rate of the last search."""
        c = self.corpus
        return {"live": len(c), "slots": c.size, "dim": c.dim, "metric": self._metric, "storage": c.storage,
                "bytes_per_row": c.bytes_per_row(), "fp32_bytes_per_row": 4 * c.dim,
                "filter_pass_rate": self._last_pass_rate}

    # ---- validation helpers (every check happens before any change)
    def _check_ids(self, ids: Any) -> np.ndarray:
        return check_ids(ids)

    def _require_known(self, ids: np.ndarray) -> None:
        for i in ids.tolist():
            if i not in self.corpus.slot_of:
                raise KeyError(f"unknown id {i}")

    def _prepare(self, x: Any) -> np.ndarray:
        v = self.corpus.check_vectors(x)
        if self._metric == "cosine":
            n = np.linalg.norm(v.astype(np.float64), axis=1)
            if np.any(n == 0):
                raise ValueError(f"vector {int(np.flatnonzero(n == 0)[0])} has zero norm (undefined for cosine)")
            v = (v / n[:, None]).astype(np.float32)
        return v

    # ---- mutations
    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        """Append vectors; ids default to consecutive new integers. Returns the ids. Rejected calls change nothing."""
        v = self._prepare(vectors)
        if ids is None:
            arr = np.arange(self._next_id, self._next_id + v.shape[0], dtype=np.int64)
            while any(i in self.corpus.slot_of for i in arr[:1].tolist()):
                arr += v.shape[0]
        else:
            arr = self._check_ids(ids)
        if arr.size != v.shape[0]:
            raise ValueError(f"{arr.size} ids for {v.shape[0]} vectors")
        clash = [i for i in arr.tolist() if i in self.corpus.slot_of]
        if clash:
            raise ValueError(f"id {clash[0]} is already in the index (use update)")
        with self._lock:
            self.corpus.append(arr, v)
            if arr.size:
                self._next_id = max(self._next_id, int(arr.max()) + 1)
        return arr

    def remove(self, ids: Any) -> int:
        """Delete ids (O(1) each: a tombstone). KeyError naming an unknown id; then nothing is removed."""
        arr = self._check_ids(ids)
        self._require_known(arr)
        with self._lock:
            self.corpus.tombstone(arr)
        return int(arr.size)

    def update(self, ids: Any, vectors: Any) -> None:
        """Replace the vectors of existing ids in place."""
        arr = self._check_ids(ids)
        v = self._prepare(vectors)
        if arr.size != v.shape[0]:
            raise ValueError(f"{arr.size} ids for {v.shape[0]} vectors")
        self._require_known(arr)
        with self._lock:
            self.corpus.overwrite(arr, v)

    def compact(self) -> None:
        """Reclaim tombstoned rows."""
        with self._lock:
            self.corpus.compact()

    # ---- search
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for each query: (scores float32 (nq, k), ids int64 (nq, k)), best first, ties by smaller id.

        ip/cosine: larger scores first; l2: squared distances, smaller first. With fewer than k live rows the tail
        is padded with id -1 and score -inf (+inf for l2)."""
        q = check_queries(queries, k, self.dim)
        if self._metric == "cosine":
            n = np.linalg.norm(q.astype(np.float64), axis=1)
            q = (q / np.where(n > 0, n, 1.0)[:, None]).astype(np.float32)
        k = int(k)
        nq = q.shape[0]
        pad = np.inf if self._metric == "l2" else -np.inf
        scores = np.full((nq, k), pad, np.float32)
        out_ids = np.full((nq, k), -1, np.int64)
        live = len(self.corpus)
        if live == 0:
            return scores, out_ids
        kk = min(k, live)
        passed = 0
        if nq >= BATCH_MIN_QUERIES[self.storage]:
            res = self._search_batch(q, kk)
        else:
            res = [self._search_one(q[i], kk) for i in range(nq)]
        for i, (s, ids_i, npass) in enumerate(res):
            scores[i, :kk] = s
            out_ids[i, :kk] = ids_i
            passed += npass
        self._last_pass_rate = passed / (nq * max(1, self.corpus.size))
        return scores, out_ids

    def _alpha(self) -> float:
        return 2.0 if self._metric == "l2" else 1.0

    def _finish(self, q: np.ndarray, slots: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Exact float64 re-rank of candidate slots; top k by (score desc, id asc)."""
        c = self.corpus
        q64 = q.astype(np.float64)
        ids = np.asarray(c.ids)[slots]
        key = kernels.exact_l2(q64, c.master, slots) if self._metric == "l2" else -kernels.exact_scores(
            q64, c.master, slots)
        if key.size > 2 * k:  # keep everything tied with the k-th best, then order that small set exactly
            kth = np.partition(key, k - 1)[k - 1]
            sel = np.flatnonzero(key <= kth)
            key, ids = key[sel], ids[sel]
        order = np.lexsort((ids, key))[:k]
        out = key[order] if self._metric == "l2" else -key[order]
        return out.astype(np.float32), ids[order], int(slots.size)

    def _search_one(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        c = self.corpus
        n = c.size
        nchunks = scan_chunks(n, k)
        alpha = self._alpha()
        live = c.live[:n]
        bias = c.bias[:n]
        if c.storage == "int8":
            cand, ubs, counts, heaps, chunk = kernels.scan_int8(
                q, c.packed[:n, : c.dim], c.scale[:n], bias, live, k, alpha, float(np.abs(q).sum()), nchunks)
        else:
            rel = 2.0 ** -11 if c.storage == "fp16" else 0.0
            absr = float(np.abs(q).sum()) * alpha * 2.0 ** -24 if c.storage == "fp16" else 0.0
            packed = c.packed[:n, : c.dim]
            qn = float(np.linalg.norm(q.astype(np.float64))) * 1.000001
            if c.storage == "fp16":
                cand, ubs, counts, heaps, chunk = kernels.scan_half(
                    q, packed, c.norms[:n], bias, live, k, alpha, qn, rel, absr, nchunks, kernels.HALF_TABLE)
            else:
                cand, ubs, counts, heaps, chunk = kernels.scan_float(
                    q, packed, c.norms[:n], bias, live, k, alpha, qn, rel, absr, nchunks)
        theta = kernels.kth_largest(heaps, k)
        slots = kernels.gather_candidates(cand, ubs, counts, chunk, np.float32(theta))
        return self._finish(q, slots, k)

    def _search_batch(self, q: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Tiles of queries x corpus blocks: decode a block to fp32, sgemm for approximate scores, per-query filter
        against the running K-th lower bound, exact re-rank of the survivors."""
        c = self.corpus
        n = c.size
        nq = q.shape[0]
        alpha = np.float32(self._alpha())
        eps = np.float32(np.finfo(np.float32).eps)
        qabs = np.abs(q).sum(axis=1).astype(np.float32)
        qn = np.linalg.norm(q.astype(np.float64), axis=1).astype(np.float32) * np.float32(1.000001)
        best = np.full((nq, k), -np.inf, np.float32)  # running K largest lower bounds per query
        cands: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(nq)]
        for lo in range(0, n, BATCH_BLOCK):
            hi = min(n, lo + BATCH_BLOCK)
            live = np.asarray(c.live[lo:hi])
            if c.storage == "int8":
                scale = np.asarray(c.scale[lo:hi])
                block = np.asarray(c.packed[lo:hi, : c.dim], np.float32)
                approx = (q @ block.T) * (alpha * scale)[None, :]
                bound = (alpha * qabs)[:, None] * (scale * np.float32(0.5 + 127 * (c.dim + 2) * eps * 1.01))[None, :]
            else:
                raw = np.asarray(c.packed[lo:hi, : c.dim])
                block = raw.view(np.float16).astype(np.float32) if c.storage == "fp16" else raw
                approx = alpha * (q @ block.T)
                rel = np.float32((2.0 ** -11 if c.storage == "fp16" else 0.0) + (c.dim + 2) * eps * 1.01)
                bound = (alpha * qn)[:, None] * (np.asarray(c.norms[lo:hi]) * rel)[None, :]
                if c.storage == "fp16":
                    bound += (alpha * qabs * np.float32(2.0 ** -24))[:, None]
            approx += np.asarray(c.bias[lo:hi])[None, :]
            bound += np.float32(4) * eps * (np.abs(approx) + np.abs(np.asarray(c.bias[lo:hi]))[None, :]) \
                + np.float32(1e-30)
            lb = np.where(live[None, :], approx - bound, -np.inf)
            ub = np.where(live[None, :], approx + bound, -np.inf)
            both = np.concatenate([best, lb], axis=1)
            best = -np.partition(-both, k - 1, axis=1)[:, :k]
            theta = best.min(axis=1)
            keep = ub >= theta[:, None]
            for i in np.flatnonzero(keep.any(axis=1)).tolist():
                cols = np.flatnonzero(keep[i])
                cands[i].append((cols + lo, ub[i, cols]))
        out = []
        theta = best.min(axis=1)
        for i in range(nq):
            if cands[i]:
                slots = np.concatenate([s for s, _ in cands[i]])
                ubs = np.concatenate([u for _, u in cands[i]])
                slots = slots[ubs >= theta[i]]
            else:
                slots = np.zeros(0, np.int64)
            out.append(self._finish(q[i], slots.astype(np.int64), k))
        return out

    # ---- persistence
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the index to a directory (arrays + manifest with sizes and checksums)."""
        with self._lock:
            self.corpus.save(directory, {"metric": self._metric, "next_id": self._next_id})

    @classmethod
    def load(cls, directory: str | os.PathLike[str], mmap: bool = True) -> Index:
        """Open a saved index; arrays are memory-mapped (a large corpus opens instantly). ValueError naming a
        truncated or corrupt file."""
        corpus, manifest = Corpus.load(directory, mmap=mmap, verify=True)
        idx = cls.__new__(cls)
        idx._metric = manifest["metric"]
        idx.corpus = corpus
        idx._next_id = int(manifest.get("next_id", 0))
        idx._last_pass_rate = float("nan")
        idx._lock = threading.Lock()
        return idx

