"""`recmine mine` CLI: JSON output, listing, and clear errors for bad input."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
from typer.testing import CliRunner

from recmine.cli import app

runner = CliRunner()


def _write_graph(tmp_path):
    g = nx.gnp_random_graph(40, 0.25, seed=11)
    path = tmp_path / "g.txt"
    path.write_text("# test graph\n" + "\n".join(f"{u} {v}" for u, v in g.edges()) + "\n")
    return g, path


def test_count_json_matches_networkx(tmp_path):
    g, path = _write_graph(tmp_path)
    res = runner.invoke(app, ["mine", "count", "--graph", str(path), "--pattern", "triangle", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["count"] == sum(nx.triangles(g).values()) // 3
    assert set(out) == {"count", "seconds", "compile_seconds"}


def test_list_json(tmp_path):
    g, path = _write_graph(tmp_path)
    res = runner.invoke(app, ["mine", "list", "-g", str(path), "-p", "0-1 1-2 2-0", "-n", "4", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout.strip().splitlines()[-1])["matches"]
    assert len(rows) == 4
    for r in rows:
        a, b, c = r["v0"], r["v1"], r["v2"]
        assert g.has_edge(a, b) and g.has_edge(b, c) and g.has_edge(a, c)


def test_bad_inputs_exit_with_message(tmp_path):
    _, path = _write_graph(tmp_path)
    res = runner.invoke(app, ["mine", "count", "-g", str(tmp_path / "missing.txt"), "-p", "triangle"])
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(app, ["mine", "count", "-g", str(path), "-p", "0-1 2-3"])
    assert res.exit_code == 2 and "not connected" in res.output
    res = runner.invoke(app, ["mine", "count", "-g", str(path), "-p", "pentagram"])
    assert res.exit_code == 2 and "unknown builtin" in res.output
    np.savetxt(tmp_path / "bad.txt", np.array([["1", "x"]]), fmt="%s")
    res = runner.invoke(app, ["mine", "count", "-g", str(tmp_path / "bad.txt"), "-p", "triangle"])
    assert res.exit_code == 2 and "non-numeric" in res.output


def test_count_per_vertex_file(tmp_path):
    g, path = _write_graph(tmp_path)
    out = tmp_path / "tri.npy"
    res = runner.invoke(app, ["mine", "count", "-g", str(path), "-p", "triangle", "--per-vertex", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert set(json.loads(res.stdout.strip().splitlines()[-1])) == {"count", "seconds", "compile_seconds"}
    tri = nx.triangles(g)
    assert np.load(out).tolist() == [tri[v] for v in range(40)]
