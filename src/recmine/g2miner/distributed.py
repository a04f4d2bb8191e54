"""Scale-out past one process: split a count's task space over Ray workers, balanced by estimated work.

The degree-ranked graph goes into Ray's object store once (numpy arrays: zero-copy reads in the workers); each
worker counts a contiguous slice of starting edges with the same compiled kernel as a local run, so the sum is
exactly the local count. Works on a local Ray (started and stopped here) or a cluster at a given address."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import numpy as np

from recmine.g2miner.graph import CSRGraph
from recmine.g2miner.pattern import Pattern, get_pattern
from recmine.g2miner.runtime import count_tasks, task_space


@dataclass
class RayCountResult:
    """A distributed count with the seconds each worker spent (imbalance shows here)."""

    count: int
    seconds: float
    worker_seconds: list[float] = field(default_factory=list)
    worker_tasks: list[int] = field(default_factory=list)

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


def balanced_splits(work: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) slices of the task list with about equal total estimated work."""
    if work.size == 0:
        return []
    cum = np.cumsum(work)
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts)
    bounds = [0, *sorted({int(c) for c in cuts}), int(work.size)]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]


def _worker(indptr: np.ndarray, indices: np.ndarray, labels: np.ndarray | None, pattern_text: str, induced: bool,
            lo: int, hi: int) -> tuple[int, float]:
    t = time.perf_counter()
    g = CSRGraph(indptr, indices, labels)
    # the arrays are already degree-ranked: mark the graph as its own ranking so nothing is recomputed
    g._cache["relabel"] = (g, np.arange(g.num_vertices, dtype=np.int64))
    n = count_tasks(g, Pattern.parse(pattern_text), induced, np.arange(lo, hi, dtype=np.int64), threads=1)
    return n, time.perf_counter() - t


def count_ray(graph: CSRGraph, pattern: Pattern | str, induced: bool = True, address: str | None = None,
              num_workers: int | None = None, return_stats: bool = False) -> int | RayCountResult:
    """Exact count of `pattern` computed by Ray workers (local Ray when address is None).

    return_stats=True gives a RayCountResult with per-worker seconds."""
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
    try:
        t = time.perf_counter()
        ranked, _ = graph.relabel_by_degree()
        _, work = task_space(graph, p, induced)
        workers = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        splits = balanced_splits(work, workers)
        refs = [ray.put(a) for a in (ranked.indptr, ranked.indices, ranked.labels)]
        remote = ray.remote(num_cpus=1)(_worker)
        futures = [remote.remote(*refs, p.text(), induced, lo, hi) for lo, hi in splits]
        parts = ray.get(futures, timeout=3600)
        result = RayCountResult(sum(n for n, _ in parts), time.perf_counter() - t, [s for _, s in parts],
                                [hi - lo for lo, hi in splits])
    finally:
        if started:
            ray.shutdown()
    return result if return_stats else result.count
