"""Set operations on sorted int32 neighbour lists (numba): intersections, differences, bounded and count-only variants.

Bounded variants stop at an exclusive upper bound: with symmetry breaking every later pattern vertex has an id below an
earlier one, so only the prefix of each sorted list is read.
"""

from __future__ import annotations

import numpy as np
from numba import njit

SKEW = 64  # a list this many times longer than the other is galloped into instead of merged (16 and 32 were 3% slower
# on the 10M-edge Chung-Lu diamond count, 4-motifs within 1%)

# Positions are unsigned (U0, U1, np.uint64 of an int64): numba wraps a negative signed index around, a select on the
# address of every load that sits in the merge loops' critical path; unsigned positions compile to plain loads (2x on
# these loops). Mixed signed/unsigned arithmetic would go through float64 in numba, so positions never meet int64.
U0 = np.uint64(0)
U1 = np.uint64(1)


@njit(cache=True, nogil=True)
def _lower_bound(b, lo, hi, x):
    """First position in [lo, hi) (unsigned) of sorted b whose element is >= x (hi when none)."""
    while lo < hi:
        mid = (lo + hi) >> U1
        if b[mid] < x:
            lo = mid + U1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def lower_bound(b, lo, hi, x):
    """First index in [lo, hi) of sorted b whose element is >= x (hi when none)."""
    return np.int64(_lower_bound(b, np.uint64(lo), np.uint64(hi), x))


@njit(cache=True, nogil=True)
def count_below(a, ub):
    """Number of elements of sorted `a` that are < ub (binary search)."""
    return np.int64(_lower_bound(a, U0, np.uint64(a.shape[0]), ub))


@njit(cache=True, nogil=True)
def contains(a, x):
    """True when sorted `a` holds x (binary search)."""
    n = np.uint64(a.shape[0])
    i = _lower_bound(a, U0, n, x)
    return i < n and a[i] == x


@njit(cache=True, nogil=True)
def _probe(small, ns, big, out):
    """small[:ns] ∩ big by galloping into big (each search from where the last ended: doubling steps, then
    a binary search inside the last step): O(ns log(|big| / ns)), for a hub's long list met by a short one. Writes
    the common elements to out unless it is None."""
    n = U0
    j = U0
    nb = np.uint64(big.shape[0])
    for i in range(np.uint64(ns)):
        x = small[i]
        step = U1
        hi = j
        while hi < nb and big[hi] < x:
            j = hi + U1
            hi += step
            step <<= U1
        if hi > nb:
            hi = nb
        j = _lower_bound(big, j, hi, x)
        if j >= nb:
            break
        if big[j] == x:
            if out is not None:
                out[n] = x
            n += U1
            j += U1
    return np.int64(n)


@njit(cache=True, nogil=True, inline="always")
def _merge(a, na, b, out):
    """a[:na] ∩ b by a merge (writes to out unless it is None; out may be a itself: slot n never passes i). Branchy
    on purpose: runs of one side advancing are predicted, where a branch-free merge waits on every compare; no bound
    test inside the loop (it costs ~1.6x on short lists): callers trim a instead, and b then never passes a's end."""
    i = U0
    j = U0
    n = U0
    na = np.uint64(na)
    nb = np.uint64(b.shape[0])
    while i < na and j < nb:
        x = a[i]
        y = b[j]
        if x < y:
            i += U1
        elif y < x:
            j += U1
        else:
            if out is not None:
                out[n] = x
            n += U1
            i += U1
            j += U1
    return np.int64(n)


@njit(cache=True, nogil=True)
def merge_intersect(a, b, out):
    """Write sorted a ∩ b into out by a plain merge; return how many (the clique kernels' short DAG rows)."""
    return _merge(a, a.shape[0], b, out)


@njit(cache=True, nogil=True)
def merge_count(a, b):
    """|a ∩ b| for sorted a, b by a plain merge."""
    return _merge(a, a.shape[0], b, None)


@njit(cache=True, nogil=True)
def _intersect(a, na, b, ub, out):
    """a[:na] ∩ b below ub: a trimmed to below ub, then galloped into / from a much longer list, else merged."""
    if ub < 2147483647:
        na = np.int64(_lower_bound(a, U0, np.uint64(na), ub))
    nb = b.shape[0]
    if nb > SKEW * na:
        return _probe(a, na, b, out)
    if na > SKEW * nb:
        return _probe(b, nb, a[:na], out)
    return _merge(a, na, b, out)


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
    n = _lower_bound(a, U0, np.uint64(a.shape[0]), ub)
    for i in range(n):
        out[i] = a[i]
    return np.int64(n)


@njit(cache=True, nogil=True)
def _difference(buf, n, b, out):
    """buf[:n] − sorted b: written to out[:result] unless out is None (out may be buf); returns its size."""
    i = U0
    j = U0
    m = U0
    n = np.uint64(n)
    nb = np.uint64(b.shape[0])
    while i < n:
        x = buf[i]
        while j < nb and b[j] < x:
            j += U1
        i += U1
        if j < nb and b[j] == x:
            continue
        if out is not None:
            out[m] = x
        m += U1
    return np.int64(m)


@njit(cache=True, nogil=True)
def difference_inplace(buf, n, b):
    """Remove from buf[:n] every element of sorted b; return the new length."""
    return _difference(buf, n, b, buf)


@njit(cache=True, nogil=True)
def difference_count(buf, n, b):
    """|buf[:n] − b| for sorted inputs, without materialising it."""
    return _difference(buf, n, b, None)


@njit(cache=True, nogil=True)
def choose(n, m):
    """Binomial coefficient C(n, m) in exact integer steps (0 when n < m): closed-form counts of a plan's tail."""
    if n < m:
        return 0
    r = 1
    for t in range(m):
        r = r * (n - t) // (t + 1)
    return r


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
