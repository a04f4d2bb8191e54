"""Ray backend: identical counts to the local run on every test graph; clear error for an unreachable address."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from recmine.g2miner import CSRGraph, count, load_graph
from recmine.g2miner.distributed import balanced_splits, count_ray

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


def test_balanced_splits_cover_everything():
    work = np.array([1, 1, 1, 50, 1, 1, 1, 1], dtype=float)
    splits = balanced_splits(work, 3)
    assert splits[0][0] == 0 and splits[-1][1] == work.size
    assert all(a[1] == b[0] for a, b in zip(splits, splits[1:], strict=False))
