"""Graph files at memory speed: a numba edge-list parser, CSR by counting sort, memory-mapped zero-copy binary forms
(GraphMiner's folder and our own .g2m file) with validation in numba, and the cache of preprocessed forms.

Our .g2m file: 8 bytes magic, a little-endian u64 header length, a JSON header naming each array's dtype, byte
offset and length, then the arrays at 4096-byte aligned offsets, so every array is an np.memmap view (no copy).
The preprocessed forms of a graph file (its ranked CSR and oriented DAG) are cached as .g2m files in a folder keyed
by the input's identity (resolved path, size, modification time of each file): a second run only maps them."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numba import njit

from recmine.g2miner.prep import even_ranges, resolve_threads, run_chunks

MAGIC = b"RMG2M\x00\x01\x00"
ALIGN = 4096
MAX_VERTICES = 2**31 - 2

# parser error codes
_NON_NUMERIC, _ONE_COLUMN, _NEGATIVE, _TOO_LARGE = 1, 2, 3, 4


# ------------------------------------------------------------------------------------------------- text parsing
@njit(cache=True, nogil=True)
def _line_starts(buf, lo, hi):
    """Move lo forward to the start of a line (lo itself if it is one)."""
    if lo == 0:
        return 0
    while lo < hi and buf[lo - 1] != 10:
        lo += 1
    return lo


@njit(cache=True, nogil=True, inline="always")
def _read_id(buf, i, hi):
    """Skip separators, read one non-negative integer: (value, next byte, error code)."""
    while i < hi and (buf[i] == 32 or buf[i] == 9 or buf[i] == 44 or buf[i] == 13):
        i += 1
    if i >= hi or buf[i] == 10:
        return 0, i, _ONE_COLUMN
    if buf[i] == 45:  # '-'
        return 0, i, _NEGATIVE
    if buf[i] < 48 or buf[i] > 57:
        return 0, i, _NON_NUMERIC
    x = 0
    while i < hi and 48 <= buf[i] <= 57:
        x = x * 10 + (buf[i] - 48)
        if x > 2147483646:
            return 0, i, _TOO_LARGE
        i += 1
    if i < hi and not (buf[i] == 32 or buf[i] == 9 or buf[i] == 44 or buf[i] == 13 or buf[i] == 10):
        return 0, i, _NON_NUMERIC
    return x, i, 0


@njit(cache=True, nogil=True)
def _parse_pairs(buf, lo, hi, out_a, out_b, at, write):
    """Parse lines in buf[lo:hi] (lo at a line start) holding at least two non-negative integers; skip blank and
    #/% comment lines. With write, store pairs at out_a/out_b[at:]. Returns (pairs, error code, error byte, max id)."""
    i = lo
    count = 0
    top = -1
    while i < hi:
        while i < hi and (buf[i] == 32 or buf[i] == 9 or buf[i] == 13):
            i += 1
        if i >= hi:
            break
        c = buf[i]
        if c == 10:
            i += 1
            continue
        if c == 35 or c == 37:  # '#' or '%'
            while i < hi and buf[i] != 10:
                i += 1
            continue
        line = i
        x, i, code = _read_id(buf, i, hi)
        if code:
            return count, code, line, top
        y, i, code = _read_id(buf, i, hi)
        if code:
            return count, code, line, top
        if write:
            out_a[at + count] = x
            out_b[at + count] = y
        if x > top:
            top = x
        if y > top:
            top = y
        count += 1
        while i < hi and buf[i] != 10:  # extra columns (weights, timestamps) are ignored
            i += 1
    return count, 0, -1, top


def _parse_error(path: Path, buf: np.ndarray, code: int, pos: int, what: str) -> ValueError:
    lineno = int(np.count_nonzero(buf[:pos] == 10)) + 1
    end = pos
    while end < buf.shape[0] and buf[end] != 10 and end - pos < 80:
        end += 1
    text = bytes(buf[pos:end]).decode("utf-8", errors="replace").strip()
    why = {_NON_NUMERIC: f"non-numeric {what} line", _ONE_COLUMN: f"expected two integers per {what} line, got",
           _NEGATIVE: f"negative vertex id in {what} line", _TOO_LARGE: f"id above {MAX_VERTICES} in {what} line"}[code]
    return ValueError(f"{path}:{lineno}: {why} {text!r}")


def parse_pairs(path: str | os.PathLike[str], what: str = "edge", threads: int | None = None, skip_bytes: int = 0,
                progress: Callable[[float], None] | None = None, chunk_bytes: int = 1 << 20,
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Read lines of two non-negative integers (extra columns ignored; blank and #/% lines skipped) from a
    memory-mapped text file in parallel: (first column int32, second column int32, largest id + 1).

    Pieces of about `chunk_bytes` (at most 64 per thread) start at line starts. Raises ValueError naming the file,
    the line and its text for the first bad line."""
    p = Path(path)
    size = p.stat().st_size - skip_bytes
    if size <= 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), 0
    buf = np.memmap(p, dtype=np.uint8, mode="r", offset=skip_bytes)
    nthreads = resolve_threads(threads)
    cuts = even_ranges(size, max(1, min(64 * nthreads, size // chunk_bytes + 1)))
    starts = [int(_line_starts(buf, int(c), size)) for c in cuts[:-1]] + [size]
    nchunks = len(starts) - 1
    dummy = np.zeros(0, np.int32)

    def first_pass(c: int) -> tuple[int, int, int, int]:
        return _parse_pairs(buf, starts[c], starts[c + 1], dummy, dummy, 0, False)

    half = (lambda f: progress(f / 2)) if progress is not None else None
    counts = run_chunks(first_pass, nchunks, nthreads, half, np.diff(starts))
    for _, code, pos, _ in counts:
        if code:
            raise _parse_error(p, buf, code, pos, what)
    at = np.zeros(nchunks + 1, np.int64)
    np.cumsum([r[0] for r in counts], out=at[1:])
    a = np.empty(int(at[-1]), np.int32)
    b = np.empty(int(at[-1]), np.int32)
    rest = (lambda f: progress(0.5 + f / 2)) if progress is not None else None
    run_chunks(lambda c: _parse_pairs(buf, starts[c], starts[c + 1], a, b, at[c], True), nchunks, nthreads, rest,
               np.diff(starts))
    top = max((r[3] for r in counts), default=-1)
    return a, b, top + 1


# ---------------------------------------------------------------------------------------------- CSR construction
@njit(cache=True, nogil=True)
def _scatter_both(src, dst, n):
    """Counting sort of the directed edges u->v and v->u (self loops dropped) by source: (indptr, rows unsorted)."""
    ptr = np.zeros(n + 1, np.int64)
    for i in range(src.shape[0]):
        if src[i] != dst[i]:
            ptr[src[i] + 1] += 1
            ptr[dst[i] + 1] += 1
    for v in range(n):
        ptr[v + 1] += ptr[v]
    pos = ptr[:-1].copy()
    adj = np.empty(ptr[n], np.int32)
    for i in range(src.shape[0]):
        u = src[i]
        v = dst[i]
        if u != v:
            adj[pos[u]] = v
            pos[u] += 1
            adj[pos[v]] = u
            pos[v] += 1
    return ptr, adj


@njit(cache=True, nogil=True)
def _transpose_dedup(ptr, adj):
    """Transpose a symmetric CSR (so every row comes out sorted), then drop repeated ids: O(E), no sort."""
    n = ptr.shape[0] - 1
    pos = ptr[:-1].copy()
    out = np.empty(adj.shape[0], np.int32)
    for u in range(n):
        for e in range(ptr[u], ptr[u + 1]):
            v = adj[e]
            out[pos[v]] = u
            pos[v] += 1
    indptr = np.zeros(n + 1, np.int64)
    w = 0
    for u in range(n):
        prev = -1
        for e in range(ptr[u], ptr[u + 1]):
            x = out[e]
            if x != prev:
                out[w] = x
                w += 1
                prev = x
        indptr[u + 1] = w
    return indptr, out, w


def csr_from_pairs(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric CSR with sorted, duplicate-free rows and no self loops from edge endpoint arrays (ids < n),
    by counting sort in O(E): one transient copy of the edge array at a time."""
    ptr, adj = _scatter_both(src, dst, np.int64(n))
    indptr, out, w = _transpose_dedup(ptr, adj)
    del adj
    if w < out.shape[0]:
        out = out[:w].copy() if w < 0.9 * out.shape[0] else out[:w]
    return indptr, out


# --------------------------------------------------------------------------------------------------- validation
@njit(cache=True, nogil=True)
def _check_rows(indptr, indices, lo, hi, n):
    """First problem in rows [lo, hi): (code, row, slot); code 0 ok, 1 id out of range, 2 unsorted or repeated,
    3 self loop, 4 offsets decrease."""
    for u in range(lo, hi):
        a = indptr[u]
        b = indptr[u + 1]
        if b < a:
            return 4, u, a
        prev = -1
        for e in range(a, b):
            x = indices[e]
            if x < 0 or x >= n:
                return 1, u, e
            if x <= prev:
                return 2, u, e
            if x == u:
                return 3, u, e
            prev = x
    return 0, -1, -1


@njit(cache=True, nogil=True)
def _check_symmetric(indptr, indices):
    """Every edge u->v has v->u: rows sorted, so scanning v in order consumes each row's entries in order."""
    n = indptr.shape[0] - 1
    pos = indptr[:-1].copy()
    for v in range(n):
        for e in range(indptr[v], indptr[v + 1]):
            u = indices[e]
            if pos[u] >= indptr[u + 1] or indices[pos[u]] != v:
                return v, u
            pos[u] += 1
    for u in range(n):
        if pos[u] != indptr[u + 1]:
            return indices[pos[u]], u
    return -1, -1


class NeedsCleaning(ValueError):
    """A CSR file whose rows are unsorted, repeat ids, hold self loops or miss reverse edges: loadable, not as is."""


def validate_csr(indptr: np.ndarray, indices: np.ndarray, n: int, where: str, threads: int | None = None,
                 symmetric: bool = True) -> None:
    """Check a CSR in parallel numba; raise ValueError naming `where` and the place (ids past n, decreasing
    offsets) or NeedsCleaning (unsorted, repeated, self loop, asymmetric)."""
    if indptr.shape[0] != n + 1:
        raise ValueError(f"{where}: expected {n + 1} row offsets, found {indptr.shape[0]}")
    if n >= 0 and int(indptr[0]) != 0:
        raise ValueError(f"{where}: row offsets must start at 0, found {int(indptr[0])}")
    if int(indptr[-1]) != indices.shape[0]:
        raise ValueError(f"{where}: row offsets end at {int(indptr[-1])} but there are {indices.shape[0]} column ids")
    nthreads = resolve_threads(threads)
    bounds = even_ranges(n, 16 * nthreads)
    res = run_chunks(lambda c: _check_rows(indptr, indices, bounds[c], bounds[c + 1], n), len(bounds) - 1, nthreads)
    for code, u, e in res:
        if code == 1:
            raise ValueError(f"{where}: column id {int(indices[e])} at edge slot {e} (row {u}) is past n = {n}")
        if code == 4:
            raise ValueError(f"{where}: row offsets decrease at vertex {u}")
        if code == 2:
            raise NeedsCleaning(f"{where}: row {u} is unsorted or repeats an id at edge slot {e}")
        if code == 3:
            raise NeedsCleaning(f"{where}: self loop at vertex {u}")
    if symmetric:
        v, u = _check_symmetric(indptr, indices)
        if v >= 0:
            raise NeedsCleaning(f"{where}: edge {v}->{u} has no reverse edge")


# ------------------------------------------------------------------------------------------ .g2m container files
def write_arrays(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], meta: dict | None = None) -> None:
    """Write arrays to a .g2m file (atomically: a temporary file renamed into place)."""
    p = Path(path)
    layout, off = {}, 0
    for name, a in arrays.items():
        layout[name] = {"dtype": a.dtype.str, "offset": off, "count": int(a.shape[0])}
        off += -(-a.nbytes // ALIGN) * ALIGN
    header = json.dumps({"arrays": layout, "meta": meta or {}}).encode()
    base = -(-(16 + len(header)) // ALIGN) * ALIGN
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(MAGIC + len(header).to_bytes(8, "little") + header)
        for name, a in arrays.items():
            fh.seek(base + layout[name]["offset"])
            np.ascontiguousarray(a).tofile(fh)
        fh.truncate(base + off)
    os.replace(tmp, p)


def is_g2m(path: Path) -> bool:
    """True when the file starts with the .g2m magic bytes."""
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == MAGIC
    except OSError:
        return False


def map_arrays(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict]:
    """Memory-map every array of a .g2m file (read-only, zero copy): (arrays, meta). Raises ValueError naming the
    file and the array when the file is truncated or its header is damaged."""
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(16)
        if head[:8] != MAGIC or len(head) < 16:
            raise ValueError(f"{p}: not a recmine .g2m graph file")
        hlen = int.from_bytes(head[8:16], "little")
        try:
            header = json.loads(fh.read(hlen))
            layout = header["arrays"]
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{p}: damaged .g2m header ({exc})") from None
    base = -(-(16 + hlen) // ALIGN) * ALIGN
    out = {}
    for name, spec in layout.items():
        dt = np.dtype(spec["dtype"])
        start = base + int(spec["offset"])
        end = start + int(spec["count"]) * dt.itemsize
        if end > size:
            raise ValueError(f"{p}: truncated: array {name!r} needs bytes [{start}, {end}) but the file has {size}")
        out[name] = (np.memmap(p, dtype=dt, mode="r", offset=start, shape=(int(spec["count"]),))
                     if spec["count"] else np.zeros(0, dt))
    return out, header.get("meta", {})


def map_writable(path: Path, arrays: dict[str, tuple[np.dtype, int]], meta: dict | None = None,
                 ) -> dict[str, np.ndarray]:
    """Create a .g2m file of the given array shapes and map it writable (fill, flush, then rename into place)."""
    layout, off = {}, 0
    for name, (dt, count) in arrays.items():
        layout[name] = {"dtype": np.dtype(dt).str, "offset": off, "count": int(count)}
        off += -(-(int(count) * np.dtype(dt).itemsize) // ALIGN) * ALIGN
    header = json.dumps({"arrays": layout, "meta": meta or {}}).encode()
    base = -(-(16 + len(header)) // ALIGN) * ALIGN
    with open(path, "wb") as fh:
        fh.write(MAGIC + len(header).to_bytes(8, "little") + header)
        fh.truncate(base + off)
    return {name: (np.memmap(path, dtype=np.dtype(dt), mode="r+", offset=base + layout[name]["offset"],
                             shape=(int(count),)) if count else np.zeros(0, dt))
            for name, (dt, count) in arrays.items()}


# ------------------------------------------------------------------------------------------- GraphMiner folders
GM_FILES = ("graph.meta.txt", "graph.vertex.bin", "graph.edge.bin")


def read_graphminer_meta(d: Path) -> tuple[int, int]:
    """(n, number of directed edges) from a GraphMiner folder's meta file, checked against the binary sizes."""
    meta_p, vert_p, edge_p = (d / f for f in GM_FILES)
    for f in (meta_p, vert_p, edge_p):
        if not f.exists():
            raise FileNotFoundError(f"GraphMiner folder {d} lacks {f.name}")
    try:
        meta = [int(x) for x in meta_p.read_text().split()]
        n, ne, vid_size, eoff_size = meta[0], meta[1], meta[2], meta[3]
    except (ValueError, IndexError):
        raise ValueError(f"{meta_p}: malformed meta file (expected n, edges, id size, offset size, ...)") from None
    if vid_size != 4 or eoff_size != 8:
        raise ValueError(f"{meta_p}: unsupported id/offset sizes {vid_size}/{eoff_size} (expected 4/8)")
    if n > MAX_VERTICES:
        raise ValueError(f"{meta_p}: too many vertices: {n}")
    want_v, want_e = (n + 1) * 8, ne * 4
    if vert_p.stat().st_size != want_v:
        raise ValueError(f"{vert_p}: expected {want_v} bytes for the {n + 1} offsets the meta file announces, found "
                         f"{vert_p.stat().st_size} (truncated, or sizes disagree with {meta_p.name})")
    if edge_p.stat().st_size != want_e:
        raise ValueError(f"{edge_p}: expected {want_e} bytes for the {ne} edges the meta file announces, found "
                         f"{edge_p.stat().st_size} (truncated, or sizes disagree with {meta_p.name})")
    return n, ne


def map_graphminer(d: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Memory-map a GraphMiner folder zero-copy: (indptr int64, indices int32, labels or None); sizes checked."""
    n, ne = read_graphminer_meta(d)
    indptr = np.memmap(d / GM_FILES[1], dtype=np.int64, mode="r", shape=(n + 1,))
    indices = np.memmap(d / GM_FILES[2], dtype=np.int32, mode="r", shape=(ne,)) if ne else np.zeros(0, np.int32)
    labels = None
    lab_p = d / "graph.vlabel.bin"
    if lab_p.exists():
        if lab_p.stat().st_size != n:
            raise ValueError(f"{lab_p}: expected {n} one-byte labels, found {lab_p.stat().st_size}")
        labels = np.fromfile(lab_p, dtype=np.uint8).astype(np.int32)
    return indptr, indices, labels


def write_graphminer(d: Path, indptr: np.ndarray, indices: np.ndarray, labels: np.ndarray | None = None) -> None:
    """Write GraphMiner's binary folder (meta, uint64 offsets, uint32 ids, optional uint8 labels)."""
    d.mkdir(parents=True, exist_ok=True)
    n = indptr.shape[0] - 1
    np.asarray(indptr, dtype=np.int64).tofile(d / GM_FILES[1])
    np.asarray(indices, dtype=np.int32).tofile(d / GM_FILES[2])
    maxdeg = int(np.diff(indptr).max()) if n else 0
    nlab = 0
    if labels is not None:
        if labels.size and int(labels.max()) > 255:
            raise ValueError("GraphMiner's format stores one-byte labels; labels above 255 do not fit")
        np.asarray(labels, dtype=np.uint8).tofile(d / "graph.vlabel.bin")
        nlab = int(np.unique(labels).shape[0])
    (d / GM_FILES[0]).write_text(f"{n}\n{indices.shape[0]}\n4 8 {1 if labels is not None else 0} 0\n{maxdeg}\n0\n"
                                 f"{nlab}\n0\n")


# --------------------------------------------------------------------------------------------------- the cache
def cache_root() -> Path:
    """The folder of recmine's caches ($RECMINE_CACHE, else $XDG_CACHE_HOME/recmine or ~/.cache/recmine)."""
    base = os.environ.get("RECMINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "recmine")
    return Path(base)


def identity_dir(path: Path) -> Path:
    """The cache folder of a graph input, keyed by its identity: resolved path, size and modification time of
    each file (a changed input gets a new folder, so a stale preprocessed form is never read)."""
    p = path.resolve()
    files = [p / f for f in (*GM_FILES, "graph.vlabel.bin") if (p / f).exists()] if p.is_dir() else [p]
    key = "|".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return cache_root() / "g2miner_graphs" / hashlib.sha256(key.encode()).hexdigest()[:24]
