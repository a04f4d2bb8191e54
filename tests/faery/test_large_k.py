"""Large K on the single-query path: the radix selection (kernels.kth_value) that cuts reservoirs, merges lanes and
trims re-ranked groups equals numpy's partition on hard inputs, and searches with K up to the whole corpus (ties,
two lanes, filters allowing fewer rows than K) equal the float64 brute-force oracle."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from recmine.faery import Index, kernels
from recmine.faery.exact import brute_force_topk


def _hard_values(rng: np.random.Generator, n: int, kind: str, dtype: type) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(n).astype(dtype)
    if kind == "ties":
        return rng.integers(-2, 3, n).astype(dtype)
    if kind == "one-ulp":  # every value within two ulps of 1: only the last bits differ
        return (1.0 + rng.integers(0, 3, n) * np.finfo(dtype).eps).astype(dtype)
    if kind == "zeros":  # -0.0 and +0.0 (equal as floats) among a few others
        v = np.zeros(n, dtype)
        v[rng.random(n) < 0.5] = -0.0
        v[rng.random(n) < 0.1] = rng.standard_normal(1)[0]
        return v
    return rng.choice(np.array([-np.inf, np.inf, 3.0, -7.5]), n).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["normal", "ties", "one-ulp", "zeros", "infinities"])
def test_kth_value_equals_numpy_partition(dtype: type, kind: str) -> None:
    rng = np.random.default_rng(5)
    for n in (1, kernels.SELECT_SMALL, kernels.SELECT_SMALL + 1, 5_000, 70_000):
        v = _hard_values(rng, n, kind, dtype)
        for kth in {0, 1 % n, n // 2, n - 1, int(rng.integers(0, n))}:
            assert kernels.kth_value(v, kth) == np.partition(v, kth)[kth], (n, kth)
        k = max(1, n // 3)
        res = v.copy()
        theta = kernels._compact_reservoir(res, k)
        want = np.sort(v)[n - k:]
        assert theta == want[0]
        assert np.array_equal(np.sort(res[:k]), want)  # the k largest, ties included, as a multiset


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_large_k_single_queries_equal_the_oracle(threads: int, metric: str) -> None:
    """40,000 rows (two lanes at 2 threads), a tenth of them duplicated (exact ties across lanes), K from 1,000 (the
    sampled threshold) to every row; and an allow bitmap leaving fewer rows than K (padded)."""
    n, dim = 40_000, 16
    rng = np.random.default_rng(8)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    dup = rng.choice(n, n // 10, replace=False)
    x[dup] = x[rng.choice(n, dup.size)]
    idx = Index(dim, metric=metric)
    idx.add(x)
    qs = rng.standard_normal((3, dim)).astype(np.float32)
    bits = rng.random(n) < 0.3
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for k in (1_000, 6_000, n - 3):
            want_s, want_i = brute_force_topk(x, None, qs, k, metric)
            for i in range(qs.shape[0]):
                got_s, got_i = idx.search(qs[i], k)
                assert np.array_equal(got_i[0], want_i[i]), (k, i)
                np.testing.assert_array_equal(got_s[0], want_s[i].astype(np.float32))
        k = 15_000  # more than the ~12,000 allowed rows
        want_s, want_i = brute_force_topk(x[bits], np.flatnonzero(bits), qs, k, metric)
        for i in range(qs.shape[0]):
            got_s, got_i = idx.search(qs[i], k, allow=bits)
            assert np.array_equal(got_i[0], want_i[i])
            assert (got_i[0, bits.sum():] == -1).all()
    finally:
        numba.set_num_threads(before)
