"""The single-query path's fused kernels: rowdot8's bounds epilogue (simd.rowdot8_bounds) lists exactly the rows
the scalar filter formula (kernels._bounds) passes, with and without VNNI; the re-rank's rows-in-flight loop
(kernels._score_range over simd.dot_lanes8_rows) gives every row the one-row key bit for bit, across query
boundaries; and single searches through both (contiguous blocks, tombstones, ragged last groups, duplicate rows,
K up to N) equal the float64 oracle."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from recmine.faery import Index, kernels, simd
from recmine.faery.exact import brute_force_topk


@njit
def _fused_pass(x, rows, m, hi, lo, ds, rn, b, off, corr, u, ca, cb, cc, th, vnni):
    vals = np.full(rows.shape[0], np.nan, np.float32)
    prow = np.full(rows.shape[0] + 8, -1, np.int64)
    npass = 0
    for r0 in range(0, m, 8):
        if vnni:
            npass = simd.rowdot8_bounds(x, rows, r0, hi, lo, ds, rn, b, off, corr, u, ca, cb, cc, th, m, npass, vals,
                                        prow)
        else:
            npass = simd.generic_rowdot8_bounds(x, rows, r0, hi, lo, ds, rn, b, off, corr, u, ca, cb, cc, th, m,
                                                npass, vals, prow)
    return vals[:m], prow[:npass]


@njit
def _scalar_pass(x, rows, m, hi, lo, ds, rn, b, off, corr, u, ca, cb, cc, th):
    dots = np.zeros(rows.shape[0], np.int64)
    for r0 in range(0, m, 8):
        simd.generic_rowdot8(x, rows, r0, hi, lo, dots)
    vals = np.empty(m, np.float32)
    ub = np.empty(m, np.float32)
    for t in range(m):
        vals[t] = np.float32(dots[t] - corr)
        o = off + t
        ub[t], _ = kernels._bounds(vals[t], ds[o], rn[o], b[o], abs(b[o]), u, ca, cb, cc)
    return vals, np.flatnonzero(ub >= th)


@pytest.mark.parametrize("m", [8, 13, 64, 101])
def test_rowdot8_bounds_passes_the_rows_the_scalar_filter_passes(m: int) -> None:
    rng = np.random.default_rng(m)
    x = rng.integers(-127, 128, (300, 128)).astype(np.int8)
    rows = np.zeros(-(-m // 8) * 8, np.int64)
    rows[:m] = rng.integers(0, 300, m)
    rows[m:] = rows[m - 1]
    hi, lo = rng.integers(-127, 128, (2, 128)).astype(np.int8)
    off = 5
    ds = rng.uniform(1e-3, 1e-2, m + off + 8).astype(np.float32)
    rn = rng.uniform(1.0, 3.0, ds.size).astype(np.float32)
    b = -rng.uniform(0.0, 9.0, ds.size).astype(np.float32)  # an l2-like bias: its |b| term counts too
    corr = np.int64(128 * (256 * int(hi.sum()) + int(lo.sum())))
    u, ca, cb, cc = (np.float32(v) for v in (3e-4, 0.37, 1e-3, 1e-6))
    want_vals, _ = _scalar_pass(x, rows, m, hi, lo, ds, rn, b, off, corr, u, ca, cb, cc, np.float32(0.0))
    for th in (-np.inf, np.inf, *np.quantile(want_vals * ds[off: off + m] * u, [0.1, 0.5, 0.9])):
        th = np.float32(th)
        want = _scalar_pass(x, rows, m, hi, lo, ds, rn, b, off, corr, u, ca, cb, cc, th)
        for vnni in (True, False):
            got = _fused_pass(x, rows, m, hi, lo, ds, rn, b, off, corr, u, ca, cb, cc, th, vnni)
            assert np.array_equal(got[0], want[0])  # bit for bit
            assert np.array_equal(got[1], want[1]), (th, vnni)
    assert 0 < want[1].size < m  # the last threshold passes some rows, not all


@pytest.mark.parametrize("l2", [False, True])
@pytest.mark.parametrize("dim", [3, 8, 13, 64, 131])
def test_rows_in_flight_keys_equal_one_row_keys(dim: int, l2: bool) -> None:
    """_score_range (four rows of one query per loop, row by row where a group spans two queries or rows are
    narrower than eight) against _exact_key row by row, bit for bit; duplicate rows get identical keys."""

    @njit
    def both(master, q64, qof, slots, l2):
        keys = np.empty(slots.shape[0])
        kernels._score_range(master, q64, qof, slots, l2, keys, 0, slots.shape[0])
        one = np.empty(slots.shape[0])
        for c in range(slots.shape[0]):
            one[c] = kernels._exact_key(q64, qof[c], master, slots[c], l2)
        return keys, one

    rng = np.random.default_rng(dim)
    master = (rng.standard_normal((500, dim)) * rng.uniform(1e-3, 1e3, (500, 1))).astype(np.float32)
    master[250:] = master[:250]  # duplicates
    q64 = rng.standard_normal((3, dim)).astype(np.float32).astype(np.float64)
    qof = np.repeat(np.arange(3), [101, 6, 230]).astype(np.int64)  # boundaries inside groups of four
    slots = rng.integers(0, 500, qof.size).astype(np.int64)
    slots[200:] = slots[200:] % 250 + 250  # the twins of rows scored earlier in the same query
    keys, one = both(master, q64, qof, slots, l2)
    assert np.array_equal(keys, one)
    twin = {}
    for c in range(qof.size):
        twin.setdefault((qof[c], slots[c] % 250), set()).add(keys[c])
    assert all(len(v) == 1 for v in twin.values())


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_single_search_with_ragged_blocks_and_tombstones_equals_the_oracle(metric: str) -> None:
    """12,347 rows of 64 dims (three 4,096-row blocks, a last group of three rows), 1,000 of them twins of rows in
    another block: K from 10 to N - 2, before removal (contiguous blocks, row terms read in place) and after
    (tombstones: terms gathered)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12_347, 64)).astype(np.float32)
    x[8_000:9_000] = x[:1_000]  # identical keys, ties by the smaller id
    n = x.shape[0]
    idx = Index(64, metric=metric)
    idx.add(x)
    qs = np.concatenate([rng.standard_normal((1, 64)), x[:1] * 3.0]).astype(np.float32)  # the second meets a twin
    keep = np.ones(n, np.bool_)
    for removed in (False, True):
        if removed:
            gone = rng.choice(n, 700, replace=False)
            idx.remove(gone)
            keep[gone] = False
        for k in (10, 1_000, 5_000, int(keep.sum()) - 2):
            want_s, want_i = brute_force_topk(x[keep], np.flatnonzero(keep), qs, k, metric)
            for i in range(qs.shape[0]):
                got_s, got_i = idx.search(qs[i], k)
                assert np.array_equal(got_i[0], want_i[i]), (removed, k, i)
                np.testing.assert_array_equal(got_s[0], want_s[i].astype(np.float32))
