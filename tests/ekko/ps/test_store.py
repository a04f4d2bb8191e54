"""ekko store: convergence under random concurrent updates and pulls (LWW oracle), the O(changed) path, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recmine.ekko.ps.store import ParamStore

TABLES = {"user": 3, "item": 2}


def _pull(dst: ParamStore, src: ParamStore, shard: int, since: dict | None = None) -> None:
    key = (id(dst), id(src), shard)
    cs = src.changes_since(shard, dst.version_vector(shard), None if since is None else since.get(key))
    dst.apply(cs.updates, {shard: cs.version_vector})
    if since is not None:
        since[key] = cs.counter


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nodes=st.integers(2, 5), shards=st.integers(1, 4),
       cache=st.sampled_from([2, 8, 1000]), incremental=st.booleans())
def test_random_updates_and_pulls_converge_to_lww(seed, nodes, shards, cache, incremental):
    rng = np.random.default_rng(seed)
    stores = [ParamStore(TABLES, shards, node_id=i, cache_size=cache) for i in range(nodes)]
    oracle: dict[tuple[str, int], tuple[int, int, np.ndarray]] = {}
    since: dict | None = {} if incremental else None
    clock = 1
    for _ in range(rng.integers(20, 80)):
        if rng.random() < 0.5:
            i = int(rng.integers(nodes))
            table = str(rng.choice(list(TABLES)))
            keys = np.unique(rng.integers(0, 30, rng.integers(1, 6)))
            vals = rng.normal(size=(keys.size, TABLES[table])).astype(np.float32)
            clock += int(rng.integers(0, 3))  # equal timestamps from different origins happen: origin breaks ties
            stamp = stores[i].put(table, keys, vals, ts=clock)
            assert stamp >= clock
            for k, v in zip(keys.tolist(), vals, strict=True):
                cur = oracle.get((table, k))
                if cur is None or (stamp, i) > (cur[0], cur[1]):
                    oracle[(table, k)] = (stamp, i, v)
        else:
            a, b = rng.choice(nodes, 2, replace=False)
            _pull(stores[a], stores[b], int(rng.integers(shards)), since)
    for _ in range(nodes):  # anti-entropy rounds until quiescent
        for a in range(nodes):
            for b in range(nodes):
                if a != b:
                    for s in range(shards):
                        _pull(stores[a], stores[b], s, since)
    for st_ in stores:
        for table in TABLES:
            keys, vals, ts, origin = st_.state_digest()[table]
            want = sorted(k for (t, k) in oracle if t == table)
            assert keys.tolist() == want
            for k, v, t, o in zip(keys.tolist(), vals, ts.tolist(), origin.tolist(), strict=True):
                wt, wo, wv = oracle[(table, k)]
                assert (t, o) == (wt, wo)
                np.testing.assert_array_equal(v, wv)


def test_changes_since_examines_only_recent_keys():
    a = ParamStore({"emb": 4}, num_shards=1, node_id=1)
    b = ParamStore({"emb": 4}, num_shards=1, node_id=2)
    a.put("emb", np.arange(10_000), np.ones((10_000, 4), np.float32))
    cs = a.changes_since(0, b.version_vector(0))
    b.apply(cs.updates, {0: cs.version_vector})
    assert len(cs) == 10_000
    a.put("emb", np.array([5, 7, 9]), np.full((3, 4), 2.0, np.float32))
    cs = a.changes_since(0, b.version_vector(0), since_counter=cs.counter)
    assert len(cs) == 3 and cs.examined == 3 and not cs.scanned
    assert a.counters()[0] == cs.counter


def test_old_asker_falls_back_to_scan():
    a = ParamStore({"emb": 2}, num_shards=1, node_id=1, cache_size=4)
    a.put("emb", np.arange(20), np.ones((20, 2), np.float32))
    cs = a.changes_since(0, {})
    assert cs.scanned and len(cs) == 20 and cs.examined == 20


def test_snapshot_roundtrip(tmp_path):
    a = ParamStore(TABLES, 3, node_id=4)
    a.put("user", np.arange(5), np.ones((5, 3), np.float32))
    a.save(tmp_path / "s.npz")
    b = ParamStore.load(tmp_path / "s.npz")
    for t in TABLES:
        for x, y in zip(a.state_digest()[t], b.state_digest()[t], strict=True):
            np.testing.assert_array_equal(x, y)
    assert b.version_vector(a.shard_of(np.array([0]))[0]) == a.version_vector(a.shard_of(np.array([0]))[0])
    (tmp_path / "bad.npz").write_bytes(b"not a snapshot")
    with pytest.raises(ValueError, match="bad.npz"):
        ParamStore.load(tmp_path / "bad.npz")


def test_bad_puts_change_nothing():
    a = ParamStore({"emb": 2}, num_shards=2, node_id=1)
    a.put("emb", np.array([1]), np.ones((1, 2), np.float32))
    before = a.state_digest()
    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        a.put("emb", np.array([2]), np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        a.put("emb", np.array([1, 2]), np.array([[1, 2], [np.nan, 0]], np.float32))
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        a.put("nope", np.array([1]), np.ones((1, 2), np.float32))
    after = a.state_digest()
    for x, y in zip(before["emb"], after["emb"], strict=True):
        np.testing.assert_array_equal(x, y)
