"""ekko processes: dissemination across DCs, crashes, partitions, and bad requests over gRPC (127.0.0.1 only)."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from recmine.ekko.cluster import LocalCluster, load_topology
from recmine.ekko.wire import stubs

DIM = 8


def _wait_converged(c: LocalCluster, keys: np.ndarray, want: dict[int, np.ndarray], timeout: float = 20.0,
                    uncertain: set[int] | frozenset[int] = frozenset()) -> None:
    """Every PS holds exactly `want` for `keys` (keys in `uncertain` saw a put whose ack was lost: any value, but
    the same everywhere), with identical versions everywhere."""
    deadline = time.monotonic() + timeout
    sure = np.array([k not in uncertain for k in keys.tolist()])
    expect = np.stack([want[k] for k in keys.tolist()])
    while True:
        states = []
        for n in c.nodes:
            with c.client(n.node_id) as cl:
                states.append(cl.get("emb", keys))
        values_ok = all(np.array_equal(v[sure], expect[sure]) and f.all() and np.array_equal(v, states[0][0])
                        for v, f, _ in states)
        versions_ok = all(np.array_equal(states[0][2], ts) for _, _, ts in states)
        if values_ok and versions_ok:
            return
        if time.monotonic() > deadline:
            missing = [i for i, (v, f, _) in enumerate(states) if not f.all()]
            raise AssertionError(f"not converged after {timeout}s; nodes missing keys: {missing}")
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


def test_crash_partition_and_recovery_lose_no_acknowledged_update():
    topo = {"dcs": 3, "replicas": 2, "shards": 2, "tables": {"emb": DIM}, "rtt_ms": 20, "wal": True,
            "snapshot_every_s": 0.5}
    with LocalCluster(topo) as c:
        rng = np.random.default_rng(1)
        want: dict[int, np.ndarray] = {}
        uncertain: set[int] = set()
        stop = threading.Event()
        errors: list[BaseException] = []

        def trainer() -> None:  # keeps writing to DC 0 replica 0; only acknowledged puts enter `want`
            with c.client(0, timeout=2.0) as cl:
                while not stop.is_set():
                    keys = np.unique(rng.integers(0, 500, 20))
                    vals = rng.normal(size=(keys.size, DIM)).astype(np.float32)
                    try:
                        cl.put("emb", keys, vals)
                    except grpc.RpcError:  # the put may or may not have been applied
                        uncertain.update(keys.tolist())
                        time.sleep(0.05)
                        continue
                    except BaseException as exc:  # pragma: no cover - surfaced below
                        errors.append(exc)
                        return
                    want.update(zip(keys.tolist(), vals, strict=True))
                    uncertain.difference_update(keys.tolist())
                    time.sleep(0.01)

        t = threading.Thread(target=trainer)
        t.start()
        try:
            time.sleep(0.5)
            leader_dc1 = c.node(1, 0).node_id  # shard 0's leader in DC 1 (replica 0 by the rotation rule)
            c.kill(leader_dc1)
            time.sleep(0.7)
            c.partition(2, True)
            time.sleep(0.7)
            c.restart(leader_dc1)
            time.sleep(0.5)
            c.partition(2, False)
            time.sleep(0.5)
        finally:
            stop.set()
            t.join(10)
        assert not errors
        # the trainer's own PS crashes after acknowledging: its write-ahead log brings every ack back
        c.kill(0)
        c.restart(0)
        _wait_converged(c, np.array(sorted(want)), want, timeout=30, uncertain=uncertain)


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
