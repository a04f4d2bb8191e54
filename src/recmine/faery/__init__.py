"""recmine.faery: exact embedding retrieval (packed corpus, fused scan + filter + top-K, exact re-rank), with
shards and replicas across workers or Ray actors, and a gRPC retrieval service with live updates and a
write-ahead log (`connect("host:port")` gives a client shaped like Index). `brute_force_topk` is the float64
oracle that defines "exact"; `recall` scores any engine's ids against it."""

from typing import Any

from recmine.faery.cluster import ReplicatedIndex, ShardedIndex
from recmine.faery.exact import brute_force_topk, recall
from recmine.faery.index import METRICS, Index

__all__ = ["METRICS", "Client", "Index", "ReplicatedIndex", "ShardedIndex", "brute_force_topk", "connect", "recall"]


def __getattr__(name: str) -> Any:
    """`Client` and `connect` load on first use: the service client needs the `service` extra (gRPC), the
    in-process engine does not."""
    if name in ("Client", "connect"):
        from recmine.faery import client

        return getattr(client, name)
    raise AttributeError(f"module 'recmine.faery' has no attribute {name!r}")
