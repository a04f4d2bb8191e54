"""Immutable CSR graphs: loaders (edge list, Matrix Market, GraphMiner binary, our .g2m, .npz), validation, and the
prepared forms the kernels run on (cached beside nothing: in a folder keyed by the input file's identity)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recmine.g2miner import storage
from recmine.g2miner.prep import Prepared, build_prepared, degree_order, frozen, max_degree, release
from recmine.g2miner.storage import MAX_VERTICES, NeedsCleaning


@dataclass(frozen=True, eq=False)
class CSRGraph:
    """An undirected simple graph in CSR form: sorted neighbour lists, symmetric, no self loops or duplicates."""

    indptr: np.ndarray  # int64[n+1]
    indices: np.ndarray  # int32[2m]
    labels: np.ndarray | None = None  # int32[n] vertex labels
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    cache_dir: Path | None = field(default=None, repr=False, compare=False)  # where its prepared forms are cached

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
        if s.size and min(int(s.min()), int(d.min())) < 0:
            bad = int(np.flatnonzero((s < 0) | (d < 0))[0])
            raise ValueError(f"negative vertex id in edge {bad}: ({s[bad]}, {d[bad]})")
        top = int(max(s.max(), d.max())) + 1 if s.size else 0
        n = top if num_vertices is None else int(num_vertices)
        if n < top:
            raise ValueError(f"vertex id {top - 1} out of range for num_vertices={n}")
        if n > MAX_VERTICES:
            raise ValueError(f"too many vertices: {n}")
        s = s.astype(np.int32, copy=False)
        d = d.astype(np.int32, copy=False)
        indptr, indices = storage.csr_from_pairs(s, d, n)
        return cls(indptr, indices, _check_labels(labels, n))

    def with_labels(self, labels: Any) -> CSRGraph:
        """The same graph with vertex labels attached (validated: one non-negative int per vertex)."""
        g = CSRGraph(self.indptr, self.indices, _check_labels(labels, self.num_vertices), cache_dir=self.cache_dir)
        g._cache.update({k: v for k, v in self._cache.items() if k == "order"})
        return g

    def validate(self) -> None:
        """Check the CSR invariants (offsets, ids in range, sorted duplicate-free rows, no self loops, symmetric);
        raise ValueError naming the first violation."""
        storage.validate_csr(self.indptr, self.indices, self.num_vertices, "graph")

    def prepared(self, kind: str = "ranked", threads: int | None = None,
                 progress: Callable[[float], None] | None = None) -> Prepared:
        """The degree-ranked full CSR (kind "ranked") or degree-oriented DAG ("dag") the kernels run on, built once
        in parallel numba and kept on the graph."""
        if kind not in ("ranked", "dag"):
            raise ValueError(f"unknown prepared form {kind!r} (ranked or dag)")
        if kind not in self._cache:
            self._cache[kind] = self._cached_form(kind, threads) if self.cache_dir is not None else None
            if self._cache[kind] is None:
                self._cache[kind] = build_prepared(kind, self.indptr, self.indices, self.labels, threads,
                                                   self._order())
        if progress is not None:
            progress(1.0)
        return self._cache[kind]

    def _order(self) -> tuple[np.ndarray, np.ndarray]:
        if "order" not in self._cache:
            self._cache["order"] = degree_order(self.indptr)
        return self._cache["order"]

    def _cached_form(self, kind: str, threads: int | None) -> Prepared | None:
        """Map the cached `kind` form of this graph's input file, building and writing it first if needed (None
        when the cache folder cannot be written: the caller builds it in memory)."""
        assert self.cache_dir is not None
        f = self.cache_dir / f"{kind}.g2m"
        if not f.exists():
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.cache_dir / f".{kind}.g2m.tmp{os.getpid()}"
                order, rank = self._order()
                held: dict[str, np.ndarray] = {}

                def out(n: int, nnz: int) -> tuple[np.ndarray, np.ndarray]:
                    held.update(storage.map_writable(tmp, {"indptr": (np.int64, n + 1), "indices": (np.int32, nnz),
                                                           "order": (np.int32, n)}, {"kind": kind}))
                    held["order"][:] = order
                    return held["indptr"], held["indices"]

                p = build_prepared(kind, self.indptr, self.indices, None, threads, (order, rank), out)
                for a in held.values():
                    if isinstance(a, np.memmap):
                        a.flush()
                del held, p
                os.replace(tmp, f)
            except OSError:
                return None
        arrays, _ = storage.map_arrays(f)
        order = arrays["order"]
        lab = np.zeros(0, np.int32) if self.labels is None else np.ascontiguousarray(self.labels[order], np.int32)
        return Prepared(kind, frozen(arrays["indptr"]), frozen(arrays["indices"]), frozen(lab), frozen(order),
                        max_degree(arrays["indptr"]))

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


def load_graph(path: str | os.PathLike[str], labels: str | os.PathLike[str] | None = None,
               threads: int | None = None, cache: bool = True,
               progress: Callable[[float], None] | None = None) -> CSRGraph:
    """Load a graph, detecting the format: GraphMiner binary folder, our .g2m file, .npz, Matrix Market .mtx, or an
    edge list (whitespace- or comma-separated ids, #/% comments, extra columns ignored).

    Binary forms are memory-mapped (zero copy) and validated in parallel numba; text is parsed in parallel numba
    and its CSR is cached as a .g2m file in a folder keyed by the file's identity, as are the preprocessed forms, so
    a second run only maps files (cache=False: nothing is read from or written to the cache). `labels` optionally
    names a `vertex label` text file (one pair per line)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"graph file not found: {p}")
    cdir = storage.identity_dir(p) if cache else None
    ok = cdir is not None and (cdir / "input.ok").exists()
    if cdir is not None and (cdir / "csr.g2m").exists():
        arrays, _ = storage.map_arrays(cdir / "csr.g2m")
        g = CSRGraph(arrays["indptr"], arrays["indices"], _labels_of(p, arrays["indptr"].shape[0] - 1),
                     cache_dir=cdir)
    elif p.is_dir():
        g = _load_graphminer(p, cdir, ok, threads)
    elif storage.is_g2m(p):
        arrays, _ = storage.map_arrays(p)
        if "indptr" not in arrays or "indices" not in arrays:
            raise ValueError(f"{p}: a .g2m file without indptr and indices arrays")
        if not ok:
            storage.validate_csr(arrays["indptr"], arrays["indices"], arrays["indptr"].shape[0] - 1, str(p),
                                 threads)
        g = CSRGraph(arrays["indptr"], arrays["indices"], _check_labels(arrays.get("labels"),
                                                                          arrays["indptr"].shape[0] - 1), cache_dir=cdir)
    elif p.suffix == ".npz":
        g = _load_npz(p)
    else:
        if p.suffix == ".mtx":
            src, dst, n = _read_mtx(p, threads)
        else:
            src, dst, n = storage.parse_pairs(p, threads=threads, progress=progress)
        indptr, indices = storage.csr_from_pairs(src, dst, n)
        del src, dst
        g = CSRGraph(indptr, indices, cache_dir=cdir)
        if cdir is not None:
            _remember(cdir, "csr.g2m", {"indptr": indptr, "indices": indices})
    if cdir is not None and not ok:
        _remember(cdir, "input.ok", None)
    if labels is not None:
        g = g.with_labels(load_labels(labels, g.num_vertices))
    if progress is not None:
        progress(1.0)
    return g


def _labels_of(p: Path, n: int) -> np.ndarray | None:
    """Vertex labels that live beside a cached CSR (a GraphMiner folder's vlabel file)."""
    lab_p = p / "graph.vlabel.bin" if p.is_dir() else None
    if lab_p is not None and lab_p.exists():
        return storage.map_graphminer(p)[2]
    return None


def _remember(cdir: Path, name: str, arrays: dict[str, np.ndarray] | None) -> None:
    """Write a cache entry; a cache folder that cannot be written only costs the next run its speed."""
    try:
        cdir.mkdir(parents=True, exist_ok=True)
        if arrays is None:
            (cdir / name).write_text("validated\n")
        else:
            storage.write_arrays(cdir / name, arrays)
    except OSError:
        pass


def save_graph(graph: CSRGraph, path: str | os.PathLike[str], fmt: str | None = None) -> None:
    """Save in a binary form: our memory-mappable .g2m file (default), GraphMiner's folder (fmt "graphminer", or a
    path that is an existing folder), or .npz (fmt "npz", or a .npz suffix)."""
    p = Path(path)
    fmt = fmt or ("npz" if p.suffix == ".npz" else "graphminer" if p.is_dir() else "g2m")
    if fmt == "npz":
        arrays = {"indptr": np.asarray(graph.indptr), "indices": np.asarray(graph.indices)}
        if graph.labels is not None:
            arrays["labels"] = graph.labels
        np.savez(p, **arrays)
    elif fmt == "graphminer":
        storage.write_graphminer(p, graph.indptr, graph.indices, graph.labels)
    elif fmt == "g2m":
        arrays = {"indptr": np.asarray(graph.indptr), "indices": np.asarray(graph.indices)}
        if graph.labels is not None:
            arrays["labels"] = graph.labels
        storage.write_arrays(p, arrays, {"n": graph.num_vertices, "slots": int(graph.indices.shape[0])})
    else:
        raise ValueError(f"unknown graph format {fmt!r} (g2m, graphminer or npz)")


def load_labels(path: str | os.PathLike[str], num_vertices: int) -> np.ndarray:
    """Read `vertex label` lines (comments with #) into an int32 array of length num_vertices."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"labels file not found: {p}")
    v, lab_, _ = storage.parse_pairs(p, what="label", threads=1)
    if v.shape[0] != num_vertices:
        raise ValueError(f"{p}: labels file has {v.shape[0]} entries, graph has {num_vertices} vertices")
    lab = np.full(num_vertices, -1, dtype=np.int64)
    if v.size:
        if v.max() >= num_vertices:
            raise ValueError(f"{p}: vertex id {int(v.max())} out of range [0, {num_vertices})")
        lab[v] = lab_
    if np.any(lab < 0):
        raise ValueError(f"{p}: some vertices have no label")
    return lab.astype(np.int32)


def _read_mtx(p: Path, threads: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """A coordinate Matrix Market file as 0-based endpoint arrays and n (the numba parser reads the body)."""
    skip = 0
    with open(p, "rb") as fh:
        header = fh.readline()
        skip += len(header)
        if not header.startswith(b"%%MatrixMarket"):
            raise ValueError(f"{p}: not a Matrix Market file (missing %%MatrixMarket header)")
        if b"coordinate" not in header.lower():
            raise ValueError(f"{p}: only coordinate Matrix Market files are supported")
        size_line = b""
        for ln in fh:
            skip += len(ln)
            if ln.strip() and not ln.lstrip().startswith(b"%"):
                size_line = ln
                break
    try:
        rows, cols, nnz = (int(x) for x in size_line.split()[:3])
    except ValueError:
        raise ValueError(f"{p}: malformed size line {size_line.strip()!r}") from None
    n = max(rows, cols)
    a, b, upto = storage.parse_pairs(p, threads=threads, skip_bytes=skip)  # upto: largest id + 1
    if a.shape[0] != nnz:
        raise ValueError(f"{p}: header announces {nnz} entries, file has {a.shape[0]} (truncated?)")
    if a.size and (min(int(a.min()), int(b.min())) < 1 or upto > n + 1):
        raise ValueError(f"{p}: entry index out of range [1, {n}]")
    return a - 1, b - 1, n


def _load_graphminer(d: Path, cdir: Path | None, trusted: bool, threads: int | None) -> CSRGraph:
    """Map a GraphMiner folder zero-copy; validate it once (the cache remembers); rows that are unsorted, repeat
    ids, hold self loops or miss reverse edges are cleaned into a new CSR (cached as .g2m)."""
    indptr, indices, labels = storage.map_graphminer(d)
    n = indptr.shape[0] - 1
    if not trusted:
        try:
            storage.validate_csr(indptr, indices, n, str(d), threads)
            release(indices, 0, indices.shape[0])  # validated: the pages need not stay in our resident set
        except NeedsCleaning:
            src = np.repeat(np.arange(n, dtype=np.int32), np.diff(indptr))
            indptr, indices = storage.csr_from_pairs(src, np.asarray(indices), n)
            if cdir is not None:
                _remember(cdir, "csr.g2m", {"indptr": indptr, "indices": indices})
    return CSRGraph(indptr, indices, labels, cache_dir=cdir)


def _load_npz(p: Path) -> CSRGraph:
    try:
        with np.load(p) as z:
            indptr = z["indptr"].astype(np.int64)
            indices = z["indices"].astype(np.int32)
            labels = z["labels"] if "labels" in z.files else None
    except (KeyError, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{p}: not a recmine graph .npz ({exc})") from None
    n = indptr.shape[0] - 1
    storage.validate_csr(indptr, indices, n, str(p))
    return CSRGraph(indptr, indices, _check_labels(labels, n))
