"""Preprocessing in O(E) with numba: degree ranking, the degree-ranked full CSR (generic plans) and the
degree-oriented DAG (clique plans), plus the thread runner every parallel step and kernel goes through.

Vertices are renumbered by descending degree (ties by id), so id order is rank order. The DAG keeps, for each vertex,
only its neighbours of smaller id (higher degree): each edge once, out-degrees at most O(sqrt(m)), half the memory
traffic of the full CSR, and hubs' rows packed together at the front (this is what makes the clique kernels fast at
10^7 edges). Work is split into contiguous ranges run on Python threads calling GIL-free numba kernels, handed out
dynamically (a shared counter), so skewed rows do not leave a thread idle and every sum is exact."""

from __future__ import annotations

import itertools
import mmap
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import njit


def resolve_threads(threads: int | None) -> int:
    """The thread count to use: `threads`, or every core when None; rejects values below 1."""
    if threads is None:
        return max(1, min(os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS))
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return int(threads)


def run_chunks(call: Callable[[int], Any], nchunks: int, threads: int,
               progress: Callable[[float], None] | None = None,
               weights: Sequence[float] | np.ndarray | None = None) -> list[Any]:
    """call(c) for c in range(nchunks) on `threads` threads, chunks handed out in order as threads free up; returns
    the results in chunk order. progress(fraction of the weight done) is called from this thread as chunks end."""
    results: list[Any] = [None] * nchunks
    w = np.ones(nchunks) if weights is None else np.asarray(weights, dtype=np.float64)
    total = float(w.sum()) or 1.0
    if threads <= 1 or nchunks <= 1:
        done = 0.0
        for c in range(nchunks):
            results[c] = call(c)
            done += w[c]
            if progress is not None:
                progress(min(done / total, 1.0))
        if progress is not None and nchunks == 0:
            progress(1.0)
        return results
    counter = itertools.count()
    lock = threading.Lock()
    state = {"done": 0.0, "error": None}

    def worker() -> None:
        while state["error"] is None:
            c = next(counter)
            if c >= nchunks:
                return
            try:
                results[c] = call(c)
            except BaseException as exc:  # re-raised in the calling thread
                state["error"] = exc
                return
            with lock:
                state["done"] += w[c]

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(min(threads, nchunks))]
    for t in pool:
        t.start()
    for t in pool:
        while t.is_alive():
            t.join(0.1 if progress is not None else None)
            if progress is not None:
                progress(min(state["done"] / total, 1.0))
    if state["error"] is not None:
        raise state["error"]
    if progress is not None:
        progress(1.0)
    return results


def even_ranges(n: int, parts: int) -> np.ndarray:
    """Bounds of `parts` contiguous ranges splitting range(n) evenly (int64, parts + 1 entries)."""
    parts = max(1, min(parts, max(n, 1)))
    return np.linspace(0, n, parts + 1).astype(np.int64)


@njit(cache=True, nogil=True)
def degree_order(indptr):
    """Counting sort of the vertices by descending degree, ties by ascending id: (order, rank), order[new] = old,
    rank[old] = new (int32)."""
    n = indptr.shape[0] - 1
    maxd = 0
    for v in range(n):
        d = indptr[v + 1] - indptr[v]
        if d > maxd:
            maxd = d
    start = np.zeros(maxd + 2, np.int64)
    for v in range(n):
        start[indptr[v + 1] - indptr[v]] += 1
    pos = 0
    for d in range(maxd, -1, -1):  # highest degree first
        c = start[d]
        start[d] = pos
        pos += c
    order = np.empty(n, np.int32)
    rank = np.empty(n, np.int32)
    for v in range(n):
        d = indptr[v + 1] - indptr[v]
        r = start[d]
        start[d] += 1
        order[r] = v
        rank[v] = r
    return order, rank


@njit(cache=True, nogil=True)
def _ranked_sizes(indptr, indices, rank, lo, hi, dag, out):
    """For input rows u in [lo, hi): out[rank[u] + 1] = length of its new row (every neighbour, or for the DAG
    those of smaller rank). Input rows are read in order, so a mapped input streams."""
    for u in range(lo, hi):
        r = rank[u]
        if not dag:
            out[r + 1] = indptr[u + 1] - indptr[u]
            continue
        c = 0
        for e in range(indptr[u], indptr[u + 1]):
            if rank[indices[e]] < r:
                c += 1
        out[r + 1] = c


@njit(cache=True, nogil=True)
def _ranked_fill(indptr, indices, rank, lo, hi, dag, new_indptr, new_indices):
    """Write the new rows of input rows lo..hi-1: neighbours renamed to ranks (only smaller ranks for the DAG),
    sorted."""
    for u in range(lo, hi):
        r = rank[u]
        p = new_indptr[r]
        for e in range(indptr[u], indptr[u + 1]):
            x = rank[indices[e]]
            if not dag or x < r:
                new_indices[p] = x
                p += 1
        new_indices[new_indptr[r]:p].sort()


def release(a: np.ndarray, lo: int, hi: int) -> None:
    """Drop a[lo:hi] of a read-only file mapping from this process's resident set (the pages stay in the page
    cache): a streamed input then costs no more than the piece being read."""
    m = getattr(a, "_mmap", None) if isinstance(a, np.memmap) else None
    if m is None or a.flags.writeable or not hasattr(m, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = int(a.offset) + lo * a.itemsize
    page = mmap.PAGESIZE
    first = -(-start // page) * page
    last = (int(a.offset) + hi * a.itemsize) // page * page
    if last > first:
        m.madvise(mmap.MADV_DONTNEED, first, last - first)


def ranked_csr(indptr: np.ndarray, indices: np.ndarray, order: np.ndarray, rank: np.ndarray, dag: bool,
               threads: int, out: Callable[[int, int], tuple[np.ndarray, np.ndarray]] | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
    """The degree-ranked CSR (dag=False) or the degree-oriented DAG (dag=True), rows sorted, in parallel, reading
    the input rows in order and releasing a mapped input's pages behind them.

    `out(n, nnz)` may supply the (indptr, indices) arrays to fill (e.g. a file mapping for the cache)."""
    n = indptr.shape[0] - 1
    cuts = np.searchsorted(indptr, np.linspace(0, indptr[-1], 8 * threads + 1)).astype(np.int64)
    cuts[0], cuts[-1] = 0, n
    bounds = np.unique(cuts)

    def sizes_piece(c: int) -> None:
        _ranked_sizes(indptr, indices, rank, bounds[c], bounds[c + 1], dag, sizes)
        release(indices, int(indptr[bounds[c]]), int(indptr[bounds[c + 1]]))

    sizes = np.zeros(n + 1, np.int64)
    run_chunks(sizes_piece, len(bounds) - 1, threads)
    np.cumsum(sizes, out=sizes)
    nnz = int(sizes[-1])
    if out is None:
        new_indptr, new_indices = sizes, np.empty(nnz, np.int32)
    else:
        new_indptr, new_indices = out(n, nnz)
        new_indptr[:] = sizes
        del sizes

    def fill_piece(c: int) -> None:
        _ranked_fill(indptr, indices, rank, bounds[c], bounds[c + 1], dag, new_indptr, new_indices)
        release(indices, int(indptr[bounds[c]]), int(indptr[bounds[c + 1]]))

    run_chunks(fill_piece, len(bounds) - 1, threads)
    return new_indptr, new_indices


@njit(cache=True, nogil=True)
def _edge_work(indptr, v, x):
    """Estimated work of start edge v -> x: 1 + deg(v) + deg(x)."""
    return 1.0 + (indptr[v + 1] - indptr[v]) + (indptr[x + 1] - indptr[x])


@njit(cache=True, nogil=True)
def slot_bounds(indptr, indices, lo, hi, parts):
    """Cut CSR slots [lo, hi) into at most `parts` contiguous ranges of about equal estimated work (1 + deg(v0) +
    deg(v1) per start edge v0 -> v1); returns (bounds int64[k+1], work per range float64[k])."""
    n = indptr.shape[0] - 1
    total = 0.0
    v = 0
    if hi > lo:
        lo_v, hi_v = 0, n
        while hi_v - lo_v > 1:  # row holding slot lo
            mid = (lo_v + hi_v) >> 1
            if indptr[mid] <= lo:
                lo_v = mid
            else:
                hi_v = mid
        v = lo_v
    v_start = v
    for e in range(lo, hi):
        while indptr[v + 1] <= e:
            v += 1
        total += _edge_work(indptr, v, indices[e])
    bounds = np.empty(parts + 1, np.int64)
    work = np.zeros(parts, np.float64)
    bounds[0] = lo
    k = 0
    acc = 0.0
    target = total / parts if parts > 0 else total
    v = v_start
    for e in range(lo, hi):
        while indptr[v + 1] <= e:
            v += 1
        c = _edge_work(indptr, v, indices[e])
        acc += c
        work[k] += c
        if acc >= target * (k + 1) and k < parts - 1 and e + 1 < hi:
            k += 1
            bounds[k] = e + 1
    bounds[k + 1] = hi
    return bounds[:k + 2].copy(), work[:k + 1].copy()


@dataclass(frozen=True, eq=False)
class Prepared:
    """What a kernel reads: a CSR whose ids are degree ranks (the full ranked graph, or the oriented DAG), the
    labels in that order, and new_to_old to report original ids. Arrays are read-only (mapped or in memory)."""

    kind: str  # "ranked" or "dag"
    indptr: np.ndarray
    indices: np.ndarray
    labels: np.ndarray  # int32[n] or empty
    new_to_old: np.ndarray  # int32[n]
    max_degree: int
    seconds: float = 0.0  # time spent building or mapping it

    @property
    def num_vertices(self) -> int:
        """Number of vertices."""
        return int(self.indptr.shape[0] - 1)

    @property
    def num_slots(self) -> int:
        """Number of CSR slots (start edges of a count)."""
        return int(self.indices.shape[0])


def frozen(a: np.ndarray) -> np.ndarray:
    """`a` as a read-only array (one compiled kernel type for mapped and in-memory graphs alike)."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def max_degree(indptr: np.ndarray) -> int:
    """Largest row length of a CSR (0 when empty)."""
    return int(np.diff(indptr).max()) if indptr.shape[0] > 1 else 0


def build_prepared(kind: str, indptr: np.ndarray, indices: np.ndarray, labels: np.ndarray | None,
                   threads: int | None = None, order_rank: tuple[np.ndarray, np.ndarray] | None = None,
                   out: Callable[[int, int], tuple[np.ndarray, np.ndarray]] | None = None) -> Prepared:
    """Rank the vertices by degree and build the `kind` form ("ranked" or "dag") of a CSR graph."""
    t = time.perf_counter()
    nthreads = resolve_threads(threads)
    order, rank = degree_order(indptr) if order_rank is None else order_rank
    ip, ix = ranked_csr(indptr, indices, order, rank, kind == "dag", nthreads, out)
    lab = np.zeros(0, np.int32) if labels is None else np.ascontiguousarray(labels[order], dtype=np.int32)
    return Prepared(kind, frozen(ip), frozen(ix), frozen(lab), frozen(order), max_degree(ip),
                    time.perf_counter() - t)
