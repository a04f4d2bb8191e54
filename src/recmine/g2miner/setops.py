"""Set operations on sorted int32 neighbour lists (numba): intersections, differences, bounded and count-only variants.

Bounded variants stop at an exclusive upper bound: with symmetry breaking every later pattern vertex has an id below an
earlier one, so only the prefix of each sorted list is read.
"""

from __future__ import annotations

import numpy as np
from numba import njit

SKEW = 16  # a list this many times longer than the other is probed by binary search instead of merged


@njit(cache=True, nogil=True)
def lower_bound(b, lo, hi, x):
    """First index in [lo, hi) of sorted b whose element is >= x (hi when none)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if b[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def count_below(a, ub):
    """Number of elements of sorted `a` that are < ub (binary search)."""
    return lower_bound(a, 0, a.shape[0], ub)


@njit(cache=True, nogil=True)
def contains(a, x):
    """True when sorted `a` holds x (binary search)."""
    i = count_below(a, x)
    return i < a.shape[0] and a[i] == x


@njit(cache=True, nogil=True)
def _probe(small, ns, big, ub, out):
    """small[:ns] ∩ big below ub by binary searches into big (each from where the last ended): O(ns log |big|),
    for a hub's long list met by a short one. Writes the common elements to out unless it is None."""
    n = 0
    j = 0
    nb = big.shape[0]
    for i in range(ns):
        x = small[i]
        if x >= ub:
            break
        j = lower_bound(big, j, nb, x)
        if j >= nb:
            break
        if big[j] == x:
            if out is not None:
                out[n] = x
            n += 1
            j += 1
    return n


@njit(cache=True, nogil=True)
def _merge(a, na, b, ub, out):
    """a[:na] ∩ b below ub by a merge (writes to out unless it is None)."""
    i = 0
    j = 0
    n = 0
    nb = b.shape[0]
    while i < na and j < nb:
        x = a[i]
        y = b[j]
        if x >= ub or y >= ub:
            break
        if x < y:
            i += 1
        elif y < x:
            j += 1
        else:
            if out is not None:
                out[n] = x
            n += 1
            i += 1
            j += 1
    return n


@njit(cache=True, nogil=True)
def merge_intersect(a, b, out):
    """Write sorted a ∩ b into out by a plain merge; return how many (the clique kernels' short DAG rows)."""
    return _merge(a, a.shape[0], b, 2147483647, out)


@njit(cache=True, nogil=True)
def merge_count(a, b):
    """|a ∩ b| for sorted a, b by a plain merge."""
    return _merge(a, a.shape[0], b, 2147483647, None)


@njit(cache=True, nogil=True)
def _intersect(a, na, b, ub, out):
    nb = b.shape[0]
    if nb > SKEW * na:
        return _probe(a, na, b, ub, out)
    if na > SKEW * nb:
        return _probe(b, nb, a[:na], ub, out)
    return _merge(a, na, b, ub, out)


@njit(cache=True, nogil=True)
def intersect(a, b, ub, out):
    """Write the elements of sorted a ∩ b that are < ub into out; return how many."""
    return _intersect(a, a.shape[0], b, ub, out)


@njit(cache=True, nogil=True)
def intersect_inplace(buf, n, b, ub):
    """Keep in buf[:n] the elements that are in sorted b and < ub; return the new length."""
    return _intersect(buf, n, b, ub, buf)


@njit(cache=True, nogil=True)
def intersect_count(a, b, ub):
    """|{x in a ∩ b : x < ub}| without materialising it."""
    return _intersect(a, a.shape[0], b, ub, None)


@njit(cache=True, nogil=True)
def copy_below(a, ub, out):
    """Copy the elements of sorted a that are < ub into out; return how many."""
    n = count_below(a, ub)
    for i in range(n):
        out[i] = a[i]
    return n


@njit(cache=True, nogil=True)
def difference_inplace(buf, n, b):
    """Remove from buf[:n] every element of sorted b; return the new length."""
    i = 0
    j = 0
    m = 0
    nb = b.shape[0]
    while i < n:
        x = buf[i]
        while j < nb and b[j] < x:
            j += 1
        if j < nb and b[j] == x:
            i += 1
            continue
        buf[m] = x
        m += 1
        i += 1
    return m


@njit(cache=True, nogil=True)
def difference_count(buf, n, b):
    """|buf[:n] − b| for sorted inputs, without materialising it."""
    i = 0
    j = 0
    c = 0
    nb = b.shape[0]
    while i < n:
        x = buf[i]
        while j < nb and b[j] < x:
            j += 1
        if not (j < nb and b[j] == x):
            c += 1
        i += 1
    return c


def intersect_np(a: np.ndarray, b: np.ndarray, ub: int = 2**31 - 1) -> np.ndarray:
    """Convenience wrapper: sorted a ∩ b below ub as a new array."""
    out = np.empty(min(a.shape[0], b.shape[0]), dtype=np.int32)
    n = intersect(a.astype(np.int32), b.astype(np.int32), ub, out)
    return out[:n]


@njit(cache=True, nogil=True)
def row_of(indptr, e):
    """The row (vertex) holding CSR slot e: the last v with indptr[v] <= e (binary search)."""
    lo, hi = 0, indptr.shape[0] - 1
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if indptr[mid] <= e:
            lo = mid
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def label_ok(x, vals, lo, hi):
    """True when vals[lo:hi] is empty (any label) or holds x: a level's allowed labels, runtime data."""
    if lo == hi:
        return True
    for j in range(lo, hi):
        if vals[j] == x:
            return True
    return False
