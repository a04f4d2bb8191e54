"""A selective id bitmap becomes a list of rows (filters.bitmap_rows): exact against the float64 oracle over the
allowed live rows, for the default ids, custom ascending ids and unordered ids, with tombstones, over several
scan blocks; and the list path and the bitmap-checking scan agree."""

from __future__ import annotations

import numpy as np
import pytest

from recmine.faery import Index, filters
from recmine.faery.exact import brute_force_topk

N, DIM, K = 40_000, 16, 50  # 40,000 rows: several 4,096-row blocks, and two lanes at 2 threads


@pytest.mark.parametrize("ids_kind", ["default", "ascending", "unordered"])
@pytest.mark.parametrize("selectivity", [0.005, 0.1])
def test_selective_bitmap_is_exact(ids_kind: str, selectivity: float, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = {"default": np.arange(N), "ascending": np.arange(N) * 3 + 1,
           "unordered": rng.permutation(N) * 2}[ids_kind].astype(np.int64)
    idx = Index(DIM)
    idx.add(x, ids=None if ids_kind == "default" else ids)
    gone = rng.choice(N, 500, replace=False)
    idx.remove(ids[gone])
    bits = np.zeros(int(ids.max()) + 100, np.bool_)
    bits[ids[rng.random(N) < selectivity]] = True
    bits[ids[gone[:50]]] = True  # removed ids the bitmap still allows: never returned
    bits[-5:] = True  # ids the index never had
    keep = bits[ids]
    keep[gone] = False
    qs = rng.standard_normal((9, DIM)).astype(np.float32)
    _, want = brute_force_topk(x[keep], ids[keep], qs, K)
    assert np.array_equal(filters.bitmap_rows(idx.corpus, bits), np.sort(np.flatnonzero(keep)))
    for q in (qs[:1], qs):  # single path and batch path
        _, got = idx.search(q, K, allow=bits)
        assert np.array_equal(got, want[: q.shape[0]])
    monkeypatch.setattr(filters, "BITMAP_LIST_BELOW", 0.0)  # the bitmap-checking scan: the same answer
    _, scan = idx.search(qs, K, allow=bits)
    assert np.array_equal(scan, want)


@pytest.mark.parametrize("dim", [3, 8, 13, 128, 131])
def test_rerank_keys_are_the_fixed_order_float64_sums(dim: int) -> None:
    """The SIMD re-rank key (simd.dot_lanes8) equals the documented scalar order bit for bit: eight interleaved
    float64 partial sums, leftover columns into the first, then their pairwise sum."""
    from recmine.faery import kernels

    rng = np.random.default_rng(dim)
    x = (rng.standard_normal((64, dim)) * rng.uniform(1e-3, 1e3, (64, 1))).astype(np.float32)
    q = rng.standard_normal(dim).astype(np.float32).astype(np.float64)
    want = []
    for row in x.astype(np.float64):
        acc = [0.0] * 8
        for j in range(dim // 8 * 8):
            acc[j % 8] += q[j] * row[j]
        for j in range(dim // 8 * 8, dim):
            acc[0] += q[j] * row[j]
        want.append(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])))
    assert np.array_equal(kernels.exact_scores(q, x, np.arange(64, dtype=np.int64)), np.array(want))
