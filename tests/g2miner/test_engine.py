"""g2miner engine: counts vs networkx/brute force on random graphs, reference counts, listing, task splits."""

from __future__ import annotations

import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recmine.g2miner import (
    BUILTINS,
    CSRGraph,
    Pattern,
    analyze,
    count,
    count_tasks,
    get_pattern,
    list_matches,
    load_graph,
    task_space,
)

from .oracle import edge_induced_count, induced_count, pattern_nx, to_nx

SMALL_PATTERNS = sorted({get_pattern(n).text(): n for n in BUILTINS if get_pattern(n).num_vertices <= 6}.values())


@st.composite
def small_graphs(draw, max_n: int = 9):
    n = draw(st.integers(4, max_n))
    p = draw(st.sampled_from([0.3, 0.5, 0.7, 0.9]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    iu, ju = np.triu_indices(n, 1)
    keep = rng.random(iu.shape[0]) < p
    return CSRGraph.from_edges(iu[keep], ju[keep], num_vertices=n)


@pytest.mark.parametrize("name", SMALL_PATTERNS)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=small_graphs())
def test_builtin_counts_match_networkx(name, g):
    p = get_pattern(name)
    h = to_nx(g)
    assert count(g, p, induced=False) == edge_induced_count(h, p)
    assert count(g, p, induced=True) == induced_count(h, p)


@settings(max_examples=25, deadline=None)
@given(g=small_graphs(max_n=8), data=st.data())
def test_random_patterns_match_networkx(g, data):
    k = data.draw(st.integers(3, 5))
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    mask = data.draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    edges = [e for e, m in zip(pairs, mask, strict=True) if m] + [(i, i + 1) for i in range(k - 1)]
    p = Pattern.from_edges(edges)
    h = to_nx(g)
    assert count(g, p, induced=False) == edge_induced_count(h, p)
    assert count(g, p, induced=True) == induced_count(h, p)


def test_eight_clique_and_larger_patterns():
    g = CSRGraph.from_edges(*np.triu_indices(10, 1))  # K10
    assert count(g, "8-clique") == 45  # C(10, 8)
    assert count(g, "house", induced=False) == edge_induced_count(to_nx(g), get_pattern("house"))
    assert count(g, "6-cycle", induced=True) == 0


@settings(max_examples=15, deadline=None)
@given(g=small_graphs(max_n=9), data=st.data())
def test_labeled_patterns_match_networkx(g, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    g = g.with_labels(rng.integers(0, 2, g.num_vertices))
    base = get_pattern(data.draw(st.sampled_from(["triangle", "wedge", "4-path", "tailed-triangle", "diamond"])))
    labels = tuple(data.draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=base.num_vertices,
                                      max_size=base.num_vertices)))
    p = Pattern(base.num_vertices, base.edges, labels)
    h = to_nx(g)
    assert count(g, p, induced=False) == edge_induced_count(h, p)
    assert count(g, p, induced=True) == induced_count(h, p)


def test_listing_streams_valid_distinct_matches():
    g = CSRGraph.from_edges(*np.array(nx.gnp_random_graph(30, 0.3, seed=3).edges()).T)
    h = to_nx(g)
    for name, induced in [("diamond", False), ("4-cycle", True), ("triangle", True), ("4-clique", True)]:
        p = get_pattern(name)
        chunks = list(list_matches(g, p, induced=induced, chunk_size=7))
        rows = np.concatenate(chunks) if chunks else np.zeros((0, p.num_vertices), dtype=np.int64)
        assert all(c.shape[0] <= 7 for c in chunks)
        assert rows.shape[0] == count(g, p, induced=induced)
        seen = set()
        for row in rows.tolist():
            for u, v in p.edges:  # every pattern edge is present
                assert h.has_edge(row[u], row[v])
            if induced:
                sub = h.subgraph(row)
                assert nx.is_isomorphic(sub, pattern_nx(p))
            key = frozenset(h.subgraph(row).edges()) if induced else frozenset(
                frozenset((row[u], row[v])) for u, v in p.edges)
            assert key not in seen  # each subgraph once
            seen.add(key)


def test_task_partition_sums_to_count():
    g = CSRGraph.from_edges(*np.array(nx.gnp_random_graph(60, 0.2, seed=5).edges()).T)
    for name in ["triangle", "diamond", "4-cycle"]:
        n, work = task_space(g, name, induced=False)
        assert work.shape == (n,)
        parts = np.array_split(np.random.default_rng(0).permutation(n), 3)
        assert sum(count_tasks(g, name, False, part) for part in parts) == count(g, name, induced=False)


def test_plan_shape():
    plan = analyze(get_pattern("4-cycle"), induced=True)
    assert plan.num_automorphisms == 8
    assert len(plan.constraints) == 4  # |Aut| = 8 = 4 * 2: an orbit of 4, then one of 2
    assert analyze(get_pattern("5-clique")).kind == "clique"


def _reference(shared: Path) -> dict[str, dict[str, int]]:
    text = (shared / "graphs" / "REFERENCE.md").read_text()
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        m = re.match(r"\| (facebook_combined|oregon1_010331) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \|",
                     line)
        if m and m.group(1) not in out:  # the first table: triangles .. diamond
            vals = [int(x.replace(",", "")) for x in m.groups()[1:]]
            out[m.group(1)] = dict(zip(["triangle", "4-clique", "5-clique", "4-cycle", "diamond"], vals,
                                       strict=True))
    return out


def test_reference_counts_oregon(shared_data):
    ref = _reference(shared_data)["oregon1_010331"]
    g = load_graph(shared_data / "graphs" / "oregon1_010331.txt")
    assert (g.num_vertices, g.num_edges) == (10670, 22002)
    for name, want in ref.items():
        assert count(g, name, induced=False) == want, name
    assert count(g, "4-cycle", induced=True) == 58868
    assert count(g, "diamond", induced=True) == 744013
    assert count(g, "tailed-triangle", induced=True) == 17078056


def test_reference_counts_facebook(shared_data):
    ref = _reference(shared_data)["facebook_combined"]
    g = load_graph(shared_data / "graphs" / "facebook_combined.txt")
    assert (g.num_vertices, g.num_edges) == (4039, 88234)
    for name in ["triangle", "4-clique", "diamond"]:
        assert count(g, name, induced=False) == ref[name], name
    assert count(g, "wedge", induced=True) == 4478819
    assert count(g, "4-cycle", induced=True) == 5250007


def test_set_operations_match_numpy():
    """Merged and galloped (one list more than SKEW times longer) intersections, bounded, in place, both argument
    orders, and the plain merges of the clique kernels."""
    from recmine.g2miner.setops import (
        SKEW,
        intersect,
        intersect_count,
        intersect_inplace,
        merge_count,
        merge_intersect,
    )

    rng = np.random.default_rng(15)
    out = np.empty(3000, np.int32)
    galloped = 0
    for t in range(400):
        a = np.unique(rng.integers(0, 3000, rng.integers(0, 40))).astype(np.int32)
        b = np.unique(rng.integers(0, 3000, rng.integers(0, 3000 if t % 2 else 30))).astype(np.int32)
        ub = int(rng.integers(0, 3100))
        galloped += 0 < len(a) and len(b) > SKEW * len(a)
        want = [int(x) for x in np.intersect1d(a, b) if x < ub]
        for x, y in ((a, b), (b, a)):
            assert out[:intersect(x, y, ub, out)].tolist() == want
            assert intersect_count(x, y, ub) == len(want)
            buf = np.zeros(3000, np.int32)
            buf[:len(x)] = x
            assert buf[:intersect_inplace(buf, len(x), y, ub)].tolist() == want
            both = np.intersect1d(x, y).tolist()
            assert merge_count(x, y) == len(both) and out[:merge_intersect(x, y, out)].tolist() == both
    assert galloped >= 50
