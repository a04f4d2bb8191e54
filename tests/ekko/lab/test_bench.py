"""Benchmark arithmetic and the push outbox, without processes: an update never visible counts as +inf, the floor
is what its label says, and the outbox never loses a row."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recmine.ekko.lab.bench import ENTRY_OVERHEAD, BenchSpec, percentile, physical_floor, update_stream
from recmine.ekko.ps.baselines import Outbox
from recmine.ekko.ps.store import ParamStore, TableUpdate


def test_percentile_counts_never_visible_updates_as_inf():
    seen = np.array([0.1, 0.2, 0.3, 0.4])
    assert percentile(seen, 50) == pytest.approx(np.percentile(seen, 50))  # numpy's rule when all arrived
    lost_half = np.array([0.1, 0.2, np.inf, np.inf])
    assert percentile(lost_half, 50) == math.inf  # the two lost updates are not left out
    assert percentile(lost_half, 0) == pytest.approx(0.1)
    one_lost = np.r_[np.linspace(0.01, 0.99, 99), np.inf]
    assert percentile(one_lost, 50) == pytest.approx(0.505)  # the lost one shifts the median (0.500 without it)
    assert percentile(one_lost, 99) == math.inf  # 1 of 100 never visible: p99 is infinite
    assert math.isnan(percentile(np.array([]), 50))
    with pytest.raises(ValueError, match="NaN"):
        percentile(np.array([0.1, np.nan]), 50)


def test_floor_is_one_way_delay_times_hops_plus_serialisation_on_the_busiest_nic():
    row = 64 * 4 + ENTRY_OVERHEAD
    batch = 40 * row  # bytes of one batch of 40 rows
    mesh = BenchSpec(dcs=4, replicas=2, shards=2, rtt_ms=50, nic_mbps=100)
    # each DC-0 replica leads one of the 2 shards: it sends half a batch to each of the 3 other DCs
    assert physical_floor(mesh, 40) == pytest.approx(0.025 + batch / 2 * 3 * 8 / 100e6)
    odd = BenchSpec(dcs=4, replicas=2, shards=3, rtt_ms=50, nic_mbps=100)  # replica 0 leads shards 0 and 2
    assert physical_floor(odd, 40) == pytest.approx(0.025 + batch * 2 / 3 * 3 * 8 / 100e6)
    tree = BenchSpec(dcs=8, replicas=1, shards=2, rtt_ms=50, nic_mbps=100, topology="tree")
    # DC 7 is 3 hops down the binary tree; a relay feeds at most its 2 children
    assert physical_floor(tree, 40) == pytest.approx(3 * 0.025 + batch * 2 * 8 / 100e6)
    # by default a batch is what the stream writes: its distinct keys (a Zipf batch repeats hot keys)
    sizes = [b.size for b in update_stream(mesh)]
    assert max(sizes) <= 40 and physical_floor(mesh) == pytest.approx(physical_floor(mesh, float(np.mean(sizes))))


def _rows(keys, ts, value: float, dim: int = 4) -> TableUpdate:
    keys = np.asarray(keys, np.int64)
    return TableUpdate("emb", keys, np.full((keys.size, dim), value, np.float32), np.asarray(ts, np.int64),
                       np.zeros(keys.size, np.int32))


def test_outbox_batches_by_size_merges_failed_batches_and_never_loses_a_row():
    rng = np.random.default_rng(0)
    box = Outbox(collapse_at=8)
    truth = ParamStore({"emb": 4}, 1)
    got = ParamStore({"emb": 4}, 1)
    for ts in range(1, 200):
        keys = np.unique(rng.integers(0, 50, 7))
        up = _rows(keys, np.full(keys.size, ts), float(ts))
        truth.apply([up])
        box.add([up])
        if rng.random() < 0.3:  # a send: at most ~3 rows' bytes; it fails half of the time and comes back
            batch = box.take(3 * (16 + ENTRY_OVERHEAD))
            assert sum(len(u) for u in batch) <= 3
            for u in batch:
                assert np.unique(u.keys).size == len(u)  # each key once per batch
            if rng.random() < 0.5:
                box.add(batch)
            else:
                got.apply(batch)
        assert len(box) <= 8 + 1  # a long queue collapses to one update per table
    while len(box):
        got.apply(box.take(1 << 20))
    for a, b in zip(truth.state_digest()["emb"], got.state_digest()["emb"], strict=True):
        assert np.array_equal(a, b)


def test_visibility_counts_a_newer_version_and_keeps_tables_apart() -> None:
    from recmine.ekko.lab.bench import visibility

    log = {"table": np.array(["item", "item", "user"], dtype=object), "keys": np.array([5, 5, 7]),
           "ts": np.array([100, 300, 100]), "applied_ns": np.array([2_000_000_100, 1_000_000_400, 500])}
    put_table = np.array(["item", "item", "item", "user", "user"], dtype=object)
    put_keys = np.array([5, 5, 5, 5, 7])
    put_ts = np.array([100, 200, 400, 100, 100])
    vis = visibility(put_table, put_keys, put_ts, log)
    # ts 100: applied itself at 2.0 s but the newer version 300 arrived earlier (1.0 s) and carries it
    assert vis[0] == pytest.approx((1_000_000_400 - 100) / 1e9)
    assert vis[1] == pytest.approx((1_000_000_400 - 200) / 1e9)
    assert vis[2] == np.inf  # no version >= 400 of item 5 arrived
    assert vis[3] == np.inf  # user 5 never arrived: item 5 does not count for it
    assert vis[4] == pytest.approx(400 / 1e9)
