"""Runtime: task split (edge-parallel over the first two pattern vertices), local threads, exact int64 counts,
chunked listing, and the entry points the Ray backend calls on each worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numba
import numpy as np

from recmine.g2miner.analyzer import SearchPlan, analyze
from recmine.g2miner.codegen import CompiledPlan, compile_plan
from recmine.g2miner.graph import CSRGraph
from recmine.g2miner.pattern import WILDCARD, Pattern, get_pattern


@dataclass
class CountResult:
    """A count with its timings (seconds) and the plan that produced it."""

    count: int
    seconds: float
    compile_seconds: float
    plan: SearchPlan
    source: str


def _prepared(graph: CSRGraph) -> tuple[CSRGraph, np.ndarray]:
    """The degree-ranked copy of the graph (cached on the graph): (ranked graph, new_to_old)."""
    if not isinstance(graph, CSRGraph):
        raise TypeError(f"expected a CSRGraph, got {type(graph).__name__}")
    return graph.relabel_by_degree()


def _labels_of(g: CSRGraph) -> np.ndarray:
    return g.labels if g.labels is not None else np.zeros(0, dtype=np.int32)


def _plan_for(pattern: Pattern | str, induced: bool, graph: CSRGraph) -> SearchPlan:
    p = get_pattern(pattern)
    if p.labels is not None and graph.labels is None:
        raise ValueError(f"pattern {p.text()!r} has vertex labels but the graph has none")
    return analyze(p, induced)


def _tasks(g: CSRGraph, plan: SearchPlan) -> np.ndarray:
    """CSR slots (directed edges v0 -> v1) that can start a match: level-1 bound and labels applied up front
    (label-frequency pruning: a label absent from the graph empties the task list)."""
    esrc = g.edge_sources()
    dst = g.indices
    mask = np.ones(dst.shape[0], dtype=bool)
    lv0, lv1 = plan.levels[0], plan.levels[1]
    if 0 in lv1.upper:
        mask &= dst < esrc
    if plan.pattern.labels is not None:
        lab = g.labels
        present = set(np.unique(lab).tolist())
        if any(x != WILDCARD and x not in present for x in plan.pattern.labels):
            return np.zeros(0, dtype=np.int64)
        if lv0.label != WILDCARD:
            mask &= lab[esrc] == lv0.label
        if lv1.label != WILDCARD:
            mask &= lab[dst] == lv1.label
    return np.flatnonzero(mask).astype(np.int64)


def _sample_args(g: CSRGraph):
    z32 = np.zeros(1, dtype=np.int32)
    z64 = np.zeros(1, dtype=np.int64)
    count_sig = (numba.typeof(g.indptr), numba.typeof(g.indices), numba.typeof(z32), numba.typeof(z32),
                 numba.typeof(z64), numba.int64, numba.int64)
    out = np.zeros((1, 2), dtype=np.int32)
    list_sig = (numba.typeof(g.indptr), numba.typeof(g.indices), numba.typeof(z32), numba.typeof(z32),
                numba.typeof(z64), numba.int64, numba.int64, numba.typeof(out), numba.int64)
    return count_sig, list_sig


def compile_for(pattern: Pattern | str, induced: bool = True) -> CompiledPlan:
    """Analyse and compile `pattern` ahead of time (or load its kernels from the on-disk cache)."""
    plan = analyze(get_pattern(pattern), induced)
    compiled = compile_plan(plan)
    dummy = CSRGraph(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32))
    compiled.ensure_compiled(*_sample_args(dummy))
    return compiled


def _count_batch(g: CSRGraph, compiled: CompiledPlan, tasks: np.ndarray, threads: int | None) -> int:
    if tasks.shape[0] == 0:
        return 0
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    nthreads = numba.get_num_threads()
    nchunks = int(min(tasks.shape[0], 64 * nthreads))
    total = compiled.module.count_kernel(
        g.indptr, g.indices, _labels_of(g), g.edge_sources(), tasks, nchunks, max(g.max_degree, 1)
    )
    return int(total)


def _run_count(g: CSRGraph, compiled: CompiledPlan, tasks: np.ndarray, threads: int | None,
               progress: Callable[[float], None] | None = None) -> int:
    """The one counting path of every front (count, count_detailed, count_tasks, Ray workers): the plan's count
    kernel over the task list, which applies every level's checks, label alternatives included, for any k.
    With `progress`, about 50 work-balanced batches, progress(fraction_done) after each."""
    if progress is None:
        return _count_batch(g, compiled, tasks, threads)
    deg = g.degrees
    work = np.cumsum(deg[g.edge_sources()[tasks]] * deg[g.indices[tasks]] + 1, dtype=np.float64)
    cuts = np.searchsorted(work, np.linspace(0, work[-1], 51)[1:-1]) if tasks.size else []
    total = 0
    bounds = [0, *[int(c) for c in cuts], int(tasks.shape[0])]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        total += _count_batch(g, compiled, tasks[lo:hi], threads)
        progress(hi / tasks.shape[0] if tasks.shape[0] else 1.0)  # an empty task list is done at once
    return total


def count_detailed(graph: CSRGraph, pattern: Pattern | str, induced: bool = True,
                   threads: int | None = None,
                   progress: Callable[[float], None] | None = None) -> CountResult:
    """Count matches of `pattern` in `graph` (each subgraph once) and report timings and the plan used.

    With `progress`, the task list runs in about 50 work-balanced batches and progress(fraction_done) is called
    after each (for progress bars on long runs); the count is the same."""
    g, _ = _prepared(graph)
    plan = _plan_for(pattern, induced, g)
    compiled = compile_plan(plan)
    csec = compiled.ensure_compiled(_sample_args(g)[0], None)
    t = time.perf_counter()
    total = _run_count(g, compiled, _tasks(g, plan), threads, progress)
    return CountResult(total, time.perf_counter() - t, csec, plan, compiled.source)


def count(graph: CSRGraph, pattern: Pattern | str, induced: bool = True, threads: int | None = None,
          backend: str = "local", address: str | None = None) -> int:
    """Exact number of subgraphs of `graph` matching `pattern` (vertex-induced by default, else edge-induced).

    >>> from recmine.g2miner import CSRGraph, count
    >>> count(CSRGraph.from_edges([0, 1, 2, 2], [1, 2, 0, 3]), "triangle")
    1
    """
    if backend == "local":
        return count_detailed(graph, pattern, induced, threads).count
    if backend == "ray":
        from recmine.g2miner.distributed import count_ray  # optional dependency, imported on demand

        return int(count_ray(graph, pattern, induced, address=address))
    raise ValueError(f"unknown backend {backend!r} (expected 'local' or 'ray')")


def task_space(graph: CSRGraph, pattern: Pattern | str, induced: bool = True) -> tuple[int, np.ndarray]:
    """(number of tasks, estimated work per task) for splitting a count across workers.

    A task id t is the t-th starting edge of the plan; work ~ product of its endpoints' degrees."""
    g, _ = _prepared(graph)
    plan = _plan_for(pattern, induced, g)
    tasks = _tasks(g, plan)
    deg = g.degrees
    work = (deg[g.edge_sources()[tasks]] * deg[g.indices[tasks]]).astype(np.float64) + 1.0
    return int(tasks.shape[0]), work


def count_tasks(graph: CSRGraph, pattern: Pattern | str, induced: bool, tasks: np.ndarray,
                threads: int | None = None) -> int:
    """Count only the matches rooted at the given task ids (see `task_space`); counts over a partition of
    range(num_tasks) sum to `count`."""
    g, _ = _prepared(graph)
    plan = _plan_for(pattern, induced, g)
    all_tasks = _tasks(g, plan)
    sel = np.asarray(tasks, dtype=np.int64)
    if sel.size and (sel.min() < 0 or sel.max() >= all_tasks.shape[0]):
        raise ValueError(f"task ids must lie in [0, {all_tasks.shape[0]})")
    compiled = compile_plan(plan)
    compiled.ensure_compiled(_sample_args(g)[0], None)
    return _run_count(g, compiled, all_tasks[sel], threads)


def list_matches(graph: CSRGraph, pattern: Pattern | str, induced: bool = True,
                 chunk_size: int = 65536) -> Iterator[np.ndarray]:
    """Yield matches as int64 arrays of shape (rows, pattern vertices): column i holds the graph vertex matched to
    pattern vertex i (original ids). Streams in chunks, so huge result sets never sit in memory at once."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    g, new_to_old = _prepared(graph)
    plan = _plan_for(pattern, induced, g)
    compiled = compile_plan(plan)
    compiled.ensure_compiled(None, _sample_args(g)[1])
    tasks = _tasks(g, plan)
    k = plan.pattern.num_vertices
    out = np.empty((chunk_size, k), dtype=np.int32)
    t, skip = 0, 0
    while t < tasks.shape[0]:
        t, skip, n = compiled.module.list_kernel(
            g.indptr, g.indices, _labels_of(g), g.edge_sources(), tasks, t, skip, out, max(g.max_degree, 1)
        )
        if n:
            yield new_to_old[out[:n]]
