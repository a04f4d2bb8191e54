"""Conversions between store rows and protobuf messages, with the validation every RPC needs."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from recmine.ekko.ps import compress
from recmine.ekko.ps.core import Request
from recmine.ekko.ps.store import TableUpdate, VersionVector
from recmine.protos import load_proto


def stubs() -> tuple[ModuleType, ModuleType]:
    """(ekko_pb2, ekko_pb2_grpc), generated from ekko.proto on first use."""
    return load_proto(Path(__file__).with_name("ekko.proto"), "recmine.ekko.ps")


def rows_to_pb(pb2: ModuleType, up: TableUpdate):
    """TableUpdate -> Rows message (a compress.PackedUpdate travels as its codes)."""
    dim = int(up.values.shape[1])
    if isinstance(up, compress.PackedUpdate):
        assert up.codes is not None and up.scale is not None and up.base_ts is not None
        codes = up.codes.astype("<f2" if up.codec == compress.CODECS["fp16"] else np.int8)
        return pb2.Rows(table=up.table, keys=up.keys.tolist(), ts=up.ts.tolist(), origin=up.origin.tolist(), dim=dim,
                        codec=up.codec, codes=np.ascontiguousarray(codes).tobytes(),
                        scales=np.ascontiguousarray(up.scale, "<f4").tobytes()
                        if up.codec == compress.CODECS["int8"] else b"",
                        base_back=np.where(up.base_ts != 0, up.ts - up.base_ts + 1, 0).tolist())
    return pb2.Rows(table=up.table, keys=up.keys.tolist(), values=np.ascontiguousarray(up.values, "<f4").tobytes(),
                    ts=up.ts.tolist(), origin=up.origin.tolist(), dim=dim)


def pb_to_rows(msg, dims: dict[str, int], held: object | None = None) -> TableUpdate:
    """Rows message -> TableUpdate; ValueError naming what is wrong (unknown table, dim, lengths, NaN). Compressed
    rows need `held`, the receiving store (a delta applies to the row it holds; see compress.decode)."""
    if msg.table not in dims:
        raise ValueError(f"unknown table {msg.table!r}; tables are {sorted(dims)}")
    dim = dims[msg.table]
    if msg.dim != dim:
        raise ValueError(f"table {msg.table!r} has dim {dim}, message says {msg.dim}")
    n = len(msg.keys)
    if len(msg.ts) != n or len(msg.origin) != n:
        raise ValueError(f"table {msg.table!r}: versions do not match {n} keys")
    keys, ts, origin = np.array(msg.keys, np.int64), np.array(msg.ts, np.int64), np.array(msg.origin, np.int32)
    if msg.codec:
        if held is None:
            raise ValueError(f"table {msg.table!r}: compressed rows are accepted only from a peer's Pull")
        width = {compress.CODECS["fp16"]: 2, compress.CODECS["int8"]: 1}.get(msg.codec)
        if width is None:
            raise ValueError(f"table {msg.table!r}: unknown codec {msg.codec}")
        int8 = msg.codec == compress.CODECS["int8"]
        if len(msg.codes) != n * dim * width or len(msg.scales) != (4 * n if int8 else 0) or len(msg.base_back) != n:
            raise ValueError(f"table {msg.table!r}: compressed payload does not match {n} keys of dim {dim}")
        codes = np.frombuffer(msg.codes, "<f2" if not int8 else np.int8).reshape(n, dim)
        scale = np.frombuffer(msg.scales, "<f4").astype(np.float32) if int8 else np.ones(n, np.float32)
        if not np.isfinite(scale).all() or (not int8 and not np.isfinite(codes).all()):
            raise ValueError(f"table {msg.table!r}: non-finite value (NaN/Inf) in compressed rows")
        back = np.array(msg.base_back, np.int64)
        return compress.decode(msg.table, keys, ts, origin, msg.codec, codes, scale,
                               np.where(back != 0, ts - back + 1, 0), held)
    if len(msg.values) != n * dim * 4:
        raise ValueError(f"table {msg.table!r}: {len(msg.values)} value bytes for {n} keys of dim {dim}")
    values = np.frombuffer(msg.values, dtype="<f4").reshape(n, dim).astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"table {msg.table!r}: non-finite value (NaN/Inf) in rows")
    return TableUpdate(msg.table, keys, values, ts, origin)


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
