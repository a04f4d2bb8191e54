"""Motif counts vs igraph's motifs_randesu, REFERENCE.md, and a brute-force 5-vertex enumeration."""

from __future__ import annotations

import itertools
import math

import igraph as ig
import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recmine.g2miner import CSRGraph, Pattern, load_graph
from recmine.g2miner.motifs import count_motifs


def _igraph_motifs(g: CSRGraph, k: int) -> dict[tuple, int]:
    src, dst = g.edges()
    h = ig.Graph(n=g.num_vertices, edges=list(zip(src.tolist(), dst.tolist(), strict=True)))
    out = {}
    for cls, c in enumerate(h.motifs_randesu(size=k)):
        if isinstance(c, float) and math.isnan(c):
            continue  # disconnected class
        edges = ig.Graph.Isoclass(k, cls).get_edgelist()
        out[Pattern(k, tuple(edges)).canonical()] = int(c)
    return out


@st.composite
def graphs(draw):
    n = draw(st.integers(5, 14))
    p = draw(st.sampled_from([0.2, 0.35, 0.5, 0.8]))
    seed = draw(st.integers(0, 10**6))
    h = nx.gnp_random_graph(n, p, seed=seed)
    e = np.array(h.edges(), dtype=np.int64).reshape(-1, 2)
    return CSRGraph.from_edges(e[:, 0], e[:, 1], num_vertices=n)


@settings(max_examples=25, deadline=None)
@given(g=graphs(), k=st.sampled_from([3, 4]))
def test_motifs_match_igraph(g, k):
    want = _igraph_motifs(g, k)
    for method in ("formula", "esu"):
        got = {m.pattern.canonical(): m.count for m in count_motifs(g, k, method)}
        assert got == want, method


def _brute_force(g: CSRGraph, k: int) -> dict[tuple, int]:
    h = nx.Graph()
    h.add_nodes_from(range(g.num_vertices))
    h.add_edges_from(zip(*(a.tolist() for a in g.edges()), strict=True))
    out: dict[tuple, int] = {}
    for nodes in itertools.combinations(range(g.num_vertices), k):
        sub = h.subgraph(nodes)
        if not nx.is_connected(sub):
            continue
        idx = {v: i for i, v in enumerate(nodes)}
        key = Pattern(k, tuple((idx[u], idx[v]) for u, v in sub.edges())).canonical()
        out[key] = out.get(key, 0) + 1
    return out


@settings(max_examples=12, deadline=None)
@given(g=graphs())
def test_five_motifs_match_brute_force(g):
    got = {m.pattern.canonical(): m.count for m in count_motifs(g, 5) if m.count}
    assert len(count_motifs(g, 5)) == 21
    assert got == _brute_force(g, 5)


REF4 = {
    "facebook_combined": [361090174, 84332901, 148691496, 5250007, 48759042, 30004668],
    "oregon1_010331": [2750160721, 58994849, 17078056, 58868, 744013, 26610],
}
REF3 = {"facebook_combined": [4478819, 1612010], "oregon1_010331": [5475562, 17144]}


@pytest.mark.parametrize("name", ["oregon1_010331", "facebook_combined"])
def test_reference_motifs(shared_data, name):
    g = load_graph(shared_data / "graphs" / f"{name}.txt")
    assert [m.count for m in count_motifs(g, 3)] == REF3[name]
    four = count_motifs(g, 4)
    assert [m.name for m in four] == ["3-star", "4-path", "tailed-triangle", "4-cycle", "diamond", "4-clique"]
    assert [m.count for m in four] == REF4[name]


def test_bad_k():
    g = CSRGraph.from_edges([0, 1], [1, 2])
    for k in (2, 6):
        with pytest.raises(ValueError, match="must be 3, 4 or 5"):
            count_motifs(g, k)
