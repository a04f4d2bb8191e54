"""recmine.faery: exact embedding retrieval (packed corpus, fused scan + filter + top-K, exact re-rank), with
shards and replicas across workers or Ray actors."""

from recmine.faery.cluster import ReplicatedIndex, ShardedIndex
from recmine.faery.index import METRICS, Index

__all__ = ["METRICS", "Index", "ReplicatedIndex", "ShardedIndex"]
