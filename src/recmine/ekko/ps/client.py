"""Clients of a parameter server: the trainer writes stamped update batches, inference reads rows."""

from __future__ import annotations

import numpy as np

from recmine.auth import Auth
from recmine.ekko.ps.store import TableUpdate
from recmine.ekko.ps.wire import rows_to_pb, stubs

MAX_MESSAGE = 64 * 1024 * 1024


class PSClient:
    """Blocking client of one PS; every call has a deadline (`timeout` seconds); `auth` gives its credentials (mutual
    TLS, bearer token)."""

    def __init__(self, address: str, timeout: float = 5.0, auth: Auth | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.pb2, pb2_grpc = stubs()
        self._channel = (auth or Auth()).channel(address, [("grpc.max_receive_message_length", MAX_MESSAGE),
                                                           ("grpc.max_send_message_length", MAX_MESSAGE)])
        self._stub = pb2_grpc.ParameterServerStub(self._channel)

    def put(self, table: str, keys: np.ndarray, values: np.ndarray, ts: int = 0) -> int:
        """Write rows (trainer); the server stamps them (or uses ts, the apply time in ns). Returns the stamp."""
        keys = np.asarray(keys, np.int64)
        values = np.ascontiguousarray(values, dtype="<f4")
        if values.ndim != 2 or values.shape[0] != keys.shape[0]:
            raise ValueError(f"values must have shape ({keys.shape[0]}, dim), got {values.shape}")
        req = self.pb2.PutRequest(table=table, keys=keys.tolist(), values=values.tobytes(), dim=values.shape[1],
                                  ts=int(ts))
        return int(self._stub.Put(req, timeout=self.timeout).ts)

    def get(self, table: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values (n, dim), found mask, version ts) for the keys; missing keys read as zeros."""
        rep = self._stub.Get(self.pb2.GetRequest(table=table, keys=np.asarray(keys, np.int64).tolist()),
                             timeout=self.timeout)
        vals = np.frombuffer(rep.values, dtype="<f4").reshape(len(rep.found), rep.dim).astype(np.float32)
        return vals, np.array(rep.found, bool), np.array(rep.ts, np.int64)

    def apply(self, updates: list[TableUpdate]) -> int:
        """Merge versioned rows last-writer-wins (baselines, restores)."""
        req = self.pb2.ApplyRequest(rows=[rows_to_pb(self.pb2, u) for u in updates])
        return int(self._stub.Apply(req, timeout=self.timeout).applied)

    def health(self) -> dict:
        """{"status", "node_id", "keys", "mode"}."""
        rep = self._stub.Health(self.pb2.HealthRequest(), timeout=self.timeout)
        return {"status": rep.status, "node_id": rep.node_id, "keys": rep.keys, "mode": rep.mode}

    def shard_versions(self) -> np.ndarray:
        """Change counter of every shard."""
        return np.array(self._stub.ShardVersions(self.pb2.ShardVersionsRequest(), timeout=self.timeout).counters)

    def stats(self, clear: bool = False) -> dict[str, np.ndarray | int]:
        """The apply log (table, keys, ts, origin, applied_ns per row) and pull counters."""
        rep = self._stub.Stats(self.pb2.StatsRequest(clear=clear), timeout=max(self.timeout, 30.0))
        names = np.array(list(rep.table_names) or [""], dtype=object)
        return {"table": names[np.array(rep.table, np.int64)] if len(rep.table) else np.zeros(0, object),
                "keys": np.array(rep.keys, np.int64), "ts": np.array(rep.ts, np.int64),
                "origin": np.array(rep.origin, np.int32), "applied_ns": np.array(rep.applied_ns, np.int64),
                "pulls": rep.pulls, "rows_received": rep.rows_received}

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> PSClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
