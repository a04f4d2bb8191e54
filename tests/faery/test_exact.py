"""The float64 oracle (recmine.faery.exact): checked against exactly rounded sums (math.fsum) on small data, and
on near-ties that float32 scoring reorders: there the Index and the demo's check agree with it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recmine.faery import Index, brute_force_topk, recall


def _fsum_topk(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Slow reference: exactly rounded float64 sums per row (math.fsum), sorted by (key, id)."""
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        x64 = (x64 / np.linalg.norm(x64, axis=1, keepdims=True)).astype(np.float32).astype(np.float64)
        q64 = (q64 / np.linalg.norm(q64)).astype(np.float32).astype(np.float64)
    if metric == "l2":
        keys = [math.fsum((r - q64) ** 2) for r in x64]
    else:
        keys = [-math.fsum(r * q64) for r in x64]
    order = sorted(range(len(ids)), key=lambda j: (keys[j], ids[j]))[:k]
    return ids[order]


def _near_ties(seed: int, n: int = 4000, d: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows in pairs that differ in one component by ~1e-6 of it: their scores differ by far less than float32's
    rounding of a 64-term sum, but by far more than float64's."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n // 2, d)).astype(np.float32)
    twin = base.copy()
    col = rng.integers(0, d, n // 2)
    twin[np.arange(n // 2), col] = np.nextafter(np.nextafter(base[np.arange(n // 2), col], np.float32(np.inf)),
                                                np.float32(np.inf))
    x = np.empty((n, d), np.float32)
    x[0::2], x[1::2] = base, twin  # the higher-scoring twin has the larger id: a float32 tie puts it second
    q = np.abs(rng.standard_normal((16, d))).astype(np.float32)  # positive: the nudged twin scores higher
    return x, np.arange(n, dtype=np.int64), q


def test_float32_scoring_reorders_near_ties_the_index_and_the_oracle_agree() -> None:
    x, ids, q = _near_ties(21)
    k = 50
    s32 = q @ x.T  # a float32 "oracle" (what the demo used): ties and near-ties reorder
    f32 = np.lexsort((np.broadcast_to(ids, s32.shape), -s32), axis=-1)[:, :k]
    _, want = brute_force_topk(x, ids, q, k)
    assert not np.array_equal(ids[f32], want), "the data must contain near-ties that float32 scoring reorders"
    np.testing.assert_array_equal(want[:2], np.stack([_fsum_topk(x, ids, q[i], k, "ip") for i in range(2)]))
    for storage in ("int8", "fp16", "fp32"):
        idx = Index(x.shape[1], storage=storage)
        idx.add(x, ids=ids)
        np.testing.assert_array_equal(idx.search(q, k)[1], want, err_msg=storage)
        np.testing.assert_array_equal(idx.search(q[:3], k)[1], want[:3], err_msg=storage)


def test_demo_exactness_check_uses_the_float64_oracle() -> None:
    from recmine.demo import _brute_topk

    x, ids, q = _near_ties(22)
    idx = Index(x.shape[1])
    idx.add(x, ids=ids)
    np.testing.assert_array_equal(_brute_topk(x, ids, q, 100), idx.search(q, 100)[1])


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_oracle_equals_exactly_rounded_sums(metric: str, tmp_path) -> None:
    rng = np.random.default_rng(23)
    x = rng.standard_normal((700, 9)).astype(np.float32)
    x[100:200] = x[0]  # exact ties: the smaller id first
    ids = rng.permutation(5000)[:700].astype(np.int64)
    q = rng.standard_normal((4, 9)).astype(np.float32)
    q[1] = x[0]
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    for k in (1, 37, 150, 700):
        s, got = brute_force_topk(mm, ids, q, k, metric, block_rows=64)  # many blocks
        assert got.shape == s.shape == (4, k) and s.dtype == np.float64
        for i in range(4):
            np.testing.assert_array_equal(got[i], _fsum_topk(x, ids, q[i], k, metric), err_msg=f"k={k} q={i}")
        assert (np.diff(s, axis=1) >= 0).all() if metric == "l2" else (np.diff(s, axis=1) <= 0).all()
    s, got = brute_force_topk(x[:3], None, q[0], 5, metric)  # fewer rows than k: padded like Index.search
    assert got.tolist()[0][3:] == [-1, -1] and np.isinf(s[0, 3:]).all()
    assert recall(got, got) == 1.0 and recall(np.full_like(got, -1), got) == 0.0


def test_oracle_rejects_bad_input() -> None:
    x = np.ones((5, 3), np.float32)
    for call, msg in [(lambda: brute_force_topk(x, None, np.ones(4), 1), r"shape \(nq, 3\)"),
                      (lambda: brute_force_topk(x, None, np.ones(3), 0), "k must be"),
                      (lambda: brute_force_topk(x, np.arange(4), np.ones(3), 1), "4 ids for 5 rows"),
                      (lambda: brute_force_topk(x, None, np.ones(3), 1, "dot"), "metric must be"),
                      (lambda: brute_force_topk(x[0], None, np.ones(3), 1), "2-D")]:
        with pytest.raises(ValueError, match=msg):
            call()
