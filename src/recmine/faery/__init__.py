"""recmine.faery: exact embedding retrieval (packed corpus, fused scan + filter + top-K, exact re-rank)."""

from recmine.faery.index import METRICS, Index

__all__ = ["METRICS", "Index"]
