"""Advice to the kernel about memory-mapped arrays (Linux `madvise`; a no-op elsewhere or when refused).

- `release(chunk)`: a build has consumed these rows of a memory-mapped input; drop its pages from this process
  (MADV_DONTNEED). Only for shared file mappings (numpy memmap mode "r" or "r+"): the file keeps every byte, a later
  read maps it again. Never for a copy-on-write ("c") mapping, whose modified pages exist nowhere else, nor for RAM.
  Building a 1M x 128 index from a mapped .npy then never holds the whole input resident beside the index.
- `prefetch(arrays)`: a search is about to read these mapped arrays from end to end; on a background thread, ask
  for read-ahead (MADV_WILLNEED) and map their pages into this process (MADV_POPULATE_READ, Linux >= 5.14), so
  `Index.load` stays instant while the first search after it mostly finds its pages mapped.

madvise is called through ctypes, which releases the GIL for the call, so the background thread never holds up
Python code in other threads."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
import threading
from collections.abc import Sequence

import numpy as np

MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_POPULATE_READ = 22  # Linux >= 5.14; EINVAL before (then the first search faults pages in as before)
POPULATE_STEP = 32 << 20  # bytes mapped per madvise call of the background thread
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


def prefetch(arrays: Sequence[np.ndarray]) -> threading.Thread | None:
    """Read-ahead, then page mapping, on a daemon thread, for the file-mapped arrays among `arrays` (in order);
    returns the thread (None when there is nothing to do)."""
    mapped = [a for a in arrays if _file_mapped(a) and a.nbytes]
    spans = [(a.ctypes.data, a.nbytes) for a in mapped]
    if _MADVISE is None or not spans:
        return None
    def populate(keep: list[np.ndarray] = mapped) -> None:  # keep: the mappings stay open while it runs
        for addr, nbytes in spans:
            advise(addr, nbytes, MADV_WILLNEED, inward=False)
        for addr, nbytes in spans:
            for off in range(0, nbytes, POPULATE_STEP):
                if not advise(addr + off, min(POPULATE_STEP, nbytes - off), MADV_POPULATE_READ, inward=False):
                    return  # an older kernel (EINVAL): the search faults pages in itself
    th = threading.Thread(target=populate, name="faery-prefetch", daemon=True)
    th.start()
    return th
