"""faery shards and replicas: results equal brute force / a single Index, rebalancing under live searches, Ray
actors, bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from recmine.faery import Index
from recmine.faery.cluster import ReplicatedIndex, ShardedIndex, merge_topk, shard_of
from recmine.faery.exact import brute_force_topk

D = 32


def _data(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, D)).astype(np.float32), rng.permutation(10 * n)[:n].astype(np.int64)


def _mutate(idx, x: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove 10% and update 10% of the rows; returns the live (vectors, ids)."""
    rng = np.random.default_rng(1)
    gone = ids[:300]
    idx.remove(gone)
    upd = ids[300:600]
    newv = rng.normal(size=(300, D)).astype(np.float32)
    idx.update(upd, newv)
    x = x.copy()
    x[300:600] = newv
    return x[300:], ids[300:]


def _check(idx, x: np.ndarray, ids: np.ndarray, ks=(1, 10, 100)) -> None:
    q = np.random.default_rng(5).normal(size=(7, D)).astype(np.float32)
    for k in ks:
        s, i = idx.search(q, k)
        bs, bi = brute_force_topk(x, ids, q, k, "ip")
        np.testing.assert_array_equal(i, bi)
        np.testing.assert_allclose(s, bs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [ShardedIndex, ReplicatedIndex])
def test_local_cluster_equals_brute_force(cls):
    x, ids = _data()
    with cls(D, 3, storage="fp32") as idx:
        idx.add(x, ids)
        x2, ids2 = _mutate(idx, x, ids)
        assert len(idx) == ids2.size
        _check(idx, x2, ids2)
        s1, i1 = idx.search(x2[0], 5)  # a single query
        assert i1.shape == (1, 5) and i1[0, 0] == ids2[0]


def test_sharded_int8_equals_single_index():
    x, ids = _data()
    single = Index(D, storage="int8")
    single.add(x, ids)
    with ShardedIndex(D, 4, storage="int8") as sh:
        sh.add(x, ids)
        q = np.random.default_rng(9).normal(size=(40, D)).astype(np.float32)
        for k in (1, 16, 200):
            s1, i1 = single.search(q, k)
            s2, i2 = sh.search(q, k)
            np.testing.assert_array_equal(i1, i2)
            np.testing.assert_array_equal(s1, s2)
        assert sum(sh.stats()["rows_per_shard"]) == 3000 and min(sh.stats()["rows_per_shard"]) > 500


def test_merge_pads_and_breaks_ties_by_id():
    s = [np.array([[3.0, 1.0, -np.inf]], np.float32), np.array([[3.0, 2.0]], np.float32)]
    i = [np.array([[9, 4, -1]]), np.array([[2, 7]])]
    ms, mi = merge_topk(s, i, 4, "ip")
    assert mi.tolist() == [[2, 9, 7, 4]] and ms.tolist() == [[3.0, 3.0, 2.0, 1.0]]
    ms, mi = merge_topk([np.array([[1.0, np.inf]], np.float32)], [np.array([[3, -1]])], 2, "l2")
    assert mi.tolist() == [[3, -1]]


def test_rendezvous_hash_moves_only_rows_for_the_new_shard():
    ids = np.arange(20000)
    a, b = shard_of(ids, 4), shard_of(ids, 5)
    moved = a != b
    assert np.all(b[moved] == 4)
    assert 0.15 < moved.mean() < 0.25  # about 1/5


def test_add_shard_while_searching_never_shows_a_partial_corpus():
    x, ids = _data(4000)
    q = np.random.default_rng(3).normal(size=(4, D)).astype(np.float32)
    want = brute_force_topk(x, ids, q, 20, "ip")[1]
    errors: list[str] = []
    stop = threading.Event()
    with ShardedIndex(D, 2, storage="fp32") as idx:
        idx.add(x, ids)

        def reader() -> None:
            while not stop.is_set():
                got = idx.search(q, 20)[1]
                if not np.array_equal(got, want):
                    errors.append("a search saw a partial corpus")

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(3):
            idx.add_shard()
        stop.set()
        for t in threads:
            t.join()
        assert idx.n_shards == 5 and len(idx) == 4000
        assert errors == []
        np.testing.assert_array_equal(idx.get(ids[:50]), x[:50])
        assert idx.stats()["rows_per_shard"] == np.bincount(shard_of(ids, 5), minlength=5).tolist()


def test_bad_input_is_refused_and_changes_nothing(tmp_path):
    x, ids = _data(500)
    with ShardedIndex(D, 2, storage="fp32") as idx:
        idx.add(x, ids)
        with pytest.raises(ValueError, match="dim|shape"):
            idx.add(np.ones((2, D + 1), np.float32), [1, 2])
        bad = np.ones((2, D), np.float32)
        bad[1, 3] = np.nan
        with pytest.raises(ValueError, match="NaN|finite"):
            idx.add(bad, [10**7, 10**7 + 1])
        with pytest.raises(KeyError, match="unknown id 123456789"):
            idx.remove([ids[0], 123456789])
        with pytest.raises(ValueError, match="already"):
            idx.add(x[:1], ids[:1])
        with pytest.raises(ValueError, match="k must be"):
            idx.search(x[:1], 0)
        assert len(idx) == 500 and idx.contains(int(ids[0]))
        _check(idx, x, ids, ks=(10,))
        idx.save(tmp_path / "sh")
    with ShardedIndex.load(tmp_path / "sh") as again:
        _check(again, x, ids, ks=(10,))
    with pytest.raises(ValueError, match="n_shards"):
        ShardedIndex(D, 0)
    with pytest.raises(ValueError, match="n_replicas"):
        ReplicatedIndex(D, 0)
    with pytest.raises(ValueError, match="backend"):
        ShardedIndex(D, 2, backend="mpi")
    with pytest.raises(FileNotFoundError):
        ShardedIndex.load(tmp_path / "nothing")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("cls", [ShardedIndex, ReplicatedIndex])
def test_ray_actors_equal_brute_force(local_ray, cls):
    x, ids = _data(2000)
    with cls(D, 2, storage="fp32", backend="ray") as idx:
        idx.add(x, ids)
        x2, ids2 = _mutate(idx, x, ids)
        _check(idx, x2, ids2, ks=(1, 10))


@pytest.mark.parametrize("cls", [ShardedIndex, ReplicatedIndex])
def test_filters_and_attributes_through_shards_and_replicas(cls, tmp_path):
    """allow (id set and bitmap) and where on attributes give what one Index over the same rows gives, across
    add_shard, save/load, set_attributes and removal; an unknown allow id or attribute is refused."""
    x, ids = _data(4000, seed=4)
    cat = np.random.default_rng(4).integers(0, 10, ids.size)
    q = np.random.default_rng(6).normal(size=(9, D)).astype(np.float32)
    allow = ids[20::7]  # (ids 10..19 get removed: an allow-list naming them is refused)
    bitmap = np.zeros(10 * ids.size, np.bool_)
    bitmap[ids[::3]] = True
    with cls(D, 2, storage="int8") as idx:
        idx.add(x[:3000], ids[:3000], attrs={"cat": cat[:3000]})
        idx.add(x[3000:], ids[3000:], attrs={"cat": cat[3000:], "shelf": np.arange(1000)})
        if cls is ShardedIndex:
            idx.add_shard()
        idx.set_attributes(ids[:10], {"cat": np.full(10, 11)})
        cat[:10] = 11
        idx.remove(ids[10:20])
        keep = np.ones(ids.size, np.bool_)
        keep[10:20] = False
        assert idx.attributes == ("cat", "shelf")
        shelf = np.concatenate([np.zeros(3000, np.int64), np.arange(1000)])
        for kw, sel in (({"allow": allow}, np.isin(ids, allow)), ({"allow": bitmap}, bitmap[ids]),
                        ({"where": {"cat": {2, 11}}}, np.isin(cat, [2, 11])),
                        ({"allow": bitmap, "where": {"shelf": range(1, 500)}}, bitmap[ids] & (shelf >= 1) & (shelf < 500))):
            rows = np.flatnonzero(sel & keep)
            want = brute_force_topk(x[rows], ids[rows], q, 15, "ip")[1]
            np.testing.assert_array_equal(idx.search(q, 15, **kw)[1], want, err_msg=str(kw))
        with pytest.raises(KeyError, match=f"allow-list id {int(ids[12])}"):
            idx.search(q, 5, allow=[int(ids[0]), int(ids[12])])
        with pytest.raises(ValueError, match="unknown attribute 'colour'"):
            idx.search(q, 5, where={"colour": [1]})
        if cls is ShardedIndex:
            idx.save(tmp_path / "sh")
            with ShardedIndex.load(tmp_path / "sh") as again:
                rows = np.flatnonzero(np.isin(cat, [2, 11]) & keep)
                want = brute_force_topk(x[rows], ids[rows], q, 15, "ip")[1]
                np.testing.assert_array_equal(again.search(q, 15, where={"cat": [2, 11]})[1], want)
