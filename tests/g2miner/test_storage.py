"""g2miner graph files: every loader path gives the CSR a plain numpy build gives (np.unique over the symmetrised
pairs, the previous loader's method), the cache only maps files on a second run, and bad input names the file and
the place."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from recmine.cli import app
from recmine.g2miner import CSRGraph, count, load_graph, save_graph
from recmine.g2miner.storage import identity_dir, parse_pairs, write_graphminer


def _reference_csr(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetrise, drop self loops and duplicates with np.unique, rows sorted (independent of our builder)."""
    s, d = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    keep = s != d
    u = np.concatenate([s[keep], d[keep]])
    v = np.concatenate([d[keep], s[keep]])
    key = np.unique(u * n + v)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(key // n, minlength=n), out=indptr[1:])
    return indptr, (key % n).astype(np.int32)


def _edges(seed: int = 3, n: int = 300, m: int = 2500) -> tuple[np.ndarray, np.ndarray, int]:
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, n, m), rng.integers(0, n, m)  # with repeats, both directions and self loops
    return src, dst, int(max(src.max(), dst.max()) + 1)


def _same(g: CSRGraph, ref: tuple[np.ndarray, np.ndarray]) -> bool:
    return np.array_equal(np.asarray(g.indptr), ref[0]) and np.array_equal(np.asarray(g.indices), ref[1])


def test_every_loader_path_gives_the_reference_csr(tmp_path, monkeypatch):
    monkeypatch.setenv("RECMINE_CACHE", str(tmp_path / "cache"))
    src, dst, n = _edges()
    ref = _reference_csr(src, dst, n)
    assert _same(CSRGraph.from_edges(src, dst), ref)
    lines = [f"{u}\t{v}" if i % 3 else f"{u},{v} 1.5 extra" for i, (u, v) in enumerate(zip(src, dst, strict=True))]
    text = tmp_path / "g.txt"
    text.write_bytes(("# comment\n% other comment\n\n" + "\r\n".join(lines)).encode())  # CRLF, no final newline
    mtx = tmp_path / "g.mtx"
    mtx.write_text(f"%%MatrixMarket matrix coordinate pattern general\n% c\n{n} {n} {len(src)}\n"
                   + "\n".join(f"{u + 1} {v + 1}" for u, v in zip(src, dst, strict=True)) + "\n")
    gm = tmp_path / "gm"
    write_graphminer(gm, *ref)
    raw = tmp_path / "raw"  # unsorted rows with repeats and one-way edges: cleaned on load
    order = np.argsort(src, kind="stable")
    rp = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=rp[1:])
    write_graphminer(raw, rp, dst[order].astype(np.int32))
    for path in (text, mtx, gm, raw):
        for cache in (False, True, True):  # the second cached load maps what the first wrote
            assert _same(load_graph(path, cache=cache), ref), (path, cache)
    for fmt, name in (("g2m", "g.g2m"), ("npz", "g.npz"), ("graphminer", "out")):
        save_graph(load_graph(text), tmp_path / name, fmt=fmt)
        assert _same(load_graph(tmp_path / name), ref), fmt
    a, b, top = parse_pairs(text, threads=2, chunk_bytes=7)  # many pieces cut at line starts
    assert top == n and np.array_equal(a, src) and np.array_equal(b, dst)


def test_second_run_only_maps_cached_files(tmp_path, monkeypatch):
    monkeypatch.setenv("RECMINE_CACHE", str(tmp_path / "cache"))
    src, dst, n = _edges(5)
    text = tmp_path / "g.txt"
    text.write_text("\n".join(f"{u} {v}" for u, v in zip(src, dst, strict=True)))
    want = count(CSRGraph.from_edges(src, dst), "triangle", threads=1)
    g = load_graph(text)
    assert count(g, "triangle") == want and count(g, "diamond", induced=False) >= 0
    folder = identity_dir(text)
    assert {p.name for p in folder.iterdir()} >= {"csr.g2m", "dag.g2m", "ranked.g2m", "input.ok"}
    g2 = load_graph(text)
    assert isinstance(g2.indices, np.memmap)
    assert isinstance(g2.prepared("dag").indices.base, np.memmap) or isinstance(g2.prepared("dag").indices,
                                                                                    np.memmap)
    assert count(g2, "triangle") == want
    text.write_text("0 1\n1 2\n2 0\n")  # a changed input has a new identity: nothing stale is read
    assert identity_dir(text) != folder and count(load_graph(text), "triangle") == 1


def test_bad_binary_input_names_file_and_place(tmp_path):
    src, dst, n = _edges(7)
    indptr, indices = _reference_csr(src, dst, n)
    gm = tmp_path / "gm"
    write_graphminer(gm, indptr, indices)
    edge = gm / "graph.edge.bin"
    edge.write_bytes(edge.read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"graph\.edge\.bin: expected \d+ bytes .*\(truncated"):
        load_graph(gm, cache=False)
    write_graphminer(gm, indptr, indices)
    (gm / "graph.vertex.bin").write_bytes((gm / "graph.vertex.bin").read_bytes() + b"\0" * 8)
    with pytest.raises(ValueError, match="sizes disagree with graph.meta.txt"):
        load_graph(gm, cache=False)
    bad = indices.copy()
    bad[len(bad) // 2] = n + 5
    write_graphminer(gm, indptr, bad)
    with pytest.raises(ValueError, match=rf"gm: column id {n + 5} at edge slot {len(bad) // 2} .* past n = {n}"):
        load_graph(gm, cache=False)
    f = tmp_path / "g.g2m"
    save_graph(CSRGraph(indptr, indices), f)
    f.write_bytes(f.read_bytes()[:-5000])
    with pytest.raises(ValueError, match=r"g\.g2m: truncated: array 'indices'"):
        load_graph(f, cache=False)


def test_bad_line_deep_inside_a_text_file(tmp_path):
    f = tmp_path / "big.txt"
    rows = [f"{i} {i + 1}" for i in range(20000)]
    rows[15432] = "15432 x7"
    f.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"big\.txt:15433: non-numeric edge line '15432 x7'"):
        load_graph(f, cache=False, threads=2)


def test_convert_command(tmp_path, monkeypatch):
    monkeypatch.setenv("RECMINE_CACHE", str(tmp_path / "cache"))
    src, dst, n = _edges(9)
    text = tmp_path / "g.txt"
    text.write_text("\n".join(f"{u} {v}" for u, v in zip(src, dst, strict=True)))
    runner = CliRunner()
    for out, fmt in ((tmp_path / "g.g2m", []), (tmp_path / "gmdir", ["--format", "graphminer"])):
        res = runner.invoke(app, ["mine", "convert", str(text), str(out), *fmt, "--json"])
        assert res.exit_code == 0, res.output
        info = json.loads(res.stdout.strip().splitlines()[-1])
        assert info["vertices"] == n and info["edges"] == _reference_csr(src, dst, n)[1].shape[0] // 2
        assert _same(load_graph(out, cache=False), _reference_csr(src, dst, n))
    res = runner.invoke(app, ["mine", "convert", str(tmp_path / "missing.txt"), str(tmp_path / "x.g2m")])
    assert res.exit_code == 2 and "not found" in res.output


def test_progress_reaches_the_end_for_load_preprocess_and_count(tmp_path):
    src, dst, n = _edges(11)
    text = tmp_path / "g.txt"
    text.write_text("\n".join(f"{u} {v}" for u, v in zip(src, dst, strict=True)))
    seen: dict[str, list[float]] = {"load": [], "prep": [], "count": []}
    g = load_graph(text, cache=False, threads=2, progress=seen["load"].append)
    g.prepared("dag", threads=2, progress=seen["prep"].append)
    from recmine.g2miner import count_detailed

    res = count_detailed(g, "triangle", threads=2, progress=seen["count"].append)
    assert res.count == count(CSRGraph.from_edges(src, dst), "triangle", threads=1)
    for name, fractions in seen.items():
        assert fractions and fractions[-1] == 1.0 and fractions == sorted(fractions), name
