"""Fair timing of faery against its peers: every engine alone in a process of its own, results checked.

numba's and faiss's OpenMP workers spin after a parallel region; on two hyperthreads of one core an engine timed
beside another engine's pool runs 2-3x slower. So each engine (faery at 1 and at N threads, faiss at 1 and at N
threads, numpy) runs in its own spawned process (`recmine.isolate.run_isolated`) that memory-maps the corpus and
the queries from .npy files; only timings and result ids come back. faiss is timed at its best: for single
queries the fastest of IndexFlatIP's scan, its BLAS path and IndexShards over the threads (picked per K on a few
queries, then timed on all), for batches its BLAS path. Every engine's ids are checked against the float64 oracle
(`recmine.faery.exact`). Ratios are given twice: at equal thread counts, and best configuration against best.

Used by benchmarks/faery_bench.py, `recmine retrieve bench` and the demo's faery stage."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recmine.faery.exact import brute_force_topk, recall
from recmine.isolate import run_isolated

PROBE = 8  # queries per faiss configuration when picking its fastest for a K
SHARD_COPY_MAX_BYTES = 2 << 30  # larger corpora: no second in-RAM copy (faiss shards; numpy reads the mapped file)
NUMPY_BLOCK_FLOATS = 1 << 26  # numpy scores (queries x rows) at most this many floats at a time
LIFECYCLE_LOADS = 5  # fresh loads of a saved index whose first searches the lifecycle row takes the median of
LIFECYCLE_IDLE_S = 0.5  # rest before each of them (a restarted server's first query comes after idle)


# ---------------------------------------------------------------------------------------------------- children
def _timed_queries(search: Callable[[np.ndarray], np.ndarray], qs: np.ndarray) -> tuple[list[float], np.ndarray]:
    """Per-query wall times (s) of search(q[None]) -> (1, k) ids, and the ids stacked."""
    times, out = [], []
    for q in qs:
        t = time.perf_counter()
        ids = search(q[None])
        times.append(time.perf_counter() - t)
        out.append(np.asarray(ids)[0])
    return times, np.stack(out)


def _stats(times: Sequence[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(times, 50)) * 1e3, "p99_ms": float(np.percentile(times, 99)) * 1e3}


def _batch_qps(search: Callable[[np.ndarray], np.ndarray], qb: np.ndarray, reps: int = 3) -> tuple[float, np.ndarray]:
    search(qb)
    rates, ids = [], None
    for _ in range(reps):
        t = time.perf_counter()
        ids = search(qb)
        rates.append(qb.shape[0] / (time.perf_counter() - t))
    return float(np.median(rates)), np.asarray(ids)


def _removal_ids(n: int, count: int) -> np.ndarray:
    """Row positions removed in the removal comparison (fixed seed, the same in every process)."""
    return np.sort(np.random.default_rng(7).choice(n, size=min(count, n // 2), replace=False)).astype(np.int64)


def allow_bitmap(n: int, selectivity: float) -> np.ndarray:
    """The filter of the filtered-search comparison: a boolean bitmap over row ids 0..n-1 allowing about
    `selectivity` of them at random (fixed seed per selectivity, the same in every process)."""
    rng = np.random.default_rng(1_000_003 + int(round(selectivity * 1e6)))
    out = np.empty(n, np.bool_)
    for lo in range(0, n, 1 << 22):  # in blocks: no n-sized float temporary
        out[lo: lo + (1 << 22)] = rng.random(min(1 << 22, n - lo)) < selectivity
    return out


def _peak_rss() -> int:
    """This process's peak resident set so far, bytes (Linux reports KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def first_after_load(load: Callable[[], Any], search: Callable[[Any, np.ndarray], np.ndarray], qs: np.ndarray,
                     loads: int = LIFECYCLE_LOADS, idle: float = LIFECYCLE_IDLE_S) -> dict[str, float]:
    """Load, first search after it and warm searches, over `loads` fresh loads of a saved index, each after `idle`
    seconds of rest (as after a restart): medians and the worst first search, ms. One load's first search is one
    sample: on 2 vCPUs a search after a rest ran 1.0-1.35x a back-to-back one (an in-RAM index's too), and about one
    in ten, on any search, had a lane kept off its CPU ~10 ms by another task (1.7-2.1x), which a median of warm
    searches hides and a single first search does not.

    Parameters
    ----------
    load
        Opens the saved index (called `loads` times; each result is dropped before the next load).
    search
        search(index, queries (1, dim)) -> ids.
    qs
        Queries: the first is each load's first search, the next (up to 5) its warm searches.
    loads, idle
        How many loads, and the seconds of rest before each.

    Returns
    -------
    dict
        load_ms, first_search_ms, warm_search_ms (medians), first_search_max_ms, first_over_warm (median of each
        load's first search over its own warm median), loads and first_search_each_ms (in load order: the
        first load follows the save, whose writes may still be going to disk).
    """
    load_ms, first, warm, ratio = [], [], [], []
    for _ in range(max(1, loads)):
        time.sleep(idle)
        t = time.perf_counter()
        index = load()
        load_ms.append(time.perf_counter() - t)
        t = time.perf_counter()
        search(index, qs[:1])
        first.append(time.perf_counter() - t)
        times, _ = _timed_queries(lambda q, index=index: search(index, q), qs[1:6])
        warm.extend(times)
        ratio.append(first[-1] / float(np.median(times)) if times else float("nan"))
        del index
    return {"load_ms": float(np.median(load_ms)) * 1e3, "first_search_ms": float(np.median(first)) * 1e3,
            "first_search_max_ms": max(first) * 1e3, "warm_search_ms": float(np.median(warm)) * 1e3,
            "first_over_warm": float(np.median(ratio)), "loads": len(first),
            "first_search_each_ms": [f * 1e3 for f in first]}


def _dir_bytes(path: str | os.PathLike[str]) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def run_faery(x_path: str, q_path: str, b_path: str, ks: Sequence[int], batch_k: int, storage: str,
              removal: int = 0, sels: Sequence[float] = (), filter_k: int = 100,
              lifecycle: str | None = None) -> dict[str, Any]:
    """Child: build a faery Index over the memory-mapped corpus (chunk by chunk), time single queries per K, a
    batch, filtered single queries (an id bitmap per selectivity); optionally remove `removal` rows (tombstones,
    then compact()); with `lifecycle` (a scratch directory), save, then load and time the first search after the
    load, LIFECYCLE_LOADS times (`first_after_load`; the page cache still holds the files just saved: what a restart
    sees, not a reboot, where the disk bounds it)."""
    import numba

    from recmine.faery import Index
    from recmine.faery.index import warm_up

    warm_up(storage)  # the JIT's start-up is the process's, not the index's: outside every timing
    x = np.load(x_path, mmap_mode="r")
    qs, qb = np.load(q_path), np.load(b_path)
    rss0 = _peak_rss()
    t = time.perf_counter()
    idx = Index(x.shape[1], storage=storage)
    idx.add(x)
    out: dict[str, Any] = {"threads": numba.get_num_threads(), "pid": os.getpid(), "build_s": time.perf_counter() - t,
                           "peak_rss_bytes": _peak_rss(), "rss_before_build_bytes": rss0, "single": {},
                           "filtered": {}}
    for k in ks:
        idx.search(qs[:1], k)
        times, ids = _timed_queries(lambda q, k=k: idx.search(q, k)[1], qs)
        out["single"][k] = {**_stats(times), "ids": ids, "config": storage}
    out["batch_qps"], out["batch_ids"] = _batch_qps(lambda q: idx.search(q, batch_k)[1], qb)
    for sel in sels:
        bits = allow_bitmap(x.shape[0], sel)
        idx.search(qs[:1], filter_k, allow=bits)
        times, ids = _timed_queries(lambda q, b=bits: idx.search(q, filter_k, allow=b)[1], qs)
        qps, bids = _batch_qps(lambda q, b=bits: idx.search(q, filter_k, allow=b)[1], qb, reps=2)
        out["filtered"][sel] = {**_stats(times), "ids": ids, "batch_qps": qps, "batch_ids": bids,
                                "config": "allow= id bitmap, checked in the scan"}
    if removal:
        gone = _removal_ids(x.shape[0], removal)
        t = time.perf_counter()
        idx.remove(gone)
        rem_ms = (time.perf_counter() - t) * 1e3
        times, ids = _timed_queries(lambda q: idx.search(q, batch_k)[1], qs)
        t = time.perf_counter()
        idx.compact()
        cmp_ms = (time.perf_counter() - t) * 1e3
        times2, ids2 = _timed_queries(lambda q: idx.search(q, batch_k)[1], qs)
        out["removal"] = [{"how": "remove (tombstones)", "op_ms": rem_ms, **_stats(times), "ids": ids},
                          {"how": "remove + compact()", "op_ms": rem_ms + cmp_ms, **_stats(times2), "ids": ids2}]
    if lifecycle:
        if removal:  # the saved index is the full corpus again
            idx = Index(x.shape[1], storage=storage)
            idx.add(x)
        path = Path(lifecycle) / f"faery-{storage}-{os.getpid()}"
        t = time.perf_counter()
        idx.save(path)
        save_s = time.perf_counter() - t
        del idx
        out["lifecycle"] = {"save_s": save_s, "index_bytes": _dir_bytes(path),
                            **first_after_load(lambda: Index.load(path), lambda ix, q: ix.search(q, batch_k)[1], qs),
                            "load": "Index.load (memory-mapped; page cache warm)"}
        shutil.rmtree(path, ignore_errors=True)
    return out


def run_faiss(x_path: str, q_path: str, b_path: str, ks: Sequence[int], batch_k: int,
              removal: int = 0, sels: Sequence[float] = (), filter_k: int = 100,
              lifecycle: str | None = None) -> dict[str, Any]:
    """Child: faiss.IndexFlatIP at this process's thread count, each K through its fastest configuration;
    filtered queries through SearchParameters(sel=IDSelectorBitmap) (its scan or BLAS path, the faster); optionally
    the removal comparison (an IDSelector that hides the rows, then remove_ids) and write_index / read_index."""
    import faiss

    threads = faiss.omp_get_max_threads()
    x = np.load(x_path, mmap_mode="r")
    qs, qb = np.load(q_path), np.load(b_path)
    rss0 = _peak_rss()
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(x.shape[1])
    for lo in range(0, x.shape[0], 1 << 20):  # from the memory-mapped file, a block at a time
        flat.add(np.ascontiguousarray(x[lo: lo + (1 << 20)], np.float32))
    out: dict[str, Any] = {"threads": threads, "pid": os.getpid(), "build_s": time.perf_counter() - t,
                           "peak_rss_bytes": _peak_rss(), "rss_before_build_bytes": rss0, "single": {},
                           "filtered": {}}
    default_thr = faiss.cvar.distance_compute_blas_threshold
    configs: dict[str, tuple[Any, int]] = {"IndexFlatIP": (flat, default_thr), "IndexFlatIP, BLAS": (flat, 0)}
    if threads > 1 and x.nbytes <= SHARD_COPY_MAX_BYTES:  # a single query runs on one thread; shards, one each
        shards = faiss.IndexShards(x.shape[1], True, True)
        for part in np.array_split(np.arange(x.shape[0]), threads):
            p = faiss.IndexFlatIP(x.shape[1])
            p.add(np.ascontiguousarray(x[part[0]: part[-1] + 1], np.float32))
            shards.add_shard(p)
        configs[f"IndexShards x{threads}"] = (shards, default_thr)

    def search(name: str, q: np.ndarray, k: int, params: Any = None) -> np.ndarray:
        index, thr = configs[name]
        faiss.cvar.distance_compute_blas_threshold = thr
        return index.search(q, k, params=params)[1] if params is not None else index.search(q, k)[1]

    def fastest(k: int, names: Sequence[str], params: Any = None) -> str:
        probe = {}
        for name in names:
            search(name, qs[:2], k, params)
            times, _ = _timed_queries(lambda q, name=name: search(name, q, k, params), qs[:PROBE])
            probe[name] = float(np.median(times))
        return min(probe, key=probe.__getitem__)

    for k in ks:
        best = fastest(k, list(configs))
        times, ids = _timed_queries(lambda q, best=best, k=k: search(best, q, k), qs)
        out["single"][k] = {**_stats(times), "ids": ids, "config": best}
    rates = {name: _batch_qps(lambda q, name=name: search(name, q, batch_k), qb) for name in configs}
    best = max(rates, key=lambda n: rates[n][0])
    out["batch_qps"], out["batch_ids"] = rates[best]
    out["batch_config"] = best
    flat_names = ["IndexFlatIP", "IndexFlatIP, BLAS"]  # a selector holds global ids: shards would misread them
    for sel in sels:
        packed = np.packbits(allow_bitmap(x.shape[0], sel), bitorder="little")
        params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(x.shape[0], faiss.swig_ptr(packed)))
        name = fastest(filter_k, flat_names, params)
        times, ids = _timed_queries(lambda q, name=name, p=params: search(name, q, filter_k, p), qs)
        bq = {n: _batch_qps(lambda q, n=n, p=params: search(n, q, filter_k, p), qb, reps=2) for n in flat_names}
        bname = max(bq, key=lambda n: bq[n][0])
        out["filtered"][sel] = {**_stats(times), "ids": ids, "batch_qps": bq[bname][0], "batch_ids": bq[bname][1],
                                "config": f"IDSelectorBitmap, {name}"}
        del params, packed
    if removal:
        gone = _removal_ids(x.shape[0], removal)
        t = time.perf_counter()
        params = faiss.SearchParameters(sel=faiss.IDSelectorNot(faiss.IDSelectorBatch(gone)))
        sel_ms = (time.perf_counter() - t) * 1e3
        times, ids = _timed_queries(lambda q: flat.search(q, batch_k, params=params)[1], qs)
        t = time.perf_counter()
        flat.remove_ids(faiss.IDSelectorBatch(gone))
        rem_ms = (time.perf_counter() - t) * 1e3
        remaining = np.delete(np.arange(x.shape[0]), gone)  # IndexFlat renumbers the rows it keeps
        times2, ids2 = _timed_queries(lambda q: remaining[flat.search(q, batch_k)[1]], qs)
        out["removal"] = [{"how": "IDSelectorNot (tombstones)", "op_ms": sel_ms, **_stats(times), "ids": ids},
                          {"how": "remove_ids", "op_ms": rem_ms, **_stats(times2), "ids": ids2}]
    if lifecycle:
        if removal:
            flat.reset()
            for lo in range(0, x.shape[0], 1 << 20):
                flat.add(np.ascontiguousarray(x[lo: lo + (1 << 20)], np.float32))
        configs.clear()
        path = str(Path(lifecycle) / f"faiss-{os.getpid()}.index")
        t = time.perf_counter()
        faiss.write_index(flat, path)
        save_s = time.perf_counter() - t
        del flat
        faiss.cvar.distance_compute_blas_threshold = default_thr
        out["lifecycle"] = {"save_s": save_s, "index_bytes": os.path.getsize(path),
                            **first_after_load(lambda: faiss.read_index(path), lambda ix, q: ix.search(q, batch_k)[1],
                                               qs),
                            "load": "faiss.read_index (page cache warm)"}
        os.unlink(path)
    return out


def run_numpy(x_path: str, q_path: str, b_path: str, ks: Sequence[int], batch_k: int,
              sels: Sequence[float] = (), filter_k: int = 100) -> dict[str, Any]:
    """Child: numpy float32 matrix-vector product + argpartition + sort of the top k (BLAS at this process's
    thread count) over the memory-mapped corpus; a batch in blocks of rows (bounded memory); a filter as a mask
    applied to the scores before argpartition."""
    x = np.load(x_path, mmap_mode="r")
    if x.nbytes <= SHARD_COPY_MAX_BYTES:
        x = np.ascontiguousarray(x, np.float32)
    qs, qb = np.load(q_path), np.load(b_path)

    def topk(q: np.ndarray, k: int, keep: np.ndarray | None = None) -> np.ndarray:
        best_s = np.full((q.shape[0], 0), -np.inf, np.float32)
        best_i = np.zeros((q.shape[0], 0), np.int64)
        block = max(1, NUMPY_BLOCK_FLOATS // max(1, q.shape[0]))
        for lo in range(0, x.shape[0], block):
            s = q @ x[lo: lo + block].T
            if keep is not None:
                s[:, ~keep[lo: lo + block]] = -np.inf
            kk = min(k, s.shape[1])
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            best_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
            best_i = np.concatenate([best_i, part + lo], axis=1)
            if best_s.shape[1] > k:
                sel = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
                best_s, best_i = np.take_along_axis(best_s, sel, 1), np.take_along_axis(best_i, sel, 1)
        order = np.argsort(-best_s, axis=1, kind="stable")
        return np.take_along_axis(best_i, order, axis=1)

    threads = int(os.environ.get("OPENBLAS_NUM_THREADS", os.cpu_count() or 1))
    out: dict[str, Any] = {"threads": threads, "pid": os.getpid(), "build_s": 0.0, "single": {}, "filtered": {},
                           "peak_rss_bytes": _peak_rss()}
    for k in ks:
        topk(qs[:1], k)
        times, ids = _timed_queries(lambda q, k=k: topk(q, k), qs)
        out["single"][k] = {**_stats(times), "ids": ids, "config": "matmul + argpartition"}
    out["batch_qps"], out["batch_ids"] = _batch_qps(lambda q: topk(q, batch_k), qb)
    for sel in sels:
        keep = allow_bitmap(x.shape[0], sel)
        times, ids = _timed_queries(lambda q, m=keep: topk(q, filter_k, m), qs)
        qps, bids = _batch_qps(lambda q, m=keep: topk(q, filter_k, m), qb, reps=2)
        out["filtered"][sel] = {**_stats(times), "ids": ids, "batch_qps": qps, "batch_ids": bids,
                                "config": "masked matmul + argpartition"}
    out["peak_rss_bytes"] = _peak_rss()
    return out


# ---------------------------------------------------------------------------------------------------- parent
def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def oracle(x: np.ndarray, queries: np.ndarray, k: int, keep: np.ndarray | None = None,
           block: int = 1 << 21) -> np.ndarray:
    """The float64 oracle's top-k ids (rows 0..n-1, only rows where keep), block by block for a large corpus:
    each block's exact top-k, then an exact merge (score, then smaller id; scores are per-row float64 sums, the
    same whatever else is in the block)."""
    n = x.shape[0]
    parts_s, parts_i = [], []
    for lo in range(0, n, block):
        rows = np.arange(lo, min(n, lo + block))
        if keep is not None:
            rows = rows[keep[lo: lo + block]]
        if rows.size == 0:
            continue
        xb = x[rows] if keep is not None else x[lo: lo + block]
        s, i = brute_force_topk(xb, rows, queries, min(k, rows.size))
        parts_s.append(s)
        parts_i.append(i)
    if not parts_s:
        return np.full((queries.shape[0], k), -1, np.int64)
    s, i = np.concatenate(parts_s, axis=1), np.concatenate(parts_i, axis=1)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), np.where(i < 0, np.inf, -s)), axis=-1)[:, :k]
    out = np.take_along_axis(i, order, axis=1)
    if out.shape[1] < k:
        out = np.concatenate([out, np.full((out.shape[0], k - out.shape[1]), -1, np.int64)], axis=1)
    return out


def compare(x: np.ndarray | str | os.PathLike[str], queries: np.ndarray, ks: Sequence[int], *,
            batch: np.ndarray | None = None, batch_k: int = 100, threads: Sequence[int] | None = None,
            storages: Sequence[str] = ("int8",), with_faiss: bool = True, with_numpy: bool = True, removal: int = 0,
            selectivities: Sequence[float] = (), filter_k: int = 100, lifecycle: bool = False,
            check_queries: int | None = None, timeout: float = 3600.0, omp_wait_policy: str | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time faery, faiss and numpy each alone in its own process on the same data and check every result against
    the float64 oracle (inner product; row ids are 0..n-1).

    Parameters
    ----------
    x
        (n, dim) float32 corpus, or the path of a .npy holding it (used in place: a corpus larger than RAM is
        never loaded whole; every child memory-maps it).
    queries
        (nq, dim) single queries, float32.
    ks
        K values for the single-query latencies.
    batch
        (nb, dim) queries for the batch throughput at `batch_k` (default: `queries`).
    threads
        Thread counts to run each engine at (default: 1 and every CPU).
    storages
        faery scan tiers; the first is the one the ratios use.
    with_faiss, with_numpy
        Include these peers (faiss is skipped when not installed).
    removal
        When > 0, also remove this many rows in faery (tombstones, then compact()) and in faiss (an IDSelector
        that hides them, then remove_ids), at the largest thread count, and check searches (K = batch_k) after.
    selectivities
        Filtered search: for each fraction, an id bitmap allowing about that share of the rows (`allow_bitmap`),
        through faery's allow= and faiss's SearchParameters(sel=IDSelectorBitmap) and a numpy mask, at K =
        filter_k; single queries and the batch.
    filter_k
        K of the filtered searches.
    lifecycle
        Also save and load each engine's index at the largest thread count (faery: Index.save / Index.load, faiss:
        write_index / read_index) and time the first search after the load (medians and the worst over
        LIFECYCLE_LOADS fresh loads, see `first_after_load`).
    check_queries
        Check only the first this many queries (and batch queries) against the oracle (a large corpus).
    timeout
        Seconds each child may take.
    omp_wait_policy
        OMP_WAIT_POLICY of every child; None (default): each engine its best measured here. faery PASSIVE (what
        its import sets: idle OpenMP workers sleep instead of spinning, and on a shared 2-vCPU machine a spinning
        worker taken off the CPU held every 2-thread query at a barrier for ~10 ms), faiss and numpy ACTIVE (the
        OpenMP default; at 1M x 128 faiss's 2-thread batch ran 503 q/s ACTIVE vs 265 PASSIVE, single queries alike).
    progress
        Called with a short description before each child starts.

    Returns
    -------
    dict
        "runs" (one per process: engine, storage/config, threads, build_s, peak_rss_bytes, batch_qps, per-K
        p50/p99, filtered, lifecycle, check), "latency", "ratios", "engines", "filtered", "lifecycle" and
        "removal" rows (see `latency_rows` and co.), "all_exact" (every faery result checked equals the oracle),
        and "threads".
    """
    qs = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
    qb = qs if batch is None else np.ascontiguousarray(batch, np.float32)
    ks = [int(k) for k in ks]
    sels = [float(v) for v in selectivities]
    if threads is None:
        threads = sorted({1, os.cpu_count() or 1})
    threads = sorted({int(t) for t in threads})
    top = threads[-1]
    with_faiss = with_faiss and _faiss_available()
    say = progress or (lambda _msg: None)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="faery-compare-") as tmp:
        if isinstance(x, (str, os.PathLike)):
            x_path = str(x)
        else:
            x_path = str(Path(tmp) / "x.npy")
            np.save(x_path, np.ascontiguousarray(x, np.float32))
        paths = [x_path, str(Path(tmp) / "q.npy"), str(Path(tmp) / "b.npy")]
        np.save(paths[1], qs)
        np.save(paths[2], qb)
        xm = np.load(x_path, mmap_mode="r")
        n = xm.shape[0]
        life = tmp if lifecycle else None
        jobs: list[tuple[str, str, int, Callable[..., dict[str, Any]], tuple]] = []
        for storage in storages:
            for t in threads:
                first = t == top and storage == storages[0]
                jobs.append(("faery", storage, t, run_faery, (*paths, ks, batch_k, storage, removal if first else 0,
                                                              sels, filter_k, life if first else None)))
        if with_faiss:
            for t in threads:
                jobs.append(("faiss", "IndexFlatIP", t, run_faiss, (*paths, ks, batch_k, removal if t == top else 0,
                                                                    sels, filter_k, life if t == top else None)))
        if with_numpy:
            jobs.append(("numpy", "matmul", top, run_numpy, (*paths, ks, batch_k, sels, filter_k)))
        for engine, config, t, fn, args in jobs:
            say(f"{engine} {config if engine == 'faery' else ''} at {t} thread{'s' * (t > 1)}".replace("  ", " "))
            env = {"OMP_WAIT_POLICY": omp_wait_policy or ("PASSIVE" if engine == "faery" else "ACTIVE")}
            res = run_isolated(fn, *args, threads=t, timeout=timeout, env=env)
            runs.append({"engine": engine, "storage": config if engine == "faery" else None, "threads_asked": t,
                         **res})
        # the oracle, after every child has finished (its BLAS threads never run beside a timed engine)
        say("float64 oracle")
        m = qs.shape[0] if check_queries is None else min(check_queries, qs.shape[0])
        mb = qb.shape[0] if check_queries is None else min(check_queries, qb.shape[0])
        kmax = max([*ks, batch_k])
        want = oracle(xm, qs[:m], min(kmax, n))
        want_b = oracle(xm, qb[:mb], batch_k)
        want_f = {sel: (oracle(xm, qs[:m], filter_k, allow_bitmap(n, sel)),
                        oracle(xm, qb[:mb], filter_k, allow_bitmap(n, sel))) for sel in sels}
        all_exact = True
        for r in runs:
            for k, st in r["single"].items():
                got = st.pop("ids")[:m]
                kk = min(k, n)
                st["exact"] = bool(np.array_equal(got[:, :kk], want[:, :kk]))
                st["recall"] = recall(got[:, :kk], want[:, :kk])
            got_b = r.pop("batch_ids")[:mb]
            r["batch_exact"] = bool(np.array_equal(got_b, want_b))
            r["batch_recall"] = recall(got_b, want_b)
            for sel, st in r.get("filtered", {}).items():
                got, got_fb = st.pop("ids")[:m], st.pop("batch_ids")[:mb]
                st["exact"] = bool(np.array_equal(got, want_f[sel][0]) and np.array_equal(got_fb, want_f[sel][1]))
                st["recall"] = min(recall(got, want_f[sel][0]), recall(got_fb, want_f[sel][1]))
            if r["engine"] == "faery":
                all_exact = all_exact and r["batch_exact"] and all(st["exact"] for st in r["single"].values()) \
                    and all(st["exact"] for st in r.get("filtered", {}).values())
        removal_rows: list[dict[str, Any]] = []
        if removal:
            gone = _removal_ids(n, removal)
            keep = np.ones(n, np.bool_)
            keep[gone] = False
            want_r = oracle(xm, qs[:m], batch_k, keep)
            for r in runs:
                for rem in r.pop("removal", []):
                    got = rem.pop("ids")[:m]
                    rem["exact"] = bool(np.array_equal(got, want_r))
                    rem["recall"] = recall(got, want_r)
                    if r["engine"] == "faery":
                        all_exact = all_exact and rem["exact"]
                    removal_rows.append({"engine": r["engine"], "threads": r["threads"], **rem})
        del xm
    result = {"n": n, "dim": qs.shape[1], "queries": qs.shape[0], "batch": qb.shape[0], "batch_k": batch_k,
              "ks": ks, "selectivities": sels, "filter_k": filter_k, "checked_queries": m, "threads": threads,
              "omp_wait_policy": omp_wait_policy or "faery PASSIVE, faiss and numpy ACTIVE", "runs": runs, "all_exact": all_exact,
              "removal_raw": removal_rows}
    result["latency"] = latency_rows(result)
    result["ratios"] = ratio_rows(result)
    result["engines"] = engine_rows(result)
    result["removal"] = removal_table(result)
    result["filtered"] = filter_rows(result)
    result["lifecycle"] = lifecycle_rows(result)
    return result


# ---------------------------------------------------------------------------------------------------- tables
def find_run(result: dict[str, Any], engine: str, threads: int | None = None,
             storage: str | None = None) -> dict[str, Any] | None:
    """The first run of `engine` (at `threads` threads, in `storage` for faery) in a compare() result, or None."""
    for r in result["runs"]:
        if r["engine"] == engine and (threads is None or r["threads_asked"] == threads) \
                and (storage is None or r["storage"] == storage):
            return r
    return None


def best(result: dict[str, Any], engine: str, k: int) -> tuple[float, dict[str, Any] | None]:
    """(best median ms over every run of `engine` at K, that run) — its best configuration."""
    cands = [(r["single"][k]["p50_ms"], r) for r in result["runs"] if r["engine"] == engine and k in r["single"]]
    return min(cands, key=lambda c: c[0]) if cands else (float("nan"), None)


def latency_rows(result: dict[str, Any], storage: str | None = None) -> list[dict[str, Any]]:
    """Per K: median single-query ms of each engine at each thread count (faery in its first storage tier); with
    `storage`, only faery in that tier."""
    primary = storage or (result["runs"][0]["storage"] if result["runs"] else None)
    engines = ("faery",) if storage else ("faery", "faiss", "numpy")
    rows = []
    for k in result["ks"]:
        row: dict[str, Any] = {"K": k}
        for engine in engines:
            for t in result["threads"]:
                r = find_run(result, engine, t, primary if engine == "faery" else None)
                if r is not None:
                    row[f"{storage or engine} {t}t ms"] = r["single"][k]["p50_ms"]
                    if storage:
                        row[f"{storage} {t}t p99 ms"] = r["single"][k]["p99_ms"]
        rows.append(row)
    return rows


def ratio_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per K: faiss time / faery time at equal thread counts, and best configuration against best; faiss's best
    configuration; the best peer's time (faiss's or numpy's, whichever is faster) / faery's best, and which peer
    that was (numpy's matvec beats faiss's flat index on some sizes: a ratio against faiss alone would flatter us);
    whether faery's results equal the oracle."""
    primary = result["runs"][0]["storage"] if result["runs"] else None
    rows = []
    for k in result["ks"]:
        row: dict[str, Any] = {"K": k}
        for t in result["threads"]:
            ours, theirs = find_run(result, "faery", t, primary), find_run(result, "faiss", t)
            if ours is not None and theirs is not None:
                row[f"x faiss {t}t"] = theirs["single"][k]["p50_ms"] / ours["single"][k]["p50_ms"]
        f_ms, f_run = best(result, "faiss", k)
        o_ms, o_run = best(result, "faery", k)
        if f_run is not None and o_run is not None:
            row["x best/best"] = f_ms / o_ms
            row["faiss best"] = f"{f_run['single'][k]['config']}, {f_run['threads']}t"
        n_ms, n_run = best(result, "numpy", k)
        peers = [(ms, f"{name} {run['threads']}t") for ms, run, name in ((f_ms, f_run, "faiss"), (n_ms, n_run, "numpy"))
                 if run is not None]
        if peers and o_run is not None:
            p_ms, p_name = min(peers, key=lambda p: p[0])
            row["x best peer"], row["best peer"] = p_ms / o_ms, p_name
        row["faery exact"] = all(r["single"][k]["exact"] for r in result["runs"] if r["engine"] == "faery")
        rows.append(row)
    return rows


def engine_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per process: what ran, its thread count, batch throughput, and its check against the oracle."""
    rows = []
    for r in result["runs"]:
        name = f"faery {r['storage']}" if r["engine"] == "faery" else r["engine"]
        if r["engine"] == "faery":
            check = "exact" if r["batch_exact"] and all(s["exact"] for s in r["single"].values()) else "NOT EXACT"
        else:
            check = f"recall {min([r['batch_recall'], *(s['recall'] for s in r['single'].values())]):.4f}"
        rows.append({"engine": name, "threads": r["threads"], "build s": r["build_s"],
                     f"batch {result['batch']} qps": r["batch_qps"], "check": check})
    return rows


def removal_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """faery remove (tombstones / + compact) beside faiss (IDSelector tombstones / remove_ids)."""
    return [{"engine": f"{r['engine']} {r['threads']}t", "removal": r["how"], "op ms": r["op_ms"],
             f"K={result['batch_k']} p50 ms": r["p50_ms"],
             "check": "exact" if r["exact"] else f"recall {r['recall']:.4f}"} for r in result["removal_raw"]]


def filter_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per selectivity: each engine's best single-query median ms and batch q/s at K = filter_k, faiss time /
    faery time best against best, and whether faery's results equal the oracle over the allowed rows."""
    rows = []
    for sel in result.get("selectivities", []):
        row: dict[str, Any] = {"allowed": f"{sel:.0%}"}
        best_ms: dict[str, float] = {}
        for engine in ("faery", "faiss", "numpy"):
            cands = [(r["filtered"][sel]["p50_ms"], r["filtered"][sel]["batch_qps"], r["threads"])
                     for r in result["runs"] if r["engine"] == engine and sel in r.get("filtered", {})]
            if cands:
                ms = min(c[0] for c in cands)
                best_ms[engine] = ms
                row[f"{engine} ms"] = ms
                row[f"{engine} batch qps"] = max(c[1] for c in cands)
        if "faery" in best_ms and "faiss" in best_ms:
            row["x faiss"] = best_ms["faiss"] / best_ms["faery"]
        row["faery exact"] = all(r["filtered"][sel]["exact"] for r in result["runs"]
                                 if r["engine"] == "faery" and sel in r.get("filtered", {}))
        rows.append(row)
    return rows


def lifecycle_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per process: build time and peak RSS; where measured, save, load and the first search after the load (median
    and worst over the loads) beside a warm one."""
    rows = []
    for r in result["runs"]:
        name = f"faery {r['storage']}" if r["engine"] == "faery" else r["engine"]
        row: dict[str, Any] = {"engine": f"{name} {r['threads']}t", "build s": r["build_s"],
                               "peak RSS GB": r.get("peak_rss_bytes", float("nan")) / 1e9}
        life = r.get("lifecycle")
        if life:
            row.update({"index GB": life["index_bytes"] / 1e9, "save s": life["save_s"], "load ms": life["load_ms"],
                        "1st search ms": life["first_search_ms"], "1st max ms": life["first_search_max_ms"],
                        "warm ms": life["warm_search_ms"]})
        rows.append(row)
    return rows
