"""Advice to the kernel about memory-mapped arrays (Linux `madvise`; a no-op elsewhere or when refused).

- `release(chunk)`: a build has consumed these rows of a memory-mapped input; drop its pages from this process
  (MADV_DONTNEED). Only for shared file mappings (numpy memmap mode "r" or "r+"): the file keeps every byte, a later
  read maps it again. Never for a copy-on-write ("c") mapping, whose modified pages exist nowhere else, nor for RAM.
  Building a 1M x 128 index from a mapped .npy then never holds the whole input resident beside the index.
- `prefetch(arrays)`: a search is about to read these mapped arrays from end to end; ask for read-ahead
  (MADV_WILLNEED), then map their pages into this process (MADV_POPULATE_READ, Linux >= 5.14) in POPULATE_STEP steps:
  right away for up to SYNC_SECONDS (a 1M x 128 int8 tier, 128 MB, is mapped in a few ms), the rest on a background
  thread. A full scan `wait`s for that thread rather than faulting the same pages beside it: mapping in bulk costs
  less than the scan's own page faults (64 KB each when the page cache holds small folios), and on two vCPUs a
  thread mapping beside the scan's lanes only slowed it (first search 1.4x a warm one at 1M and 10M; 1.05x and
  1.15x now, the page cache warm; from a cold disk the disk bounds the first search either way).

madvise is called through ctypes, which releases the GIL for the call, so the background thread never holds up
Python code in other threads."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np

MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_POPULATE_READ = 22  # Linux >= 5.14; EINVAL before (then the first search faults pages in as before)
POPULATE_STEP = 8 << 20  # bytes mapped per madvise call (from a cold disk one step takes ~30 ms)
SYNC_SECONDS = 0.05  # prefetch maps pages in the caller for up to this long (Index.load stays < 0.1 s)
PAGE = mmap.PAGESIZE


def _libc_madvise():  # noqa: ANN202
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _libc_madvise()


def advise(addr: int, nbytes: int, advice: int, inward: bool) -> bool:
    """madvise over [addr, addr + nbytes) rounded to whole pages: inward (only pages entirely inside) or outward.
    True when the kernel accepted it."""
    lo, hi = addr, addr + nbytes
    lo, hi = (-(-lo // PAGE) * PAGE, hi // PAGE * PAGE) if inward else (lo // PAGE * PAGE, -(-hi // PAGE) * PAGE)
    if _MADVISE is None or hi <= lo:
        return False
    return _MADVISE(lo, hi - lo, advice) == 0


def _file_mapped(arr: np.ndarray, modes: tuple[str, ...] = ("r", "r+", "w+", "c")) -> bool:
    """arr is a view of a numpy memmap opened in one of these modes (its memory is a mapping of a file)."""
    return isinstance(arr, np.memmap) and getattr(arr, "_mmap", None) is not None and arr.mode in modes


def release(chunk: np.ndarray) -> bool:
    """Drop the whole pages of a consumed, contiguous chunk of a shared read-only or read-write file mapping from
    this process (see module docstring); anything else is left alone. True when pages were dropped."""
    if not _file_mapped(chunk, ("r", "r+")) or not chunk.flags.c_contiguous or chunk.nbytes == 0:
        return False
    return advise(chunk.ctypes.data, chunk.nbytes, MADV_DONTNEED, inward=True)


def _populate(steps: Sequence[tuple[int, int]], deadline: float, keep: Sequence[np.ndarray] = ()) -> int:
    """MADV_POPULATE_READ over the (addr, nbytes) steps in order until the perf_counter deadline; how many were done
    (all on an older kernel, where it is EINVAL: the search faults pages in itself). keep: the arrays whose mappings
    hold the steps, referenced so that they stay open meanwhile."""
    for i, (addr, nbytes) in enumerate(steps):
        if time.perf_counter() >= deadline:
            return i
        if not advise(addr, nbytes, MADV_POPULATE_READ, inward=False):
            return len(steps)
    return len(steps)


def prefetch(arrays: Sequence[np.ndarray]) -> threading.Thread | None:
    """Read-ahead, then page mapping, of the file-mapped arrays among `arrays` (in order): in the caller for up to
    SYNC_SECONDS, the rest on a daemon thread, which is returned (None when all is done or nothing was to do; `wait`
    joins it)."""
    mapped = [a for a in arrays if _file_mapped(a) and a.nbytes]
    if _MADVISE is None or not mapped:
        return None
    deadline = time.perf_counter() + SYNC_SECONDS
    for a in mapped:
        advise(a.ctypes.data, a.nbytes, MADV_WILLNEED, inward=False)
    steps = [(a.ctypes.data + off, min(POPULATE_STEP, a.nbytes - off)) for a in mapped
             for off in range(0, a.nbytes, POPULATE_STEP)]
    done = _populate(steps, deadline)
    if done == len(steps):
        return None
    th = threading.Thread(target=_populate, args=(steps[done:], float("inf"), mapped), name="faery-prefetch",
                          daemon=True)
    th.start()
    return th


def wait(thread: threading.Thread | None) -> None:
    """Block until a `prefetch` thread has mapped its pages (no-op for None or a finished thread)."""
    if thread is not None:
        thread.join()
