"""FAERY's scan as one core shared by every path: approximate scores from the packed tier, a rigorous per-row error
bound, a filter against each query's running K-th best lower bound, then an exact re-rank of the few survivors.

One scan core (`scan`) serves single queries and batches, every storage tier (int8, fp16, fp32) and every row set
(all rows, live rows, an allow-mask, a list of allowed rows); only the kernel that produces the dot products of a
block differs: `simd.rowdot8` (one int8 query, eight rows a call), `simd.tile` (a tile of up to 64 queries
against a few rows: the batch path's int8 VNNI or fp32-FMA GEMM micro-kernel) or a plain fp32 dot (fp16/fp32 tiers,
one query). Every score and bound then goes through the same filter and selection. A single query on one lane
runs every step (sampled threshold, scan, merge, exact re-rank) in one compiled call (`search_one`).

Exactness: for every (query, row), |exact - approx| <= bound, exact = q.x in float64 from the fp32 master, with

    approx = ds_r * (u_q * dot) + bias_r
    bound  = ds_r * ca_q + rn_r * cb_q + cc_q + 4 eps32 (|approx| + |bias_r|) + 1e-30

int8 tier (ds = per-row scale s, rn = |x|): the query is quantised too (q = qs q^ + f) and the int8 dot is exact, so
|q.x - s qs q^.x^| <= s |f.x^| + |q.e| <= |f| (|x| + s sqrt(dim)/2) + s sum|q|/2. fp16/fp32 tiers (ds = 1):
|q| |x| ((dim + 2) eps32 (any summation order) + 2^-11 for fp16) + sum|q| 2^-24 (fp16 subnormals). The last two terms
cover float32 rounding in forming approx (and the l2 bias -|x|^2). A row is dropped only when its upper bound is below
the K-th largest lower bound seen, so the true top K always reach the exact re-rank.

Selection: each lane (thread) keeps, per query, a reservoir of lower bounds (capacity 2K): when full, one
selection (`kth_value`, a radix select) keeps the K largest and raises the threshold. That is O(1) per surviving row at any K (a heap costs
log K), and only about K ln(N/K) rows survive, which is why K = 16,384 costs little more than K = 10. Rows that pass
are listed by a branch-free pass and accepted in one call per block; the exact re-rank computes its float64 keys
eight SIMD lanes at a time (`simd.dot_lanes8`), in the same order as the scalar loop."""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from recmine.faery import simd

FM = {"reassoc", "contract", "nsz"}
EPS32 = float(np.finfo(np.float32).eps)
E4 = np.float32(4 * EPS32)
TINY = np.float32(1e-30)
INT8, FP16, FP32 = 0, 1, 2
TIERS = {"int8": INT8, "fp16": FP16, "fp32": FP32}
BLOCK_SINGLE = 4096  # rows per block of the single-query path
PREFETCH = 16  # rows of the exact re-rank loaded ahead of the one being scored
PARALLEL_MIN_QUERIES = 8  # fewer queries: merge / rerank loop over them without a parallel region
PARALLEL_MIN_CANDIDATES = 4096  # fewer candidate rows: scored without a parallel region
BLOCK_BATCH = 510  # rows per block of the batch path (a multiple of simd.RT; the score tile stays in L2)

HALF_TABLE = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
HALF_TABLE[~np.isfinite(HALF_TABLE)] = 0.0  # never stored: fp16 rows are range-checked on add


@njit(cache=True, nogil=True, fastmath=FM)
def _dot_f(q, row):
    acc = np.float32(0.0)
    for j in range(q.shape[0]):
        acc += q[j] * np.float32(row[j])
    return acc


@njit(cache=True, nogil=True, fastmath=FM)
def _dot_h(q, row, table):
    acc = np.float32(0.0)
    for j in range(q.shape[0]):
        acc += q[j] * table[np.int64(row[j]) & 0xFFFF]  # (compiled for every tier, run for fp16)
    return acc


@njit(cache=True, nogil=True, inline="always")
def _tile(lanes, x, rows, r0, qt, out):
    if lanes == 16:
        simd.tile16(x, rows, r0, qt, out)
    elif lanes == 32:
        simd.tile32(x, rows, r0, qt, out)
    elif lanes == 48:
        simd.tile48(x, rows, r0, qt, out)
    else:
        simd.tile64(x, rows, r0, qt, out)


SELECT_SMALL = 512  # kth_value hands a set of at most this many values to numba's np.partition
SELECT_BITS = 11  # kth_value's digit: 2,048 buckets per pass


def _ordered_bits(vals):  # noqa: ANN001, ANN202
    """vals (float32 or float64, contiguous) as unsigned integers of its width in the same order (ascending; -0.0
    just below +0.0; no NaN): compiled per dtype by the overload below."""
    raise NotImplementedError("called from compiled code only")


def _float_of(keys, like):  # noqa: ANN001, ANN202
    """The floats (of like's dtype) whose `_ordered_bits` are keys: compiled per dtype by the overload below."""
    raise NotImplementedError("called from compiled code only")


def _uint_of(dtype):  # noqa: ANN001, ANN202
    """(unsigned type of the float dtype's width, its top bit)."""
    return (np.uint32, np.uint32(1 << 31)) if dtype == types.float32 else (np.uint64, np.uint64(1 << 63))


@overload(_ordered_bits, jit_options={"cache": True, "nogil": True})
def _ordered_bits_impl(vals):  # noqa: ANN001, ANN202
    utype, sign = _uint_of(vals.dtype)

    def impl(vals):  # noqa: ANN001, ANN202
        u = vals.view(utype)
        out = np.empty_like(u)
        for i in range(u.shape[0]):
            out[i] = (u[i] ^ ~sign) ^ sign if u[i] & sign else u[i] | sign  # negative: every bit flipped
        return out

    return impl


@overload(_float_of, jit_options={"cache": True, "nogil": True})
def _float_of_impl(keys, like):  # noqa: ANN001, ANN202
    utype, sign = _uint_of(like.dtype)
    ftype = np.float32 if like.dtype == types.float32 else np.float64

    def impl(keys, like):  # noqa: ANN001, ANN202
        u = np.empty(keys.shape[0], utype)
        for i in range(keys.shape[0]):
            u[i] = keys[i] ^ sign if keys[i] & sign else (keys[i] ^ ~sign) ^ sign
        return u.view(ftype)

    return impl


@njit(cache=True, nogil=True)
def kth_value(vals, kth):
    """The value np.partition(vals, kth)[kth] (vals: 1-D float32/float64, no NaN), by a radix selection: each pass
    histograms the 11 bits just below the prefix every remaining value shares and keeps the bucket holding the kth;
    O(n) and several times faster than numba's np.partition (a scalar quickselect) on the large reservoirs and
    candidate groups of a large K."""
    n = vals.shape[0]
    if n <= SELECT_SMALL:
        return np.partition(vals, kth)[kth]
    buf = _ordered_bits(np.ascontiguousarray(vals))
    m = n
    nb = 1 << SELECT_BITS
    hist = np.zeros(nb, np.int64)
    while m > SELECT_SMALL:
        lo = hi = buf[0]
        for i in range(1, m):
            lo = min(lo, buf[i])
            hi = max(hi, buf[i])
        if lo == hi:
            m = 1
            kth = 0
            break
        top = 0
        d = lo ^ hi
        while d:
            d >>= 1
            top += 1
        shift = max(0, top - SELECT_BITS)
        base = lo >> shift
        hist[:] = 0
        for i in range(m):
            hist[np.int64((buf[i] >> shift) - base)] += 1
        b = 0
        while kth >= hist[b]:
            kth -= hist[b]
            b += 1
        j = 0
        for i in range(m):
            if np.int64((buf[i] >> shift) - base) == b:
                buf[j] = buf[i]
                j += 1
        m = j
    return _float_of(np.partition(buf[:m], kth)[kth:kth + 1], vals)[0]


@njit(cache=True, nogil=True)
def _compact_reservoir(res, k):
    """Keep the k largest of res (full) at its front; returns the new threshold (the k-th largest)."""
    cap = res.shape[0]
    t = kth_value(res, cap - k)
    j = 0
    for i in range(cap):  # in place: j <= i
        if res[i] > t:
            res[j] = res[i]
            j += 1
    res[j:k] = t  # the k-th largest and its ties fill the rest
    return t


@njit(cache=True, nogil=True)
def _compact_candidates(cslot, cq, cub, count, theta):
    """Drop candidates whose upper bound fell below their query's threshold; returns the new count."""
    m = 0
    for e in range(count):
        if cub[e] >= theta[cq[e]]:
            cslot[m] = cslot[e]
            cq[m] = cq[e]
            cub[m] = cub[e]
            m += 1
    return m


@njit(cache=True, nogil=True, inline="always")
def _bounds(v, dsr, rnr, br, abr, u, ca, cb, cc):
    """(upper, lower) bound of one exact score from its dot product v: the one formula every path uses."""
    approx = dsr * (u * v) + br
    bound = dsr * ca + rnr * cb + cc + E4 * (abs(approx) + abr) + TINY
    return approx + bound, approx - bound


@njit(cache=True, nogil=True, inline="always")
def _value(tier, tile_i, tile_f, t, qq, corr):
    """The dot product of tile row t, column qq: int8 sums minus their +128 offset (exact), or the float sum."""
    if tier == INT8:
        return np.float32(tile_i[t, qq] - corr)
    return tile_f[t, qq]


@njit(cache=True, nogil=True)
def _smallest(vals, k):
    """min(vals[:k]) (a plain loop: kept out of line, it costs the filter's hot loop nothing)."""
    lo = vals[0]
    for i in range(1, k):
        lo = min(lo, vals[i])
    return lo


@njit(cache=True, nogil=True)
def _make_room(cslot, cq, cub, theta, cstate):
    """The candidate buffer is full: drop candidates below their query's risen threshold. False (and the overflow
    flag set) when that frees too little."""
    cap_c = cslot.shape[0]
    cstate[0] = _compact_candidates(cslot, cq, cub, cstate[0], theta)
    if cstate[0] > (3 * cap_c) // 4:
        cstate[1] = 1
        return False
    return True


@njit(cache=True, nogil=True)
def _accept(prow, pq, pub, plb, npass, k, theta, res, res_n, cslot, cq, cub, cstate):
    """Rows prow[i] whose upper bound pub[i] passed query pq[i]'s filter (lower bound plb[i]), in order: each still
    at or above its query's current threshold is recorded as a candidate and feeds the reservoir (raising the
    threshold when it fills). One call per block, not per row (a call per row paid a reference count per array
    argument: ~70 ns a row, most of a large K's scan overhead). False when the candidate buffer overflowed."""
    for i in range(npass):
        q = pq[i]
        if pub[i] < theta[q]:
            continue
        if cstate[0] == cslot.shape[0] and not _make_room(cslot, cq, cub, theta, cstate):
            return False
        e = cstate[0]
        cslot[e] = prow[i]
        cq[e] = q
        cub[e] = pub[i]
        cstate[0] = e + 1
        if plb[i] > theta[q]:
            n = res_n[q]
            res[q, n] = plb[i]
            n += 1
            if n == res.shape[1]:
                theta[q] = _compact_reservoir(res[q], k)
                n = k
            elif n == k and theta[q] == -np.inf:
                theta[q] = _smallest(res[q], k)
            res_n[q] = n
    return True


@njit(cache=True, nogil=True)
def _filter_rows(vals, rowbuf, rds, rrn, rb, roff, prow, pq, pub, plb, npass, q, u, ca, cb, cc, k, theta, res, res_n,
                 cslot, cq, cub, cstate):
    """The filter for one query over block rows, second pass: the rows prow[:npass] (block positions) whose upper
    bound reached the threshold as it stood at the block's start (`_single_pass`: a superset of those reaching the
    current one, a rise only drops rows) get their bounds (vals: the block's dot products; rds/rrn/rb: the row
    terms, at roff + position) and go to `_accept`."""
    uq, caq, cbq, ccq = u[q], ca[q], cb[q], cc[q]
    for i in range(npass):
        t = prow[i]
        o = roff + t
        pub[i], plb[i] = _bounds(vals[t], rds[o], rrn[o], rb[o], abs(rb[o]), uq, caq, cbq, ccq)
        prow[i] = rowbuf[t]
        pq[i] = q
    _accept(prow, pq, pub, plb, npass, k, theta, res, res_n, cslot, cq, cub, cstate)


@njit(cache=True, nogil=True)
def _filter_hits(tier, tile_i, tile_f, rowbuf, hitbuf, m, q0, nqt, ds, rn, bias, corr, u, ca, cb, cc, k, theta, res,
                 res_n, prow, pq, pub, plb, cslot, cq, cub, cstate):
    """The filter for a query tile (q0..q0+nqt) over block rows, second pass: the GEMM micro-kernel's epilogue
    (`simd._hits_epilogue`) marked in hitbuf[t] the queries whose upper bound reached their threshold; only those
    get `_bounds` and go to `_accept` (which checks the current, possibly risen, threshold)."""
    npass = 0
    for t in range(m):
        h = hitbuf[t]
        if h == 0:
            continue
        r = rowbuf[t]
        dsr = ds[r] if tier == INT8 else np.float32(1.0)
        rnr, br = rn[r], bias[r]
        abr = abs(br)
        while h != 0:  # the set bits only: after the first rows, one or two per hit row
            qq = simd.ctz(h)
            h &= h - 1
            if qq >= nqt:
                break
            q = q0 + qq
            ub, lb = _bounds(_value(tier, tile_i, tile_f, t, qq, np.int32(corr[q])), dsr, rnr, br, abr, u[q], ca[q],
                             cb[q], cc[q])
            if ub >= theta[q]:
                prow[npass], pq[npass], pub[npass], plb[npass] = r, q, ub, lb
                npass += 1
    _accept(prow, pq, pub, plb, npass, k, theta, res, res_n, cslot, cq, cub, cstate)


@njit(cache=True, nogil=True, inline="always")
def _tile_hits(lanes, x, rows, r0, qt, out, ds, rn, bias, qv, corr, th, hits):
    if lanes == 16:
        simd.tile_hits16(x, rows, r0, qt, out, ds, rn, bias, qv, corr, th, hits)
    elif lanes == 32:
        simd.tile_hits32(x, rows, r0, qt, out, ds, rn, bias, qv, corr, th, hits)
    elif lanes == 48:
        simd.tile_hits48(x, rows, r0, qt, out, ds, rn, bias, qv, corr, th, hits)
    else:
        simd.tile_hits64(x, rows, r0, qt, out, ds, rn, bias, qv, corr, th, hits)


@njit(cache=True, nogil=True)
def _single_dots(tier, packed, rowbuf, m, qi, q8, q8lo, qf, table, corr, dots, vals):
    """vals[t] = the dot product of query qi with row rowbuf[t], t < m (the single path's: rowbuf padded to a whole
    group of eight rows for the int8 tier's rowdot8)."""
    if tier == INT8:
        for t in range(0, m, 8):
            simd.rowdot8(packed, rowbuf, t, q8[qi], q8lo[qi], dots)
        for t in range(m):
            vals[t] = np.float32(dots[t] - corr[qi])
    elif tier == FP16:
        for t in range(m):
            vals[t] = _dot_h(qf[qi], packed[rowbuf[t]], table)
    else:
        for t in range(m):
            vals[t] = _dot_f(qf[qi], packed[rowbuf[t]])


@njit(cache=True, nogil=True)
def _single_pass(tier, packed, rowbuf, m, qi, q8, q8lo, qf, table, corr, u, ca, cb, cc, th, rds, rrn, rb, roff, dots,
                 vals, ubuf, prow):
    """The filter's first pass for query qi over block rows rowbuf[:m] (row terms at rds[roff + t] etc.): vals[t] =
    their dot products, prow[:npass] = the positions t whose upper bound (`_bounds`) reaches th; returns npass.
    int8 tier: `simd.rowdot8_bounds`, the bounds on the sums while in registers, a bit mask per eight rows
    (rowbuf and the row terms padded to whole groups of eight); other tiers: a vectorised pass of upper bounds,
    then a branch-free one (at large K a few percent of rows pass, scattered at random)."""
    npass = 0
    if tier == INT8:
        for t0 in range(0, m, 8):
            npass = simd.rowdot8_bounds(packed, rowbuf, t0, q8[qi], q8lo[qi], rds, rrn, rb, roff, corr[qi], u[qi],
                                        ca[qi], cb[qi], cc[qi], th, m, npass, vals, prow)
        return npass
    _single_dots(tier, packed, rowbuf, m, qi, q8, q8lo, qf, table, corr, dots, vals)
    uq, caq, cbq, ccq = u[qi], ca[qi], cb[qi], cc[qi]
    for t in range(m):
        o = roff + t
        ubuf[t], _ = _bounds(vals[t], rds[o], rrn[o], rb[o], abs(rb[o]), uq, caq, cbq, ccq)
    for t in range(m):
        prow[npass] = t
        npass += ubuf[t] >= th
    return npass


@njit(cache=True, nogil=True)
def sample_threshold(packed, tier, ds, rn, bias, rows, q8, q8lo, qf, table, corr, u, ca, cb, cc, r):
    """Per query (single path), the r-th largest lower bound over `rows` (r <= len(rows)): what a scan of those
    rows with K = r and its merge return as the threshold, in one pass with no reservoir or candidate list (the
    sampled starting threshold of a large K)."""
    nq = corr.shape[0]
    n = rows.shape[0]
    lower = np.empty((nq, n), np.float32)
    blk = BLOCK_SINGLE
    rowbuf = np.empty(blk + 8, np.int64)
    dots = np.empty(blk + 8, np.int64)
    vals = np.empty(blk, np.float32)
    for b0 in range(0, n, blk):
        m = min(n, b0 + blk) - b0
        for t in range(m):
            rowbuf[t] = rows[b0 + t]
        for t in range(m, -(-m // 8) * 8):
            rowbuf[t] = rowbuf[m - 1]
        for qi in range(nq):
            _single_dots(tier, packed, rowbuf, m, qi, q8, q8lo, qf, table, corr, dots, vals)
            for t in range(m):
                rr = rowbuf[t]
                dsr = ds[rr] if tier == INT8 else np.float32(1.0)
                _, lower[qi, b0 + t] = _bounds(vals[t], dsr, rn[rr], bias[rr], abs(bias[rr]), u[qi], ca[qi], cb[qi],
                                               cc[qi])
    theta = np.empty(nq, np.float32)
    for qi in range(nq):
        theta[qi] = kth_value(lower[qi], n - r)
    return theta


@njit(cache=True, nogil=True)
def _lane(lane, packed, tier, ds, rn, bias, mask, rowlist, ids, bitmap, q8, q8lo, qf, qt8, qtf, qv, corr32, table, corr,
          u, ca, cb, cc, theta0, batch, lanes, k, nlanes, space, cslot, cq, cub, cstate, res, res_n):
    """One lane of the scan: its share of the rows, block by block, with its own thresholds and reservoirs."""
    nq = corr.shape[0]
    blk = BLOCK_BATCH if batch else BLOCK_SINGLE
    rt = simd.RT
    width = lanes if batch else 1
    lo = lane * space // nlanes
    hi = (lane + 1) * space // nlanes
    ntiles = (nq + lanes - 1) // lanes if batch else 1
    theta = np.full(max(nq, ntiles * lanes), np.inf, np.float32)  # padding lanes never pass
    theta[:nq] = theta0
    hitbuf = np.empty(blk + rt, np.int64)
    rowbuf = np.empty(blk + max(rt, 8), np.int64)  # padded to whole tiles (rt rows) or groups of eight
    tile_i = np.empty((blk + rt, width), np.int32)
    tile_f = np.empty((blk + rt, width), np.float32)
    rds = np.empty(blk + 8, np.float32)  # the single path's row terms, dot products and bounds (whole groups of 8)
    rrn = np.empty(blk + 8, np.float32)
    rb = np.empty(blk + 8, np.float32)
    ubuf = np.empty(blk + 8, np.float32)
    nterms = min(ds.shape[0], rn.shape[0], bias.shape[0])
    prow = np.empty((blk + rt) * width, np.int64)  # rows that passed a filter, their queries and bounds
    pq = np.empty((blk + rt) * width, np.int64)
    pub = np.empty((blk + rt) * width, np.float32)
    plb = np.empty((blk + rt) * width, np.float32)
    vals = np.empty(blk + 8, np.float32)
    dots = np.empty(blk + 8, np.int64)
    st = cstate[lane]
    for b0 in range(lo, hi, blk):
        if st[1]:
            break
        b1 = min(hi, b0 + blk)
        m = 0
        if rowlist.shape[0]:
            for t in range(b0, b1):
                rowbuf[m] = rowlist[t]
                m += 1
        elif bitmap.shape[0]:
            nb = bitmap.shape[0]
            for r in range(b0, b1):
                i = ids[r]
                rowbuf[m] = r
                m += (mask.shape[0] == 0 or mask[r] != 0) and 0 <= i < nb and bitmap[i]
        elif mask.shape[0]:
            for r in range(b0, b1):
                rowbuf[m] = r
                m += mask[r] != 0
        else:
            for r in range(b0, b1):
                rowbuf[m] = r
                m += 1
        if m == 0:
            continue
        if batch:
            mp = (m + rt - 1) // rt * rt
            for t in range(m, mp):
                rowbuf[t] = rowbuf[m - 1]
            for ti in range(ntiles):
                q0 = ti * lanes
                th = theta[q0: q0 + lanes]
                for r0 in range(0, mp, rt):
                    if tier == INT8:
                        _tile_hits(lanes, packed, rowbuf, r0, qt8[ti], tile_i[r0:], ds, rn, bias, qv[ti],
                                   corr32[ti], th, hitbuf[r0:])
                    else:
                        _tile_hits(lanes, packed, rowbuf, r0, qtf[ti], tile_f[r0:], ds, rn, bias, qv[ti],
                                   corr32[ti], th, hitbuf[r0:])
                _filter_hits(tier, tile_i, tile_f, rowbuf, hitbuf, m, q0, min(lanes, nq - q0), ds, rn, bias, corr,
                             u, ca, cb, cc, k, theta, res[lane], res_n[lane], prow, pq, pub, plb, cslot[lane], cq[lane],
                             cub[lane], st)
                if st[1]:
                    break
        else:
            mp = -(-m // 8) * 8  # rowdot8 reads whole groups of eight rows
            for t in range(m, mp):
                rowbuf[t] = rowbuf[m - 1]
            if tier == INT8 and rowlist.shape[0] == 0 and m == b1 - b0 and b0 + mp <= nterms:  # rows b0..b1
                _filter_block(tier, packed, rowbuf, m, q8, q8lo, qf, table, corr, u, ca, cb, cc, ds, rn, bias, b0,
                              dots, vals, ubuf, prow, pq, pub, plb, k, theta, res[lane], res_n[lane], cslot[lane],
                              cq[lane], cub[lane], st)
                continue
            for t in range(mp):  # a list of rows (or a short last block): their terms gathered
                r = rowbuf[t]
                rds[t] = ds[r] if tier == INT8 else np.float32(1.0)
                rrn[t] = rn[r]
                rb[t] = bias[r]
            _filter_block(tier, packed, rowbuf, m, q8, q8lo, qf, table, corr, u, ca, cb, cc, rds, rrn, rb, 0, dots,
                          vals, ubuf, prow, pq, pub, plb, k, theta, res[lane], res_n[lane], cslot[lane], cq[lane],
                          cub[lane], st)


@njit(cache=True, nogil=True)
def _filter_block(tier, packed, rowbuf, m, q8, q8lo, qf, table, corr, u, ca, cb, cc, rds, rrn, rb, roff, dots, vals,
                  ubuf, prow, pq, pub, plb, k, theta, res, res_n, cslot, cq, cub, st):
    """The single path's block: per query, the rows' dot products and upper bounds, then the filter."""
    for qi in range(corr.shape[0]):
        npass = _single_pass(tier, packed, rowbuf, m, qi, q8, q8lo, qf, table, corr, u, ca, cb, cc, theta[qi], rds,
                             rrn, rb, roff, dots, vals, ubuf, prow)
        _filter_rows(vals, rowbuf, rds, rrn, rb, roff, prow, pq, pub, plb, npass, qi, u, ca, cb, cc, k, theta, res,
                     res_n, cslot, cq, cub, st)
        if st[1]:
            break


@njit(cache=True, nogil=True)
def scan_buffers(nlanes, nq, cap_r, cap_c):
    """Per lane: the candidate buffer (slot, query, upper bound), its (count, overflow) state, each query's
    reservoir of lower bounds and its fill."""
    cslot = np.empty((nlanes, cap_c), np.int64)
    cq = np.empty((nlanes, cap_c), np.int32)
    cub = np.empty((nlanes, cap_c), np.float32)
    cstate = np.zeros((nlanes, 2), np.int64)
    res = np.empty((nlanes, nq, cap_r), np.float32)
    res_n = np.zeros((nlanes, nq), np.int64)
    return cslot, cq, cub, cstate, res, res_n


@njit(cache=True, nogil=True, parallel=True)
def scan(packed, tier, ds, rn, bias, mask, rowlist, ids, bitmap, q8, q8lo, qf, qt8, qtf, qv, corr32, table, corr, u,
         ca, cb, cc, theta0, batch, lanes, k, nlanes, cslot, cq, cub, cstate, res, res_n):
    """The scan core (see module docstring). Rows scanned: rowlist (sorted slots) when non-empty, else the rows
    whose mask byte is set (every row when mask is empty) and, when bitmap is non-empty, whose id it allows
    (bitmap[ids[r]]). Queries: q8/q8lo (int8 tier, single
    path: the high and low bytes of a 16-bit query), qf (float tiers, single path) or the query tiles qt8 / qtf
    (batch path, `lanes` queries per tile, with their score and bound coefficients qv (ntiles, 4, lanes) and int8
    offsets corr32 (ntiles, lanes) as the micro-kernel's epilogue reads them). theta0: each query's starting
    threshold (-inf, or a sampled one that `merge` verifies).

    Fills per lane (the caller's buffers, `scan_buffers`; cstate and res_n zeroed): candidates (slot, query, upper
    bound) and their count, each query's reservoir of lower bounds and its fill, and an overflow flag (the candidate
    buffer was too small: the caller retries with a larger one); returns them."""
    space = rowlist.shape[0] if rowlist.shape[0] else packed.shape[0]
    cstate[:] = 0
    res_n[:] = 0
    if nlanes == 1:  # no parallel region for one lane (a thread hand-off costs a time slice on a busy machine)
        _lane(0, packed, tier, ds, rn, bias, mask, rowlist, ids, bitmap, q8, q8lo, qf, qt8, qtf, qv, corr32, table, corr,
              u, ca, cb, cc, theta0, batch, lanes, k, nlanes, space, cslot, cq, cub, cstate, res, res_n)
    else:
        for lane in prange(nlanes):
            _lane(lane, packed, tier, ds, rn, bias, mask, rowlist, ids, bitmap, q8, q8lo, qf, qt8, qtf, qv, corr32,
                  table, corr, u, ca, cb, cc, theta0, batch, lanes, k, nlanes, space, cslot, cq, cub, cstate, res,
                  res_n)
    return cslot, cq, cub, cstate, res, res_n


@njit(cache=True, nogil=True)
def _merge_one(res, res_n, theta0, k, q, theta, failed):
    """Query q's global threshold from every lane's reservoir (see merge)."""
    nlanes = res_n.shape[0]
    total = 0
    for lane in range(nlanes):
        total += res_n[lane, q]
    if total >= k and nlanes == 1:  # one lane: its reservoir as it is (kth_value copies what it reorders)
        theta[q] = kth_value(res[0, q, :total], total - k)
    elif total >= k:
        vals = np.empty(total, np.float32)
        m = 0
        for lane in range(nlanes):
            c = res_n[lane, q]
            vals[m: m + c] = res[lane, q, :c]
            m += c
        theta[q] = kth_value(vals, total - k)
    elif theta0[q] > -np.inf:
        failed[q] = True


@njit(cache=True, nogil=True, parallel=True)
def merge(cslot, cq, cub, cstate, res, res_n, theta0, k):
    """Each query's global threshold (the K-th largest lower bound over every lane's reservoir: a valid lower bound
    of the K-th best exact score) and its candidates at or above it: (offsets (nq + 1), slots grouped by query,
    thresholds, failed). failed[q]: a sampled starting threshold theta0[q] proved too high (fewer than K rows had a
    lower bound above it), so query q must be scanned again from -inf."""
    nlanes, nq = res_n.shape
    theta = np.full(nq, -np.inf, np.float32)
    failed = np.zeros(nq, np.bool_)
    if nq >= PARALLEL_MIN_QUERIES:
        for q in prange(nq):
            _merge_one(res, res_n, theta0, k, q, theta, failed)
    else:  # no parallel region for a few queries: each costs a thread hand-off (a time slice on a busy machine)
        for q in range(nq):
            _merge_one(res, res_n, theta0, k, q, theta, failed)
    offsets, slots = _collect(cslot, cq, cub, cstate, theta)
    return offsets, slots, theta, failed


@njit(cache=True, nogil=True)
def _collect(cslot, cq, cub, cstate, theta):
    """(offsets (nq + 1), slots grouped by query) of every lane's candidates whose upper bound reaches their query's
    threshold theta (the second half of merge). One query: a single branch-free pass (at large K a few percent of
    the candidates fail, scattered at random)."""
    nlanes, nq = cstate.shape[0], theta.shape[0]
    if nq == 1:
        slots = np.empty(cstate[:, 0].sum(), np.int64)
        total = 0
        for lane in range(nlanes):
            for e in range(cstate[lane, 0]):
                slots[total] = cslot[lane, e]
                total += cub[lane, e] >= theta[0]
        offsets = np.zeros(2, np.int64)
        offsets[1] = total
        return offsets, slots[:total]
    counts = np.zeros(nq + 1, np.int64)
    for lane in range(nlanes):
        for e in range(cstate[lane, 0]):
            q = cq[lane, e]
            if cub[lane, e] >= theta[q]:
                counts[q + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    slots = np.empty(offsets[-1], np.int64)
    for lane in range(nlanes):
        for e in range(cstate[lane, 0]):
            q = cq[lane, e]
            if cub[lane, e] >= theta[q]:
                slots[fill[q]] = cslot[lane, e]
                fill[q] += 1
    return offsets, slots


@njit(cache=True, nogil=True, inline="always")
def _term(q64, row, j, l2):
    if l2:
        d = q64[j] - np.float64(row[j])
        return d * d
    return q64[j] * np.float64(row[j])


@njit(cache=True, nogil=True, inline="always")
def _exact_key(q64, qi, master, r, l2):
    """Sort key of row r of master against query q64[qi] (ascending = better): -q.x, or
    |q - x|^2 for l2; in float64 with one fixed summation order (eight interleaved partial sums, eight SIMD lanes
    at a time (`simd.dot_lanes8`), the leftover columns into the first, then their pairwise sum), so identical
    rows get identical keys."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    if master.shape[1] >= 8:
        if l2:
            a0, a1, a2, a3, a4, a5, a6, a7 = simd.sqdiff_lanes8(q64, qi, master, r)
        else:
            a0, a1, a2, a3, a4, a5, a6, a7 = simd.dot_lanes8(q64, qi, master, r)
    return _finish_key(q64, qi, master, r, l2, a0, a1, a2, a3, a4, a5, a6, a7)


@njit(cache=True, nogil=True, inline="always")
def _finish_key(q64, qi, master, r, l2, a0, a1, a2, a3, a4, a5, a6, a7):
    """`_exact_key` from the eight lane sums of the first 8 * (dim // 8) columns: the leftover columns into the
    first, then the pairwise sum."""
    qrow, row = q64[qi], master[r]
    for j in range(master.shape[1] // 8 * 8, master.shape[1]):
        a0 += _term(qrow, row, j, l2)
    acc = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
    return acc if l2 else -acc


@njit(cache=True, nogil=True)
def order_topk(keys, ids, k):
    """Indices of the k best of keys/ids in order: key ascending, then id ascending (fewer when fewer exist)."""
    order = np.argsort(keys)
    i = 0
    while i < order.shape[0]:  # equal keys: smaller id first
        j = i + 1
        while j < order.shape[0] and keys[order[j]] == keys[order[i]]:
            j += 1
        if j - i > 1:
            run = order[i:j].copy()
            order[i:j] = run[np.argsort(ids[run])]
        i = j
    return order[: min(k, order.shape[0])]


@njit(cache=True, nogil=True)
def pack_keys(keys):
    """Each float64 key as one sortable uint64: the ordered bits of the key rounded to float32 (rounding is monotone,
    so this high half never orders two keys against their float64 order; -0.0 counts as +0.0, as the keys compare)
    over the key's position. `numpy.sort` of these (a vectorised sort, ~3x faster than `numpy.argsort` of the
    keys) puts the keys in order up to the runs sharing a float32 value, which `unpack_sorted` orders exactly."""
    n = keys.shape[0]
    f = np.empty(n, np.float32)
    for i in range(n):
        v = np.float32(keys[i])
        f[i] = np.float32(0.0) if v == 0 else v
    hi = _ordered_bits(f)
    out = np.empty(n, np.uint64)
    for i in range(n):
        out[i] = (np.uint64(hi[i]) << np.uint64(32)) | np.uint64(i)
    return out


@njit(cache=True, nogil=True)
def unpack_sorted(packed, keys, ids, k):
    """(keys, ids) of the first min(k, n) of `pack_keys`'s values once sorted, in final order: key ascending, then
    id ascending; runs sharing a float32 value (rare: exact ties, or keys within a float32 ulp) are ordered exactly
    by (float64 key, id)."""
    n = packed.shape[0]
    m = min(k, n)
    out_k = np.empty(m, np.float64)
    out_i = np.empty(m, np.int64)
    low = np.uint64(0xFFFFFFFF)
    shift = np.uint64(32)
    i = 0
    while i < m:
        j = i + 1
        while j < n and (packed[j] >> shift) == (packed[i] >> shift):
            j += 1
        if j - i == 1:
            p = np.int64(packed[i] & low)
            out_k[i], out_i[i] = keys[p], ids[p]
        else:
            pos = np.empty(j - i, np.int64)
            for t in range(i, j):
                pos[t - i] = np.int64(packed[t] & low)
            best = order_topk(keys[pos], ids[pos], min(j, m) - i)
            for t in range(best.shape[0]):
                out_k[i + t], out_i[i + t] = keys[pos[best[t]]], ids[pos[best[t]]]
        i = j
    return out_k, out_i


@njit(cache=True, nogil=True)
def _kept(keys, offsets, q, k, sort, kths):
    """How many of query q's candidates rerank returns (see rerank); kths[q]: the k-th smallest key (inf when all
    are kept), for `_select`."""
    m = offsets[q + 1] - offsets[q]
    kths[q] = np.inf
    if m > k and not sort:
        kth = kths[q] = kth_value(keys[offsets[q]: offsets[q + 1]], k - 1)
        m = 0
        for c in range(offsets[q], offsets[q + 1]):
            m += keys[c] <= kth
    return min(m, k) if sort else m


@njit(cache=True, nogil=True)
def _select(keys, offsets, slots, ids, q, k, sort, kths, out_off, out_k, out_i):
    """Query q's returned candidates into out_k/out_i at out_off[q] (see rerank)."""
    lo, hi, o = offsets[q], offsets[q + 1], out_off[q]
    if sort:
        cid = ids[slots[lo:hi]]
        best = order_topk(keys[lo:hi], cid, k)
        for t in range(best.shape[0]):
            out_k[o + t] = keys[lo + best[t]]
            out_i[o + t] = cid[best[t]]
        return
    kth = kths[q]
    for c in range(lo, hi):
        if keys[c] <= kth:
            out_k[o] = keys[c]
            out_i[o] = ids[slots[c]]
            o += 1


@njit(cache=True, nogil=True)
def _score_range(master, q64, qof, slots, l2, keys, lo, hi):
    """keys[c] = exact key of candidate c for c in lo..hi: ROWS_IN_FLIGHT rows of one query at a time share one
    loop (`simd.dot_lanes8_rows`: their dependency chains overlap, each row's order unchanged), rows fetched
    PREFETCH candidates ahead (their memory latencies overlap too)."""
    rif = simd.ROWS_IN_FLIGHT
    rows = np.empty(rif, np.int64)
    part = np.empty((rif, 8), np.float64)
    for c in range(lo, min(hi, lo + PREFETCH)):
        simd.prefetch_row(master, slots[c])
    for c0 in range(lo, hi, rif):
        c1 = min(hi, c0 + rif)
        for c in range(c0 + PREFETCH, min(hi, c1 + PREFETCH)):
            simd.prefetch_row(master, slots[c])
        qi = qof[c0]
        if master.shape[1] < 8 or qof[c1 - 1] != qi:  # narrow rows, or a group across two queries: row by row
            for c in range(c0, c1):
                keys[c] = _exact_key(q64, qof[c], master, slots[c], l2)
            continue
        for t in range(rif):  # a short last group repeats its last row
            rows[t] = slots[min(c0 + t, c1 - 1)]
        if l2:
            simd.sqdiff_lanes8_rows(q64, qi, master, rows, part)
        else:
            simd.dot_lanes8_rows(q64, qi, master, rows, part)
        for t in range(c1 - c0):
            p = part[t]
            keys[c0 + t] = _finish_key(q64, qi, master, rows[t], l2, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7])


@njit(cache=True, nogil=True, parallel=True)
def rerank(master, q64, offsets, slots, ids, l2, k, sort, parallel):
    """Exact float64 keys of every candidate (parallel over candidates, rows fetched a group ahead), then per
    query the candidates that can still be among its k best (key <= the k-th smallest key: ties kept).

    parallel: False keeps it on the calling thread (a scan too small for a second lane, see `index.scan_lanes`).

    Returns (keys, ids, offsets) of those, grouped by query; with sort, each group is in final order (key, then id)
    and cut to k (done here for small groups; `numpy.argsort` sorts a large group several times faster)."""
    nq = q64.shape[0]
    total = slots.shape[0]
    qof = np.empty(total, np.int64)
    for q in range(nq):
        qof[offsets[q]: offsets[q + 1]] = q
    keys = np.empty(total, np.float64)
    nchunks = max(1, min(256, total // 256))
    if parallel and total >= PARALLEL_MIN_CANDIDATES:
        for ch in prange(nchunks):
            _score_range(master, q64, qof, slots, l2, keys, ch * total // nchunks, (ch + 1) * total // nchunks)
    else:  # a few rows: no parallel region (see merge)
        _score_range(master, q64, qof, slots, l2, keys, 0, total)
    counts = np.zeros(nq + 1, np.int64)
    kths = np.empty(nq, np.float64)
    if parallel and nq >= PARALLEL_MIN_QUERIES:
        for q in prange(nq):
            counts[q + 1] = _kept(keys, offsets, q, k, sort, kths)
    else:
        for q in range(nq):
            counts[q + 1] = _kept(keys, offsets, q, k, sort, kths)
    out_off = np.cumsum(counts)
    out_k = np.empty(out_off[-1], np.float64)
    out_i = np.empty(out_off[-1], np.int64)
    if parallel and nq >= PARALLEL_MIN_QUERIES:
        for q in prange(nq):
            _select(keys, offsets, slots, ids, q, k, sort, kths, out_off, out_k, out_i)
    else:
        for q in range(nq):
            _select(keys, offsets, slots, ids, q, k, sort, kths, out_off, out_k, out_i)
    return out_k, out_i, out_off


@njit(cache=True, nogil=True)
def exact_scores(q64, master, slots):
    """Exact float64 inner products q.x for the candidate slots (fp32 master rows)."""
    out = np.empty(slots.shape[0], np.float64)
    q2 = np.ascontiguousarray(q64).reshape((1, q64.shape[0]))
    for t in range(slots.shape[0]):
        out[t] = -_exact_key(q2, 0, master, slots[t], False)
    return out


@njit(cache=True, nogil=True)
def exact_l2(q64, master, slots):
    """Exact float64 squared L2 distances to the candidate slots."""
    out = np.empty(slots.shape[0], np.float64)
    q2 = np.ascontiguousarray(q64).reshape((1, q64.shape[0]))
    for t in range(slots.shape[0]):
        out[t] = _exact_key(q2, 0, master, slots[t], True)
    return out


# ---------------------------------------------------------------------------------------------------- build
@njit(cache=True, nogil=True)
def _row_ok(row, fp16):
    """Every element finite once rounded to float32 (and within fp16's range when fp16); strict IEEE, no fast-math,
    so a NaN can never be optimised away."""
    ok = True
    for j in range(row.shape[0]):
        v = np.float32(row[j])
        ok = ok & (abs(v) <= (np.float32(65504.0) if fp16 else np.float32(np.inf)))
    return ok


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz", "nnan", "ninf"})
def _row_copy_stats(row, out):
    """out[:] = float32(row); (sum of squares in float64, max |element|) in any summation order: they only size the
    bounds (norms carry a 1e-6 margin). Only called on rows _row_ok accepted."""
    sq = 0.0
    amax = np.float32(0.0)
    for j in range(row.shape[0]):
        v = np.float32(row[j])
        out[j] = v
        sq += np.float64(v) * np.float64(v)
        amax = max(amax, abs(v))
    return sq, amax


@njit(cache=True, nogil=True)
def _quantize_row(row, inv, out):
    """out[j] = round(row[j] * inv) clipped to +-127, in float64 (|x - s x^| <= s/2 up to 2^-50 relative)."""
    for j in range(row.shape[0]):
        t = np.floor(np.float64(row[j]) * inv + 0.5)
        out[j] = np.int8(min(127.0, max(-127.0, t)))


@njit(cache=True, nogil=True, parallel=True)
def encode(x, dst, master, packed, scale, norms, bias, tier, l2, check_fp16):
    """Write rows x (any float dtype) into slots dst.. of every tier array in one parallel pass: fp32 master copy,
    int8 rows with their per-row scale (|x - s x^| <= s/2 per element) or fp32 (fp16 rows are written by the
    caller), norm, and the l2 bias. Returns the first row that is not finite (or beyond fp16's range), else -1;
    rows are validated before anything is published, so a rejected call leaves the index as it was."""
    n, dim = x.shape
    nchunks = max(1, min(256, n // 512))
    bad = np.full(nchunks, -1, np.int64)
    for c in prange(nchunks):
        lo = c * n // nchunks
        hi = (c + 1) * n // nchunks
        for i in range(lo, hi):
            if not _row_ok(x[i], check_fp16):
                if bad[c] < 0:
                    bad[c] = i
                continue
            s = dst + i
            sq, amax = _row_copy_stats(x[i], master[s])
            norms[s] = np.float32(np.sqrt(sq)) * np.float32(1.0 + 1e-6)
            bias[s] = np.float32(-sq) if l2 else np.float32(0.0)
            if tier == INT8:
                sc = np.float32(np.float64(amax) / 127.0)
                scale[s] = sc
                _quantize_row(master[s], 1.0 / np.float64(sc) if sc > 0 else 0.0, packed[s, :dim])
                packed[s, dim:] = 0
    for c in range(nchunks):
        if bad[c] >= 0:
            return bad[c]
    return -1


@njit(cache=True, nogil=True, parallel=True)
def copy_rows(src, dst, lo, hi):
    """dst[:hi-lo] = src[lo:hi] in parallel (growth copies and compaction at memory speed)."""
    n = hi - lo
    nchunks = max(1, min(64, n // 4096))
    for c in prange(nchunks):
        a = lo + c * n // nchunks
        b = lo + (c + 1) * n // nchunks
        dst[a - lo: b - lo] = src[a:b]


@njit(cache=True, nogil=True)
def gather_rows_down(arr, keep):
    """arr[i] = arr[keep[i]] for ascending keep: rows only move down, so in place and in order is safe."""
    for i in range(keep.shape[0]):
        s = keep[i]
        if s != i:
            arr[i] = arr[s]


@njit(cache=True, nogil=True)
def search_one(packed, tier, ds, rn, bias, mask, rowlist, ids, bitmap, master, q8, q8lo, qf, q64, table, corr, u, ca,
               cb, cc, sample, r, k, l2, sort_max, cap_r, cap_c):
    """One query on one lane, every step in one call (a call from Python costs microseconds of argument unboxing
    each): the sampled starting threshold (r > 0: the r-th largest lower bound over `sample`), the scan, the merge
    (scanned again from -inf when the sampled threshold proved too high, and with a larger candidate buffer when
    it overflowed), the exact re-rank and its selection. Arguments as `scan`, `sample_threshold` and `rerank`.

    Returns (keys, ids, packed, candidates): the kept candidates' exact keys and ids, in final order and cut to k
    when there are at most sort_max candidates (packed empty); else every candidate, with `pack_keys` of their
    keys for numpy's sort and `unpack_sorted` (which keeps the first k)."""
    theta0 = np.full(1, -np.inf, np.float32)
    if r > 0:
        theta0[0] = sample_threshold(packed, tier, ds, rn, bias, sample, q8, q8lo, qf, table, corr, u, ca, cb, cc,
                                     r)[0]
    space = rowlist.shape[0] if rowlist.shape[0] else packed.shape[0]
    qt8, qtf = np.zeros((0, 1, 4), np.int8), np.zeros((0, 1, 1), np.float32)
    qv, corr32 = np.zeros((0, 4, 1), np.float32), np.zeros((0, 1), np.int32)
    theta = np.full(1, -np.inf, np.float32)
    failed = np.zeros(1, np.bool_)
    while True:
        cslot, cq, cub, cstate, res, res_n = scan_buffers(1, 1, cap_r, cap_c)
        _lane(0, packed, tier, ds, rn, bias, mask, rowlist, ids, bitmap, q8, q8lo, qf, qt8, qtf, qv, corr32, table,
              corr, u, ca, cb, cc, theta0, False, 1, k, 1, space, cslot, cq, cub, cstate, res, res_n)
        if cstate[0, 1]:
            cap_c *= 4  # the candidate buffer overflowed (adversarial data): again with room for more
            continue
        failed[0] = False
        _merge_one(res, res_n, theta0, k, 0, theta, failed)
        if not failed[0]:
            break
        theta0[0] = -np.inf  # the sampled threshold was too high: again from -inf
    offsets, slots = _collect(cslot, cq, cub, cstate, theta)
    total = slots.shape[0]
    keys = np.empty(total, np.float64)
    _score_range(master, q64, np.zeros(total, np.int64), slots, l2, keys, 0, total)
    if total > sort_max:  # numpy sorts them all (no selection first: a selection costs more than sorting a few more)
        return keys, ids[slots], pack_keys(keys), total
    kths = np.empty(1, np.float64)
    out_off = np.zeros(2, np.int64)
    out_off[1] = _kept(keys, offsets, 0, k, True, kths)
    out_k = np.empty(out_off[1], np.float64)
    out_i = np.empty(out_off[1], np.int64)
    _select(keys, offsets, slots, ids, 0, k, True, kths, out_off, out_k, out_i)
    return out_k, out_i, np.empty(0, np.uint64), total


@njit(cache=True, nogil=True)
def query_terms(q, tier, batch, alpha, pdim):
    """Per query the scan core's terms (see Index._query_terms): (q8, q8lo, qf, corr, u, ca, cb, cc). int8 tier:
    the query quantised to 127 levels (batch) or to 16 bits as hi * 256 + lo with hi, lo bytes (single path), its
    int8 offset 128 * sum(q^) and bound coefficients from its rounding error; float tiers: the float32 query and
    its rounding coefficients. Every coefficient is rounded up past float32 rounding."""
    nq, dim = q.shape
    up = 1.0 + 1e-5
    int8 = tier == INT8
    rows8 = nq if int8 else 0
    q8 = np.zeros((rows8, pdim), np.int8)
    q8lo = np.zeros((rows8, pdim), np.int8)
    qf = np.zeros((0 if int8 else nq, dim), np.float32)
    corr = np.zeros(nq, np.int64)
    u = np.full(nq, np.float32(alpha), np.float32)
    ca = np.zeros(nq, np.float32)
    cb = np.zeros(nq, np.float32)
    cc = np.zeros(nq, np.float32)
    levels = 127.0 if batch else 127.0 * 257.0  # 16 bits: hi * 256 + lo with hi in [-127, 127]
    rel = (2.0 ** -11 if tier == FP16 else 0.0) + (dim + 2) * EPS32 * 1.01
    for i in range(nq):
        qabs = 0.0
        top = 0.0
        sq = 0.0
        for j in range(dim):
            v = np.float64(q[i, j])
            qabs += abs(v)
            top = max(top, abs(v))
            sq += v * v
        if not int8:
            for j in range(dim):
                qf[i, j] = q[i, j]
            cb[i] = np.float32(alpha * np.sqrt(sq) * rel * up)
            if tier == FP16:
                cc[i] = np.float32(alpha * qabs * 2.0 ** -24 * up)
            continue
        qs = np.float64(np.float32(top / levels))
        div = qs if qs > 0 else 1.0
        err = 0.0
        total = 0
        for j in range(dim):
            v = np.float64(q[i, j])
            h = min(levels, max(-levels, np.rint(v / div)))
            err += (v - qs * h) ** 2
            total += np.int64(h)
            if batch:
                q8[i, j] = np.int8(h)
            else:
                hb = np.floor((h + 128.0) / 256.0)
                q8[i, j] = np.int8(hb)
                q8lo[i, j] = np.int8(h - 256.0 * hb)
        fnorm = np.sqrt(err)
        corr[i] = 128 * total
        u[i] = np.float32(alpha * qs)
        ca[i] = np.float32(alpha * (0.5 * qabs + 0.5 * np.sqrt(dim) * fnorm) * up)
        cb[i] = np.float32(alpha * fnorm * up)
    return q8, q8lo, qf, corr, u, ca, cb, cc


@njit(cache=True, nogil=True)
def sample_rows(k, space, stride, rowlist, mask, ids, bitmap):
    """(rows, r) of a large K's sampled starting threshold (see Index._sample): a block of 64 rows of the scanned
    row set in every `stride` blocks, those the mask and the id bitmap allow, and the rank r whose threshold about
    4 standard deviations more than K rows of the whole set are expected to reach; r = 0: the sample is too
    small for that."""
    npos = 0
    for s0 in range(0, space, stride * 64):
        npos += min(64, space - s0)
    rows = np.empty(npos, np.int64)
    m = 0
    nb = bitmap.shape[0]
    for s0 in range(0, space, stride * 64):
        for p in range(s0, min(space, s0 + 64)):
            row = rowlist[p] if rowlist.shape[0] else p
            if mask.shape[0] and mask[row] == 0:
                continue
            if nb and not (0 <= ids[row] < nb and bitmap[ids[row]]):
                continue
            rows[m] = row
            m += 1
    expect = k * npos / space  # the sample is that fraction of the allowed rows too
    r = int(np.ceil(expect + 4.0 * np.sqrt(expect))) + 1
    if expect < 16 or r > m // 2:
        return rows[:0], 0
    return rows[:m], r
