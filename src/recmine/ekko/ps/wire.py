"""Conversions between store rows and protobuf messages, with the validation every RPC needs."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from recmine.ekko.ps.core import Request
from recmine.ekko.ps.store import TableUpdate, VersionVector
from recmine.protos import load_proto


def stubs() -> tuple[ModuleType, ModuleType]:
    """(ekko_pb2, ekko_pb2_grpc), generated from ekko.proto on first use."""
    return load_proto(Path(__file__).with_name("ekko.proto"), "recmine.ekko.ps")


def rows_to_pb(pb2: ModuleType, up: TableUpdate):
    """TableUpdate -> Rows message."""
    return pb2.Rows(table=up.table, keys=up.keys.tolist(), values=np.ascontiguousarray(up.values, "<f4").tobytes(),
                    ts=up.ts.tolist(), origin=up.origin.tolist(), dim=int(up.values.shape[1]))


def pb_to_rows(msg, dims: dict[str, int]) -> TableUpdate:
    """Rows message -> TableUpdate; ValueError naming what is wrong (unknown table, dim, lengths, NaN)."""
    if msg.table not in dims:
        raise ValueError(f"unknown table {msg.table!r}; tables are {sorted(dims)}")
    dim = dims[msg.table]
    if msg.dim != dim:
        raise ValueError(f"table {msg.table!r} has dim {dim}, message says {msg.dim}")
    n = len(msg.keys)
    if len(msg.values) != n * dim * 4:
        raise ValueError(f"table {msg.table!r}: {len(msg.values)} value bytes for {n} keys of dim {dim}")
    if len(msg.ts) != n or len(msg.origin) != n:
        raise ValueError(f"table {msg.table!r}: versions do not match {n} keys")
    values = np.frombuffer(msg.values, dtype="<f4").reshape(n, dim).astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"table {msg.table!r}: non-finite value (NaN/Inf) in rows")
    return TableUpdate(msg.table, np.array(msg.keys, np.int64), values, np.array(msg.ts, np.int64),
                       np.array(msg.origin, np.int32))


def decode_values(table: str, keys: list[int], data: bytes, dim: int, expected_dim: int) -> np.ndarray:
    """Packed float32 payload of a Put -> (n, dim) array; ValueError on a wrong dim, length or NaN."""
    if dim != expected_dim:
        raise ValueError(f"table {table!r} has dim {expected_dim}, request says {dim}")
    n = len(keys)
    if len(data) != n * dim * 4:
        raise ValueError(f"table {table!r}: {len(data)} value bytes for {n} keys of dim {dim}")
    values = np.frombuffer(data, dtype="<f4").reshape(n, dim)
    if not np.isfinite(values).all():
        raise ValueError(f"table {table!r}: non-finite value (NaN/Inf) in request")
    return values.astype(np.float32)


def vv_to_pb(pb2: ModuleType, vv: VersionVector) -> list:
    """Version vector -> repeated VersionEntry."""
    return [pb2.VersionEntry(origin=int(o), ts=int(t)) for o, t in vv.items()]


def pb_to_vv(entries) -> VersionVector:
    """repeated VersionEntry -> version vector."""
    return {int(e.origin): int(e.ts) for e in entries}


def request_to_pb(pb2: ModuleType, req: Request):
    """The core's subscription request -> PullRequest."""
    return pb2.PullRequest(shard=req.shard, version_vector=vv_to_pb(pb2, req.version_vector),
                           has_since=req.since is not None, since_counter=req.since or 0,
                           since_incarnation=req.since_incarnation, wait_ms=req.wait_ms, requester=req.requester,
                           max_message_bytes=req.max_message_bytes, stream_ms=req.stream_ms,
                           origins=req.origins or [], incarnation=req.incarnation, applied_rounds=req.applied)


def pb_to_request(msg) -> Request:
    """PullRequest -> the core's request."""
    return Request(msg.shard, pb_to_vv(msg.version_vector), msg.since_counter if msg.has_since else None,
                   msg.since_incarnation, list(msg.applied_rounds), msg.requester, msg.incarnation,
                   list(msg.origins) or None, msg.wait_ms, msg.stream_ms, msg.max_message_bytes)
