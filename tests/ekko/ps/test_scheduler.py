"""SLO-aware updater: priority order under a short link, nothing lost, FIFO differs; unit level and over real
PS processes behind a throttled WAN proxy."""

from __future__ import annotations

import time

import numpy as np
import pytest

from recmine.ekko.lab.cluster import LocalCluster
from recmine.ekko.ps.scheduler import (
    ROW_OVERHEAD,
    PolicyInputs,
    SloScheduler,
    Traffic,
    fifo_priority,
    slo_priority,
)
from recmine.ekko.ps.store import ParamStore
from recmine.ekko.ps.sync import Asker, Responder

DIM = 8
ROW = ROW_OVERHEAD + 4 * DIM


def _drain(store: ParamStore, sched: SloScheduler, requester: int, asker: Asker, rounds: int) -> list[list[int]]:
    """Run the Pull protocol by hand (one shard, one call per round) with sync.py's objects, as peer.py runs them:
    each round is applied by the asker and acknowledged by its next call."""
    sent = []
    for _ in range(rounds):
        vv, since, since_inc, applied = asker.request()
        call = Responder(store, sched, 0, vv, since, requester, 0, None, applied, 1 << 30, since_inc)
        cs = call.changes()
        rnd = call.pick(cs)
        asker.batch(rnd.updates, True, rnd.complete, cs.version_vector, cs.counter, rnd.id)
        sent.append([k for u in rnd.updates for k in u.keys.tolist()])
    return sent


def test_policies_rank_as_documented():
    x = PolicyInputs(is_new=np.array([True, False, False, False]), rel_change=np.array([np.inf, 0.5, 0.5, 0.01]),
                     traffic=np.array([0.0, 3.0, 0.1, 3.0]), wait_s=np.zeros(4), ts=np.array([4, 3, 2, 9]),
                     queued_ts=np.array([4, 3, 2, 1]))
    assert np.argsort(-slo_priority(x)).tolist() == [0, 1, 2, 3]
    assert np.argsort(-fifo_priority(x)).tolist() == [3, 2, 1, 0]
    aged = PolicyInputs(x.is_new, x.rel_change, x.traffic, np.array([0.0, 0.0, 100.0, 0.0]), x.ts, x.queued_ts)
    assert slo_priority(aged)[2] > slo_priority(aged)[1]  # a key that waited long enough overtakes


def test_throttled_link_sends_hot_and_new_keys_first_and_loses_nothing():
    rng = np.random.default_rng(1)
    store = ParamStore({"emb": DIM}, num_shards=1, node_id=0)
    keys = np.arange(100)
    store.put("emb", keys, rng.normal(size=(100, DIM)).astype(np.float32))
    traffic = Traffic()
    hot = np.arange(90, 100)  # changed last: FIFO would send them last
    for _ in range(50):
        traffic.observe("emb", hot)
    traffic.observe("emb", keys)
    receiver = ParamStore({"emb": DIM}, num_shards=1, node_id=1)
    asker = Asker(receiver, 0, 0)
    sched = SloScheduler("slo", bytes_per_s=1e9, round_s=1.0, traffic=traffic)
    sched._tokens = sched.capacity = 1e12
    _drain(store, sched, 1, asker, 1)  # everything known by the receiver
    # every key changes by the same relative amount; budget: 10 rows per round
    for k in keys.tolist():
        v, _, _ = store.get("emb", np.array([k]))
        store.put("emb", np.array([k]), v * 1.5)
    sched.capacity = 10 * ROW
    sched._tokens = 10 * ROW
    sched.bytes_per_s = 1e-9  # no refill: exactly 10 rows this round
    first = _drain(store, sched, 1, asker, 1)[0]
    assert sorted(first) == hot.tolist()  # the most-read keys went first
    new = np.arange(1000, 1005)  # brand-new keys beat everything known
    store.put("emb", new, np.ones((5, DIM), np.float32))
    sched._tokens = 5 * ROW
    assert sorted(_drain(store, sched, 1, asker, 1)[0]) == new.tolist()
    # the link clears: everything arrives, each row exactly once, values equal the sender's
    sched.bytes_per_s, sched.capacity, sched._tokens = 1e12, 1e12, 1e12
    rest = _drain(store, sched, 1, asker, 2)
    assert sorted(rest[0]) == sorted(set(range(90)))
    assert rest[1] == []
    allk = np.concatenate([keys, new])
    a, fa, ta = store.get("emb", allk)
    b, fb, tb = receiver.get("emb", allk)
    assert fb.all() and np.array_equal(a, b) and np.array_equal(ta, tb)


def test_fifo_ablation_sends_oldest_changes_first():
    store = ParamStore({"emb": DIM}, num_shards=1, node_id=0)
    for k in range(20):
        store.put("emb", np.array([k]), np.full((1, DIM), k, np.float32))
    sched = SloScheduler("fifo", bytes_per_s=1e-9, round_s=1.0)
    sched._tokens = sched.capacity = 5 * ROW
    receiver = ParamStore({"emb": DIM}, num_shards=1, node_id=1)
    asker = Asker(receiver, 0, 0)
    assert sorted(_drain(store, sched, 1, asker, 1)[0]) == [0, 1, 2, 3, 4]
    store.put("emb", np.array([1]), np.full((1, DIM), 99, np.float32))  # sent, changed again: to the back
    store.put("emb", np.array([7]), np.full((1, DIM), 77, np.float32))  # still queued: merged, keeps its place
    sched._tokens = 5 * ROW
    assert sorted(_drain(store, sched, 1, asker, 1)[0]) == [5, 6, 7, 8, 9]
    assert receiver.get("emb", np.array([7]))[0][0, 0] == 77  # at its old place, with its newest value
    sched._tokens = sched.capacity = 10 * ROW
    assert sorted(_drain(store, sched, 1, asker, 1)[0]) == list(range(10, 20))  # key 1 waited least


def test_restarted_asker_is_resent_everything():
    store = ParamStore({"emb": DIM}, num_shards=1, node_id=0)
    store.put("emb", np.arange(10), np.ones((10, DIM), np.float32))
    sched = SloScheduler("slo", bytes_per_s=1e12, round_s=0.01)
    stream = sched.open(1, 7, 0, [])
    rnd = sched.pick(store.changes_since(0, {}), 1, 7, 1 << 30, stream)
    assert rnd.complete and sum(len(u) for u in rnd.updates) == 10
    stream = sched.open(1, 7, 0, [rnd.id])  # the asker applied the round and says so
    again = sched.pick(store.changes_since(0, {}), 1, 7, 1 << 30, stream)
    assert again.complete and again.updates == []  # same incarnation: it holds them
    stream = sched.open(1, 8, 0, [rnd.id])  # a new incarnation starts from nothing
    assert sum(len(u) for u in sched.pick(store.changes_since(0, {}), 1, 8, 1 << 30, stream).updates) == 10


def test_bad_policy_and_budget_are_refused():
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        SloScheduler("lifo")
    with pytest.raises(ValueError, match="bytes_per_s"):
        SloScheduler("slo", bytes_per_s=0)


def _arrival_rank(policy: str) -> tuple[float, float, bool]:
    """2 DCs behind a 0.4 Mbit/s NIC; 400 keys re-changed with the 40 most-read changed last. Returns the mean
    arrival position at DC1 of the hot and the cold keys, and whether every final value arrived."""
    topo = {"dcs": 2, "replicas": 1, "shards": 1, "tables": {"emb": DIM}, "rtt_ms": 10, "nic_mbps": 0.4,
            "scheduler": policy, "log_applies": True}
    rng = np.random.default_rng(2)
    keys = np.arange(400)
    hot = keys[-40:]
    with LocalCluster(topo) as c:
        with c.client(0) as ps0, c.client(1) as ps1:
            ps0.put("emb", keys, rng.normal(size=(400, DIM)).astype(np.float32))
            deadline = time.monotonic() + 30
            while not ps1.get("emb", keys)[1].all():
                assert time.monotonic() < deadline, "first copy never arrived"
                time.sleep(0.1)
            for _ in range(30):
                ps0.get("emb", hot)  # inference traffic at DC0 concentrates on the hot keys
            ps1.stats(clear=True)
            final = rng.normal(size=(400, DIM)).astype(np.float32)
            for lo in range(0, 400, 40):  # hot keys are changed last
                ps0.put("emb", keys[lo: lo + 40], final[lo: lo + 40])
            deadline = time.monotonic() + 30
            while not np.array_equal(ps1.get("emb", keys)[0], final):
                assert time.monotonic() < deadline, "updates lost or stuck behind the throttled link"
                time.sleep(0.1)
            log = ps1.stats()
    order = np.argsort(log["applied_ns"], kind="stable")
    arrived = log["keys"][order]
    first_pos = {}
    for i, k in enumerate(arrived.tolist()):
        first_pos.setdefault(k, i)
    pos = np.array([first_pos[k] for k in keys.tolist()], np.float64)
    return float(pos[hot].mean()), float(np.delete(pos, hot).mean()), True


def test_processes_behind_a_short_link_deliver_hot_keys_first_only_with_slo():
    hot_slo, cold_slo, ok_slo = _arrival_rank("slo")
    hot_fifo, cold_fifo, ok_fifo = _arrival_rank("fifo")
    assert ok_slo and ok_fifo
    assert hot_slo < cold_slo  # SLO-aware: the most-read keys arrive ahead of the rest
    assert hot_fifo > cold_fifo  # FIFO: they were changed last, so they arrive last


def test_traffic_forgets_old_reads_and_never_overflows():
    tr = Traffic(half_life_s=0.01)
    tr.observe("item", np.array([1] * 50))  # key 1: many reads, long ago (in half-lives)
    time.sleep(0.2)  # 20 half-lives: weight x 2**20
    tr.observe("item", np.array([2]))
    share = tr.share("item", np.array([1, 2, 3]))
    assert share[1] > 1000 * share[0] and share[2] == 0.0
    time.sleep(0.45)  # 2**45 > the rebase threshold: counts are rescaled, not overflowed
    tr.observe("item", np.array([3]))
    share = tr.share("item", np.array([1, 2, 3]))
    assert np.isfinite(share).all() and share[2] > 1000 * share[1] > 0
