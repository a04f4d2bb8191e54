"""The protocol core without processes: leader choice, the subscriptions each node opens, failover and its backoff,
and whole deployments of cores driven by hand with calls cut mid-round. Every action is checked against an oracle
written independently of the core (rotation distance for leaders, the topology's definition for sources, a
last-writer-wins dictionary for the final state)."""

from __future__ import annotations

import numpy as np
import pytest

from recmine.ekko.ps.core import (
    Cancel,
    Core,
    End,
    Link,
    Member,
    Membership,
    PullCall,
    Send,
    Subscribe,
    Timing,
    Wait,
    split_round,
)
from recmine.ekko.ps.scheduler import SloScheduler
from recmine.ekko.ps.store import ParamStore, TableUpdate

TABLES = {"emb": 3}


def _members(dcs: int, reps: int) -> list[Member]:
    return [Member(dc * reps + r, dc, r) for dc in range(dcs) for r in range(reps)]


def _oracle_leader(dc: int, shard: int, reps: int, dead: set[int]) -> int:
    """The alive replica closest after `shard` on the ring of replica indices (the first one when all are dead)."""
    cands = [r for r in range(reps) if dc * reps + r not in dead] or [shard % reps]
    return dc * reps + min(cands, key=lambda r: (r - shard) % reps)


def _oracle_sources(node: int, dcs: int, reps: int, shards: int, topology: str, dead: set[int]) -> set[tuple]:
    """Every (shard, kind, source) this node should pull from, straight from the topology's definition."""
    dc = node // reps
    out = set()
    for s in range(shards):
        leader = _oracle_leader(dc, s, reps, dead)
        for other in range(dc * reps, dc * reps + reps):
            if other == node or other in dead:
                continue
            if leader == node or leader == other:
                out.add((s, "intra", other))
        if leader == node:
            if topology == "mesh":
                nbs = [d for d in range(dcs) if d != dc]
            else:
                nbs = [d for d in ((dc - 1) // 2, 2 * dc + 1, 2 * dc + 2) if 0 <= d < dcs and d != dc]
            out |= {(s, "wan", _oracle_leader(d, s, reps, dead)) for d in nbs}
    return out


def _core(node: int, dcs: int, reps: int, shards: int, topology: str = "mesh", **timing) -> Core:
    return Core(node, Membership(_members(dcs, reps), dcs, topology), ParamStore(TABLES, shards, node_id=node),
                timing=Timing(**timing))


@pytest.mark.parametrize("topology", ["mesh", "tree"])
def test_every_node_subscribes_to_exactly_the_sources_the_topology_defines(topology):
    dcs, reps, shards = 7, 3, 5
    for node in range(dcs * reps):
        acts = _core(node, dcs, reps, shards, topology).start(0.0)
        assert all(isinstance(a, Subscribe) for a in acts)
        got = {(a.link.shard, a.link.kind, a.node) for a in acts}
        assert got == _oracle_sources(node, dcs, reps, shards, topology, set())
        assert len(got) == len(acts)  # one call per source
        for a in acts:
            if a.link.kind == "wan" and topology == "mesh":  # only the rows born in that DC cross that link
                assert a.request.origins == [a.link.peer * reps + r for r in range(reps)]
            assert a.request.requester == node and a.request.shard == a.link.shard


def test_leader_choice_matches_rotation_distance_for_every_dead_set():
    rng = np.random.default_rng(1)
    for _ in range(200):
        reps, shards = int(rng.integers(1, 6)), int(rng.integers(1, 9))
        core = _core(0, 2, reps, shards)
        dead = {int(n) for n in rng.choice(2 * reps, int(rng.integers(0, 2 * reps)), replace=False) if n != 0}
        core.dead_until = dict.fromkeys(dead, 10.0)
        for dc in range(2):
            for s in range(shards):
                assert core.leader_of(dc, s, 5.0) == _oracle_leader(dc, s, reps, dead)
                assert core.leader_of(dc, s, 10.0) == _oracle_leader(dc, s, reps, set())  # backoff over


def test_failover_moves_every_link_off_a_failed_leader_and_back_after_its_backoff():
    dcs, reps, shards = 3, 3, 3
    core = _core(0, dcs, reps, shards, dead_backoff_s=1.5)  # node 0 leads shard 0 of DC 0
    calls = {a.call: a for a in core.start(0.0)}
    victim = _oracle_leader(1, 0, reps, set())  # DC 1's leader of shard 0
    wan = [c for c, a in calls.items() if a.node == victim]
    assert len(wan) == 1
    now, call, backoff = 1.0, wan[0], []
    for _ in range(6):
        # nothing else pulls from the victim, so nothing to cancel; after the retry pause the link reopens to
        # DC 1's next replica
        assert core.ended(call, now, failed=True) == []
        backoff.append(core.dead_until[victim] - now)
        assert core.wake_at(now) == pytest.approx(now + 0.05)
        acts = core.tick(now + 0.05)
        assert [(a.link, a.node) for a in acts] == [(Link(0, "wan", 1), _oracle_leader(1, 0, reps, {victim}))]
        # the backoff ends: the link is cancelled and, once that call ends, reopened to the recovered leader
        back = core.dead_until[victim]
        assert core.wake_at(now + 0.05) == pytest.approx(back)
        cancel = core.tick(back)
        assert [type(a) for a in cancel] == [Cancel] and cancel[0].call == acts[0].call
        assert core.tick(back) == []  # one Cancel per call, not one per tick
        acts = core.ended(acts[0].call, back)
        assert [(a.link, a.node) for a in acts] == [(Link(0, "wan", 1), victim)]
        now, call = back, acts[0].call
    assert backoff == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.5, 1.5])  # doubles per consecutive failure, capped
    core.ended(call, now + 1)  # the victim answers again: its count resets
    assert victim not in core.failures


def test_a_follower_takes_over_when_its_leader_fails_and_cancels_nothing_twice():
    dcs, reps, shards = 2, 2, 2
    core = _core(1, dcs, reps, shards)  # node 1: follower of shard 0 (led by node 0), leader of shard 1
    acts = core.start(0.0)
    assert {(a.link.shard, a.link.kind, a.node) for a in acts} == _oracle_sources(1, dcs, reps, shards, "mesh", set())
    by_node = {}
    for a in acts:
        by_node.setdefault(a.node, []).append(a.call)
    acts = core.ended(by_node[0][0], 0.5, failed=True)  # a call to node 0 fails: node 1 now leads shard 0 too
    cancels = [a for a in acts if isinstance(a, Cancel)]
    subs = [a for a in acts if isinstance(a, Subscribe)]
    assert {c.call for c in cancels} == set(by_node[0][1:])  # the other call to node 0 (the other shard)
    assert {(a.link.shard, a.link.kind, a.node) for a in subs} == {(0, "wan", 2)}  # shard 0's WAN source
    for c in cancels:
        core.ended(c.call, 0.55)
    opened = {(a.link.shard, a.link.kind, a.node) for a in core.tick(0.55)}  # node 0 presumed dead until 0.6
    want = _oracle_sources(1, dcs, reps, shards, "mesh", {0})
    assert {(a.shard, a.kind, n) for a, n in core.open_calls().values()} == want
    assert opened <= want


def test_split_round_respects_the_budget_and_keeps_every_row():
    rng = np.random.default_rng(0)
    for _ in range(50):
        ups = [TableUpdate("emb", np.arange(n), rng.normal(size=(n, 3)).astype(np.float32), np.ones(n, np.int64),
                           np.zeros(n, np.int32)) for n in rng.integers(0, 40, int(rng.integers(0, 4)))]
        budget = int(rng.integers(1, 600))
        msgs = split_round(ups, budget)
        row = 3 * 4 + 20
        assert msgs and all(sum(u.nbytes() for u in m) <= max(budget, row) for m in msgs)
        got = np.concatenate([u.keys for m in msgs for u in m] or [np.zeros(0, np.int64)])
        assert np.array_equal(got, np.concatenate([u.keys for u in ups] or [np.zeros(0, np.int64)]))


class _Deployment:
    """Cores of a whole deployment driven by hand: calls are opened, served step by step, delivered message by
    message, cut at random points, and every action is checked against the oracle as it comes."""

    def __init__(self, dcs: int, reps: int, shards: int, topology: str, rng: np.random.Generator,
                 scheduler: str | None) -> None:
        self.dcs, self.reps, self.shards, self.topology, self.rng = dcs, reps, shards, topology, rng
        self.now = 0.0
        self.cores = {}
        for n in range(dcs * reps):
            sender = (SloScheduler(scheduler, bytes_per_s=40 * 32 / 0.05, round_s=0.05, clock=lambda: self.now,
                                   is_wan=lambda peer, n=n: peer // reps != n // reps) if scheduler else None)
            self.cores[n] = Core(n, Membership(_members(dcs, reps), dcs, topology), ParamStore(TABLES, shards, n),
                                 sender, Timing(wait_ms=200, stream_ms=1000, dead_backoff_s=0.4))
        self.open: dict[tuple[int, int], tuple[Subscribe, PullCall | None]] = {}
        self.truth: dict[int, tuple[int, int, np.ndarray]] = {}
        self.ts = 1
        self.cuts = 0
        self.refused = 0

    def check(self, node: int, acts: list) -> None:
        core = self.cores[node]
        dead = {n for n, t in core.dead_until.items() if t > self.now}
        want = _oracle_sources(node, self.dcs, self.reps, self.shards, self.topology, dead)
        for a in acts:
            if isinstance(a, Subscribe):
                assert (a.link.shard, a.link.kind, a.node) in want, f"node {node} subscribed to {a.node} for {a.link}"
                self.open[(node, a.call)] = (a, None)
            else:
                sub, _ = self.open[(node, a.call)]
                assert (sub.link.shard, sub.link.kind, sub.node) not in want, f"node {node} cancelled a good call"
                self.end(node, a.call, False)

    def end(self, node: int, call: int, failed: bool) -> None:
        self.open.pop((node, call), None)
        self.check(node, self.cores[node].ended(call, self.now, failed))

    def put(self) -> None:
        node = int(self.rng.integers(len(self.cores)))
        keys = np.unique(self.rng.integers(0, 40, int(self.rng.integers(1, 8))))
        vals = self.rng.normal(size=(keys.size, 3)).astype(np.float32)
        self.ts += 1
        self.cores[node].store.put("emb", keys, vals, ts=self.ts)
        for k, v in zip(keys.tolist(), vals, strict=True):
            cur = self.truth.get(k)
            if cur is None or (self.ts, node) > cur[:2]:
                self.truth[k] = (self.ts, node, v)

    def step_call(self, cut_p: float) -> None:
        if not self.open:
            return
        keys = list(self.open)
        node, call = keys[int(self.rng.integers(len(keys)))]
        sub, pc = self.open[(node, call)]
        if pc is None:
            pc = self.cores[sub.node].serve(sub.request, self.now)
            self.open[(node, call)] = (sub, pc)
        step = pc.next(self.now)
        if isinstance(step, End):
            self.end(node, call, False)
        elif isinstance(step, Send):
            cut = int(self.rng.integers(len(step.messages))) if self.rng.random() < cut_p else len(step.messages)
            for i, msg in enumerate(step.messages[:cut]):
                last = i == len(step.messages) - 1
                try:
                    self.cores[node].batch(call, msg, last, step.round.complete, step.changes.version_vector,
                                           step.changes.counter, step.round.id, self.cores[sub.node].incarnation)
                except ValueError:  # a compressed delta on a base this store no longer holds: the call fails, as
                    self.refused += 1  # in peer.py and the simulator, and the sender resends those rows absolute
                    cut = i
                    break
            if cut < len(step.messages):
                self.cuts += 1
                self.end(node, call, True)
        else:
            assert isinstance(step, Wait) and step.until > self.now

    def advance(self, dt: float) -> None:
        self.now += dt
        for n, core in self.cores.items():
            self.check(n, core.tick(self.now))


@pytest.mark.parametrize("topology,scheduler", [("mesh", None), ("tree", None), ("mesh", "slo"),
                                                ("mesh", "slo+int8")])  # int8: compressed rows handed in memory
def test_cores_with_calls_cut_mid_round_converge_to_last_writer_wins(topology, scheduler):
    for seed in range(6):
        rng = np.random.default_rng(seed)
        dep = _Deployment(int(rng.integers(2, 5)), int(rng.integers(1, 4)), int(rng.integers(1, 4)), topology, rng,
                          scheduler)
        for n, core in dep.cores.items():
            dep.check(n, core.start(0.0))
        for _ in range(400):
            r = rng.random()
            if r < 0.15:
                dep.put()
            elif r < 0.9:
                dep.step_call(0.3)
            else:
                dep.advance(float(rng.choice([0.01, 0.1, 0.5])))
        for _ in range(5000):  # heal: no more cuts; run until every store holds the oracle's state
            dep.step_call(0.0)
            dep.advance(0.01)
            if all(_holds(c.store, dep.truth) for c in dep.cores.values()):
                break
        else:
            raise AssertionError(f"seed {seed}: cores never converged")
        assert dep.cuts > 0


def _holds(store: ParamStore, truth: dict[int, tuple[int, int, np.ndarray]]) -> bool:
    keys = np.array(sorted(truth), np.int64)
    if keys.size == 0:
        return True
    vals, found, ts = store.get("emb", keys)
    want = np.stack([truth[k][2] for k in keys.tolist()])
    return bool(found.all() and np.array_equal(ts, [truth[k][0] for k in keys.tolist()]) and np.array_equal(vals, want))


def test_a_waiting_call_wakes_only_for_changes_it_may_send():
    core = _core(0, 3, 2, 1)
    mesh_call = core.serve(_request(requester=2, origins=[0, 1]), 0.0)  # DC 1's leader: rows born in DC 0 only
    intra_call = core.serve(_request(requester=1, origins=None), 0.0)  # the other replica of DC 0
    assert mesh_call.wants({0}, source=1) and not mesh_call.wants({4}, source=4)  # another DC's rows: not for it
    assert not mesh_call.wants({0}, source=2)  # rows it delivered itself: echoes
    assert intra_call.wants({4}, source=4) and not intra_call.wants({0, 4}, source=1)


def _request(requester: int, origins: list[int] | None):
    from recmine.ekko.ps.core import Request

    return Request(0, {}, None, 0, [], requester, 1, origins, 1000, 1000, 1 << 20)
