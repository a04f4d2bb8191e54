"""Blocking client of a faery retrieval server, shaped like `Index`: search / add / remove / stats.

Server errors become Python exceptions carrying the server's message and the gRPC code (`.code`):
INVALID_ARGUMENT and RESOURCE_EXHAUSTED -> ValueError, NOT_FOUND -> KeyError, UNAVAILABLE / DEADLINE_EXCEEDED ->
ConnectionError, anything else -> RuntimeError."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from recmine.extras import check, require
from recmine.protos import load_proto

check("service", "grpc_tools", "google.protobuf")
grpc = require("grpc", "service")

from recmine.auth import Auth  # noqa: E402 - needs grpc, checked just above

MAX_MESSAGE = 256 * 1024 * 1024


def stubs() -> tuple[ModuleType, ModuleType]:
    """(faery_pb2, faery_pb2_grpc), generated from faery.proto on first use."""
    return load_proto(Path(__file__).with_name("faery.proto"), "recmine.faery")


class RemoteError(Exception):
    """An error status returned by the server; `code` is the grpc.StatusCode."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidArgumentError(RemoteError, ValueError):
    """INVALID_ARGUMENT: wrong dimension, NaN, empty batch, k < 1, duplicate ids..."""


class ResourceExhaustedError(RemoteError, ValueError):
    """RESOURCE_EXHAUSTED: the request or reply exceeds the message size limit."""


class NotFoundError(RemoteError, KeyError):
    """NOT_FOUND: an id to delete is not in the index."""


class UnavailableError(RemoteError, ConnectionError):
    """UNAVAILABLE / DEADLINE_EXCEEDED: the server cannot be reached in time."""


class ServerError(RemoteError, RuntimeError):
    """Any other status (INTERNAL, ...)."""


_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
}


def translate(exc: grpc.RpcError) -> RemoteError:
    """A grpc error -> the matching RemoteError subclass (message and code kept)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return _ERRORS.get(code, ServerError)(details or code.name, code)


class Client:
    """Connection to one retrieval server; every call has a deadline of `timeout` seconds. Thread-safe."""

    def __init__(self, address: str, timeout: float = 10.0, max_message_mb: int = MAX_MESSAGE >> 20,
                 auth: Auth | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.pb2, pb2_grpc = stubs()
        limit = int(max_message_mb) << 20
        self._channel = (auth or Auth()).channel(address, [("grpc.max_receive_message_length", limit),
                                                           ("grpc.max_send_message_length", limit)])
        self._stub = pb2_grpc.RetrievalStub(self._channel)

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise translate(exc) from None

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the channel connects; ConnectionError after `timeout` (default: the call timeout)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=self.timeout if timeout is None else timeout)
        except grpc.FutureTimeoutError:
            raise UnavailableError(f"no retrieval server reachable at {self.address}",
                                   grpc.StatusCode.UNAVAILABLE) from None

    # ---- reads
    def search_versioned(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(scores (nq, k) float32, ids (nq, k) int64, the index version every query saw)."""
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2:
            raise ValueError(f"queries must have shape (nq, dim), got {q.shape}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not -(2**31) <= k < 2**31:
            raise ValueError(f"k must be an integer, got {k!r}")
        q = np.ascontiguousarray(q, "<f4")
        req = self.pb2.SearchRequest(queries=q.tobytes(), nq=q.shape[0], dim=q.shape[1], k=int(k))
        rep = self._call("Search", req)
        scores = np.frombuffer(rep.scores, "<f4").reshape(rep.nq, rep.k).astype(np.float32)
        ids = np.frombuffer(rep.ids, "<i8").reshape(rep.nq, rep.k).astype(np.int64)
        return scores, ids, int(rep.version)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query, exactly as Index.search: (scores float32 (nq, k), ids int64 (nq, k))."""
        scores, ids, _ = self.search_versioned(queries, k)
        return scores, ids

    def stats(self) -> dict[str, Any]:
        """Server counters: live rows, version, delta/tombstones, log and checkpoint state."""
        rep = self._call("Stats", self.pb2.StatsRequest())
        return {f.name: getattr(rep, f.name) for f in rep.DESCRIPTOR.fields}

    def health(self) -> str:
        """"SERVING" or "NOT_SERVING" (ConnectionError when unreachable)."""
        rep = self._call("Health", self.pb2.HealthCheckRequest())
        return self.pb2.HealthCheckResponse.ServingStatus.Name(rep.status)

    # ---- writes
    def upsert(self, ids: Any, vectors: Any) -> tuple[np.ndarray, int]:
        """Insert or replace rows (ids None: the server assigns them); returns (ids, version). Durable on return."""
        v = np.asarray(vectors)
        if v.ndim == 1:
            v = v[None, :]
        if v.ndim != 2:
            raise ValueError(f"vectors must have shape (n, dim), got {v.shape}")
        if not np.issubdtype(v.dtype, np.number):
            raise ValueError(f"vectors must be numeric, got dtype {v.dtype}")
        v = np.ascontiguousarray(v, "<f4")
        id_list = [] if ids is None else np.atleast_1d(np.asarray(ids, np.int64)).tolist()
        req = self.pb2.UpsertRequest(ids=id_list, vectors=v.tobytes(), n=v.shape[0], dim=v.shape[1])
        rep = self._call("Upsert", req)
        return np.array(rep.ids, np.int64), int(rep.version)

    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        """Like Index.add, but an existing id is replaced (upsert). Returns the ids."""
        return self.upsert(ids, vectors)[0]

    def delete(self, ids: Any) -> tuple[int, int]:
        """Remove ids; returns (count, version). KeyError naming an unknown id (then nothing is removed)."""
        arr = np.atleast_1d(np.asarray(ids, np.int64))
        rep = self._call("Delete", self.pb2.DeleteRequest(ids=arr.tolist()))
        return int(rep.deleted), int(rep.version)

    def remove(self, ids: Any) -> int:
        """Like Index.remove: delete ids, return how many."""
        return self.delete(ids)[0]

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(address: str, timeout: float = 10.0, max_message_mb: int = MAX_MESSAGE >> 20,
            auth: Auth | None = None) -> Client:
    """A Client for "host:port", after the connection is up (ConnectionError when it is not within `timeout`);
    `auth` gives its credentials (mutual TLS, bearer token)."""
    client = Client(address, timeout=timeout, max_message_mb=max_message_mb, auth=auth)
    try:
        client.wait_ready()
    except ConnectionError:
        client.close()
        raise
    return client
