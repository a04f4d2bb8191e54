"""`recmine retrieve`: exact embedding retrieval commands (faery)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from recmine.output import emit, err_console

app = typer.Typer(
    help=(
        "Exact embedding retrieval (faery): build an index from .npy vectors, search it, benchmark it.\n\n"
        "Results are exact (identical to brute force, ties by smaller id) while the scan reads a packed int8 tier."
    ),
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]


def _fail(msg: str) -> None:
    err_console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(2)


def _load_npy(path: Path, what: str) -> np.ndarray:
    if not path.exists():
        _fail(f"{what} file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        _fail(f"{path}: not a readable .npy file ({exc})")
        raise  # unreachable


@app.command("build")
def build(
    vectors: Annotated[Path, typer.Option("--vectors", help="(n, dim) float .npy file.")],
    out: Annotated[Path, typer.Option("--out", help="Index directory to write.")],
    ids: Annotated[Path | None, typer.Option("--ids", help="(n,) int64 .npy ids (default 0..n-1).")] = None,
    metric: Annotated[str, typer.Option("--metric", help="ip, cosine or l2.")] = "ip",
    storage: Annotated[str, typer.Option("--storage", help="int8, fp16 or fp32 scan tier.")] = "int8",
    as_json: JsonOpt = False,
) -> None:
    """Build an index from vectors and save it.

    Example:\n
      recmine retrieve build --vectors items.npy --ids item_ids.npy --out idx/ --json
    """
    from recmine.faery import Index

    x = _load_npy(vectors, "vectors")
    id_arr = _load_npy(ids, "ids") if ids is not None else None
    t = time.perf_counter()
    try:
        if x.ndim != 2:
            _fail(f"{vectors}: expected a 2-D array, got shape {x.shape}")
        idx = Index(int(x.shape[1]), metric=metric, storage=storage)
        idx.add(x, ids=id_arr)
        idx.save(out)
    except (ValueError, KeyError) as exc:
        _fail(str(exc))
    st = idx.stats()
    emit({"index": str(out), "rows": len(idx), "dim": idx.dim, "metric": metric, "storage": storage,
          "bytes_per_row": st["bytes_per_row"], "seconds": time.perf_counter() - t}, as_json=as_json,
         title="faery build")


@app.command("search")
def search(
    index: Annotated[Path, typer.Option("--index", help="Index directory.")],
    queries: Annotated[Path, typer.Option("--queries", help="(nq, dim) float .npy file.")],
    k: Annotated[int, typer.Option("-k", help="Results per query.")] = 10,
    out: Annotated[Path | None, typer.Option("--out", help="Write scores and ids to this .npz.")] = None,
    show: Annotated[int, typer.Option("--show", help="Queries to print (all go to --out).")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Top-k search for every query.

    Example:\n
      recmine retrieve search --index idx/ --queries q.npy -k 100 --out hits.npz
    """
    from recmine.faery import Index

    q = _load_npy(queries, "queries")
    try:
        idx = Index.load(index)
        t = time.perf_counter()
        scores, ids = idx.search(q, k)
        seconds = time.perf_counter() - t
    except (ValueError, KeyError) as exc:
        _fail(str(exc))
    if out is not None:
        np.savez(out, scores=scores, ids=ids)
    nq = scores.shape[0]
    result = {"queries": nq, "k": k, "seconds": seconds, "ms_per_query": seconds * 1e3 / max(nq, 1),
              "filter_pass_rate": idx.stats()["filter_pass_rate"]}
    if as_json:
        emit({**result, "ids": ids[:show].tolist(), "scores": scores[:show].tolist()}, as_json=True, title="")
        return
    rows = [{"query": i, "top ids": " ".join(str(v) for v in ids[i, :10]),
             "best score": float(scores[i, 0])} for i in range(min(show, nq))]
    emit({**result, "results": rows}, as_json=False, title="faery search")


@app.command("bench")
def bench(
    n: Annotated[int, typer.Option("--n", help="Corpus rows (Gaussian).")] = 200_000,
    dim: Annotated[int, typer.Option("--dim", help="Vector width.")] = 128,
    k: Annotated[str, typer.Option("-k", help="Comma list of K values.")] = "10,100,1000",
    queries: Annotated[int, typer.Option("--queries", help="Single queries timed per K.")] = 20,
    threads: Annotated[str | None, typer.Option("--threads", help="Comma list of thread counts (default: 1 and "
                                                                   "every CPU).")] = None,
    storage: Annotated[str, typer.Option("--storage", help="Our scan tier: int8, fp16 or fp32.")] = "int8",
    as_json: JsonOpt = False,
) -> None:
    """Ours vs faiss.IndexFlatIP (if installed) vs numpy brute force, each engine alone in its own process at each
    thread count: median single-query latency per K, batch throughput, every result checked against the float64
    oracle, and the ratios at equal threads and best configuration against best.

    Example:\n
      recmine retrieve bench --n 100000 --dim 64 -k 10,100 --json
    """
    from recmine.faery.compare import compare
    from recmine.faery.corpus import STORAGES

    try:
        ks = [int(v) for v in k.split(",")]
        thr = [int(v) for v in threads.split(",")] if threads else None
    except ValueError:
        _fail(f"-k and --threads take comma lists of integers, got {k!r} and {threads!r}")
    if n < 1 or dim < 1 or queries < 1 or min(ks) < 1 or (thr and min(thr) < 1):
        _fail("--n, --dim, --queries, -k and --threads must be positive")
    if storage not in STORAGES:
        _fail(f"--storage must be one of {STORAGES}, got {storage!r}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    qs = rng.standard_normal((queries, dim), dtype=np.float32)
    qb = rng.standard_normal((64, dim), dtype=np.float32)
    with err_console.status("benchmarking", spinner="dots") as status:
        res = compare(x, qs, ks, batch=qb, threads=thr, storages=(storage,),
                      progress=None if as_json else lambda msg: status.update(f"timing {msg}"))
    emit({"n": n, "dim": dim, "storage": storage, "queries": queries, "all_exact": res["all_exact"],
          "isolation": "each engine alone in a spawned process", "omp_wait_policy": res["omp_wait_policy"],
          "latency_ms": res["latency"],
          "ratios": res["ratios"], "engines": res["engines"]}, as_json=as_json, title="faery bench")


@app.command("serve")
def serve_cmd(
    index: Annotated[Path, typer.Option("--index", help="Index directory (created if it holds no index).")],
    port: Annotated[int, typer.Option("--port", help="TCP port; 0 picks a free one (printed).")] = 50061,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    dim: Annotated[int | None, typer.Option("--dim", help="Vector width of a new index.")] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="ip, cosine or l2 (new index; default ip).")] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="int8, fp16 or fp32 (new index; default int8).")] = None,
    for_seconds: Annotated[float | None, typer.Option("--for-seconds", help="Stop after this many seconds.")] = None,
    max_message_mb: Annotated[float, typer.Option("--max-message-mb", help="Largest request/reply.")] = 64,
    tls_ca: Annotated[Path | None, typer.Option("--tls-ca", help="CA (PEM) that signs server and client "
                                                "certificates: mutual TLS.")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="The server's certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="The server's private key (PEM).")] = None,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="File with the bearer token every call "
                                                    "must carry.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Serve plaintext on a non-loopback address.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Serve an index over gRPC: batched exact search plus live upserts/deletes, crash-safe (write-ahead log,
    checkpoints in the index directory). Runs until Ctrl-C / SIGTERM or --for-seconds, then checkpoints.
    With --tls-ca/--tls-cert/--tls-key only clients with a certificate from that CA connect; with --token-file
    every call must carry the token; a non-loopback --host needs TLS or --insecure.

    Example:\n
      recmine retrieve serve --index idx/ --port 50061\n
      recmine retrieve serve --index new_idx/ --dim 64 --storage fp32 --port 0 --json
    """
    import os
    import sys

    # idle OpenMP workers sleep instead of spinning between searches, leaving the cores to the gRPC threads that
    # decode requests and encode replies (measured: lower p50 on 2 vCPUs). Read when numba first loads OpenMP.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from recmine.extras import check

    check("service", "grpc", "grpc_tools", "google.protobuf")
    from recmine.faery.service import RetrievalServer, serve

    def ready(server: RetrievalServer) -> None:
        core = server.core
        emit({"address": server.address, "port": server.port, "index": str(index), "rows": len(core),
              "dim": core.dim, "metric": core.metric, "storage": core.storage, "version": core.version},
             as_json=as_json, title="faery serve")
        sys.stdout.flush()

    try:
        from recmine.auth import Auth, read_token

        auth = Auth(*(str(p) if p else None for p in (tls_ca, tls_cert, tls_key)),
                    read_token(token_file) if token_file else None, insecure)
        serve(index, port=port, host=host, for_seconds=for_seconds, max_message_mb=max_message_mb,
              on_ready=ready, auth=auth, dim=dim, metric=metric, storage=storage)
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(str(exc))
