"""Peer comparisons: every engine in its own process with its thread count, peers' counts checked against ours
(and against networkx computed here), a wrong peer count stops the comparison, display rows stay narrow."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from recmine.g2miner import CSRGraph, get_pattern
from recmine.g2miner.peers import (
    CountMismatch,
    _compare,
    compare_motifs,
    compare_patterns,
    fmt_seconds,
    ours_child,
    peer_available,
    table_rows,
)

from .oracle import brute_force_matches, induced_count, to_nx


def _graph(n: int = 40) -> tuple[CSRGraph, nx.Graph]:
    h = nx.gnp_random_graph(n, 0.25, seed=14)
    e = np.array(h.edges(), dtype=np.int64)
    return CSRGraph.from_edges(e[:, 0], e[:, 1], num_vertices=n), h


def test_each_engine_alone_counts_checked_against_networkx():
    g, _ = _graph()
    src, dst = g.edges()
    pats = [("triangle", True), ("4-clique", True), ("diamond", False), ("4-cycle", True)]
    rows = compare_patterns(g.num_vertices, src, dst, pats[:1], threads=(1, 2), repeats=2, timeout=120)
    rows += compare_patterns(g.num_vertices, src, dst, pats[1:], threads=(1,), repeats=2, timeout=120)
    adj = nx.to_numpy_array(to_nx(g), nodelist=range(g.num_vertices), dtype=bool)
    for name, induced in pats:
        p = get_pattern(name)
        want = len(brute_force_matches(adj, np.zeros(g.num_vertices, np.int64), p.num_vertices, list(p.edges), None,
                                       induced))
        mine = [r for r in rows if r["pattern"] == name]
        ours = [r for r in mine if r["engine"] == "g2miner"]
        assert [(r["threads"], r["numba_threads"]) for r in ours] == ([(1, 1), (2, 2)] if name == "triangle"
                                                                      else [(1, 1)])  # set in each child
        peers = {r["engine"]: r for r in mine if r["engine"] != "g2miner"}
        assert set(peers) == {p for p in ("networkx", "igraph") if peer_available(p)}
        for r in mine:
            assert r["count"] == want, (name, r)
            assert r["seconds"] > 0
        for r in peers.values():
            assert r["threads"] == 1
            assert r["x_eq"] == pytest.approx(r["seconds"] / ours[0]["seconds"])
            assert r["x_best"] == pytest.approx(r["seconds"] / min(o["seconds"] for o in ours))
    if peer_available("igraph"):  # the fastest igraph calls (list_triangles is ~3x faster than cliques(3, 3))
        calls = {r["pattern"]: r["call"] for r in rows if r["engine"] == "igraph"}
        assert calls["triangle"] == "list_triangles" and calls["4-clique"] == "cliques(4, 4)"
        assert calls["diamond"] == "count_subisomorphisms_vf2"


def wrong_peer(n: int, src: np.ndarray, dst: np.ndarray, pattern: str, induced: bool, repeats: int) -> dict:
    """A peer that miscounts by one (module level: it runs in a spawned child)."""
    res = ours_child(n, src, dst, pattern, induced, repeats)
    return {**res, "count": res["count"] + 1, "threads": 1, "call": "off by one"}


def test_a_wrong_peer_count_is_an_error():
    g, _ = _graph()
    src, dst = g.edges()
    with pytest.raises(CountMismatch, match="off by one"):
        _compare("triangle", {"g2miner": ours_child, "networkx": wrong_peer},
                 (g.num_vertices, src, dst, "triangle", True, 1), (1,), None, None)


@pytest.mark.skipif(not peer_available("igraph"), reason="igraph is not installed")
def test_motif_counts_checked_class_by_class():
    g, h = _graph(22)
    src, dst = g.edges()
    for k in (3, 4):
        rows = compare_motifs(g.num_vertices, src, dst, k, threads=(1,), repeats=1, timeout=120)
        ours, peer = rows
        assert peer["engine"] == "igraph" and peer["call"] == "motifs_randesu"
        assert peer["count"] == ours["count"]
        for name, c in ours["count"].items():  # and both equal networkx brute force
            assert c == induced_count(h, get_pattern(name)), name


def test_display_rows_are_narrow():
    rows = [{"pattern": "diamond", "engine": "g2miner", "threads": 1, "count": 12, "seconds": 0.0123},
            {"pattern": "diamond", "engine": "igraph", "threads": 1, "count": None, "seconds": None,
             "limit_s": 60.0, "x_eq": None, "x_best": None, "x_eq_min": 4878.0, "x_best_min": 4878.0},
            {"pattern": "diamond", "engine": "networkx", "threads": 1, "count": 12, "seconds": 2.5,
             "x_eq": 203.25, "x_best": 203.25}]
    out = table_rows(rows)
    assert all(len(r) <= 6 for r in out)
    assert out[0]["time"] == "12.3 ms" and out[1]["time"] == ">60 s" and out[1]["x 1 thr"] == ">4,880x"
    assert out[2]["x best"] == "203x" and out[2]["time"] == "2.5 s"
    assert fmt_seconds(0.99996) == "1 s" and fmt_seconds(0.00012345) == "0.123 ms"
