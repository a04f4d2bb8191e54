"""recmine.faery: exact embedding retrieval (packed corpus, fused scan + filter + top-K, exact re-rank), with
shards and replicas across workers or Ray actors, and a gRPC retrieval service with live updates and a
write-ahead log (`connect("host:port")` gives a client shaped like Index). `brute_force_topk` is the float64
oracle that defines "exact"; `recall` scores any engine's ids against it."""

import os
from typing import Any

# faery's searches run short parallel regions; OpenMP's default "active" wait has every idle worker spin between
# them, and on a machine with more runnable threads than cores a search then waits a time slice for a spinning or
# preempted worker (measured: 2 ms -> 60 ms per query on 2 busy vCPUs). Passive waiting sleeps instead. Read once,
# when numba first starts its OpenMP pool; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
