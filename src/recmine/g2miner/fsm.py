"""Frequent subgraph mining on vertex-labeled graphs: connected edge-induced labeled patterns with MNI support.

Patterns grow level by level (one edge at a time: a new labeled vertex, or an edge closing a cycle), each kept once
by its canonical form; support is the minimum image-based (MNI) support, counted from per-pattern-vertex domains by a
numba backtracking matcher that stops as soon as every domain reaches the threshold."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from recmine.g2miner.graph import CSRGraph
from recmine.g2miner.pattern import Pattern
from recmine.g2miner.setops import contains


@dataclass(frozen=True)
class FrequentPattern:
    """A frequent labeled pattern and its MNI support (capped at the point where counting stopped when
    `exact_support` is False in the miner)."""

    pattern: Pattern
    support: int


@njit(cache=True, nogil=True)
def _mni(indptr, indices, labels, k, lab, parent, adjm, min_support, exact):
    """Domains of every pattern vertex over all label-preserving monomorphisms (matching order = 0..k-1; parent[i]
    is an earlier adjacent vertex; adjm the pattern adjacency). Returns the domain sizes; stops early once all reach
    min_support unless `exact`."""
    n = indptr.shape[0] - 1
    dom = np.zeros((k, n), np.bool_)
    size = np.zeros(k, np.int64)
    v = np.empty(k, np.int64)
    pos = np.zeros(k, np.int64)
    for root in range(n):
        if labels[root] != lab[0]:
            continue
        v[0] = root
        if k == 1:
            continue
        depth = 1
        p = v[parent[1]]
        pos[1] = indptr[p]
        while depth >= 1:
            p = v[parent[depth]]
            if pos[depth] >= indptr[p + 1]:
                depth -= 1
                continue
            x = indices[pos[depth]]
            pos[depth] += 1
            if labels[x] != lab[depth]:
                continue
            ok = True
            for j in range(depth):
                if v[j] == x:
                    ok = False
                    break
                if adjm[depth, j] and j != parent[depth]:
                    if not contains(indices[indptr[v[j]]:indptr[v[j] + 1]], x):
                        ok = False
                        break
            if not ok:
                continue
            v[depth] = x
            if depth == k - 1:
                done = True
                for i in range(k):
                    if not dom[i, v[i]]:
                        dom[i, v[i]] = True
                        size[i] += 1
                    if size[i] < min_support:
                        done = False
                if done and not exact:
                    return size
                continue
            depth += 1
            q = v[parent[depth]]
            pos[depth] = indptr[q]
    return size


def _plan(p: Pattern) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """BFS matching order (connected prefix) with a parent per vertex; arrays in that order."""
    adj = p.adjacency()
    order = [max(range(p.num_vertices), key=lambda v: (len(adj[v]), -v))]
    while len(order) < p.num_vertices:
        chosen = set(order)
        order.append(max((v for v in range(p.num_vertices) if v not in chosen and adj[v] & chosen),
                         key=lambda v: (len(adj[v] & chosen), len(adj[v]), -v)))
    pos = {v: i for i, v in enumerate(order)}
    k = p.num_vertices
    parent = np.zeros(k, np.int64)
    adjm = np.zeros((k, k), np.bool_)
    for i, v in enumerate(order):
        earlier = [pos[u] for u in adj[v] if pos[u] < i]
        parent[i] = min(earlier) if earlier else 0
        for u in adj[v]:
            adjm[i, pos[u]] = True
    lab = np.array([p.labels[v] for v in order], dtype=np.int32)
    return lab, parent, adjm, order


def mni_support(graph: CSRGraph, pattern: Pattern, min_support: int | None = None) -> int:
    """MNI support of a labeled pattern: min over pattern vertices of how many graph vertices it maps to.
    With min_support, counting stops once that is reached (the result is then >= min_support, not exact)."""
    if graph.labels is None:
        raise ValueError("frequent subgraph mining needs a vertex-labeled graph")
    if pattern.labels is None or -1 in pattern.labels:
        raise ValueError("FSM patterns must label every vertex")
    lab, parent, adjm, _ = _plan(pattern)
    exact = min_support is None
    size = _mni(graph.indptr, graph.indices, graph.labels, pattern.num_vertices, lab, parent, adjm,
                0 if exact else int(min_support), exact)
    return int(size.min())


def _extensions(p: Pattern, labels: list[int], max_vertices: int) -> list[Pattern]:
    """Every pattern with one more edge: a new vertex (any frequent label) on an existing vertex, or a new edge
    between two non-adjacent existing vertices."""
    out = []
    k = p.num_vertices
    edges = set(p.edges)
    assert p.labels is not None
    for u in range(k):
        for w in range(u + 1, k):
            if (u, w) not in edges:
                out.append(Pattern(k, tuple(sorted(edges | {(u, w)})), p.labels))
    if k < max_vertices:
        for u in range(k):
            for lab in labels:
                out.append(Pattern(k + 1, tuple(sorted(edges | {(u, k)})), (*p.labels, lab)))
    return out


def _canon_pattern(p: Pattern) -> tuple[tuple, Pattern]:
    """Canonical key and the canonical relabelling of p (so equal patterns print identically)."""
    key = p.canonical()
    labs, edges = key
    return key, Pattern(p.num_vertices, edges, labs)


def mine_frequent(graph: CSRGraph, min_support: int, max_edges: int = 3,
                  exact_support: bool = True) -> list[FrequentPattern]:
    """All connected labeled patterns with 1..max_edges edges whose MNI support >= min_support.

    exact_support=False stops counting each pattern as soon as it is known frequent (faster; support then
    reports the value reached, >= min_support)."""
    if graph.labels is None:
        raise ValueError("frequent subgraph mining needs a vertex-labeled graph (e.g. graph.vlabel.bin)")
    if not isinstance(min_support, (int, np.integer)) or min_support <= 0:
        raise ValueError(f"min_support must be a positive integer, got {min_support!r}")
    if not 1 <= max_edges <= 6:
        raise ValueError(f"max_edges must be 1..6, got {max_edges}")
    lab = graph.labels
    freq_labels = [int(x) for x, c in zip(*np.unique(lab, return_counts=True), strict=True) if c >= min_support]
    result: list[FrequentPattern] = []
    level: dict[tuple, Pattern] = {}
    for a in freq_labels:
        for b in freq_labels:
            if a <= b:
                key, p = _canon_pattern(Pattern(2, ((0, 1),), (a, b)))
                level[key] = p
    seen: set[tuple] = set(level)
    for edges in range(1, max_edges + 1):
        frequent: list[Pattern] = []
        for p in level.values():
            s = mni_support(graph, p, None if exact_support else min_support)
            if s >= min_support:
                frequent.append(p)
                result.append(FrequentPattern(p, s))
        if edges == max_edges:
            break
        nxt: dict[tuple, Pattern] = {}
        for p in frequent:
            for q in _extensions(p, freq_labels, max_vertices=max_edges + 1):
                key, cq = _canon_pattern(q)
                if key not in seen:
                    seen.add(key)
                    nxt[key] = cq
        level = nxt
    return result


def mine_frequent_timed(graph: CSRGraph, min_support: int, max_edges: int = 3) -> tuple[list[FrequentPattern], float]:
    """mine_frequent and its wall time in seconds."""
    t = time.perf_counter()
    res = mine_frequent(graph, min_support, max_edges)
    return res, time.perf_counter() - t
