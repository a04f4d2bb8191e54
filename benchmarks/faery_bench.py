"""faery benchmark: our exact index (int8 and fp32 scan tiers) vs faiss.IndexFlatIP vs numpy matmul + argpartition,
same data, same run, every engine alone in a process of its own (recmine.faery.compare).

Usage: python benchmarks/faery_bench.py [--quick] [--case N,d] [--threads 1,2] [--sections index,service,cluster]
       [--data-dir DIR] [--json]
Section index: per (N, d) (default 1M x 128 and 10M x 128; the corpus is generated chunk by chunk into a .npy in
--data-dir that every engine memory-maps, so 10M x 128 (5 GB) is never held twice): build time and peak RSS of each
engine; save, load and the first search after the load beside a warm one (medians and the worst of 5 loads); median
and p99 single-query latency per K (10, 100, 1,000, 4,096, 16,384) of faery at 1 and N threads, faiss at 1 and N
threads (each K through its fastest configuration: IndexFlatIP's scan, its BLAS path or IndexShards), numpy;
batch-64 throughput at K = 100 (faiss through its fastest path); filtered search at 1%, 10% and 50% selectivity
(faery allow= with an id bitmap, faiss SearchParameters(sel=IDSelectorBitmap), a numpy mask), K = 100, single
queries and the batch; every result checked against the float64 oracle (on a sample of queries for a large corpus);
the ratios at equal threads and best configuration against best (against faiss, and against the faster peer of
faiss and numpy); and removal of 1,000 ids: faery remove (tombstones) and remove + compact() beside faiss
IDSelectorNot (tombstones) and remove_ids, searches after removal checked against the oracle over the remaining rows.
Section service: the gRPC retrieval server (its own process) on loopback at 1, 4 and 16 concurrent clients with 1% of
requests being upserts (K = 100): throughput and p50/p99, how many searches were coalesced into batches,
and the service's added latency over in-process Index.search in a process of its own, beside an empty RPC's round
trip (the gRPC floor). Section cluster: ShardedIndex over 2 local workers vs one Index (this machine's 2 vCPUs share
about one physical core, so expect little).
Latencies are medians over repeated queries; quote the ratios. A corpus over ~4 GB: run under the machine's
big-memory lock, one such job at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from recmine.faery import Index
from recmine.faery.compare import compare, latency_rows
from recmine.isolate import run_isolated
from recmine.output import rows_table

console = Console(width=100)
log = Console(stderr=True)
KS = [10, 100, 1000, 4096, 16384]
SELECTIVITIES = (0.01, 0.1, 0.5)
FP32_TIER_MAX_BYTES = 1 << 30  # the fp32 tier is timed too while the corpus is at most this big


def _lat(fn, queries: np.ndarray) -> tuple[float, float]:
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q[None])
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 50)) * 1e3, float(np.percentile(times, 99)) * 1e3


def corpus_file(n: int, d: int, data_dir: str) -> str:
    """A Gaussian (n, d) float32 corpus in data_dir as .npy, generated chunk by chunk (seeded per chunk) unless
    it is already there: a 10^7-row corpus never exists in RAM."""
    path = Path(data_dir) / f"faery-bench-{n}x{d}.npy"
    if path.exists():
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
    chunk = 1 << 18
    for c, lo in enumerate(range(0, n, chunk)):
        mm[lo: lo + chunk] = np.random.default_rng([0, c]).standard_normal((min(chunk, n - lo), d), np.float32)
    mm.flush()
    del mm
    os.replace(tmp, path)
    return str(path)


def run_case(n: int, d: int, ks: list[int], nq: int, threads: list[int] | None, data_dir: str,
             omp_wait_policy: str | None = None) -> dict:
    """One (N, d) configuration, every engine in its own process; see the module docstring."""
    t0 = time.perf_counter()
    log.print(f"  N={n:,} d={d}: writing the corpus to {data_dir} (once)")
    x_path = corpus_file(n, d, data_dir)
    rng = np.random.default_rng(1)
    qs = rng.standard_normal((nq, d), dtype=np.float32)
    qb = rng.standard_normal((64, d), dtype=np.float32)
    storages = ("int8", "fp32") if n * d * 4 <= FP32_TIER_MAX_BYTES else ("int8",)
    res = compare(x_path, qs, ks, batch=qb, threads=threads, storages=storages, removal=1000,
                  selectivities=SELECTIVITIES, filter_k=100, lifecycle=True,
                  check_queries=None if n <= 2_000_000 else 8, omp_wait_policy=omp_wait_policy,
                  progress=lambda msg: log.print(f"  N={n:,} d={d}: {msg} ({time.perf_counter() - t0:.0f} s)"))
    if not res["all_exact"]:
        log.print(f"[red]N={n:,} d={d}: a faery result differs from the float64 oracle[/red]")
    return res


def _free_port() -> int:
    import socket

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def _inprocess_latency(index_dir: str, q_path: str, k: int) -> tuple[float, float]:
    """p50/p99 ms of Index.search on the saved index, in a process of its own (no other thread pool beside it)."""
    idx = Index.load(index_dir)
    qs = np.load(q_path)
    idx.search(qs[:1], k)
    return _lat(lambda q: idx.search(q, k), qs)


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
        np.save(os.path.join(tmp, "q.npy"), qs[:100])
        inproc_p50, _ = run_isolated(_inprocess_latency, os.path.join(tmp, "idx"), os.path.join(tmp, "q.npy"), 100)
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
            st0 = probe.stats()
            seen = [st0.get("coalesced_searches", 0), st0.get("search_batches", 0)]
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
                st = probe.stats()
                coalesced = st.get("coalesced_searches", 0) - seen[0]
                batches = st.get("search_batches", 0) - seen[1]
                seen[:] = [st.get("coalesced_searches", 0), st.get("search_batches", 0)]
                rows.append({"N": n, "d": d, "K": 100, "clients": clients, "requests_per_s": (len(lat) + ups[0]) / wall,
                             "upserts": ups[0], "queries_per_batch": coalesced / max(1, batches),
                             "service_p50_ms": p50,
                             "service_p99_ms": float(np.percentile(lat, 99)) * 1e3,
                             "inprocess_p50_ms": inproc_p50, "added_p50_ms": p50 - inproc_p50,
                             "empty_rpc_p50_ms": rtt_p50})
                log.print(f"  service, {clients} clients: {rows[-1]['requests_per_s']:.0f} req/s, p50 {p50:.2f} ms")
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
    ap.add_argument("--threads", default=None, help="comma list of thread counts (default: 1 and every CPU)")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sections", default="index,service,cluster")
    ap.add_argument("--service-seconds", type=float, default=5.0)
    ap.add_argument("--case", default=None, help="one N,d instead of the default cases (e.g. 1000000,128)")
    ap.add_argument("--data-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "faery-bench"),
                    help="where generated corpora are kept between runs")
    ap.add_argument("--omp-wait-policy", default="best", choices=["best", "PASSIVE", "ACTIVE"],
                    help="OMP_WAIT_POLICY of every engine's process (best: faery PASSIVE, faiss and numpy ACTIVE)")
    args = ap.parse_args(argv)
    omp = None if args.omp_wait_policy == "best" else args.omp_wait_policy
    sections = set(args.sections.split(","))
    cases = [(200_000, 128), (50_000, 768)] if args.quick else [(1_000_000, 128), (10_000_000, 128)]
    if args.case:
        n, d = (int(v) for v in args.case.split(","))
        cases = [(n, d)]
    threads = [int(v) for v in args.threads.split(",")] if args.threads else None
    idx_res, svc, clu = [], [], []
    if "index" in sections:
        idx_res = [run_case(n, d, KS, args.queries, threads, args.data_dir, omp) for n, d in cases]
    if "service" in sections:
        svc = run_service(50_000 if args.quick else 200_000, 64, args.service_seconds)
    if "cluster" in sections:
        clu = run_cluster(200_000 if args.quick else 1_000_000, 128, args.queries)
    meta = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "isolation": "each engine alone in a spawned process (recmine.isolate.run_isolated)"}
    if args.json:
        print(json.dumps({**meta, "index": idx_res, "service": svc, "cluster": clu}, default=float))
        return
    for res in idx_res:
        case = f"N={res['n']:,} d={res['dim']}"
        console.print(rows_table(res["lifecycle"], title=f"faery {case}: build, peak RSS, save, load, first search"))
        console.print(rows_table(res["latency"], title=f"faery {case}: single-query latency, median ms (faery int8)"))
        for storage in sorted({r["storage"] for r in res["runs"] if r["storage"]} - {"int8"}):
            console.print(rows_table(latency_rows(res, storage), title=f"faery {case}: the {storage} tier, ms"))
        console.print(rows_table(res["ratios"], title=f"faery {case}: peer time / faery time"))
        console.print(rows_table(res["engines"], title=f"faery {case}: engines (own process each), batch K=100"))
        console.print(rows_table(res["filtered"], title=f"faery {case}: filtered search, K=100 (best threads)"))
        console.print(rows_table(res["removal"], title=f"faery {case}: removing 1,000 ids"))
    if svc:
        console.print(rows_table(svc, title="faery service on loopback (1% upserts) vs in-process Index.search"))
    if clu:
        console.print(rows_table(clu, title="faery: 2 local shards vs 1 index (2 vCPUs ~ 1 core)"))


if __name__ == "__main__":
    main()
