"""faery Index vs a float64 brute-force oracle on hard data, every storage/metric/K; bad input; persistence."""

from __future__ import annotations

import numpy as np
import pytest

from recmine.faery import Index
from recmine.faery import index as index_module
from recmine.faery.exact import brute_force_topk
from recmine.faery.index import BATCH_MIN_QUERIES
from recmine.faery.kernels import BLOCK_BATCH, BLOCK_SINGLE

N, D = 3000, 24


def _data(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return rng.standard_normal((N, D)).astype(np.float32)
    if kind == "clustered":
        centres = rng.standard_normal((8, D)) * 5
        return (centres[rng.integers(0, 8, N)] + 0.05 * rng.standard_normal((N, D))).astype(np.float32)
    if kind == "heavy_norms":
        x = rng.standard_normal((N, D)) * rng.pareto(1.5, (N, 1)) * 10
        return x.astype(np.float32)
    if kind == "adversarial":  # ascending scores so every row passes the filter, plus many exact ties
        base = rng.standard_normal(D).astype(np.float32)
        x = np.outer(np.sort(np.repeat(np.arange(N // 4), 4)).astype(np.float32) / N, base)
        return (x + base * 0.0).astype(np.float32)
    raise ValueError(kind)


KINDS = ("random", "clustered", "heavy_norms", "adversarial")
STORAGES = ("int8", "fp16", "fp32")
METRICS = ("ip", "cosine", "l2")


def _seed(*picks: tuple[str, tuple[str, ...]]) -> int:
    """A fixed seed per parameter combination (hash() of strings changes from process to process)."""
    seed = 0
    for value, options in picks:
        seed = seed * 10 + options.index(value) + 1
    return seed


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("metric", METRICS)
def test_search_equals_brute_force(kind, storage, metric):
    rng = np.random.default_rng(_seed((kind, KINDS), (storage, STORAGES), (metric, METRICS)))
    x = _data(kind, rng)
    if metric == "cosine" and kind == "adversarial":
        x[0] = x[1]  # the zero-scaled first rows would have zero norm
        x += 1e-3
    ids = rng.permutation(10 * N)[:N].astype(np.int64)
    idx = Index(D, metric=metric, storage=storage)
    idx.add(x, ids=ids)
    q = rng.standard_normal((5, D)).astype(np.float32)
    if kind == "adversarial":
        q[0] = x[-1]  # aligned with the data direction: scores ascend with the row index
    for k in (1, 10, 100, 1000, N):
        got_s, got_i = idx.search(q, k)
        want_s, want_i = brute_force_topk(x, ids, q, k, metric)
        np.testing.assert_array_equal(got_i, want_i, err_msg=f"k={k}")
        np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5 * (1 + np.abs(want_s).max()))
    one_s, one_i = idx.search(q[0], 10)  # a single 1-D query
    assert one_i.shape == (1, 10)


BIG_N, BIG_D = 60_000, 24
BIG_KS = (1, 10, 129, 1000, 20_000)  # 20,000 > a lane's reservoir fill: the threshold rises mid-scan


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("metric", METRICS)
def test_many_chunks_and_the_batched_path_equal_brute_force(storage, metric, monkeypatch):
    """N large enough that the scan splits over several lanes (merged through their reservoirs' K-th bounds) and
    every lane crosses several row blocks of the single and the batched path, for every K above, against the
    float64 oracle; exact ties placed in different lanes and blocks."""
    monkeypatch.setattr(index_module, "PARALLEL_MIN_BYTES", 0)  # every scan over every thread, however small
    assert BIG_N > 6 * max(BLOCK_SINGLE, BLOCK_BATCH)
    assert 3 < min(BATCH_MIN_QUERIES.values())  # 3 queries: the single path
    rng = np.random.default_rng(_seed((storage, STORAGES), (metric, METRICS)) + 1000)
    x = rng.standard_normal((BIG_N, BIG_D)).astype(np.float32) * rng.uniform(0.5, 2.0, (BIG_N, 1)).astype(np.float32)
    x[BIG_N - 500:] = x[:500]  # identical rows in the first and the last chunk / block: ties by smaller id
    ids = rng.permutation(3 * BIG_N)[:BIG_N].astype(np.int64)
    idx = Index(BIG_D, metric=metric, storage=storage)
    idx.add(x, ids=ids)
    nq = BATCH_MIN_QUERIES[storage]
    q = rng.standard_normal((max(nq, 8), BIG_D)).astype(np.float32)
    q[1] = x[3]  # a query aligned with tied rows
    for k in BIG_KS:
        want_s, want_i = brute_force_topk(x, ids, q, k, metric)
        for name, qq, w_i, w_s in (("batched", q, want_i, want_s), ("single", q[:3], want_i[:3], want_s[:3])):
            got_s, got_i = idx.search(qq, k)
            np.testing.assert_array_equal(got_i, w_i, err_msg=f"{name} path, K={k}")
            np.testing.assert_allclose(got_s, w_s, rtol=1e-5, atol=1e-5 * (1 + np.abs(w_s).max()))


def test_batched_and_single_paths_agree():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20_000, 32)).astype(np.float32)
    q = rng.standard_normal((40, 32)).astype(np.float32)
    for storage in ("int8", "fp32"):
        idx = Index(32, storage=storage)
        idx.add(x)
        batch = idx.search(q, 50)
        single = [idx.search(q[i:i + 1], 50) for i in range(len(q))]
        np.testing.assert_array_equal(batch[1], np.vstack([s[1] for s in single]))
        assert idx.stats()["filter_pass_rate"] < 0.5  # the filter drops most rows on random data


def test_fewer_rows_than_k_pads():
    idx = Index(4)
    idx.add(np.eye(4, dtype=np.float32), ids=[10, 11, 12, 13])
    idx.remove([11])
    s, i = idx.search(np.ones(4, np.float32), 5)
    assert i.tolist() == [[10, 12, 13, -1, -1]]
    assert np.isneginf(s[0, 3:]).all()
    empty = Index(4, metric="l2")
    s, i = empty.search(np.ones(4, np.float32), 2)
    assert (i == -1).all() and np.isposinf(s).all()


def _snapshot(idx: Index):
    return idx.ids().tolist(), idx.get(idx.ids()).tolist() if len(idx) else []


def test_bad_input_leaves_index_unchanged(tmp_path):
    idx = Index(8, storage="int8")
    idx.add(np.ones((3, 8), np.float32), ids=[1, 2, 3])
    before = _snapshot(idx)
    cases = [
        (lambda: idx.add(np.ones((2, 7), np.float32)), ValueError, r"shape \(n, 8\)"),
        (lambda: idx.add(np.array([[np.nan] * 8], np.float32)), ValueError, "NaN or Inf"),
        (lambda: idx.add(np.ones((2, 8), np.float32), ids=[4, 4]), ValueError, "duplicate id 4"),
        (lambda: idx.add(np.ones((3, 8), np.float32), ids=[9, 4, 4]), ValueError, "duplicate id 4"),
        (lambda: idx.add(np.ones((1, 8), np.float32), ids=[2]), ValueError, "already in the index"),
        (lambda: idx.remove([1, 99]), KeyError, "unknown id 99"),
        (lambda: idx.update([99], np.ones((1, 8), np.float32)), KeyError, "unknown id 99"),
        (lambda: idx.update([1], np.full((1, 8), np.inf, np.float32)), ValueError, "NaN or Inf"),
        (lambda: idx.search(np.ones(8, np.float32), 0), ValueError, "k must be a positive integer"),
        (lambda: idx.search(np.ones(5, np.float32), 1), ValueError, r"shape \(nq, 8\)"),
        (lambda: idx.search(np.full(8, np.nan, np.float32), 1), ValueError, "NaN or Inf"),
        (lambda: Index(8, metric="dot"), ValueError, "metric must be"),
        (lambda: Index(8, metric="cosine").add(np.zeros((1, 8), np.float32)), ValueError, "zero norm"),
        (lambda: Index(8, storage="fp16").add(np.full((1, 8), 1e6, np.float32)), ValueError, "fp16"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn()
    assert _snapshot(idx) == before


def test_save_load_and_truncation(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    idx = Index(16, metric="l2", storage="fp16")
    idx.add(x)
    idx.remove(np.arange(0, 500, 7))
    idx.save(tmp_path / "idx")
    back = Index.load(tmp_path / "idx")
    q = rng.standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_array_equal(idx.search(q, 20)[1], back.search(q, 20)[1])
    assert back.metric == "l2" and back.storage == "fp16" and len(back) == len(idx)
    back.add(rng.standard_normal((2, 16)).astype(np.float32))  # a memory-mapped index stays writable
    assert len(back) == len(idx) + 2
    packed = tmp_path / "idx" / "packed.npy"
    packed.write_bytes(packed.read_bytes()[:-100])
    with pytest.raises(ValueError, match="packed.npy"):
        Index.load(tmp_path / "idx")
    with pytest.raises(ValueError, match="no manifest"):
        Index.load(tmp_path / "nothing")


def test_remove_update_compact():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1000, 8)).astype(np.float32)
    idx = Index(8)
    ids = idx.add(x)
    idx.remove(ids[:500])
    x2 = rng.standard_normal((100, 8)).astype(np.float32)
    idx.update(ids[500:600], x2)
    live = x[500:].copy()
    live[:100] = x2
    q = rng.standard_normal((4, 8)).astype(np.float32)
    want = brute_force_topk(live, ids[500:], q, 10, "ip")[1]
    np.testing.assert_array_equal(idx.search(q, 10)[1], want)
    idx.compact()
    assert idx.corpus.size == 500
    np.testing.assert_array_equal(idx.search(q, 10)[1], want)
