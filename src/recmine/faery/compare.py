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
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recmine.faery.exact import brute_force_topk, recall
from recmine.isolate import run_isolated

PROBE = 8  # queries per faiss configuration when picking its fastest for a K


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


def run_faery(x_path: str, q_path: str, b_path: str, ks: Sequence[int], batch_k: int, storage: str,
              removal: int = 0) -> dict[str, Any]:
    """Child: build a faery Index over the memory-mapped corpus, time single queries per K and a batch; optionally
    remove `removal` rows (tombstones), time searches, compact(), time again."""
    import numba

    from recmine.faery import Index

    x = np.load(x_path, mmap_mode="r")
    qs, qb = np.load(q_path), np.load(b_path)
    t = time.perf_counter()
    idx = Index(x.shape[1], storage=storage)
    idx.add(x)
    out: dict[str, Any] = {"threads": numba.get_num_threads(), "pid": os.getpid(), "build_s": time.perf_counter() - t,
                           "single": {}}
    for k in ks:
        idx.search(qs[:1], k)
        times, ids = _timed_queries(lambda q, k=k: idx.search(q, k)[1], qs)
        out["single"][k] = {**_stats(times), "ids": ids, "config": storage}
    out["batch_qps"], out["batch_ids"] = _batch_qps(lambda q: idx.search(q, batch_k)[1], qb)
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
    return out


def run_faiss(x_path: str, q_path: str, b_path: str, ks: Sequence[int], batch_k: int,
              removal: int = 0) -> dict[str, Any]:
    """Child: faiss.IndexFlatIP at this process's thread count, each K through its fastest configuration; optionally
    the removal comparison (an IDSelector that hides the rows, then remove_ids)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    x = np.ascontiguousarray(np.load(x_path, mmap_mode="r"), np.float32)
    qs, qb = np.load(q_path), np.load(b_path)
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    out: dict[str, Any] = {"threads": threads, "pid": os.getpid(), "build_s": time.perf_counter() - t, "single": {}}
    default_thr = faiss.cvar.distance_compute_blas_threshold
    configs: dict[str, tuple[Any, int]] = {"IndexFlatIP": (flat, default_thr), "IndexFlatIP, BLAS": (flat, 0)}
    if threads > 1:  # a single query runs on one thread; shards run one per thread
        shards = faiss.IndexShards(x.shape[1], True, True)
        parts = []
        for part in np.array_split(x, threads):
            p = faiss.IndexFlatIP(x.shape[1])
            p.add(part)
            parts.append(p)
            shards.add_shard(p)
        configs[f"IndexShards x{threads}"] = (shards, default_thr)

    def search(name: str, q: np.ndarray, k: int) -> np.ndarray:
        index, thr = configs[name]
        faiss.cvar.distance_compute_blas_threshold = thr
        return index.search(q, k)[1]

    for k in ks:
        probe = {}
        for name in configs:
            search(name, qs[:2], k)
            times, _ = _timed_queries(lambda q, name=name, k=k: search(name, q, k), qs[:PROBE])
            probe[name] = float(np.median(times))
        best = min(probe, key=probe.__getitem__)
        times, ids = _timed_queries(lambda q, best=best, k=k: search(best, q, k), qs)
        out["single"][k] = {**_stats(times), "ids": ids, "config": best}
    rates = {name: _batch_qps(lambda q, name=name: search(name, q, batch_k), qb) for name in configs}
    best = max(rates, key=lambda n: rates[n][0])
    out["batch_qps"], out["batch_ids"] = rates[best]
    out["batch_config"] = best
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
    return out


def run_numpy(x_path: str, q_path: str, b_path: str, ks: Sequence[int], batch_k: int) -> dict[str, Any]:
    """Child: numpy float32 matrix-vector product + argpartition + sort of the top k (BLAS at this process's
    thread count)."""
    x = np.ascontiguousarray(np.load(x_path, mmap_mode="r"), np.float32)
    qs, qb = np.load(q_path), np.load(b_path)

    def topk(q: np.ndarray, k: int) -> np.ndarray:
        s = q @ x.T
        k = min(k, s.shape[1])
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1)

    threads = int(os.environ.get("OPENBLAS_NUM_THREADS", os.cpu_count() or 1))
    out: dict[str, Any] = {"threads": threads, "pid": os.getpid(), "build_s": 0.0, "single": {}}
    for k in ks:
        topk(qs[:1], k)
        times, ids = _timed_queries(lambda q, k=k: topk(q, k), qs)
        out["single"][k] = {**_stats(times), "ids": ids, "config": "matmul + argpartition"}
    out["batch_qps"], out["batch_ids"] = _batch_qps(lambda q: topk(q, batch_k), qb)
    return out


# ---------------------------------------------------------------------------------------------------- parent
def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def compare(x: np.ndarray, queries: np.ndarray, ks: Sequence[int], *, batch: np.ndarray | None = None,
            batch_k: int = 100, threads: Sequence[int] | None = None, storages: Sequence[str] = ("int8",),
            with_faiss: bool = True, with_numpy: bool = True, removal: int = 0, timeout: float = 3600.0,
            omp_wait_policy: str | None = "PASSIVE", progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time faery, faiss and numpy each alone in its own process on the same data and check every result against
    the float64 oracle (inner product; row ids are 0..n-1).

    Parameters
    ----------
    x, queries
        (n, dim) corpus and (nq, dim) single queries, float32.
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
    timeout
        Seconds each child may take.
    omp_wait_policy
        OMP_WAIT_POLICY of every child (None: the OpenMP default). PASSIVE by default: idle OpenMP workers then
        sleep instead of spinning, and on a shared 2-vCPU machine a spinning worker that the scheduler takes off
        the CPU was measured to hold every 2-thread query at a barrier for ~10 ms (faery and faiss alike).
    progress
        Called with a short description before each child starts.

    Returns
    -------
    dict
        "runs" (one per process: engine, storage/config, threads, build_s, batch_qps, per-K p50/p99, check),
        "latency", "ratios", "engines" and "removal" rows (see `latency_rows` and co.), "all_exact" (every faery
        result equals the oracle), and "faiss_threads" / "threads".
    """
    x = np.ascontiguousarray(x, np.float32)
    qs = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
    qb = qs if batch is None else np.ascontiguousarray(batch, np.float32)
    ks = [int(k) for k in ks]
    n = x.shape[0]
    if threads is None:
        threads = sorted({1, os.cpu_count() or 1})
    threads = sorted({int(t) for t in threads})
    top = threads[-1]
    with_faiss = with_faiss and _faiss_available()
    say = progress or (lambda _msg: None)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="faery-compare-") as tmp:
        paths = [str(Path(tmp) / name) for name in ("x.npy", "q.npy", "b.npy")]
        for p, arr in zip(paths, (x, qs, qb), strict=True):
            np.save(p, arr)
        jobs: list[tuple[str, str, int, Callable[..., dict[str, Any]], tuple]] = []
        for storage in storages:
            for t in threads:
                rm = removal if (t == top and storage == storages[0]) else 0
                jobs.append(("faery", storage, t, run_faery, (*paths, ks, batch_k, storage, rm)))
        if with_faiss:
            for t in threads:
                jobs.append(("faiss", "IndexFlatIP", t, run_faiss, (*paths, ks, batch_k, removal if t == top else 0)))
        if with_numpy:
            jobs.append(("numpy", "matmul", top, run_numpy, (*paths, ks, batch_k)))
        for engine, config, t, fn, args in jobs:
            say(f"{engine} {config if engine == 'faery' else ''} at {t} thread{'s' * (t > 1)}".replace("  ", " "))
            env = {"OMP_WAIT_POLICY": omp_wait_policy} if omp_wait_policy else None
            res = run_isolated(fn, *args, threads=t, timeout=timeout, env=env)
            runs.append({"engine": engine, "storage": config if engine == "faery" else None, "threads_asked": t,
                         **res})
    # the oracle, after every child has finished (its BLAS threads never run beside a timed engine)
    say("float64 oracle")
    kmax = max([*ks, batch_k])
    _, want = brute_force_topk(x, None, qs, min(kmax, n))
    _, want_b = brute_force_topk(x, None, qb, batch_k)
    all_exact = True
    for r in runs:
        for k, s in r["single"].items():
            got = s.pop("ids")
            kk = min(k, n)
            s["exact"] = bool(np.array_equal(got[:, :kk], want[:, :kk]))
            s["recall"] = recall(got[:, :kk], want[:, :kk])
        got_b = r.pop("batch_ids")
        r["batch_exact"] = bool(np.array_equal(got_b, want_b))
        r["batch_recall"] = recall(got_b, want_b)
        if r["engine"] == "faery":
            all_exact = all_exact and r["batch_exact"] and all(s["exact"] for s in r["single"].values())
    removal_rows: list[dict[str, Any]] = []
    if removal:
        gone = _removal_ids(n, removal)
        keep = np.delete(np.arange(n), gone)
        _, want_r = brute_force_topk(x[keep], keep, qs, batch_k)
        for r in runs:
            for rem in r.pop("removal", []):
                got = rem.pop("ids")
                rem["exact"] = bool(np.array_equal(got, want_r))
                rem["recall"] = recall(got, want_r)
                if r["engine"] == "faery":
                    all_exact = all_exact and rem["exact"]
                removal_rows.append({"engine": r["engine"], "threads": r["threads"], **rem})
    result = {"n": n, "dim": x.shape[1], "queries": qs.shape[0], "batch": qb.shape[0], "batch_k": batch_k,
              "ks": ks, "threads": threads, "omp_wait_policy": omp_wait_policy or "default", "runs": runs,
              "all_exact": all_exact, "removal_raw": removal_rows}
    result["latency"] = latency_rows(result)
    result["ratios"] = ratio_rows(result)
    result["engines"] = engine_rows(result)
    result["removal"] = removal_table(result)
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
    configuration; whether faery's results equal the oracle."""
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
                     f"batch {result['batch']} q/s": r["batch_qps"], "check": check})
    return rows


def removal_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """faery remove (tombstones / + compact) beside faiss (IDSelector tombstones / remove_ids)."""
    return [{"engine": f"{r['engine']} {r['threads']}t", "removal": r["how"], "op ms": r["op_ms"],
             f"K={result['batch_k']} p50 ms": r["p50_ms"],
             "check": "exact" if r["exact"] else f"recall {r['recall']:.4f}"} for r in result["removal_raw"]]
