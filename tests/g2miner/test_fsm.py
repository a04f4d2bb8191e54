"""Frequent subgraph mining vs REFERENCE.md (citeseer) and an independent brute-force miner."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from networkx.algorithms import isomorphism as iso

from recmine.g2miner import CSRGraph, load_graph
from recmine.g2miner.fsm import mine_frequent


def _labeled_key(h: nx.Graph) -> tuple:
    """Canonical form of a small labeled graph: min over vertex orders of (labels, sorted edges)."""
    nodes = list(h.nodes)
    best = None
    for perm in itertools.permutations(range(len(nodes))):
        pos = dict(zip(nodes, perm, strict=True))
        labs = [0] * len(nodes)
        for v in nodes:
            labs[pos[v]] = h.nodes[v]["label"]
        edges = tuple(sorted((min(pos[u], pos[v]), max(pos[u], pos[v])) for u, v in h.edges()))
        key = (tuple(labs), edges)
        if best is None or key < best:
            best = key
    return best


def brute_force_fsm(h: nx.Graph, min_support: int, max_edges: int) -> dict[tuple, int]:
    """Every connected edge subset with <= max_edges edges, grouped by labeled isomorphism class; MNI support
    from all isomorphisms between a class representative and each instance."""
    classes: dict[tuple, tuple[nx.Graph, list[set]]] = {}
    edges = list(h.edges())
    for size in range(1, max_edges + 1):
        for subset in itertools.combinations(edges, size):
            sub = h.edge_subgraph(subset)
            if not nx.is_connected(sub):
                continue
            key = _labeled_key(sub)
            if key not in classes:
                rep = nx.Graph()
                labs, redges = key
                rep.add_nodes_from((i, {"label": lab}) for i, lab in enumerate(labs))
                rep.add_edges_from(redges)
                classes[key] = (rep, [set() for _ in labs])
            rep, domains = classes[key]
            gm = iso.GraphMatcher(nx.Graph(sub), rep, node_match=lambda a, b: a["label"] == b["label"])
            for m in gm.isomorphisms_iter():
                for gv, pv in m.items():
                    domains[pv].add(gv)
    out = {}
    for key, (_, domains) in classes.items():
        s = min(len(d) for d in domains)
        if s >= min_support:
            out[key] = s
    return out


@st.composite
def labeled_graphs(draw):
    n = draw(st.integers(4, 9))
    p = draw(st.sampled_from([0.25, 0.4, 0.6]))
    seed = draw(st.integers(0, 10**6))
    nlab = draw(st.integers(1, 3))
    h = nx.gnp_random_graph(n, p, seed=seed)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, nlab, n)
    for v in h.nodes:
        h.nodes[v]["label"] = int(labels[v])
    return h, labels


@settings(max_examples=30, deadline=None)
@given(data=labeled_graphs(), min_support=st.integers(1, 3), max_edges=st.integers(1, 3))
def test_fsm_matches_brute_force(data, min_support, max_edges):
    h, labels = data
    e = np.array(h.edges(), dtype=np.int64).reshape(-1, 2)
    g = CSRGraph.from_edges(e[:, 0], e[:, 1], num_vertices=h.number_of_nodes(), labels=labels)
    got = {f.pattern.canonical(): f.support for f in mine_frequent(g, min_support, max_edges)}
    assert got == brute_force_fsm(h, min_support, max_edges)


@pytest.mark.parametrize("support, counts", [(100, [7, 12, 24]), (300, [5, 7, 9]), (500, [3, 3, 3])])
def test_citeseer_reference(shared_data, support, counts):
    g = load_graph(shared_data / "graphs" / "citeseer")
    for max_edges, want in zip([1, 2, 3], counts, strict=True):
        assert len(mine_frequent(g, support, max_edges)) == want


def test_bad_input():
    g = CSRGraph.from_edges([0, 1], [1, 2], labels=[0, 0, 1])
    with pytest.raises(ValueError, match="min_support must be a positive"):
        mine_frequent(g, 0)
    with pytest.raises(ValueError, match="vertex-labeled"):
        mine_frequent(CSRGraph.from_edges([0], [1]), 1)
    with pytest.raises(ValueError, match="labels must have one entry per vertex"):
        CSRGraph.from_edges([0, 1], [1, 2], labels=[0, 1])
