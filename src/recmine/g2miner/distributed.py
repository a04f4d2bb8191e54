"""Scale-out past one process: split a count's start edges over Ray workers, balanced by estimated work.

No graph goes through Ray's object store: the prepared form the plan runs on (oriented DAG or ranked CSR) is a .g2m
file (the cached one of a graph loaded from a file, else a temporary one) that every worker memory-maps; each
worker counts a contiguous range of start edges with the same compiled kernel as a local run, so the sum is exactly
the local count. The file must be readable at the same path on every node (one machine, or a shared filesystem).
Works on a local Ray (started and stopped here) or a cluster at a given address."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recmine.g2miner import storage
from recmine.g2miner.analyzer import analyze
from recmine.g2miner.codegen import compile_plan
from recmine.g2miner.graph import CSRGraph
from recmine.g2miner.pattern import Pattern, get_pattern
from recmine.g2miner.prep import Prepared, frozen, max_degree, slot_bounds
from recmine.g2miner.runtime import _plan_for, prepared_for, run_ranges


@dataclass
class RayCountResult:
    """A distributed count with the seconds each worker spent (imbalance shows here)."""

    count: int
    seconds: float
    worker_seconds: list[float] = field(default_factory=list)
    worker_tasks: list[int] = field(default_factory=list)
    graph_file: str = ""  # the .g2m file every worker mapped
    worker_mapped: list[bool] = field(default_factory=list)  # each worker read the graph through a file mapping

    def __int__(self) -> int:
        return self.count


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast, naming the address, when nothing listens at HOST:PORT (ray.init would otherwise retry for long)."""
    host, sep, port = address.rpartition(":")
    if address in ("auto", "local"):
        return
    if address.startswith("ray://"):
        host, sep, port = address[len("ray://"):].rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"Ray address must look like HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConnectionError(f"cannot reach a Ray cluster at {address}: {exc}") from None


def map_prepared(path: str, labels_path: str | None) -> Prepared:
    """A prepared form from its .g2m file (memory-mapped, read-only), labels from their own file if any."""
    arrays, meta = storage.map_arrays(path)
    labels = storage.map_arrays(labels_path)[0]["labels"] if labels_path else np.zeros(0, np.int32)
    return Prepared(str(meta.get("kind", "ranked")), frozen(arrays["indptr"]), frozen(arrays["indices"]),
                    frozen(labels), frozen(arrays["order"]), max_degree(arrays["indptr"]))


def _worker(path: str, labels_path: str | None, pattern_text: str, induced: bool, lo: int, hi: int,
            ) -> tuple[int, float, bool]:
    t = time.perf_counter()
    prep = map_prepared(path, labels_path)
    plan = analyze(Pattern.parse(pattern_text), induced)
    n, _ = run_ranges(compile_plan(plan), prep, [(lo, hi)], threads=1)
    return n, time.perf_counter() - t, isinstance(prep.indices.base, np.memmap) or isinstance(prep.indices,
                                                                                            np.memmap)


def _files_for(graph: CSRGraph, prep: Prepared) -> tuple[str, str | None, list[Path]]:
    """(prepared .g2m path, labels .g2m path or None, temporary files to delete afterwards)."""
    temp: list[Path] = []
    tmpdir = storage.cache_root() / "g2miner_tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    cached = graph.cache_dir / f"{prep.kind}.g2m" if graph.cache_dir is not None else None
    if cached is not None and cached.exists():
        path = cached
    else:
        path = tmpdir / f"{uuid.uuid4().hex}.g2m"
        storage.write_arrays(path, {"indptr": prep.indptr, "indices": prep.indices, "order": prep.new_to_old},
                             {"kind": prep.kind})
        temp.append(path)
    labels_path = None
    if prep.labels.size:
        labels_path = tmpdir / f"{uuid.uuid4().hex}.labels.g2m"
        storage.write_arrays(labels_path, {"labels": prep.labels})
        temp.append(labels_path)
    return str(path), (str(labels_path) if labels_path else None), temp


def count_ray(graph: CSRGraph, pattern: Pattern | str, induced: bool = True, address: str | None = None,
              num_workers: int | None = None, return_stats: bool = False) -> int | RayCountResult:
    """Exact count of `pattern` computed by Ray workers (local Ray when address is None).

    return_stats=True gives a RayCountResult with per-worker seconds and the mapped file."""
    import ray  # optional dependency (extra "dist")

    p = get_pattern(pattern)
    if address is not None:
        check_address(address)
    started = False
    if not ray.is_initialized():
        if address is None:
            ray.init(num_cpus=num_workers or 2, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        started = True
    temp: list[Path] = []
    try:
        t = time.perf_counter()
        plan = _plan_for(p, induced, graph)
        prep = prepared_for(graph, plan)
        path, labels_path, temp = _files_for(graph, prep)
        workers = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        bounds, _ = slot_bounds(prep.indptr, prep.indices, np.int64(0), np.int64(prep.num_slots), workers)
        splits = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        remote = ray.remote(num_cpus=1)(_worker)
        futures = [remote.remote(path, labels_path, p.text(), induced, lo, hi) for lo, hi in splits]
        parts = ray.get(futures, timeout=3600)
        result = RayCountResult(sum(n for n, _, _ in parts), time.perf_counter() - t, [s for _, s, _ in parts],
                                [hi - lo for lo, hi in splits], path, [m for _, _, m in parts])
    finally:
        for f in temp:
            try:
                os.remove(f)
            except OSError:
                pass
        if started:
            ray.shutdown()
    return result if return_stats else result.count
