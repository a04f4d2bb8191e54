"""FAERY's fused scan: approximate scores from the packed tier, a rigorous per-row error bound, a filter against the
running K-th best lower bound, and a size-K heap — then an exact re-rank of the few survivors.

Exactness: for every row, |exact - approx| <= bound, where exact = q·x in float64 from the fp32 master. The bound
covers quantisation (int8: scale/2 per element, fp16: 2^-11 relative) and float32 accumulation in any order
(dim · 2^-23 · Σ|q_j||x̂_j|), which is why `fastmath` reassociation is allowed in the dot products: it changes
only the summation order, and the bound holds for every order. A row is dropped only when its upper bound is below
the K-th largest lower bound, so the true top K always survive to the exact re-rank."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

FM = {"reassoc", "contract", "nsz"}
EPS32 = float(np.finfo(np.float32).eps)


@njit(cache=True, nogil=True, inline="always")
def _heap_push_min(heap, n, value):
    """Push into a min-heap of n items (capacity > n); returns new n."""
    i = n
    heap[i] = value
    while i > 0:
        p = (i - 1) >> 1
        if heap[p] <= heap[i]:
            break
        heap[p], heap[i] = heap[i], heap[p]
        i = p
    return n + 1


@njit(cache=True, nogil=True, inline="always")
def _heap_replace_min(heap, n, value):
    """Replace the minimum of a full min-heap with value and sift down."""
    heap[0] = value
    i = 0
    while True:
        l = 2 * i + 1  # noqa: E741
        if l >= n:
            break
        c = l
        r = l + 1
        if r < n and heap[r] < heap[l]:
            c = r
        if heap[i] <= heap[c]:
            break
        heap[i], heap[c] = heap[c], heap[i]
        i = c


@njit(cache=True, nogil=True, fastmath=FM)
def _dot_i8(q, row):
    acc = np.float32(0.0)
    for j in range(q.shape[0]):
        acc += q[j] * np.float32(row[j])
    return acc


@njit(cache=True, nogil=True, fastmath=FM)
def _dot_f(q, row):
    acc = np.float32(0.0)
    for j in range(q.shape[0]):
        acc += q[j] * np.float32(row[j])
    return acc


@njit(cache=True, nogil=True, parallel=True)
def scan_int8(q, packed, scale, bias, live, k, alpha, qabs_sum, nchunks):
    """Single-query fused scan over an int8 tier.

    approx_i = alpha * scale_i * (q · packed_i) + bias_i; bound_i = alpha * scale_i * Σ|q| * (0.5 + 127·dim·eps).
    Returns per-chunk (candidate slots, their upper bounds, counts) and each chunk's K largest lower bounds."""
    n = packed.shape[0]
    dim = q.shape[0]
    chunk = (n + nchunks - 1) // nchunks
    cand = np.empty(n, np.int64)
    ubs = np.empty(n, np.float32)
    counts = np.zeros(nchunks, np.int64)
    heaps = np.full((nchunks, k), -np.inf, np.float32)
    coef = np.float32(alpha * qabs_sum * (0.5 + 127.0 * (dim + 2) * EPS32 * 1.01))
    for c in prange(nchunks):
        lo = c * chunk
        hi = min(n, lo + chunk)
        heap = heaps[c]
        hn = 0
        theta = -np.inf
        m = 0
        for i in range(lo, hi):
            if not live[i]:
                continue
            s = scale[i]
            approx = np.float32(alpha) * s * _dot_i8(q, packed[i]) + bias[i]
            b = coef * s + np.float32(4 * EPS32) * (abs(approx) + abs(bias[i])) + np.float32(1e-30)
            ub = approx + b
            if ub < theta:
                continue
            cand[lo + m] = i
            ubs[lo + m] = ub
            m += 1
            lb = approx - b
            if hn < k:
                hn = _heap_push_min(heap, hn, lb)
                if hn == k:
                    theta = heap[0]
            elif lb > heap[0]:
                _heap_replace_min(heap, hn, lb)
                theta = heap[0]
        counts[c] = m
    return cand, ubs, counts, heaps, chunk


HALF_TABLE = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
HALF_TABLE[~np.isfinite(HALF_TABLE)] = 0.0  # never stored: fp16 rows are range-checked on add


@njit(cache=True, nogil=True, fastmath=FM)
def _dot_h(q, row, table):
    acc = np.float32(0.0)
    for j in range(q.shape[0]):
        acc += q[j] * table[row[j]]
    return acc


@njit(cache=True, nogil=True, parallel=True)
def scan_half(q, packed, norms, bias, live, k, alpha, qnorm, rel_err, abs_err, nchunks, table):
    """scan_float for an fp16 tier stored as raw uint16 (decoded through a 64K-entry table)."""
    n = packed.shape[0]
    dim = q.shape[0]
    chunk = (n + nchunks - 1) // nchunks
    cand = np.empty(n, np.int64)
    ubs = np.empty(n, np.float32)
    counts = np.zeros(nchunks, np.int64)
    heaps = np.full((nchunks, k), -np.inf, np.float32)
    coef = np.float32(alpha * qnorm * (rel_err + (dim + 2) * EPS32 * 1.01))
    for c in prange(nchunks):
        lo = c * chunk
        hi = min(n, lo + chunk)
        heap = heaps[c]
        hn = 0
        theta = -np.inf
        m = 0
        for i in range(lo, hi):
            if not live[i]:
                continue
            approx = np.float32(alpha) * _dot_h(q, packed[i], table) + bias[i]
            b = coef * norms[i] + np.float32(abs_err) + np.float32(4 * EPS32) * (abs(approx) + abs(bias[i])) \
                + np.float32(1e-30)
            ub = approx + b
            if ub < theta:
                continue
            cand[lo + m] = i
            ubs[lo + m] = ub
            m += 1
            lb = approx - b
            if hn < k:
                hn = _heap_push_min(heap, hn, lb)
                if hn == k:
                    theta = heap[0]
            elif lb > heap[0]:
                _heap_replace_min(heap, hn, lb)
                theta = heap[0]
        counts[c] = m
    return cand, ubs, counts, heaps, chunk


@njit(cache=True, nogil=True, parallel=True)
def scan_float(q, packed, norms, bias, live, k, alpha, qnorm, rel_err, abs_err, nchunks):
    """Single-query fused scan over an fp32 or fp16 tier:
    bound_i = alpha·|q|·|x_i|·(rel_err + dim·eps) + abs_err (fp16 subnormal rounding) + rounding of the sum."""
    n = packed.shape[0]
    dim = q.shape[0]
    chunk = (n + nchunks - 1) // nchunks
    cand = np.empty(n, np.int64)
    ubs = np.empty(n, np.float32)
    counts = np.zeros(nchunks, np.int64)
    heaps = np.full((nchunks, k), -np.inf, np.float32)
    coef = np.float32(alpha * qnorm * (rel_err + (dim + 2) * EPS32 * 1.01))
    for c in prange(nchunks):
        lo = c * chunk
        hi = min(n, lo + chunk)
        heap = heaps[c]
        hn = 0
        theta = -np.inf
        m = 0
        for i in range(lo, hi):
            if not live[i]:
                continue
            approx = np.float32(alpha) * _dot_f(q, packed[i]) + bias[i]
            b = coef * norms[i] + np.float32(abs_err) + np.float32(4 * EPS32) * (abs(approx) + abs(bias[i])) \
                + np.float32(1e-30)
            ub = approx + b
            if ub < theta:
                continue
            cand[lo + m] = i
            ubs[lo + m] = ub
            m += 1
            lb = approx - b
            if hn < k:
                hn = _heap_push_min(heap, hn, lb)
                if hn == k:
                    theta = heap[0]
            elif lb > heap[0]:
                _heap_replace_min(heap, hn, lb)
                theta = heap[0]
        counts[c] = m
    return cand, ubs, counts, heaps, chunk


@njit(cache=True, nogil=True)
def gather_candidates(cand, ubs, counts, chunk, theta):
    """Survivors of every chunk whose upper bound reaches the global K-th lower bound."""
    total = 0
    for c in range(counts.shape[0]):
        total += counts[c]
    out = np.empty(total, np.int64)
    m = 0
    for c in range(counts.shape[0]):
        lo = c * chunk
        for t in range(counts[c]):
            if ubs[lo + t] >= theta:
                out[m] = cand[lo + t]
                m += 1
    return out[:m]


@njit(cache=True, nogil=True)
def exact_scores(q64, master, slots):
    """Exact float64 inner products q·x for the candidate slots (fp32 master rows)."""
    out = np.empty(slots.shape[0], np.float64)
    dim = q64.shape[0]
    for t in range(slots.shape[0]):
        row = master[slots[t]]
        acc = 0.0
        for j in range(dim):
            acc += q64[j] * np.float64(row[j])
        out[t] = acc
    return out


@njit(cache=True, nogil=True)
def exact_l2(q64, master, slots):
    """Exact float64 squared L2 distances to the candidate slots."""
    out = np.empty(slots.shape[0], np.float64)
    dim = q64.shape[0]
    for t in range(slots.shape[0]):
        row = master[slots[t]]
        acc = 0.0
        for j in range(dim):
            d = q64[j] - np.float64(row[j])
            acc += d * d
        out[t] = acc
    return out


def kth_largest(heaps: np.ndarray, k: int) -> float:
    """The K-th largest value over every chunk's heap (-inf when fewer than K rows exist)."""
    flat = heaps.ravel()
    if flat.size < k:
        return -np.inf
    return float(np.partition(flat, flat.size - k)[flat.size - k])


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8 quantisation: x ≈ scale · q, |q| ≤ 127, error ≤ scale/2 per element."""
    amax = np.abs(x).max(axis=1)
    scale = (amax / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / safe[:, None]), -127, 127).astype(np.int8)
    return q, scale
