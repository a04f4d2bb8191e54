"""ekko processes: dissemination across DCs, crashes, partitions, and bad requests over gRPC (127.0.0.1 only)."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from recmine.ekko.lab.cluster import LocalCluster, load_topology
from recmine.ekko.ps.wire import stubs

DIM = 8


def _wait_converged(c: LocalCluster, keys: np.ndarray, want: dict[int, np.ndarray], timeout: float = 20.0,
                    uncertain: set[int] | frozenset[int] = frozenset(), nodes: list[int] | None = None) -> None:
    """Every PS (of `nodes`, default all) holds exactly `want` for `keys` (keys in `uncertain` saw a put whose ack
    was lost: any value, but the same everywhere), with identical versions everywhere."""
    deadline = time.monotonic() + timeout
    sure = np.array([k not in uncertain for k in keys.tolist()])
    expect = np.stack([want[k] for k in keys.tolist()])
    while True:
        states = []
        for n in [c.nodes[i] for i in nodes] if nodes is not None else c.nodes:
            with c.client(n.node_id) as cl:
                states.append(cl.get("emb", keys))
        values_ok = all(np.array_equal(v[sure], expect[sure]) and f.all() and np.array_equal(v, states[0][0])
                        for v, f, _ in states)
        versions_ok = all(np.array_equal(states[0][2], ts) for _, _, ts in states)
        if values_ok and versions_ok:
            return
        if time.monotonic() > deadline:
            report = {i: {"missing": int((~f).sum()), "wrong": int((~(v[sure] == expect[sure]).all(axis=1)).sum()),
                          "versions differ": int((ts != states[0][2]).sum())} for i, (v, f, ts) in enumerate(states)}
            raise AssertionError(f"not converged after {timeout}s of {keys.size} keys: {report}")
        time.sleep(0.1)


@pytest.mark.parametrize("topology", ["mesh", "tree"])
def test_updates_reach_every_replica(topology):
    with LocalCluster({"dcs": 4, "replicas": 2, "shards": 3, "tables": {"emb": DIM}, "rtt_ms": 20,
                       "topology": topology}) as c:
        rng = np.random.default_rng(0)
        want: dict[int, np.ndarray] = {}
        with c.client(0) as trainer:
            for _ in range(20):
                keys = np.unique(rng.integers(0, 200, 30))
                vals = rng.normal(size=(keys.size, DIM)).astype(np.float32)
                trainer.put("emb", keys, vals)
                want.update(zip(keys.tolist(), vals, strict=True))
        _wait_converged(c, np.array(sorted(want)), want)
        link_bytes = c.wan_bytes()
        assert all(int(k.split(",")[0]) != int(k.split(",")[1]) for k in link_bytes)


class _Trainer:
    """Writes bursts to one PS in a thread; only acknowledged puts enter `want` (a put whose ack was lost leaves
    its keys `uncertain`: any value, but the same everywhere)."""

    def __init__(self, c: LocalCluster, node: int, seed: int, burst: int, every_s: float, fresh: float) -> None:
        self.c, self.node, self.burst, self.every_s, self.fresh = c, node, burst, every_s, fresh
        self.rng = np.random.default_rng(seed)
        self.want: dict[int, np.ndarray] = {}
        self.uncertain: set[int] = set()
        self.errors: list[BaseException] = []
        self.acked = 0
        self._next = 1_000_000
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _keys(self) -> np.ndarray:
        n_new = int(self.burst * self.fresh)  # fresh keys: a row lost on its way is never healed by a later write
        new = np.arange(self._next, self._next + n_new)
        self._next += n_new
        return np.unique(np.concatenate([new, self.rng.integers(0, 500, self.burst - n_new)]))

    def _run(self) -> None:
        with self.c.client(self.node, timeout=2.0) as cl:
            while not self._stop.is_set():
                keys = self._keys()
                vals = self.rng.normal(size=(keys.size, DIM)).astype(np.float32)
                try:
                    cl.put("emb", keys, vals)
                except grpc.RpcError:  # the put may or may not have been applied
                    self.uncertain.update(keys.tolist())
                    time.sleep(0.05)
                    continue
                except BaseException as exc:  # pragma: no cover - surfaced by stop()
                    self.errors.append(exc)
                    return
                self.want.update(zip(keys.tolist(), vals, strict=True))
                self.uncertain.difference_update(keys.tolist())
                self.acked += 1
                time.sleep(self.every_s)

    def __enter__(self) -> _Trainer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self.errors


def _fault_cycle(c: LocalCluster, kind: str, rng: np.random.Generator) -> None:
    """One fault that cuts WAN rounds at a random point, then its repair (random durations)."""
    wait = lambda lo, hi: time.sleep(float(rng.uniform(lo, hi)))  # noqa: E731
    if kind == "partition":  # the WAN emulator drops every connection of DC 1 mid-stream
        c.partition(1, True)
        wait(0.2, 0.6)
        c.partition(1, False)
    elif kind == "kill_sender":  # SIGKILL DC 0's leader of shard 1 (it serves DC 1 that shard), then restart it
        c.kill(c.node(0, 1).node_id)
        wait(0.2, 0.6)
        c.restart(c.node(0, 1).node_id)
    elif kind == "leadership":  # DC 1's replica 1 dies: replica 0 takes shard 1 over and subscribes to DC 0; when
        # replica 1 is back, replica 0 cancels that subscription mid-round (leadership moved back); then again
        for _ in range(2):
            c.kill(c.node(1, 1).node_id)
            wait(0.3, 0.8)
            c.restart(c.node(1, 1).node_id)
            wait(0.2, 1.6)
    elif kind == "kill_trainer_ps":  # the trainer's own PS crashes; its write-ahead log brings every ack back
        c.kill(0)
        wait(0.1, 0.3)
        c.restart(0)
    wait(0.1, 0.4)


@pytest.mark.slow
@pytest.mark.parametrize(("scheduler", "seed"), [("all", 0), ("slo", 1), ("fifo", 2), ("slo", 3), ("fifo", 4),
                                                ("slo+int8", 5), ("fifo+fp16", 6)])
def test_faults_lose_no_acknowledged_update(scheduler, seed):
    """Partitions, SIGKILLed leaders and leadership changes cut rounds at random points, with the scheduler off and
    with the rate-limited scheduler (slo, fifo) on a throttled link: every acknowledged Put reaches every replica
    with identical (value, version)."""
    throttled = scheduler != "all"
    topo = {"dcs": 2, "replicas": 2, "shards": 2, "tables": {"emb": DIM}, "rtt_ms": 20, "wal": True,
            "snapshot_every_s": 0.5, "scheduler": scheduler, "nic_mbps": 0.4 if throttled else 100.0}
    rng = np.random.default_rng(seed)
    kinds = ["partition", "kill_sender", "leadership", "kill_trainer_ps", "partition"]
    rng.shuffle(kinds)
    with LocalCluster(topo) as c:
        # bursts of 200 keys (~100 per shard) exceed a round's budget (2 rounds of 0.9 x 0.4 Mbit/s ~ 86 rows):
        # rounds go out incomplete, and a fault cuts one in flight
        with _Trainer(c, 0, seed, burst=200, every_s=0.4, fresh=0.8) as tr:
            time.sleep(0.5)
            for kind in kinds:
                _fault_cycle(c, kind, rng)
        assert tr.acked > 10
        _wait_converged(c, np.array(sorted(tr.want)), tr.want, timeout=40, uncertain=tr.uncertain)


def test_bad_requests_get_clear_status_and_change_nothing():
    with LocalCluster({"dcs": 1, "replicas": 1, "shards": 1, "tables": {"emb": 4}}) as c:
        pb2, pb2_grpc = stubs()
        with grpc.insecure_channel(c.nodes[0].address) as ch:
            stub = pb2_grpc.ParameterServerStub(ch)
            ok = np.ones((2, 4), "<f4")
            stub.Put(pb2.PutRequest(table="emb", keys=[1, 2], values=ok.tobytes(), dim=4), timeout=5)
            cases = [
                (pb2.PutRequest(table="emb", keys=[1], values=np.ones((1, 3), "<f4").tobytes(), dim=3),
                 grpc.StatusCode.INVALID_ARGUMENT, "dim 4"),
                (pb2.PutRequest(table="emb", keys=[1], values=np.full((1, 4), np.nan, "<f4").tobytes(), dim=4),
                 grpc.StatusCode.INVALID_ARGUMENT, "non-finite"),
                (pb2.PutRequest(table="nope", keys=[1], values=ok[:1].tobytes(), dim=4),
                 grpc.StatusCode.NOT_FOUND, "unknown table"),
                (pb2.PutRequest(table="emb", keys=[1, 2], values=ok.tobytes()[:-3], dim=4),
                 grpc.StatusCode.INVALID_ARGUMENT, "value bytes"),
            ]
            for req, code, text in cases:
                with pytest.raises(grpc.RpcError) as ei:
                    stub.Put(req, timeout=5)
                assert ei.value.code() == code and text in ei.value.details()
            with pytest.raises(grpc.RpcError) as ei:  # malformed bytes for the method's message type
                ch.unary_unary("/recmine.ekko.ParameterServer/Put")(b"\xff\xff\xff", timeout=5)
            assert "Error parsing message" in ei.value.details()  # grpc's own status (UNKNOWN) names the fault
            with pytest.raises(grpc.RpcError) as ei:  # oversize: above the 64 MiB receive limit
                big = np.zeros((70 * 2**20 // 16, 4), "<f4")
                stub.Put(pb2.PutRequest(table="emb", keys=list(range(big.shape[0])), values=big.tobytes(), dim=4),
                         timeout=30)
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            rep = stub.Get(pb2.GetRequest(table="emb", keys=[1, 2, 3]), timeout=5)
            vals = np.frombuffer(rep.values, "<f4").reshape(3, 4)
            assert list(rep.found) == [True, True, False] and (vals[:2] == 1).all()
            assert stub.Health(pb2.HealthRequest(), timeout=5).status == "SERVING"


def test_topology_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown topology field"):
        load_topology({"dcz": 3})
    with pytest.raises(ValueError, match="'dcs' must be a positive integer"):
        load_topology({"dcs": 0})
    bad = tmp_path / "t.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_topology(bad)
    with pytest.raises(FileNotFoundError):
        load_topology(tmp_path / "missing.json")


def test_push_keeps_many_applies_in_flight_over_a_long_link():
    """Central push over a 400 ms RTT: a stream of puts 25 ms apart arrives about one one-way delay (200 ms)
    later. Stop-and-wait (one Apply, then its reply) adds the wait for the previous round trip, ~RTT/2 on average."""
    topo = {"dcs": 2, "replicas": 1, "shards": 1, "tables": {"emb": DIM}, "rtt_ms": 400, "mode": "push",
            "log_applies": True}
    with LocalCluster(topo) as c:
        stamps = []
        with c.client(0) as trainer:
            for i in range(60):
                keys = np.arange(i * 10, i * 10 + 10)
                stamps.append(trainer.put("emb", keys, np.full((10, DIM), i, np.float32)))
                time.sleep(0.025)
        time.sleep(1.5)
        with c.client(1) as far:
            st = far.stats()
            assert far.get("emb", np.arange(600))[1].all()
    first = {}
    for k, at in zip(st["keys"].tolist(), st["applied_ns"].tolist(), strict=True):
        first[k] = min(at, first.get(k, at))
    lat = np.array([(first[i * 10] - s) / 1e9 for i, s in enumerate(stamps)])
    assert np.median(lat) < 0.2 + 0.1, f"push p50 {np.median(lat):.3f} s: Applies are not pipelined"


@pytest.mark.slow
def test_push_retries_until_acknowledged_across_partition_and_restart():
    topo = {"dcs": 2, "replicas": 2, "shards": 1, "tables": {"emb": DIM}, "rtt_ms": 20, "mode": "push"}
    with LocalCluster(topo) as c:
        with _Trainer(c, 0, seed=5, burst=40, every_s=0.05, fresh=0.8) as tr:
            time.sleep(0.3)
            c.partition(1, True)  # every Apply to DC 1 fails for 1.5 s
            time.sleep(1.5)
            c.partition(1, False)
            time.sleep(0.3)
        _wait_converged(c, np.array(sorted(tr.want)), tr.want, timeout=30, uncertain=tr.uncertain)
        far = c.node(1, 1).node_id
        c.kill(far)  # a destination crashes; what the trainer writes meanwhile must reach it once it is back
        with _Trainer(c, 0, seed=6, burst=40, every_s=0.05, fresh=0.8) as tr2:
            time.sleep(1.2)
            c.restart(far)
            time.sleep(0.3)
        _wait_converged(c, np.array(sorted(tr2.want)), tr2.want, timeout=30, uncertain=tr2.uncertain)


@pytest.mark.parametrize("scheduler", ["all", "slo"])
def test_a_restarted_leader_gets_back_the_rows_it_had_relayed(scheduler):
    """DC 1's leader relays rows A to its follower, crashes with no snapshot; the follower takes over and gets rows B
    from DC 0; the leader restarts empty while DC 1 is cut off the WAN, so it hears from the follower first. The
    follower must not withhold A from it as an echo (A came from that node, but from its earlier process): else the
    leader's version vector rises over A and A is lost there for good."""
    topo = {"dcs": 2, "replicas": 2, "shards": 1, "tables": {"emb": DIM}, "rtt_ms": 20, "scheduler": scheduler}
    with LocalCluster(topo) as c:
        rng = np.random.default_rng(7)
        want: dict[int, np.ndarray] = {}
        leader, follower = c.node(1, 0).node_id, c.node(1, 1).node_id
        with c.client(0) as trainer:
            for part in (np.arange(0, 300), np.arange(300, 400)):  # A, then B while DC 1's leader is down
                vals = rng.normal(size=(part.size, DIM)).astype(np.float32)
                trainer.put("emb", part, vals)
                want.update(zip(part.tolist(), vals, strict=True))
                _wait_converged(c, part, want, nodes=[0, 1, follower])
                if part[0] == 0:
                    _wait_converged(c, part, want)
                    c.kill(leader)
        c.partition(1, True)
        c.restart(leader)
        _wait_converged(c, np.arange(300, 400), want, nodes=[leader, follower])  # B, from the follower
        c.partition(1, False)
        _wait_converged(c, np.arange(400), want, timeout=15)


def test_colocated_servers_pull_from_each_other_in_memory_and_survive_a_crash():
    """Two servers of each DC share a process (each its own endpoint; between them the cores talk directly): updates
    still reach every server, and after the process of a DC is killed and restarted (its WAL and snapshot) the
    rows written meanwhile reach both of its servers."""
    topo = {"dcs": 3, "replicas": 2, "shards": 3, "tables": {"emb": DIM}, "rtt_ms": 20, "colocate": 2, "wal": True,
            "snapshot_every_s": 0.3}
    with LocalCluster(topo) as c:
        assert len({n.proc.pid for n in c.nodes}) == 3
        rng = np.random.default_rng(4)
        want: dict[int, np.ndarray] = {}
        dc1 = [c.node(1, 0).node_id, c.node(1, 1).node_id]
        up = [n.node_id for n in c.nodes if n.node_id not in dc1]
        with c.client(0) as trainer:
            for part in (np.arange(0, 300), np.arange(300, 600)):
                vals = rng.normal(size=(part.size, DIM)).astype(np.float32)
                trainer.put("emb", part, vals)
                want.update(zip(part.tolist(), vals, strict=True))
                _wait_converged(c, part, want, nodes=None if part[0] == 0 else up)
                if part[0] == 0:
                    time.sleep(0.5)  # a snapshot holds the first part
                    c.kill(dc1[1])  # DC 1's process: both of its servers
                    assert c.nodes[dc1[0]].proc.poll() is not None
        c.restart(dc1[0])
        _wait_converged(c, np.arange(600), want)
