"""The Pull protocol without sockets (sync.py + the SLO-aware scheduler + two stores): rounds cut at random points
by cancels, partitions and crashes lose nothing, and the asker's version vector never rises over a row it lacks."""

from __future__ import annotations

import numpy as np
import pytest

from recmine.ekko.ps.scheduler import ROW_OVERHEAD, SloScheduler
from recmine.ekko.ps.store import ParamStore, TableUpdate
from recmine.ekko.ps.sync import Asker, Incarnations, Responder, SendEverything, Superseded

TABLES = {"emb": 4, "bias": 1}
SHARDS = 2
ROUND_S = 0.05


def _covered_rows_are_held(sender: ParamStore, asker: ParamStore) -> None:
    """The asker's version vector claims every sender row up to it: each such row must be there (or newer)."""
    for table in TABLES:
        keys, _, ts, origin = sender.state_digest()[table]
        held_ts, _ = asker.versions(table, keys)
        shard = sender.shard_of(keys)
        for s in range(SHARDS):
            vv = asker.version_vector(s)
            claimed = (shard == s) & (ts <= np.array([vv.get(int(o), 0) for o in origin.tolist()]))
            lacking = claimed & (held_ts < ts)
            assert not lacking.any(), f"shard {s}: version vector covers {int(lacking.sum())} rows the asker lacks"


def _batches(rng: np.random.Generator, updates: list[TableUpdate]) -> list[list[TableUpdate]]:
    """Split a round's rows into message batches of random size, as the responder streams them."""
    out: list[list[TableUpdate]] = [[]]
    for up in updates:
        lo = 0
        while lo < len(up):
            n = int(rng.integers(1, 12))
            out[-1].append(up.take(np.arange(lo, min(lo + n, len(up)))))
            lo += n
            if rng.random() < 0.5:
                out.append([])
    return out


def _simulate(policy: str, seed: int, tmp_path) -> tuple[int, int]:
    """One random run: a writer at the sender, Pull calls whose rounds are cut at random batches (cancel, deadline,
    partition), sender restarts (new mirror and counters), asker restarts from an older snapshot, a stale call that
    keeps sending after a newer one opened; then the link heals. Returns (rounds cut, rows forgotten)."""
    rng = np.random.default_rng(seed)
    now = [0.0]
    rows_per_round = int(rng.integers(3, 30))

    def scheduler() -> SloScheduler:
        return SloScheduler(policy, bytes_per_s=rows_per_round * (ROW_OVERHEAD + 16) / ROUND_S / 2, round_s=ROUND_S,
                            clock=lambda: now[0])

    sender = ParamStore(TABLES, SHARDS, node_id=0, cache_size=int(rng.choice([8, 1000])))
    asker_store = ParamStore(TABLES, SHARDS, node_id=1)
    sched, s_inc, a_inc = scheduler(), 1, 100
    askers = {s: Asker(asker_store, s, 0) for s in range(SHARDS)}
    snapshot = tmp_path / f"asker-{policy}-{seed}.npz"
    asker_store.save(snapshot)
    cuts = forgotten = 0
    stale: Responder | None = None

    def write() -> None:
        table = str(rng.choice(list(TABLES)))
        keys = np.unique(rng.integers(0, 60, int(rng.integers(1, 25))))
        sender.put(table, keys, rng.normal(size=(keys.size, TABLES[table])).astype(np.float32))

    def call(shard: int, rounds: int, cut_p: float) -> bool:
        """One Pull call of up to `rounds` rounds; True when it ended with a complete empty round (in sync)."""
        nonlocal cuts, stale
        a = askers[shard]
        vv, since, since_inc, applied = a.request()
        resp = Responder(sender, sched, shard, vv, since, 1, a_inc, None, applied, 1 << 20, since_inc, s_inc)
        if stale is not None and stale.shard == shard:  # the older call of this asker and shard must stop
            with pytest.raises(Superseded):
                stale.pick(stale.changes())
        stale = resp if rng.random() < 0.3 else None
        for _ in range(rounds):
            if rng.random() < 0.3 * cut_p:
                write()  # changes keep coming while the subscription streams
            cs = resp.changes()
            rnd = resp.pick(cs)
            if rnd.complete and not rnd.updates:
                a.batch([], True, True, cs.version_vector, cs.counter, rnd.id, s_inc)
                return True
            parts = _batches(rng, rnd.updates)
            cut_at = int(rng.integers(0, len(parts))) if rng.random() < cut_p else len(parts)
            for i, part in enumerate(parts[:cut_at]):
                last = i == len(parts) - 1
                a.batch(part, last, rnd.complete, cs.version_vector, cs.counter, rnd.id, s_inc)
            if cut_at < len(parts):  # cancel / deadline / partition: the round never completes at the asker
                cuts += 1
                a.failed()
                return False
            _covered_rows_are_held(sender, asker_store)
            now[0] += ROUND_S
        return False

    for _ in range(int(rng.integers(30, 70))):
        r = rng.random()
        if r < 0.35:
            write()
        elif r < 0.9:
            call(int(rng.integers(SHARDS)), int(rng.integers(1, 6)), 0.5)
        elif r < 0.95:  # the sender restarts: its mirror, pending rounds and shard counters start over
            forgotten += sched.forgotten_rows
            sched, s_inc, stale = scheduler(), s_inc + 1, None
            sender.save(tmp_path / "sender.npz")
            sender = ParamStore.load(tmp_path / "sender.npz", node_id=0)
        else:  # the asker restarts from an older snapshot of itself: a new incarnation that holds less
            asker_store = ParamStore.load(snapshot, node_id=1)
            a_inc += 1
            askers = {s: Asker(asker_store, s, 0) for s in range(SHARDS)}
        if rng.random() < 0.1:
            asker_store.save(snapshot)
        _covered_rows_are_held(sender, asker_store)
    for _ in range(2000):  # the link heals: calls run uncut until every shard answers "nothing new"
        now[0] += ROUND_S
        if all([call(s, 50, 0.0) for s in range(SHARDS)]):
            break
    else:
        raise AssertionError("never caught up after the link healed")
    want, got = sender.state_digest(), asker_store.state_digest()
    for table in TABLES:
        for a, b in zip(want[table], got[table], strict=True):
            assert np.array_equal(a, b), f"{policy} seed {seed}: table {table} differs after healing"
    return cuts, forgotten + sched.forgotten_rows


@pytest.mark.parametrize("policy", ["slo", "fifo"])
def test_cut_rounds_lose_nothing_over_many_seeds(policy, tmp_path):
    cuts = forgotten = 0
    for seed in range(60):
        c, f = _simulate(policy, seed, tmp_path)
        cuts += c
        forgotten += f
    assert cuts > 250 and forgotten > 0  # the runs did cut rounds, and rows of cut rounds were offered again


def test_counter_from_an_earlier_responder_process_is_ignored(tmp_path):
    sender = ParamStore(TABLES, 1, node_id=0)
    asker = Asker(ParamStore(TABLES, 1, node_id=1), 0, 0)
    for k in range(40):  # many changes: the responder's counter runs far ahead
        sender.put("emb", np.array([k]), np.ones((1, 4), np.float32))
    sched = SloScheduler("slo", bytes_per_s=1e12)
    vv, since, since_inc, applied = asker.request()
    resp = Responder(sender, sched, 0, vv, since, 1, 5, None, applied, 1 << 20, since_inc, own_incarnation=11)
    cs = resp.changes()
    rnd = resp.pick(cs)
    asker.batch(rnd.updates, True, rnd.complete, cs.version_vector, cs.counter, rnd.id, 11)
    assert asker.since == 40 and asker.since_incarnation == 11
    sender.save(tmp_path / "s.npz")  # the responder restarts: same rows, its counter starts again from 1
    restarted = ParamStore.load(tmp_path / "s.npz")
    restarted.put("emb", np.array([1000]), np.full((1, 4), 2.0, np.float32))
    vv, since, since_inc, applied = asker.request()
    resp = Responder(restarted, SloScheduler("slo", bytes_per_s=1e12), 0, vv, since, 1, 5, None, applied,
                     1 << 20, since_inc, own_incarnation=12)
    cs = resp.changes()
    rnd = resp.pick(cs)
    assert [k for u in rnd.updates for k in u.keys.tolist()] == [1000]
    asker.batch(rnd.updates, True, rnd.complete, cs.version_vector, cs.counter, rnd.id, 12)
    assert asker.store.get("emb", np.array([1000]))[1].all()


def test_a_restarted_peer_is_sent_again_the_rows_it_had_delivered(tmp_path):
    """x -> z -> y: z relays x's rows to y, then z restarts from a snapshot older than them. Rows y got from z were
    withheld from z (no echo) while z's version vector rose over them: lost forever, unless a new incarnation of z
    makes y send them again."""
    x, y, z = (ParamStore(TABLES, 1, node_id=i) for i in (0, 2, 3))
    peers = {0: Incarnations(x), 2: Incarnations(y), 3: Incarnations(z)}
    inc = {0: 10, 2: 20, 3: 30}

    def pull(dst: ParamStore, src: ParamStore) -> None:
        a = Asker(dst, 0, src.node_id, peers[dst.node_id])
        vv, since, since_inc, applied = a.request()
        resp = Responder(src, SendEverything(), 0, vv, since, dst.node_id, inc[dst.node_id], None, applied,
                         1 << 20, since_inc, inc[src.node_id], peers[src.node_id])
        cs = resp.changes()
        rnd = resp.pick(cs)
        a.batch(rnd.updates, True, rnd.complete, cs.version_vector, cs.counter, rnd.id, inc[src.node_id])

    x.put("emb", np.arange(5), np.ones((5, 4), np.float32))
    z.save(tmp_path / "z.npz")  # z's last snapshot before it relays anything
    pull(z, x)  # z (a DC's leader) gets the rows over the WAN
    pull(y, z)  # y gets them from z
    pull(z, y)  # y has nothing new for z: the rows came from z
    z = ParamStore.load(tmp_path / "z.npz", node_id=3)  # z crashes and restarts from its older snapshot
    peers[3], inc[3] = Incarnations(z), 31
    pull(z, y)
    pull(z, x)
    for a, b in zip(x.state_digest()["emb"], z.state_digest()["emb"], strict=True):
        assert np.array_equal(a, b)  # z holds every row again, at the same version


def test_a_call_examines_each_change_once_even_when_it_sends_nothing():
    """A follower's store answers its leader's subscription: every row there came from the leader, so nothing is
    ever sent back (no echo). Each look must examine only what changed since the previous one, not every echo again
    (which made a long subscription quadratic)."""
    follower = ParamStore(TABLES, 1, node_id=1)
    resp = Responder(follower, SendEverything(), 0, {}, None, requester=0)
    examined = 0
    for k in range(300):
        up = TableUpdate("emb", np.array([k]), np.ones((1, 4), np.float32), np.array([k + 1]), np.zeros(1, np.int32))
        follower.apply([up], source=0)
        cs = resp.changes()
        assert len(cs) == 0
        examined += cs.examined
    assert examined <= 300
    other = TableUpdate("emb", np.array([5]), np.full((1, 4), 2.0, np.float32), np.array([999]), np.full(1, 2, np.int32))
    follower.apply([other], source=2)  # a row from elsewhere is still found, after all those looks
    assert [k for u in resp.changes().updates for k in u.keys.tolist()] == [5]
