"""k-motif counting (k = 3, 4, 5): the number of every connected vertex-induced k-vertex pattern.

k = 3, 4: a few cheap local counts (degrees, triangles per edge, 4-cycles by degree-ordered wedges, 4-cliques with
the clique kernel) and the standard identities between edge-induced and vertex-induced counts (as GraphMiner's
formula-based motif counting and Peregrine do). k = 5: one ESU exploration in numba that classifies each connected
5-vertex subgraph by a lookup table over its 10-bit adjacency — not 21 separate searches."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

import numpy as np
from numba import njit

from recmine.g2miner.graph import CSRGraph
from recmine.g2miner.pattern import Pattern, connected_motifs
from recmine.g2miner.prep import resolve_threads, run_chunks
from recmine.g2miner.runtime import count as count_pattern
from recmine.g2miner.setops import contains, intersect_count


@dataclass(frozen=True)
class MotifCount:
    """One motif's vertex-induced count."""

    pattern: Pattern
    count: int

    @property
    def name(self) -> str:
        """Readable name where one exists, else the text form."""
        return self.pattern.name or self.pattern.text()


@njit(cache=True, nogil=True)
def _edge_stats(indptr, indices, lo, hi, tv):
    """Rows u in [lo, hi) of the ranked CSR, each edge once (v < u): t = |N(u) ∩ N(v)| triangles on it; adds t to
    tv[u] and tv[v]; returns (sum t, sum C(t, 2), sum (deg u - 1)(deg v - 1))."""
    tri = 0
    pairs = 0
    paths = 0
    for u in range(lo, hi):
        a = indices[indptr[u]:indptr[u + 1]]
        du = indptr[u + 1] - indptr[u]
        for e in range(indptr[u], indptr[u + 1]):
            v = indices[e]
            if v >= u:
                break
            t = intersect_count(a, indices[indptr[v]:indptr[v + 1]], 2147483647)
            tv[u] += t
            tv[v] += t
            tri += t
            pairs += t * (t - 1) // 2
            paths += (du - 1) * (indptr[v + 1] - indptr[v] - 1)
    return tri, pairs, paths


@njit(cache=True, nogil=True)
def _four_cycles(indptr, indices, lo, hi, cnt, touched):
    """Edge-induced 4-cycles found from their largest vertex id v in [lo, hi) by ordered wedges (the opposite corner
    w below v too); each cycle once. cnt and touched are this thread's scratch arrays (n entries, zero)."""
    total = 0
    for v in range(lo, hi):
        nt = 0
        for e in range(indptr[v], indptr[v + 1]):
            u = indices[e]
            if u >= v:
                break
            for f in range(indptr[u], indptr[u + 1]):
                w = indices[f]
                if w >= v:
                    break
                if cnt[w] == 0:
                    touched[nt] = w
                    nt += 1
                cnt[w] += 1
        for i in range(nt):
            c = np.int64(cnt[touched[i]])
            total += c * (c - 1) // 2
            cnt[touched[i]] = 0
    return total


def _row_pieces(indptr: np.ndarray, parts: int) -> np.ndarray:
    """Row bounds cutting a CSR into `parts` pieces of about equal slot counts."""
    cuts = np.searchsorted(indptr, np.linspace(0, indptr[-1], parts + 1), side="left")
    cuts[0], cuts[-1] = 0, indptr.shape[0] - 1
    return np.unique(cuts).astype(np.int64)


def _local_counts(g: CSRGraph, threads: int | None = None) -> dict[str, int]:
    """Degree, triangle, wedge and 4-cycle counts on the ranked CSR, in parallel pieces with exact int64 sums."""
    nthreads = resolve_threads(threads)
    ranked = g.prepared("ranked", nthreads)
    ip, ix, n = ranked.indptr, ranked.indices, ranked.num_vertices
    rows = _row_pieces(ip, 64 * nthreads if nthreads > 1 else 1)
    scratch: dict[int, tuple[np.ndarray, ...]] = {}

    def mine(kind: str) -> tuple[np.ndarray, ...]:
        key = (threading.get_ident(), kind)
        if key not in scratch:
            scratch[key] = (np.zeros(n, np.int64),) if kind == "tv" else (np.zeros(n, np.int32), np.zeros(n, np.int32))
        return scratch[key]

    stats = run_chunks(lambda c: _edge_stats(ip, ix, rows[c], rows[c + 1], mine("tv")[0]), len(rows) - 1, nthreads)
    cycles = run_chunks(lambda c: _four_cycles(ip, ix, rows[c], rows[c + 1], *mine("c4")), len(rows) - 1, nthreads)
    t_v = np.zeros(n, np.int64)
    for (_, kind), arrs in scratch.items():
        if kind == "tv":
            t_v += arrs[0]
    t_v //= 2
    deg = np.diff(ip).astype(np.int64)
    tri = sum(int(s[0]) for s in stats) // 3
    return {
        "triangle": tri,
        "wedge": int((deg * (deg - 1) // 2).sum()) - 3 * tri,  # induced wedges
        "3-star": int((deg * (deg - 1) * (deg - 2) // 6).sum()),
        "4-path": sum(int(s[2]) for s in stats) - 3 * tri,
        "tailed-triangle": int((t_v * (deg - 2)).sum()),
        "4-cycle": sum(int(c) for c in cycles),
        "diamond": sum(int(s[1]) for s in stats),
    }


def _motifs_34(g: CSRGraph, k: int, threads: int | None = None) -> dict[str, int]:
    c = _local_counts(g, threads)
    if k == 3:
        return {"wedge": c["wedge"], "triangle": c["triangle"]}
    k4 = int(count_pattern(g, "4-clique", threads=threads))
    diamond = c["diamond"] - 6 * k4
    cycle = c["4-cycle"] - diamond - 3 * k4
    tailed = c["tailed-triangle"] - 4 * diamond - 12 * k4
    star = c["3-star"] - tailed - 2 * diamond - 4 * k4
    path = c["4-path"] - 2 * tailed - 4 * cycle - 6 * diamond - 12 * k4
    return {"3-star": star, "4-path": path, "tailed-triangle": tailed, "4-cycle": cycle, "diamond": diamond,
            "4-clique": k4}


def _class_table(k: int, motifs: list[Pattern]) -> np.ndarray:
    """Lookup from a k-vertex adjacency bitmask (bit per pair i<j) to the motif index, -1 when disconnected."""
    pairs = list(itertools.combinations(range(k), 2))
    index = {m.canonical(): i for i, m in enumerate(motifs)}
    table = np.full(1 << len(pairs), -1, dtype=np.int64)
    for mask in range(1 << len(pairs)):
        edges = [pairs[b] for b in range(len(pairs)) if mask >> b & 1]
        if len({v for e in edges for v in e}) != k:
            continue
        try:
            p = Pattern(k, tuple(edges))
        except ValueError:
            continue
        table[mask] = index[p.canonical()]
    return table


@njit(cache=True, nogil=True)
def _esu(indptr, indices, k, table, nclasses):
    """ESU (Wernicke) enumeration of connected k-vertex subgraphs, each once, classified via `table`."""
    n = indptr.shape[0] - 1
    counts = np.zeros(nclasses, np.int64)
    maxdeg = 0
    for v in range(n):
        maxdeg = max(maxdeg, indptr[v + 1] - indptr[v])
    cap = k * maxdeg + 1
    ext = np.empty((k, cap), np.int64)
    next_len = np.zeros(k, np.int64)
    pos = np.zeros(k, np.int64)
    sub = np.empty(k, np.int64)
    for root in range(n):
        sub[0] = root
        # extension of the 1-vertex subgraph: neighbours above the root
        m = 0
        for e in range(indptr[root], indptr[root + 1]):
            w = indices[e]
            if w > root:
                ext[0, m] = w
                m += 1
        next_len[0] = m
        pos[0] = 0
        depth = 0  # sub has depth+1 vertices; ext[depth][:next_len] is its extension set, consumed from pos
        while depth >= 0:
            if pos[depth] >= next_len[depth]:
                depth -= 1
                continue
            w = ext[depth, pos[depth]]
            pos[depth] += 1
            size = depth + 2
            sub[size - 1] = w
            if size == k:
                mask = 0
                bit = 0
                for i in range(k):
                    ai = indices[indptr[sub[i]]:indptr[sub[i] + 1]]
                    for j in range(i + 1, k):
                        if contains(ai, sub[j]):
                            mask |= 1 << bit
                        bit += 1
                c = table[mask]
                if c >= 0:
                    counts[c] += 1
                continue
            # new extension: the rest of the current one, plus exclusive neighbours of w above the root
            m = 0
            for i in range(pos[depth], next_len[depth]):
                ext[depth + 1, m] = ext[depth, i]
                m += 1
            for e in range(indptr[w], indptr[w + 1]):
                u = indices[e]
                if u <= root:
                    continue
                excl = True
                for i in range(size):
                    if sub[i] == u:
                        excl = False
                        break
                    if i < size - 1:
                        ai = indices[indptr[sub[i]]:indptr[sub[i] + 1]]
                        if contains(ai, u):
                            excl = False
                            break
                if excl:
                    dup = False
                    for i in range(m):
                        if ext[depth + 1, i] == u:
                            dup = True
                            break
                    if not dup:
                        ext[depth + 1, m] = u
                        m += 1
            depth += 1
            next_len[depth] = m
            pos[depth] = 0
    return counts


def count_motifs(graph: CSRGraph, k: int, method: str = "auto", threads: int | None = None) -> list[MotifCount]:
    """Vertex-induced counts of every connected k-vertex pattern (k = 3, 4, 5), in a fixed order.

    method: "formula" (k ≤ 4: local counts + identities, on `threads` threads), "esu" (one classifying
    enumeration), or "auto"."""
    if not isinstance(k, int) or not 3 <= k <= 5:
        raise ValueError(f"motif size k must be 3, 4 or 5, got {k!r}")
    if method not in ("auto", "formula", "esu"):
        raise ValueError(f"unknown method {method!r} (auto, formula, esu)")
    motifs = connected_motifs(k)
    if method == "formula" and k == 5:
        raise ValueError("the formula method covers k = 3 and 4; use esu for k = 5")
    if k <= 4 and method != "esu":
        by_name = _motifs_34(graph, k, threads)
        return [MotifCount(m, int(by_name[m.name])) for m in motifs]
    table = _class_table(k, motifs)
    counts = _esu(graph.indptr, graph.indices, k, table, len(motifs))
    return [MotifCount(m, int(c)) for m, c in zip(motifs, counts, strict=True)]
