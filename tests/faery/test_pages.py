"""Memory-mapped inputs and indexes: a build drops the consumed pages of a shared read-only input (never of a
copy-on-write one), a load maps the scan tier's pages (what its time budget leaves, on a thread that a full scan waits
for); results stay equal to the float64 oracle."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from recmine.faery import Index, pages
from recmine.faery.corpus import CHUNK_ROWS
from recmine.faery.exact import brute_force_topk

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps and madvise are Linux's")
N = 2 * CHUNK_ROWS + 1234  # three chunks of the build
DIM = 16


def _resident(path: Path) -> int:
    """Bytes of the file at path resident in this process's mappings (sum of Rss over its entries in smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(head[1]) * 1024
    return total


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(5).standard_normal((N, DIM)).astype(np.float32))
    return path


def _check(idx: Index, x: np.ndarray, k: int = 20) -> None:
    qs = np.random.default_rng(6).standard_normal((4, DIM)).astype(np.float32)
    _, want = brute_force_topk(np.asarray(x), None, qs, k)
    for q in (qs[:1], qs):  # the single-query path and the batch path (the batch path from 8 queries on)
        _, got = idx.search(np.tile(q, (8 // q.shape[0], 1)) if q.shape[0] > 1 else q, k)
        assert np.array_equal(got[: q.shape[0]], want[: q.shape[0]])


@linux
def test_build_from_a_mapped_file_releases_its_pages_and_stays_exact(tmp_path: Path) -> None:
    path = _corpus(tmp_path)
    x = np.load(path, mmap_mode="r")
    idx = Index(DIM)
    idx.add(x)
    assert _resident(path) < 0.1 * path.stat().st_size  # the consumed input is not held beside the index
    _check(idx, x)


@linux
def test_a_copy_on_write_input_keeps_its_changes(tmp_path: Path) -> None:
    """Pages of a "c" mapping that were written exist only in this process: dropping them would lose the change."""
    path = _corpus(tmp_path)
    x = np.load(path, mmap_mode="c")
    changed = [1000, CHUNK_ROWS + 1000, 2 * CHUNK_ROWS + 600]  # a row inside every chunk, changed in memory only
    x[changed] = 50.0
    idx = Index(DIM)
    idx.add(x)
    assert np.array_equal(idx.get(changed), x[changed])
    assert np.array_equal(x[changed], np.full((3, DIM), 50.0, np.float32))
    _check(idx, x)


def _saved(tmp_path: Path) -> tuple[Path, np.ndarray]:
    x = np.load(_corpus(tmp_path))
    idx = Index(DIM)
    idx.add(x)
    idx.save(tmp_path / "idx")
    return tmp_path / "idx", x


@linux
def test_load_maps_a_small_scan_tier_before_it_returns(tmp_path: Path) -> None:
    """Within the time budget every page is mapped by load itself: no thread is left to race the first search."""
    d, x = _saved(tmp_path)
    back = Index.load(d)
    assert back.corpus._prefetch is None
    for name in ("packed", "scale", "live"):
        f = d / f"{name}.npy"
        assert _resident(f) > 0.9 * f.stat().st_size, name
    _check(back, x)


@linux
def test_a_full_scan_waits_for_the_prefetch_thread_and_a_row_list_does_not(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the budget (here 0 s) the thread maps the rest; a search over every row waits for it instead of faulting
    the same pages beside it; a search over a short row list (an id set) does not wait."""
    d, x = _saved(tmp_path)
    go = threading.Event()
    real = pages.advise

    def gated(addr: int, nbytes: int, advice: int, inward: bool) -> bool:
        if advice == pages.MADV_POPULATE_READ:
            go.wait(60)  # the thread's mapping is held up until the test lets it go
        return real(addr, nbytes, advice, inward)

    monkeypatch.setattr(pages, "SYNC_SECONDS", 0.0)
    monkeypatch.setattr(pages, "advise", gated)
    back = Index.load(d)
    th = back.corpus._prefetch
    assert th is not None and th.is_alive()
    mapping = []  # per scan: was the thread still mapping pages when the scan began?
    scan = back._scan
    monkeypatch.setattr(back, "_scan", lambda *a: (mapping.append(th.is_alive()), scan(*a))[1])
    q = np.random.default_rng(8).standard_normal((1, DIM)).astype(np.float32)
    few = np.arange(0, N, 97)
    _, got = back.search(q, 5, allow=few)
    _, want = brute_force_topk(x[few], None, q, 5)
    assert np.array_equal(got, few[want])
    assert mapping == [True]  # the row list did not wait
    _, want = brute_force_topk(x, None, q, 5)
    threading.Timer(0.5, go.set).start()
    _, got = back.search(q, 5)
    assert np.array_equal(got, want)
    assert mapping == [True, False]  # the full scan began after every page was mapped
    assert back.corpus._prefetch is None
    packed = d / "packed.npy"
    assert _resident(packed) > 0.9 * packed.stat().st_size


def test_the_first_search_after_a_load_compiles_nothing_new(tmp_path: Path) -> None:
    """A loaded index's arrays (copy-on-write mappings) type like in-RAM ones in numba: once a search ran on the
    in-RAM index, the same searches on the loaded one add no compiled signature (a read-only mapping would: a compile
    or a cache load on the first search after every load); the results are the float64 oracle's."""
    import numba

    from recmine.faery import kernels

    rng = np.random.default_rng(9)
    x = rng.standard_normal((4000, DIM)).astype(np.float32)
    idx = Index(DIM)
    idx.add(x)
    qs = rng.standard_normal((8, DIM)).astype(np.float32)
    cases = [(qs[:1], 10), (qs, 10), (qs[:1], 300)]  # the single path, the batch path, a sampled threshold
    for q, k in cases:
        idx.search(q, k)
    dispatchers = [f for f in vars(kernels).values() if isinstance(f, numba.core.registry.CPUDispatcher)]
    before = {f.py_func.__name__: len(f.signatures) for f in dispatchers}
    idx.save(tmp_path / "i")
    back = Index.load(tmp_path / "i")
    assert isinstance(back.corpus.packed, np.memmap) and back.corpus.packed.flags.writeable
    for q, k in cases:
        assert np.array_equal(back.search(q, k)[1], brute_force_topk(x, None, q, k)[1])
    assert {f.py_func.__name__: len(f.signatures) for f in dispatchers} == before
