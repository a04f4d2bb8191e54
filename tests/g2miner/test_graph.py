"""g2miner graphs and patterns: loaders agree across formats, preprocessing, and bad input is named clearly."""

from __future__ import annotations

import numpy as np
import pytest

from recmine.g2miner import CSRGraph, Pattern, get_pattern, load_graph, load_labels, save_graph


def test_formats_agree(shared_data, tmp_path):
    d = shared_data / "graphs"
    a = load_graph(d / "oregon1_010331.txt")
    b = load_graph(d / "oregon1_010331.mtx")
    c = load_graph(d / "oregon1_010331")
    for g in (b, c):
        assert np.array_equal(a.indptr, g.indptr) and np.array_equal(a.indices, g.indices)
    save_graph(a, tmp_path / "g.npz")
    e = load_graph(tmp_path / "g.npz")
    assert np.array_equal(a.indices, e.indices)
    a.validate()


def test_graphminer_labels(shared_data):
    g = load_graph(shared_data / "graphs" / "citeseer")
    assert (g.num_vertices, g.num_edges) == (3312, 4536)
    assert g.labels is not None and g.labels.shape == (3312,)
    assert set(np.unique(g.labels).tolist()) <= set(range(10))


def test_from_edges_cleans_input():
    g = CSRGraph.from_edges([0, 1, 1, 2, 2], [1, 0, 1, 3, 3])
    assert g.num_edges == 2 and g.num_vertices == 4
    assert g.neighbors(1).tolist() == [0] and g.neighbors(2).tolist() == [3]


def test_relabel_and_orientation():
    g = CSRGraph.from_edges([0, 0, 0, 1], [1, 2, 3, 2])
    r, new_to_old = g.relabel_by_degree()
    assert sorted(new_to_old.tolist()) == [0, 1, 2, 3]
    assert np.all(np.diff(r.degrees) <= 0)
    indptr, indices = g.oriented()
    assert indices.shape[0] == g.num_edges


def test_labels_text_file(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("# v label\n0 3\n1 4\n2 3\n")
    assert load_labels(f, 3).tolist() == [3, 4, 3]
    with pytest.raises(ValueError, match="3 entries, graph has 4"):
        load_labels(f, 4)


@pytest.mark.parametrize(
    "content, match",
    [("0 1\n1 x\n", r":2: non-numeric"), ("0 1\n-1 2\n", "negative vertex id"), ("0 1\n5\n", "two integers")],
)
def test_bad_edge_lists(tmp_path, content, match):
    f = tmp_path / "bad.txt"
    f.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_graph(f)


def test_missing_and_truncated(shared_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_graph(tmp_path / "nope.txt")
    src = shared_data / "graphs" / "oregon1_010331"
    dst = tmp_path / "trunc"
    dst.mkdir()
    for name in ("graph.meta.txt", "graph.vertex.bin"):
        (dst / name).write_bytes((src / name).read_bytes())
    (dst / "graph.edge.bin").write_bytes((src / "graph.edge.bin").read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        load_graph(dst)
    mtx = tmp_path / "t.mtx"
    mtx.write_text("%%MatrixMarket matrix coordinate pattern symmetric\n3 3 3\n1 2\n2 3\n")
    with pytest.raises(ValueError, match="announces 3 entries"):
        load_graph(mtx)


@pytest.mark.parametrize(
    "text, match",
    [("0-1 2-3", "not connected"), ("0-1 1-2 2-3 3-4 4-5 5-6 6-7 7-8", "at most 8"), ("0-1 1-x", "cannot parse"),
     ("", "empty"), ("0-1 1-1", "self loop"), ("0-1 | 0:a", "cannot parse pattern label")],
)
def test_bad_patterns(text, match):
    with pytest.raises(ValueError, match=match):
        Pattern.parse(text)


def test_pattern_names_and_text():
    assert get_pattern("diamond").num_edges == 5
    assert get_pattern("0-1 1-2 2-0 2-3").text() == "0-1 0-2 1-2 2-3"
    p = Pattern.parse("0-1 1-2 | 0:5")
    assert p.labels == (5, -1, -1) and Pattern.parse(p.text()) == p
    with pytest.raises(ValueError, match="unknown builtin"):
        get_pattern("9-clique")
