"""Independent oracles for g2miner tests: networkx subgraph matching and brute force over vertex subsets."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
from networkx.algorithms import isomorphism as iso

from recmine.g2miner import CSRGraph, Pattern


def to_nx(g: CSRGraph) -> nx.Graph:
    """The same graph as networkx (labels as node attribute 'label')."""
    h = nx.Graph()
    h.add_nodes_from(range(g.num_vertices))
    src, dst = g.edges()
    h.add_edges_from(zip(src.tolist(), dst.tolist(), strict=True))
    if g.labels is not None:
        for v in range(g.num_vertices):
            h.nodes[v]["label"] = int(g.labels[v])
    return h


def pattern_nx(p: Pattern) -> nx.Graph:
    """The pattern as networkx (labels as 'label'; -1 wildcard)."""
    h = nx.Graph()
    h.add_nodes_from(range(p.num_vertices))
    h.add_edges_from(p.edges)
    if p.labels is not None:
        for v, lab in enumerate(p.labels):
            h.nodes[v]["label"] = lab
    return h


def _node_match(gattr, pattr):
    want = pattr.get("label", -1)
    return want == -1 or gattr.get("label") == want


def edge_induced_count(g: nx.Graph, p: Pattern) -> int:
    """Distinct edge sets of g that are images of the pattern under a (label-compatible) monomorphism (VF2)."""
    ph = pattern_nx(p)
    gm = iso.GraphMatcher(g, ph, node_match=_node_match if p.labels is not None else None)
    images = set()
    for m in gm.subgraph_monomorphisms_iter():  # m maps graph vertex -> pattern vertex
        inv = {pv: gv for gv, pv in m.items()}
        images.add(frozenset(frozenset((inv[u], inv[v])) for u, v in p.edges))
    return len(images)


def induced_count(g: nx.Graph, p: Pattern) -> int:
    """Vertex subsets whose induced subgraph is isomorphic to the pattern (brute force)."""
    ph = pattern_nx(p)
    k = p.num_vertices
    labeled = p.labels is not None
    total = 0
    for nodes in itertools.combinations(g.nodes, k):
        sub = g.subgraph(nodes)
        if sub.number_of_edges() != p.num_edges:
            continue
        if iso.GraphMatcher(sub, ph, node_match=_node_match if labeled else None).is_isomorphic():
            total += 1
    return total


def brute_force_matches(adj: np.ndarray, labels: np.ndarray, k: int, edges: list[tuple[int, int]],
                        plabels: tuple[int, ...] | None, induced: bool) -> set[frozenset]:
    """Every match of a pattern, by brute force over vertex subsets and every injective mapping onto them.

    adj is the graph's n x n boolean adjacency, labels its vertex labels; the pattern has vertices 0..k-1, `edges`
    and `plabels` (-1 = any label). A mapping fits when every pattern edge lands on a graph edge, every labeled
    pattern vertex on a vertex with that label and (vertex-induced) every non-edge on a non-edge. Returns, per
    match: vertex-induced, the frozenset of its vertices; edge-induced, the frozenset of its image edges (pairs
    (a, b), a < b) — distinct (vertex set, edge set) subgraphs, the vertex set being the edges' endpoints."""
    n = adj.shape[0]
    subsets = np.array(list(itertools.combinations(range(n), k)), dtype=np.int64).reshape(-1, k)
    perms = np.array(list(itertools.permutations(range(k))), dtype=np.int64)
    m = subsets[:, perms].reshape(-1, k)  # row: graph vertex of pattern vertex i, every subset x every order
    ok = np.ones(m.shape[0], dtype=bool)
    for u, v in edges:
        ok &= adj[m[:, u], m[:, v]]
    if induced:
        present = {(min(u, v), max(u, v)) for u, v in edges}
        for u, v in itertools.combinations(range(k), 2):
            if (u, v) not in present:
                ok &= ~adj[m[:, u], m[:, v]]
    if plabels is not None:
        for i, lab in enumerate(plabels):
            if lab != -1:
                ok &= labels[m[:, i]] == lab
    m = m[ok]
    if induced:
        return {frozenset(row) for row in m.tolist()}
    a, b = m[:, [u for u, _ in edges]], m[:, [v for _, v in edges]]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return {frozenset(zip(r1, r2, strict=True)) for r1, r2 in zip(lo.tolist(), hi.tolist(), strict=True)}
