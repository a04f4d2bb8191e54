"""Runtime: pick the prepared graph a plan runs on (oriented DAG for cliques, ranked full CSR otherwise), split its
start edges into work-balanced ranges, run the generated kernel on threads with exact int64 sums, and the entry
points (count, per-vertex counts, task subsets for the Ray backend, streamed listing)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from recmine.g2miner.analyzer import SearchPlan, analyze
from recmine.g2miner.codegen import CompiledPlan, compile_plan
from recmine.g2miner.graph import CSRGraph
from recmine.g2miner.pattern import WILDCARD, Pattern, get_pattern
from recmine.g2miner.prep import Prepared, resolve_threads, run_chunks, slot_bounds


@dataclass
class CountResult:
    """A count with its timings (seconds: the kernels; compile_seconds: compiling or loading numba code) and the
    plan that produced it (per_vertex: matches per vertex)."""

    count: int
    seconds: float
    compile_seconds: float
    plan: SearchPlan
    source: str
    per_vertex: np.ndarray | None = None
    prepare_seconds: float = 0.0


def _plan_for(pattern: Pattern | str, induced: bool, graph: CSRGraph) -> SearchPlan:
    if not isinstance(graph, CSRGraph):
        raise TypeError(f"expected a CSRGraph, got {type(graph).__name__}")
    p = get_pattern(pattern)
    if p.labels is not None and graph.labels is None:
        raise ValueError(f"pattern {p.text()!r} has vertex labels but the graph has none")
    return analyze(p, induced)


def prepared_for(graph: CSRGraph, plan: SearchPlan, threads: int | None = None,
                 progress: Callable[[float], None] | None = None) -> Prepared:
    """The prepared form a plan runs on: the oriented DAG for cliques, the ranked full CSR otherwise."""
    return graph.prepared("dag" if plan.kind == "clique" else "ranked", threads, progress)


_EMPTY_I32 = np.zeros(0, np.int32)


def label_args(plan: SearchPlan, prep: Prepared) -> tuple[np.ndarray, ...]:
    """(labels, lab_ptr, lab_val, alts, place): the runtime label data of a kernel (empty when unlabeled)."""
    k = len(plan.levels)
    if not plan.labeled:
        z2 = np.zeros((0, k), np.int32)
        return prep.labels, np.zeros(k + 1, np.int64), _EMPTY_I32, z2, z2
    assert plan.label_alternatives is not None and plan.label_placements is not None and plan.label_allow
    lab_ptr = np.zeros(k + 1, np.int64)
    np.cumsum([len(a) for a in plan.label_allow], out=lab_ptr[1:])
    lab_val = np.array([x for a in plan.label_allow for x in a], dtype=np.int32)
    alts = np.full((len(plan.label_alternatives), k), WILDCARD, np.int32)
    for q, alt in enumerate(plan.label_alternatives):
        for lvl, lab in alt:
            alts[q, lvl] = lab
    place = np.array(plan.label_placements, dtype=np.int32).reshape(-1, k)
    return prep.labels, lab_ptr, lab_val, alts, place


def _impossible(plan: SearchPlan, prep: Prepared) -> bool:
    """Label-frequency pruning: every placement needs a label the graph lacks, so nothing can match."""
    if not plan.labeled or prep.labels.size == 0:
        return plan.labeled
    present = np.bincount(prep.labels)
    assert plan.label_alternatives is not None
    return all(any(lab >= present.shape[0] or present[lab] == 0 for _, lab in alt) for alt in plan.label_alternatives)


def _kernel_args(plan: SearchPlan, prep: Prepared) -> tuple:
    return (prep.indptr, prep.indices, *label_args(plan, prep))


def run_ranges(compiled: CompiledPlan, prep: Prepared, ranges: list[tuple[int, int]] | np.ndarray,
               threads: int | None, progress: Callable[[float], None] | None = None,
               per_vertex: bool = False) -> tuple[int, np.ndarray | None]:
    """The one counting path of every front (count, count_detailed, count_tasks, Ray workers): the plan's kernel
    over the given slot ranges, each cut into work-balanced pieces run on `threads` threads (dynamic hand-out).
    Returns (count, per-vertex counts in prepared ids or None)."""
    plan = compiled.plan
    nthreads = resolve_threads(threads)
    base = _kernel_args(plan, prep)
    maxdeg = np.int64(max(prep.max_degree, 1))
    pieces: list[tuple[int, int]] = []
    weights: list[float] = []
    many = nthreads > 1 or progress is not None
    for lo, hi in ranges:
        if hi <= lo:
            continue
        if not many:
            pieces.append((int(lo), int(hi)))
            weights.append(float(hi - lo))
            continue
        b, w = slot_bounds(prep.indptr, prep.indices, np.int64(lo), np.int64(hi), max(64 * nthreads, 50))
        pieces += list(zip(b[:-1].tolist(), b[1:].tolist(), strict=True))
        weights += w.tolist()
    if _impossible(plan, prep) or not pieces:
        if progress is not None:
            progress(1.0)
        return 0, (np.zeros(prep.num_vertices, np.int64) if per_vertex else None)
    if per_vertex:
        fn = compiled.kernel("vertex_range", (*base, np.int64(0), np.int64(1), maxdeg, np.zeros(1, np.int64)))
        local: dict[int, np.ndarray] = {}

        def call(c: int) -> int:
            tid = threading.get_ident()
            if tid not in local:
                local[tid] = np.zeros(prep.num_vertices, np.int64)
            return int(fn(*base, np.int64(pieces[c][0]), np.int64(pieces[c][1]), maxdeg, local[tid]))
    else:
        fn = compiled.kernel("count_range", (*base, np.int64(0), np.int64(1), maxdeg))

        def call(c: int) -> int:
            return int(fn(*base, np.int64(pieces[c][0]), np.int64(pieces[c][1]), maxdeg))

    total = sum(run_chunks(call, len(pieces), nthreads, progress, weights))
    pv = None
    if per_vertex:
        pv = np.zeros(prep.num_vertices, np.int64)
        for arr in local.values():
            pv += arr
    return total, pv


def _to_original(prep: Prepared, pv: np.ndarray) -> np.ndarray:
    out = np.empty_like(pv)
    out[prep.new_to_old] = pv
    return out


def count_detailed(graph: CSRGraph, pattern: Pattern | str, induced: bool = True,
                   threads: int | None = None,
                   progress: Callable[[float], None] | None = None, per_vertex: bool = False) -> CountResult:
    """Count matches of `pattern` in `graph` (each subgraph once) and report timings and the plan used.

    With `progress`, progress(fraction_done) is called as work-balanced pieces finish (for progress bars on long
    runs); the count is the same. With `per_vertex`, `.per_vertex[v]` is the number of matches holding vertex v."""
    plan = _plan_for(pattern, induced, graph)
    t = time.perf_counter()
    prep = prepared_for(graph, plan, threads)
    prep_s = time.perf_counter() - t
    compiled = compile_plan(plan)
    t = time.perf_counter()
    slot_bounds(prep.indptr, prep.indices, np.int64(0), np.int64(0), 1)  # load it (once per process), untimed
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    total, pv = run_ranges(compiled, prep, [(0, prep.num_slots)], threads, progress, per_vertex)
    seconds = time.perf_counter() - t - compiled.compile_seconds
    return CountResult(total, seconds, compiled.compile_seconds + load_s, plan, compiled.source,
                       None if pv is None else _to_original(prep, pv), prep_s)


def count(graph: CSRGraph, pattern: Pattern | str, induced: bool = True, threads: int | None = None,
          backend: str = "local", address: str | None = None, per_vertex: bool = False) -> int | np.ndarray:
    """Exact number of subgraphs of `graph` matching `pattern` (vertex-induced by default, else edge-induced).

    per_vertex=True returns instead an int64 array: entry v is the number of matches that vertex v takes part in
    (the graph features recommender and fraud models use).

    >>> from recmine.g2miner import CSRGraph, count
    >>> count(CSRGraph.from_edges([0, 1, 2, 2], [1, 2, 0, 3]), "triangle")
    1
    """
    if backend == "local":
        res = count_detailed(graph, pattern, induced, threads, per_vertex=per_vertex)
        return res.per_vertex if per_vertex else res.count  # type: ignore[return-value]
    if backend == "ray":
        if per_vertex:
            raise ValueError("per-vertex counts run on the local backend")
        from recmine.g2miner.distributed import count_ray  # optional dependency, imported on demand

        return int(count_ray(graph, pattern, induced, address=address))
    raise ValueError(f"unknown backend {backend!r} (expected 'local' or 'ray')")


def task_space(graph: CSRGraph, pattern: Pattern | str, induced: bool = True) -> tuple[int, np.ndarray]:
    """(number of tasks, estimated work per task) for splitting a count across workers.

    Task t is the t-th start edge (CSR slot) of the prepared graph the plan runs on; work ~ the degrees of its
    endpoints. Counts over a partition of range(number of tasks) sum to `count` (see `count_tasks`)."""
    plan = _plan_for(pattern, induced, graph)
    prep = prepared_for(graph, plan)
    deg = np.diff(prep.indptr).astype(np.float64)
    src = np.repeat(np.arange(prep.num_vertices), np.diff(prep.indptr))
    return prep.num_slots, 1.0 + deg[src] + deg[prep.indices]


def task_runs(tasks: np.ndarray) -> list[tuple[int, int]]:
    """Sorted task ids as runs of consecutive ids [lo, hi)."""
    t = np.sort(np.asarray(tasks, dtype=np.int64))
    if t.size == 0:
        return []
    cut = np.flatnonzero(np.diff(t) != 1) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [t.size]])
    return [(int(t[a]), int(t[b - 1]) + 1) for a, b in zip(starts, ends, strict=True)]


def count_tasks(graph: CSRGraph, pattern: Pattern | str, induced: bool, tasks: np.ndarray,
                threads: int | None = None) -> int:
    """Count only the matches rooted at the given task ids (see `task_space`); counts over a partition of
    range(num_tasks) sum to `count`."""
    plan = _plan_for(pattern, induced, graph)
    prep = prepared_for(graph, plan)
    sel = np.asarray(tasks, dtype=np.int64)
    if sel.size and (sel.min() < 0 or sel.max() >= prep.num_slots):
        raise ValueError(f"task ids must lie in [0, {prep.num_slots})")
    return run_ranges(compile_plan(plan), prep, task_runs(sel), threads)[0]


def list_matches(graph: CSRGraph, pattern: Pattern | str, induced: bool = True,
                 chunk_size: int = 65536) -> Iterator[np.ndarray]:
    """Yield matches as int64 arrays of shape (rows, pattern vertices): column i holds the graph vertex matched to
    pattern vertex i (original ids). Streams in chunks, so huge result sets never sit in memory at once."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    plan = _plan_for(pattern, induced, graph)
    prep = prepared_for(graph, plan)
    compiled = compile_plan(plan)
    if _impossible(plan, prep):
        return
    k = plan.pattern.num_vertices
    out = np.empty((chunk_size, k), dtype=np.int32)
    base = _kernel_args(plan, prep)
    maxdeg = np.int64(max(prep.max_degree, 1))
    fn = compiled.kernel("list_range", (*base, np.int64(0), np.int64(1), maxdeg, np.int64(0), out))
    e, skip, hi = 0, 0, prep.num_slots
    while e < hi:
        e, skip, n = fn(*base, np.int64(e), np.int64(hi), maxdeg, np.int64(skip), out)
        if n:
            yield prep.new_to_old[out[:n]].astype(np.int64)


def compile_for(pattern: Pattern | str, induced: bool = True) -> CompiledPlan:
    """Analyse and compile `pattern`'s count kernel ahead of time (or load it from the on-disk cache)."""
    plan = analyze(get_pattern(pattern), induced)
    compiled = compile_plan(plan)
    g = CSRGraph.from_edges([0], [1], labels=[0, 0] if plan.labeled else None)
    prep = prepared_for(g, plan, threads=1)
    compiled.kernel("count_range", (*_kernel_args(plan, prep), np.int64(0), np.int64(1), np.int64(1)))
    return compiled
