"""faery benchmark: our exact index (int8 and fp32 scan tiers) vs faiss.IndexFlatIP (default, and with
distance_compute_blas_threshold = 0) vs numpy matvec + argpartition — same data, same run, equal threads.

Usage: python benchmarks/faery_bench.py [--quick] [--threads 2] [--json]
Reports p50/p99 single-query latency per K, batch-64 throughput, recall against the exact answer, bytes read per
query, and the time to remove 1,000 ids. Latencies are medians over repeated queries; quote the ratios.
"""

from __future__ import annotations

import argparse
import json
import time

import numba
import numpy as np
from rich.console import Console

from recmine.faery import Index
from recmine.output import rows_table

console = Console(width=220)


def _lat(fn, queries: np.ndarray) -> tuple[float, float]:
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q[None])
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 50)) * 1e3, float(np.percentile(times, 99)) * 1e3


def _exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = x @ q
    return np.argpartition(-s, k - 1)[:k]


def run_case(n: int, d: int, ks: list[int], nq: int, threads: int) -> tuple[list[dict], list[dict]]:
    """One (N, d) configuration: a latency table and a throughput/maintenance table."""
    import faiss

    faiss.omp_set_num_threads(threads)
    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    qs = rng.standard_normal((nq, d), dtype=np.float32)
    q64 = rng.standard_normal((64, d), dtype=np.float32)
    ours = {}
    for storage in ("int8", "fp32"):
        idx = Index(d, storage=storage)
        idx.add(x)
        idx.search(qs[:1], 10)
        ours[storage] = idx
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    lat_rows = []
    for k in ks:
        row: dict = {"N": n, "d": d, "K": k}
        truth = [_exact_topk(x, q, k) for q in qs[:5]]
        for storage, idx in ours.items():
            idx.search(qs[:1], k)
            p50, p99 = _lat(lambda q, idx=idx, k=k: idx.search(q, k), qs)
            got = [idx.search(q[None], k)[1][0] for q in qs[:5]]
            row[f"ours_{storage}_p50_ms"] = p50
            row[f"ours_{storage}_p99_ms"] = p99
            row[f"recall_{storage}"] = float(np.mean([np.isin(g, t).mean() for g, t in zip(got, truth, strict=True)]))
            if storage == "int8":
                st = idx.stats()
                row["ours_bytes_per_query_MB"] = (st["bytes_per_row"] * n + st["filter_pass_rate"] * n * 4 * d) / 1e6
        faiss.cvar.distance_compute_blas_threshold = 20
        row["faiss_p50_ms"], row["faiss_p99_ms"] = _lat(lambda q, k=k: flat.search(q, k), qs)
        row["numpy_p50_ms"], _ = _lat(lambda q, k=k: np.argpartition(-(x @ q[0]), k - 1)[:k], qs)
        row["fp32_bytes_per_query_MB"] = 4 * d * n / 1e6
        row["faiss/ours_int8"] = row["faiss_p50_ms"] / row["ours_int8_p50_ms"]
        row["faiss/ours_fp32"] = row["faiss_p50_ms"] / row["ours_fp32_p50_ms"]
        lat_rows.append(row)
        console.print(f"  N={n:,} d={d} K={k}: ours int8 {row['ours_int8_p50_ms']:.2f} ms, "
                      f"faiss {row['faiss_p50_ms']:.2f} ms")
    tp: dict = {"N": n, "d": d, "batch": 64, "K": 100}
    for storage, idx in ours.items():
        idx.search(q64, 100)
        t = time.perf_counter()
        idx.search(q64, 100)
        tp[f"ours_{storage}_qps"] = 64 / (time.perf_counter() - t)
    for thr, name in ((20, "faiss_default_qps"), (0, "faiss_blas0_qps")):
        faiss.cvar.distance_compute_blas_threshold = thr
        flat.search(q64, 100)
        t = time.perf_counter()
        flat.search(q64, 100)
        tp[name] = 64 / (time.perf_counter() - t)
    faiss.cvar.distance_compute_blas_threshold = 20
    tp["ours_int8/faiss_blas0"] = tp["ours_int8_qps"] / tp["faiss_blas0_qps"]
    ids = ours["int8"].ids()[: 1000].copy()
    t = time.perf_counter()
    ours["int8"].remove(ids)
    tp["ours_remove_1000_ms"] = (time.perf_counter() - t) * 1e3
    sel = faiss.IDSelectorBatch(np.arange(1000, 2000, dtype=np.int64))
    t = time.perf_counter()
    flat.remove_ids(sel)
    tp["faiss_remove_1000_ms"] = (time.perf_counter() - t) * 1e3
    return lat_rows, [tp]


def main(argv: list[str] | None = None) -> None:
    """Run the cases and print the tables (or one JSON object with --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=200k d=128 and N=50k d=768, fewer queries")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cases = [(200_000, 128), (50_000, 768)] if args.quick else [(1_000_000, 128), (200_000, 768)]
    ks = [10, 100, 1000, 4096, 16384]
    lat, tp = [], []
    for n, d in cases:
        a, b = run_case(n, d, ks, args.queries, args.threads)
        lat += a
        tp += b
    if args.json:
        print(json.dumps({"date": time.strftime("%Y-%m-%d"), "latency": lat, "throughput": tp}))
        return
    console.print(rows_table(lat, title="faery: single-query latency (ms) vs Faiss flat and numpy"))
    console.print(rows_table(tp, title="faery: batch-64 throughput (queries/s) and remove"))


if __name__ == "__main__":
    main()
