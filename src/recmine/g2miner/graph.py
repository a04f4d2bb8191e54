"""Immutable CSR graphs: loaders (edge list, Matrix Market, GraphMiner binary, .npz), validation and preprocessing."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recmine.g2miner.prep import Prepared, build_prepared, degree_order

MAX_VERTICES = 2**31 - 2


@dataclass(frozen=True, eq=False)
class CSRGraph:
    """An undirected simple graph in CSR form: sorted neighbour lists, symmetric, no self loops or duplicates."""

    indptr: np.ndarray  # int64[n+1]
    indices: np.ndarray  # int32[2m]
    labels: np.ndarray | None = None  # int32[n] vertex labels
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_vertices(self) -> int:
        """Number of vertices n."""
        return int(self.indptr.shape[0] - 1)

    @property
    def num_edges(self) -> int:
        """Number of undirected edges m."""
        return int(self.indices.shape[0] // 2)

    @property
    def degrees(self) -> np.ndarray:
        """Degree of every vertex (int64)."""
        return np.diff(self.indptr)

    @property
    def max_degree(self) -> int:
        """Largest degree (0 for an empty graph)."""
        return int(self.degrees.max()) if self.num_vertices else 0

    def neighbors(self, v: int) -> np.ndarray:
        """Sorted neighbour ids of v (a view)."""
        return self.indices[self.indptr[v] : self.indptr[v + 1]]

    def edge_sources(self) -> np.ndarray:
        """Source vertex of every CSR slot (int32[2m]), computed once."""
        if "esrc" not in self._cache:
            self._cache["esrc"] = np.repeat(np.arange(self.num_vertices, dtype=np.int32), self.degrees)
        return self._cache["esrc"]

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Each undirected edge once as (u, v) with u < v."""
        src = self.edge_sources()
        keep = src < self.indices
        return src[keep].copy(), self.indices[keep].copy()

    @classmethod
    def from_edges(
        cls,
        src: Any,
        dst: Any,
        num_vertices: int | None = None,
        labels: Any = None,
    ) -> CSRGraph:
        """Build from edge endpoint arrays: symmetrise, drop self loops and duplicates, sort neighbour lists."""
        s = np.asarray(src)
        d = np.asarray(dst)
        if s.shape != d.shape or s.ndim != 1:
            raise ValueError(f"edge arrays must be 1-D and equally long, got shapes {s.shape} and {d.shape}")
        if s.size and not (np.issubdtype(s.dtype, np.integer) and np.issubdtype(d.dtype, np.integer)):
            raise ValueError("edge endpoints must be integers")
        s = s.astype(np.int64, copy=False)
        d = d.astype(np.int64, copy=False)
        if s.size and min(int(s.min()), int(d.min())) < 0:
            bad = int(np.flatnonzero((s < 0) | (d < 0))[0])
            raise ValueError(f"negative vertex id in edge {bad}: ({s[bad]}, {d[bad]})")
        top = int(max(s.max(), d.max())) + 1 if s.size else 0
        n = top if num_vertices is None else int(num_vertices)
        if n < top:
            raise ValueError(f"vertex id {top - 1} out of range for num_vertices={n}")
        if n > MAX_VERTICES:
            raise ValueError(f"too many vertices: {n}")
        keep = s != d
        s, d = s[keep], d[keep]
        u = np.concatenate([s, d])
        v = np.concatenate([d, s])
        key = np.unique(u * n + v) if n else np.empty(0, np.int64)
        u = key // n if n else key
        v = key - u * n if n else key
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(u, minlength=n), out=indptr[1:])
        lab = _check_labels(labels, n)
        return cls(indptr, v.astype(np.int32), lab)

    def with_labels(self, labels: Any) -> CSRGraph:
        """The same graph with vertex labels attached (validated: one non-negative int per vertex)."""
        return CSRGraph(self.indptr, self.indices, _check_labels(labels, self.num_vertices))

    def validate(self) -> None:
        """Check the CSR invariants; raise ValueError naming the first violation."""
        _validate_csr(self.indptr, self.indices, self.num_vertices)

    def prepared(self, kind: str = "ranked", threads: int | None = None,
                 progress: Callable[[float], None] | None = None) -> Prepared:
        """The degree-ranked full CSR (kind "ranked") or degree-oriented DAG ("dag") the kernels run on, built once
        in parallel numba and kept on the graph."""
        if kind not in ("ranked", "dag"):
            raise ValueError(f"unknown prepared form {kind!r} (ranked or dag)")
        if kind not in self._cache:
            if "order" not in self._cache:
                self._cache["order"] = degree_order(self.indptr)
            self._cache[kind] = build_prepared(kind, self.indptr, self.indices, self.labels, threads,
                                               self._cache["order"])
        if progress is not None:
            progress(1.0)
        return self._cache[kind]

    def relabel_by_degree(self) -> tuple[CSRGraph, np.ndarray]:
        """Renumber vertices by descending degree (ties by id); returns (graph, new_to_old), new_to_old[new] = old.

        Symmetry breaking bounds later pattern vertices below earlier ones, so a bounded scan of N(v) reads only
        the neighbours with a smaller id, i.e. a higher degree — at most O(sqrt(m)) of them: the degree
        orientation of clique-like patterns comes for free, and hubs never drive quadratic scans."""
        r = self.prepared("ranked")
        lab = None if self.labels is None else r.labels
        return CSRGraph(r.indptr, r.indices, lab), r.new_to_old.astype(np.int64)

    def oriented(self) -> tuple[np.ndarray, np.ndarray]:
        """Degree-oriented DAG over degree-rank ids (each vertex keeps its neighbours of higher degree, i.e. smaller
        rank) as (indptr, indices) out-neighbour CSR."""
        d = self.prepared("dag")
        return d.indptr, d.indices


def _check_labels(labels: Any, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"labels must have one entry per vertex: expected {n}, got {lab.shape[0] if lab.ndim else 0}")
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        raise ValueError("labels must be integers")
    if lab.size and int(lab.min()) < 0:
        raise ValueError("labels must be non-negative")
    return lab.astype(np.int32)


def _validate_csr(indptr: np.ndarray, indices: np.ndarray, n: int) -> None:
    if indptr.shape[0] != n + 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
        raise ValueError("CSR row offsets must start at 0 and be non-decreasing")
    if int(indptr[-1]) != indices.shape[0]:
        raise ValueError(f"CSR offsets end at {int(indptr[-1])} but there are {indices.shape[0]} column ids")
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n):
        raise ValueError(f"CSR column id out of range [0, {n})")


def load_graph(path: str | os.PathLike[str], labels: str | os.PathLike[str] | None = None) -> CSRGraph:
    """Load a graph, detecting the format: GraphMiner binary folder, Matrix Market .mtx, our .npz, or an edge list.

    `labels` optionally names a `vertex label` text file (one pair per line)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"graph file not found: {p}")
    if p.is_dir():
        g = _load_graphminer(p)
    elif p.suffix == ".npz":
        g = _load_npz(p)
    elif p.suffix == ".mtx":
        g = _load_mtx(p)
    else:
        g = _load_edge_list(p)
    if labels is not None:
        g = g.with_labels(load_labels(labels, g.num_vertices))
    return g


def save_graph(graph: CSRGraph, path: str | os.PathLike[str]) -> None:
    """Save in our fast binary form (.npz: indptr, indices, optional labels)."""
    arrays = {"indptr": graph.indptr, "indices": graph.indices}
    if graph.labels is not None:
        arrays["labels"] = graph.labels
    np.savez(Path(path), **arrays)


def load_labels(path: str | os.PathLike[str], num_vertices: int) -> np.ndarray:
    """Read `vertex label` lines (comments with #) into an int32 array of length num_vertices."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"labels file not found: {p}")
    pairs = _parse_int_pairs(p, what="label")
    if pairs.shape[0] != num_vertices:
        raise ValueError(f"{p}: labels file has {pairs.shape[0]} entries, graph has {num_vertices} vertices")
    lab = np.full(num_vertices, -1, dtype=np.int64)
    if pairs.size:
        if pairs[:, 0].min() < 0 or pairs[:, 0].max() >= num_vertices:
            raise ValueError(f"{p}: vertex id out of range [0, {num_vertices})")
        lab[pairs[:, 0]] = pairs[:, 1]
    if np.any(lab < 0):
        raise ValueError(f"{p}: some vertices have no label or a negative label")
    return lab.astype(np.int32)


def _parse_int_pairs(p: Path, what: str = "edge") -> np.ndarray:
    """Parse lines of at least two integers (extra columns ignored), skipping blank and #/% comment lines."""
    rows: list[str] = []
    numbers: list[int] = []
    with open(p, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "%"))]
    try:
        flat = np.array(" ".join(lines).split(), dtype=np.int64)
        if flat.shape[0] == 2 * len(lines):
            return flat.reshape(-1, 2)
    except (ValueError, OverflowError):
        pass
    for lineno, ln in enumerate(text.splitlines(), start=1):
        s = ln.strip()
        if not s or s.startswith(("#", "%")):
            continue
        parts = s.split()
        if len(parts) < 2:
            raise ValueError(f"{p}:{lineno}: expected two integers per {what} line, got {s!r}")
        try:
            numbers.extend((int(parts[0]), int(parts[1])))
        except ValueError:
            raise ValueError(f"{p}:{lineno}: non-numeric {what} line {s!r}") from None
        rows.append(s)
    return np.array(numbers, dtype=np.int64).reshape(-1, 2)


def _load_edge_list(p: Path) -> CSRGraph:
    pairs = _parse_int_pairs(p)
    if pairs.size and pairs.min() < 0:
        bad = int(np.flatnonzero((pairs < 0).any(axis=1))[0])
        raise ValueError(f"{p}: negative vertex id in edge {bad}: {tuple(pairs[bad])}")
    return CSRGraph.from_edges(pairs[:, 0], pairs[:, 1])


def _load_mtx(p: Path) -> CSRGraph:
    with open(p, encoding="utf-8", errors="replace") as fh:
        header = fh.readline()
        if not header.startswith("%%MatrixMarket"):
            raise ValueError(f"{p}: not a Matrix Market file (missing %%MatrixMarket header)")
        h = header.lower().split()
        if "coordinate" not in h:
            raise ValueError(f"{p}: only coordinate Matrix Market files are supported")
        size_line = ""
        for ln in fh:
            if ln.strip() and not ln.lstrip().startswith("%"):
                size_line = ln
                break
        rest = fh.read()
    try:
        rows, cols, nnz = (int(x) for x in size_line.split()[:3])
    except ValueError:
        raise ValueError(f"{p}: malformed size line {size_line.strip()!r}") from None
    n = max(rows, cols)
    body = [ln for ln in rest.splitlines() if ln.strip() and not ln.lstrip().startswith("%")]
    if len(body) != nnz:
        raise ValueError(f"{p}: header announces {nnz} entries, file has {len(body)} (truncated?)")
    try:
        pairs = np.array([ln.split()[:2] for ln in body], dtype=np.int64).reshape(-1, 2)
    except ValueError:
        raise ValueError(f"{p}: non-numeric entry line") from None
    if pairs.size and (pairs.min() < 1 or pairs.max() > n):
        raise ValueError(f"{p}: entry index out of range [1, {n}]")
    return CSRGraph.from_edges(pairs[:, 0] - 1, pairs[:, 1] - 1, num_vertices=n)


def _load_graphminer(d: Path) -> CSRGraph:
    meta_p, vert_p, edge_p = d / "graph.meta.txt", d / "graph.vertex.bin", d / "graph.edge.bin"
    for f in (meta_p, vert_p, edge_p):
        if not f.exists():
            raise FileNotFoundError(f"GraphMiner folder {d} lacks {f.name}")
    try:
        meta = [int(x) for x in meta_p.read_text().split()]
        n, ne, vid_size, eoff_size = meta[0], meta[1], meta[2], meta[3]
    except (ValueError, IndexError):
        raise ValueError(f"{meta_p}: malformed meta file") from None
    if vid_size != 4 or eoff_size != 8:
        raise ValueError(f"{meta_p}: unsupported id/offset sizes {vid_size}/{eoff_size} (expected 4/8)")
    want_v, want_e = (n + 1) * 8, ne * 4
    if vert_p.stat().st_size != want_v:
        raise ValueError(f"{vert_p}: expected {want_v} bytes for {n + 1} offsets, found {vert_p.stat().st_size} (truncated?)")
    if edge_p.stat().st_size != want_e:
        raise ValueError(f"{edge_p}: expected {want_e} bytes for {ne} edges, found {edge_p.stat().st_size} (truncated?)")
    indptr = np.fromfile(vert_p, dtype=np.uint64).astype(np.int64)
    cols = np.fromfile(edge_p, dtype=np.uint32).astype(np.int64)
    _validate_csr(indptr, cols, n)
    src = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    labels = None
    lab_p = d / "graph.vlabel.bin"
    if lab_p.exists():
        if lab_p.stat().st_size != n:
            raise ValueError(f"{lab_p}: expected {n} one-byte labels, found {lab_p.stat().st_size}")
        labels = np.fromfile(lab_p, dtype=np.uint8)
    return CSRGraph.from_edges(src, cols, num_vertices=n, labels=labels)


def _load_npz(p: Path) -> CSRGraph:
    try:
        with np.load(p) as z:
            indptr = z["indptr"].astype(np.int64)
            indices = z["indices"].astype(np.int32)
            labels = z["labels"] if "labels" in z.files else None
    except (KeyError, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{p}: not a recmine graph .npz ({exc})") from None
    n = indptr.shape[0] - 1
    _validate_csr(indptr, indices, n)
    g = CSRGraph(indptr, indices, _check_labels(labels, n))
    return g
