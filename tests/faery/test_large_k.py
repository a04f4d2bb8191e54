"""Large K on the single-query path: the radix selection (kernels.kth_value) that cuts reservoirs, merges lanes and
trims re-ranked groups equals numpy's partition on hard inputs, and searches with K up to the whole corpus (ties,
two lanes, filters allowing fewer rows than K) equal the float64 brute-force oracle."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from recmine.faery import Index, kernels
from recmine.faery import index as index_module
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
def test_large_k_single_queries_equal_the_oracle(threads: int, metric: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """40,000 rows (two lanes at 2 threads), a tenth of them duplicated (exact ties across lanes), K from 1,000 (the
    sampled threshold) to every row; and an allow bitmap leaving fewer rows than K (padded)."""
    n, dim = 40_000, 16
    monkeypatch.setattr(index_module, "PARALLEL_MIN_BYTES", 0)  # two lanes at 2 threads, however small the scan
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


def test_scan_lanes_rule() -> None:
    """One lane while a scan reads less than PARALLEL_MIN_BYTES (rows x bytes per row x queries), every thread
    from there on: 200,000 x 64 int8 (68 bytes a row, 13.6 MB) single queries stay on one lane at 2 threads, 1M x 128
    or a batch of 64 queries over the same rows take both."""
    from recmine.faery.index import PARALLEL_MIN_BYTES, scan_lanes

    assert scan_lanes(200_000, 68, 1, 2) == 1
    assert scan_lanes(200_000, 68, 64, 2) == 2
    assert scan_lanes(1_000_000, 132, 1, 2) == 2
    assert scan_lanes(1_000_000, 132, 1, 1) == 1
    assert scan_lanes(PARALLEL_MIN_BYTES, 1, 1, 2) == 2 and scan_lanes(PARALLEL_MIN_BYTES - 1, 1, 1, 2) == 1


def test_a_small_scan_runs_on_one_lane_at_two_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """40,000 x 64 int8 (2.7 MB): a single query's scan gets one lane at 2 threads, every step in one compiled call
    with no parallel region (a second lane's hand-off and merge cost more than they save there); a batch of 64
    queries over the same rows (174 MB of scan work) gets both lanes. Results equal the oracle either way."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 threads")
    rng = np.random.default_rng(12)
    x = rng.standard_normal((40_000, 64)).astype(np.float32)
    idx = Index(64)
    idx.add(x)
    seen: list[tuple[str, object]] = []
    scan, one = kernels.scan, kernels.search_one

    def spy_scan(*args: object) -> object:
        seen.append(("scan", args[26]))  # nlanes
        return scan(*args)

    def spy_one(*args: object) -> object:
        seen.append(("one", None))
        return one(*args)

    monkeypatch.setattr(kernels, "scan", spy_scan)
    monkeypatch.setattr(kernels, "search_one", spy_one)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        q = rng.standard_normal((64, 64)).astype(np.float32)
        for k in (10, 5_000):
            seen.clear()
            got_s, got_i = idx.search(q[0], k)
            assert seen == [("one", None)], k
            want_s, want_i = brute_force_topk(x, None, q[:1], k)
            assert np.array_equal(got_i, want_i)
        seen.clear()
        got_s, got_i = idx.search(q, 10)
        assert [v for name, v in seen if name == "scan"] == [2]
        assert np.array_equal(got_i, brute_force_topk(x, None, q, 10)[1])
    finally:
        numba.set_num_threads(before)


def _order_oracle(keys: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((ids, keys))[:k]
    return keys[order], ids[order]


@pytest.mark.parametrize("kind", ["normal", "within-a-float32-ulp", "ties", "zeros", "huge"])
def test_packed_sort_orders_like_lexsort(kind: str) -> None:
    """kernels.pack_keys + numpy's sort + kernels.unpack_sorted (the order of a large re-ranked group) equal a
    lexsort by (float64 key, id): keys sharing a float32 value but differing in float64, exact ties (smaller id
    first), -0.0 next to +0.0 (equal keys), keys beyond float32's range; cut at every kind of K."""
    rng = np.random.default_rng(21)
    n = 9_000
    if kind == "normal":
        keys = rng.standard_normal(n)
    elif kind == "within-a-float32-ulp":  # 30 float32 values, each shared by ~300 distinct float64 keys
        keys = 10.0 + rng.integers(0, 30, n) * 2.0 ** -20 + rng.integers(0, 50, n) * 2.0 ** -45
    elif kind == "ties":
        keys = rng.integers(-3, 4, n).astype(np.float64)
    elif kind == "zeros":
        keys = np.where(rng.random(n) < 0.5, -0.0, 0.0)
        keys[rng.random(n) < 0.2] = 1e-300
        keys[rng.random(n) < 0.2] = -1e-300
    else:
        keys = rng.standard_normal(n) * 1e300
    ids = rng.permutation(4 * n)[:n].astype(np.int64)
    for k in (1, 100, n // 2, n - 1, n, n + 5):
        packed = kernels.pack_keys(keys)
        packed.sort()
        got_k, got_i = kernels.unpack_sorted(packed, keys, ids, k)
        want_k, want_i = _order_oracle(keys, ids, k)
        assert np.array_equal(got_i, want_i), (kind, k)
        assert np.array_equal(got_k, want_k)


def test_large_k_with_scores_closer_than_a_float32_ulp_equals_the_oracle() -> None:
    """Rows whose exact scores differ by less than a float32 ulp of the score (they share a float32 value: the packed
    sort's fix-up orders them by their float64 keys) and exact duplicates (ties: smaller id first), K up to every
    row but one, against the float64 oracle."""
    n, dim = 12_000, 16
    rng = np.random.default_rng(22)
    base = rng.standard_normal(dim).astype(np.float32)
    x = np.tile(base, (n, 1))
    x[:, 0] = np.float32(1.0) + rng.integers(0, 4_000, n).astype(np.float32) * np.float32(2.0 ** -23)  # distinct ulps
    q = rng.standard_normal((2, dim)).astype(np.float32)
    q[:, 0] = np.float32(2.0 ** -18)  # the first column moves the score by ~2^-41 per step: far below a float32 ulp
    ids = rng.permutation(3 * n)[:n].astype(np.int64)
    idx = Index(dim)
    idx.add(x, ids=ids)
    for k in (3_000, n - 1):
        want_s, want_i = brute_force_topk(x, ids, q, k)
        for i in range(2):
            got_s, got_i = idx.search(q[i], k)
            assert np.array_equal(got_i[0], want_i[i]), k
            np.testing.assert_array_equal(got_s[0], want_s[i].astype(np.float32))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_one_call_single_path_retries_equal_the_oracle(metric: str) -> None:
    """The single query's one compiled call (kernels.search_one) redoes its own work in two cases: the sampled
    threshold proved too high (the sample rows are the corpus's best: far fewer than K rows reach it), and the
    candidate buffer overflowed (thousands of identical rows tie with the threshold). Both equal the oracle,
    ties by the smaller id, for K up to the whole corpus."""
    n, dim = 40_000, 16
    rng = np.random.default_rng(21)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal(dim).astype(np.float32)
    idx = Index(dim, metric=metric)
    idx.add(x)
    k = 1_000
    sample, r = idx._sample(k, np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.bool_))
    x2 = x.copy()
    x2[sample] = (q if metric == "l2" else q * 10.0) + 0.01 * x[sample]  # the sample rows: the corpus's best
    idx2 = Index(dim, metric=metric)
    idx2.add(x2)
    assert 0 < r < k // 4 < k < sample.size  # the sample's r-th best lower bound: a few rows above it, not K
    assert np.isin(brute_force_topk(x2, None, q[None], k, metric)[1], sample).all()
    t, c = idx2._query_terms(q[None], False), idx2.corpus
    theta0 = kernels.sample_threshold(c.packed[: c.size], kernels.TIERS[c.storage], c.scale, c.norms, c.bias, sample,
                                      *idx2._query_rows(t), kernels.HALF_TABLE, t["corr"], t["u"], t["ca"], t["cb"],
                                      t["cc"], r)
    none8, none64, nobits = np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.bool_)
    assert idx2._run(t, k, none8, none64, nobits, theta0, False)[3].all()  # that threshold does prove too high
    for kk in (k, n - 5):
        want_s, want_i = brute_force_topk(x2, None, q[None], kk, metric)
        got_s, got_i = idx2.search(q, kk)
        assert np.array_equal(got_i, want_i), kk
        np.testing.assert_array_equal(got_s, want_s.astype(np.float32))
    same = np.repeat(rng.standard_normal((1, dim)).astype(np.float32), 20_000, axis=0)
    x3 = np.concatenate([same, rng.standard_normal((3_000, dim)).astype(np.float32) * 0.01])
    idx3 = Index(dim, metric=metric)
    idx3.add(x3)
    q3 = same[0] if metric == "ip" else same[0] + 0.5
    for kk in (10, 5_000, x3.shape[0]):
        want_s, want_i = brute_force_topk(x3, None, q3[None], kk, metric)
        got_s, got_i = idx3.search(q3, kk)
        assert np.array_equal(got_i, want_i), kk
        np.testing.assert_array_equal(got_s, want_s.astype(np.float32))


def test_concurrent_batches_on_kept_scan_buffers_equal_the_oracle() -> None:
    """Scan buffers are kept per thread for the next scan (Index._scan_buffers): four threads searching batches of
    the same shape (same buffer sizes) at once on one index, with and without a filter, each equal the oracle."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(31)
    x = rng.standard_normal((30_000, 16)).astype(np.float32)
    idx = Index(16)
    idx.add(x)
    bits = rng.random(x.shape[0]) < 0.4
    qs = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)  # per thread, three batches of 16 queries

    def work(i: int) -> bool:
        ok = True
        for j in range(qs.shape[1]):
            allow = bits if j % 2 else None
            _, got = idx.search(qs[i, j], 300, allow=allow)
            rows = np.flatnonzero(bits) if allow is not None else np.arange(x.shape[0])
            ok &= np.array_equal(got, brute_force_topk(x[rows], rows, qs[i, j], 300)[1])
        return ok and len(idx._local.scan) > 0  # this thread's buffers were kept (and reused by its later batches)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(4)))
