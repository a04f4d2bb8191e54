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
