"""faery benchmark: our exact index (int8 and fp32 scan tiers) vs faiss.IndexFlatIP (default, and with
distance_compute_blas_threshold = 0) vs numpy matvec + argpartition — same data, same run, equal threads.

Usage: python benchmarks/faery_bench.py [--quick] [--threads 2] [--sections index,service,cluster] [--json]
Section index: p50/p99 single-query latency per K, batch-64 throughput, recall against the exact answer, bytes read
per query, and the time to remove 1,000 ids. Section service: the gRPC retrieval server (its own process) on
loopback at 1, 4 and 16 concurrent clients with 1% of requests being upserts (K = 100): throughput and p50/p99, and
the service's added latency over in-process Index.search (target <= 1 ms at p50), beside an empty RPC's round trip
(the gRPC floor). Section cluster: ShardedIndex over 2 local workers vs one Index (this machine's 2 vCPUs share
about one physical core, so expect little).
Latencies are medians over repeated queries; quote the ratios.
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


def _free_port() -> int:
    import socket

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def run_service(n: int, d: int, seconds: float) -> list[dict]:
    """The retrieval server in a child process; client threads here: 99% single-query searches (K=100), 1% upserts."""
    import os
    import subprocess
    import sys
    import tempfile
    import threading

    from recmine.faery import connect

    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, d), dtype=np.float32)
    qs = rng.standard_normal((256, d), dtype=np.float32)
    rows = []
    with tempfile.TemporaryDirectory(prefix="faery-bench-") as tmp:
        idx = Index(d, storage="int8")
        idx.add(x)
        idx.save(os.path.join(tmp, "idx"))
        local = Index.load(os.path.join(tmp, "idx"))
        local.search(qs[:1], 100)
        inproc_p50, inproc_p99 = _lat(lambda q: local.search(q, 100), qs[:100])
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "recmine.cli", "retrieve", "serve", "--index",
                                 os.path.join(tmp, "idx"), "--port", str(port), "--for-seconds", "600"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            probe = connect(f"127.0.0.1:{port}")
            probe.wait_ready(60)
            probe.search(qs[:1], 100)
            rtt = []
            for _ in range(300):  # the floor: an empty RPC's round trip over this loopback and gRPC stack
                t = time.perf_counter()
                probe.health()
                rtt.append(time.perf_counter() - t)
            rtt_p50 = float(np.median(rtt)) * 1e3
            next_id = [10 * n]
            lock = threading.Lock()
            for clients in (1, 4, 16):
                lat: list[float] = []
                ups = [0]
                stop = time.perf_counter() + seconds

                def work(seed: int, stop: float = stop, lat: list[float] = lat, ups: list[int] = ups) -> None:
                    r = np.random.default_rng(seed)
                    with connect(f"127.0.0.1:{port}") as cl:
                        while time.perf_counter() < stop:
                            if r.uniform() < 0.01:
                                with lock:
                                    i = next_id[0]
                                    next_id[0] += 1
                                cl.upsert([i], r.standard_normal((1, d)).astype(np.float32))
                                ups[0] += 1
                                continue
                            q = qs[r.integers(0, qs.shape[0])][None]
                            t = time.perf_counter()
                            cl.search(q, 100)
                            lat.append(time.perf_counter() - t)

                th = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
                t0 = time.perf_counter()
                for t in th:
                    t.start()
                for t in th:
                    t.join()
                wall = time.perf_counter() - t0
                p50 = float(np.percentile(lat, 50)) * 1e3
                rows.append({"N": n, "d": d, "K": 100, "clients": clients, "requests_per_s": (len(lat) + ups[0]) / wall,
                             "upserts": ups[0], "service_p50_ms": p50,
                             "service_p99_ms": float(np.percentile(lat, 99)) * 1e3,
                             "inprocess_p50_ms": inproc_p50, "added_p50_ms": p50 - inproc_p50,
                             "empty_rpc_p50_ms": rtt_p50})
                console.print(f"  service, {clients} clients: {rows[-1]['requests_per_s']:.0f} req/s, p50 {p50:.2f} ms")
            probe.close()
        finally:
            proc.terminate()
            proc.wait(30)
    return rows


def run_cluster(n: int, d: int, nq: int) -> list[dict]:
    """ShardedIndex over 2 local workers vs one Index: single-query p50 and batch-64 throughput."""
    from recmine.faery import ShardedIndex

    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, d), dtype=np.float32)
    qs = rng.standard_normal((nq, d), dtype=np.float32)
    q64 = rng.standard_normal((64, d), dtype=np.float32)
    one = Index(d, storage="int8")
    one.add(x)
    rows = []
    with ShardedIndex(d, 2, storage="int8") as two:
        two.add(x)
        for name, idx in (("1 index", one), ("2 shards", two)):
            idx.search(qs[:1], 100)
            idx.search(q64, 100)
            p50, p99 = _lat(lambda q, idx=idx: idx.search(q, 100), qs)
            tps = []
            for _ in range(3):
                t = time.perf_counter()
                idx.search(q64, 100)
                tps.append(64 / (time.perf_counter() - t))
            rows.append({"N": n, "d": d, "K": 100, "layout": name, "p50_ms": p50, "p99_ms": p99,
                         "batch64_qps": float(np.median(tps))})
        rows.append({"N": n, "d": d, "K": 100, "layout": "2 shards / 1 index", "p50_ms": rows[1]["p50_ms"] / rows[0]["p50_ms"],
                     "p99_ms": rows[1]["p99_ms"] / rows[0]["p99_ms"],
                     "batch64_qps": rows[1]["batch64_qps"] / rows[0]["batch64_qps"]})
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run the cases and print the tables (or one JSON object with --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=200k d=128 and N=50k d=768, fewer queries")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sections", default="index,service,cluster")
    ap.add_argument("--service-seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    cases = [(200_000, 128), (50_000, 768)] if args.quick else [(1_000_000, 128), (200_000, 768)]
    ks = [10, 100, 1000, 4096, 16384]
    lat, tp, svc, clu = [], [], [], []
    if "index" in sections:
        for n, d in cases:
            a, b = run_case(n, d, ks, args.queries, args.threads)
            lat += a
            tp += b
    if "service" in sections:
        svc = run_service(50_000 if args.quick else 200_000, 64, args.service_seconds)
    if "cluster" in sections:
        clu = run_cluster(200_000 if args.quick else 1_000_000, 128, args.queries)
    if args.json:
        print(json.dumps({"date": time.strftime("%Y-%m-%d"), "latency": lat, "throughput": tp, "service": svc,
                          "cluster": clu}))
        return
    if lat:
        console.print(rows_table(lat, title="faery: single-query latency (ms) vs Faiss flat and numpy"))
        console.print(rows_table(tp, title="faery: batch-64 throughput (queries/s) and remove"))
    if svc:
        console.print(rows_table(svc, title="faery service on loopback (1% upserts) vs in-process Index.search"))
    if clu:
        console.print(rows_table(clu, title="faery: 2 local shards vs 1 index (2 vCPUs ~ 1 core)"))


if __name__ == "__main__":
    main()
