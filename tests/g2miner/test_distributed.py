"""Ray backend: identical counts to the local run on every test graph, workers memory-mapping the prepared graph file
(nothing of the graph in the object store); clear error for an unreachable address."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from recmine.g2miner import CSRGraph, count, load_graph
from recmine.g2miner.distributed import count_ray
from recmine.g2miner.prep import slot_bounds

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _graphs(shared):
    h = nx.powerlaw_cluster_graph(300, 5, 0.3, seed=2)
    e = np.array(h.edges())
    out = [CSRGraph.from_edges(e[:, 0], e[:, 1])]
    if shared is not None:
        out.append(load_graph(shared / "graphs" / "oregon1_010331.txt"))
    return out


SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_ray_counts_equal_local(local_ray):
    for g in _graphs(SHARED if SHARED.is_dir() else None):
        for pattern, induced in [("triangle", True), ("diamond", False), ("4-cycle", True), ("4-clique", True)]:
            res = count_ray(g, pattern, induced, num_workers=2, return_stats=True)
            assert res.count == count(g, pattern, induced=induced)
            assert len(res.worker_seconds) == len(res.worker_tasks) >= 1
            assert sum(res.worker_tasks) > 0
    assert count(_graphs(None)[0], "triangle", backend="ray") == count(_graphs(None)[0], "triangle")


def test_unreachable_address_is_clear():
    g = CSRGraph.from_edges([0, 1, 2], [1, 2, 0])
    with pytest.raises(ConnectionError, match="127.0.0.1:1"):
        count_ray(g, "triangle", address="127.0.0.1:1")
    with pytest.raises(ValueError, match="HOST:PORT"):
        count_ray(g, "triangle", address="nonsense")


def test_file_graph_workers_map_the_cached_file(local_ray, tmp_path, monkeypatch):
    """A graph loaded from a generated text file: 2 workers map its cached prepared form, sums equal local."""
    monkeypatch.setenv("RECMINE_CACHE", str(tmp_path / "cache"))
    h = nx.powerlaw_cluster_graph(400, 6, 0.4, seed=15)
    f = tmp_path / "g.txt"
    f.write_text("\n".join(f"{u} {v}" for u, v in h.edges()))
    g = load_graph(f)
    for pattern, induced in [("triangle", True), ("4-clique", True), ("diamond", False)]:
        res = count_ray(g, pattern, induced, num_workers=2, return_stats=True)
        assert res.count == count(g, pattern, induced=induced, threads=1)
        assert res.graph_file.startswith(str(tmp_path / "cache")) and res.graph_file.endswith(".g2m")
        assert len(res.worker_mapped) == 2 and all(res.worker_mapped)


def test_slot_ranges_cover_everything():
    g = CSRGraph.from_edges(*np.array(nx.powerlaw_cluster_graph(200, 4, 0.3, seed=1).edges()).T)
    for parts in (1, 3, 7):
        b, w = slot_bounds(g.indptr, g.indices, np.int64(0), np.int64(g.indices.shape[0]), parts)
        assert b[0] == 0 and b[-1] == g.indices.shape[0] and np.all(np.diff(b) > 0) and len(b) <= parts + 1
        assert w.shape[0] == len(b) - 1 and np.all(w > 0)
