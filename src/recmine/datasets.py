"""Embedded default data for the demo, made on the fly and deterministic by seed (no network, no files).

Three kinds of data, one per system:

- a user-item click stream with Zipf item popularity and interest drift (new items appear, tastes shift)
  for ekko's online trainer;
- item-embedding matrices (clustered, heavy-tailed norms) for faery's retrieval index;
- the user-user co-interaction graph derived from the stream (two users are linked when they engaged with
  the same item one after the other), with planted dense rings of fake-engagement accounts, plus a
  Chung-Lu power-law graph generator, for g2miner's pattern counts.

Example::

    >>> from recmine.datasets import click_stream, co_interaction_graph
    >>> s = click_stream(n_users=200, n_items=100, n_events=2_000, seed=1)
    >>> g = co_interaction_graph(s, n_rings=2, ring_size=6, seed=1)
    >>> g.n_vertices >= 200 and len(g.rings) == 2
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ClickStream",
    "EdgeGraph",
    "click_stream",
    "co_interaction_graph",
    "item_embeddings",
    "power_law_graph",
    "user_queries",
]


@dataclass(frozen=True)
class ClickStream:
    """A time-ordered interaction stream: one row per impression, `label` 1 for a click (positive), 0 otherwise.

    `item_factors`/`user_factors`/`item_quality` are the hidden ground truth that generated the labels (the
    factors of the *last* drift phase for users), kept so that demos and tests can check a model learns
    something real.
    """

    user: np.ndarray  # int64 [n]
    item: np.ndarray  # int64 [n]
    label: np.ndarray  # float32 [n], 0/1
    timestamp: np.ndarray  # float64 [n], seconds from the stream start, non-decreasing
    n_users: int
    n_items: int
    item_birth: np.ndarray  # float64 [n_items]: time an item first becomes available
    user_factors: np.ndarray = field(repr=False)  # float32 [n_users, f]
    item_factors: np.ndarray = field(repr=False)  # float32 [n_items, f]
    item_quality: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32), repr=False)  # [n_items]
    user_segment: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)  # [n_users]

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def batches(self, size: int):
        """Yield (user, item, label, timestamp) slices of `size` rows in time order."""
        if size <= 0:
            raise ValueError(f"batch size must be positive, got {size}")
        for lo in range(0, len(self), size):
            hi = lo + size
            yield self.user[lo:hi], self.item[lo:hi], self.label[lo:hi], self.timestamp[lo:hi]


@dataclass(frozen=True)
class EdgeGraph:
    """An undirected simple graph as edge arrays (src < dst, no duplicates, no self loops), vertices 0..n-1."""

    src: np.ndarray  # int64 [m]
    dst: np.ndarray  # int64 [m]
    n_vertices: int
    rings: list[np.ndarray] = field(default_factory=list)  # planted cliques (vertex ids), if any

    @property
    def n_edges(self) -> int:
        """Number of undirected edges."""
        return int(self.src.shape[0])

    def edge_array(self) -> np.ndarray:
        """The edges as one int64 array of shape (m, 2)."""
        return np.stack([self.src, self.dst], axis=1)


def _check_positive(**kwargs: float) -> None:
    for name, value in kwargs.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


def _zipf_weights(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf(a) probabilities over n items in a random rank order."""
    ranks = rng.permutation(n) + 1
    w = ranks.astype(np.float64) ** (-a)
    return w / w.sum()


def click_stream(
    n_users: int = 2_000,
    n_items: int = 1_000,
    n_events: int = 50_000,
    *,
    seed: int = 0,
    zipf_a: float = 1.1,
    n_factors: int = 8,
    drift_phases: int = 4,
    new_item_fraction: float = 0.2,
    duration_s: float = 3_600.0,
    n_segments: int = 8,
    taste: float = 3.0,
    user_spread: float = 0.3,
    drift: float = 0.8,
    quality_sd: float = 1.0,
    popularity_quality: float = 0.3,
) -> ClickStream:
    """A learnable drifting click stream: Zipf-popular items, a share born mid-stream, and clicks driven by
    hidden tastes that shift between phases, so a model kept fresh scores better than a stale one.

    P(click) = sigmoid(taste * u.v / sqrt(f) + b_item). Users belong to `n_segments` taste segments (a user's
    factors are the segment's plus `user_spread` of their own, so a few clicks place a user); at each of the
    `drift_phases` phase changes every segment's taste moves by `drift` (0: never, 1: a fresh random taste).
    Item quality b_item is `quality_sd`-wide noise plus `popularity_quality` x standardised log-popularity, so
    a popularity ranking is a real but weaker baseline."""
    _check_positive(n_users=n_users, n_items=n_items, n_events=n_events, zipf_a=zipf_a, n_factors=n_factors,
                    drift_phases=drift_phases, duration_s=duration_s, n_segments=n_segments)
    if not 0.0 <= new_item_fraction < 1.0:
        raise ValueError(f"new_item_fraction must be in [0, 1), got {new_item_fraction}")
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"drift must be in [0, 1], got {drift}")
    for name, value in (("taste", taste), ("user_spread", user_spread), ("quality_sd", quality_sd)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    rng = np.random.default_rng(seed)
    item_f = rng.standard_normal((n_items, n_factors)).astype(np.float32)
    user_f = rng.standard_normal((n_users, n_factors)).astype(np.float32)
    pop = _zipf_weights(n_items, zipf_a, rng)
    user_act = _zipf_weights(n_users, 0.8, rng)

    # New items are born uniformly over the stream; they start popular (a launch boost) then settle.
    birth = np.zeros(n_items)
    n_new = int(round(new_item_fraction * n_items))
    newborn = rng.choice(n_items, size=n_new, replace=False)
    birth[newborn] = np.sort(rng.uniform(0.05, 0.95, size=n_new)) * duration_s

    ts = np.sort(rng.uniform(0.0, duration_s, size=n_events))
    users = rng.choice(n_users, size=n_events, p=user_act)
    items = np.empty(n_events, dtype=np.int64)
    chunk = 4_096
    for lo in range(0, n_events, chunk):
        hi = min(lo + chunk, n_events)
        t = ts[lo:hi]
        # Items available at time t, popularity boosted for ten minutes after birth.
        avail = birth[None, :] <= t[:, None]
        age = t[:, None] - birth[None, :]
        boost = 1.0 + 20.0 * ((age >= 0) & (age < 600.0) & (birth[None, :] > 0))
        w = np.where(avail, pop[None, :] * boost, 0.0)
        cdf = np.cumsum(w, axis=1)
        u = rng.uniform(size=hi - lo) * cdf[:, -1]
        items[lo:hi] = np.minimum((cdf < u[:, None]).sum(axis=1), n_items - 1)
    # Tastes: segment centres (drifting per phase) plus each user's own part; item quality.
    segment = rng.integers(0, n_segments, size=n_users)
    centre = rng.standard_normal((n_segments, n_factors))
    log_pop = np.log(pop)
    quality = popularity_quality * (log_pop - log_pop.mean()) / max(float(log_pop.std()), 1e-12)
    quality = quality + rng.normal(0.0, quality_sd, size=n_items)
    phase = np.minimum((ts // (duration_s / drift_phases)).astype(np.int64), drift_phases - 1)
    labels = np.empty(n_events, dtype=np.float32)
    norm = taste / np.sqrt(n_factors * (1.0 + user_spread**2))
    for p in range(drift_phases):
        if p:
            centre = np.sqrt(1.0 - drift**2) * centre + drift * rng.standard_normal(centre.shape)
        phase_user_f = (centre[segment] + user_spread * user_f).astype(np.float32)
        sel = phase == p
        logit = norm * np.einsum("nf,nf->n", phase_user_f[users[sel]], item_f[items[sel]]) + quality[items[sel]]
        prob = 1.0 / (1.0 + np.exp(-logit))
        labels[sel] = (rng.uniform(size=int(sel.sum())) < prob).astype(np.float32)
    return ClickStream(
        user=users.astype(np.int64), item=items, label=labels, timestamp=ts,
        n_users=n_users, n_items=n_items, item_birth=birth,
        user_factors=phase_user_f, item_factors=item_f, item_quality=quality.astype(np.float32),
        user_segment=segment,
    )


def item_embeddings(
    n_items: int, dim: int = 64, *, seed: int = 0, n_clusters: int = 16, norm_sigma: float = 0.5
) -> np.ndarray:
    """Clustered item embeddings with log-normal (heavy-tailed) norms, float32 [n_items, dim], the shape
    a trained two-tower model produces; used to seed and test retrieval."""
    _check_positive(n_items=n_items, dim=dim, n_clusters=n_clusters)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    which = rng.integers(0, n_clusters, size=n_items)
    x = centres[which] + 0.35 * rng.standard_normal((n_items, dim)) / np.sqrt(dim) * 4.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x *= rng.lognormal(0.0, norm_sigma, size=(n_items, 1))
    return x.astype(np.float32)


def user_queries(n_queries: int, dim: int = 64, *, seed: int = 0) -> np.ndarray:
    """Random unit-norm user query vectors, float32 [n_queries, dim]."""
    _check_positive(n_queries=n_queries, dim=dim)
    rng = np.random.default_rng(seed + 7_919)
    q = rng.standard_normal((n_queries, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32)


def _simple_edges(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical simple-graph edges: src < dst, self loops and duplicates dropped, sorted."""
    lo = np.minimum(src, dst).astype(np.int64)
    hi = np.maximum(src, dst).astype(np.int64)
    keep = lo != hi
    key = np.unique(lo[keep] * n + hi[keep])
    return key // n, key % n


def co_interaction_graph(
    stream: ClickStream,
    *,
    links_per_click: int = 1,
    positives_only: bool = True,
    n_rings: int = 4,
    ring_size: int = 8,
    ring_items: int = 3,
    seed: int = 0,
) -> EdgeGraph:
    """User-user co-interaction graph: each click links its user to the previous `links_per_click` distinct
    users who clicked the same item. Planted rings: `n_rings` groups of `ring_size` fake accounts (new vertex
    ids after the real users) that click the same `ring_items` items in a burst, which makes each ring a clique,
    the dense shape triangle and 4-clique counts expose."""
    if links_per_click < 1:
        raise ValueError(f"links_per_click must be >= 1, got {links_per_click}")
    if n_rings < 0 or (n_rings and ring_size < 3) or ring_items < 1:
        raise ValueError(f"bad ring spec: n_rings={n_rings}, ring_size={ring_size}, ring_items={ring_items}")
    rng = np.random.default_rng(seed + 104_729)
    sel = stream.label > 0 if positives_only else np.ones(len(stream), dtype=bool)
    users = stream.user[sel].tolist()
    items = stream.item[sel].tolist()
    n = stream.n_users + n_rings * ring_size
    rings = [np.arange(stream.n_users + r * ring_size, stream.n_users + (r + 1) * ring_size, dtype=np.int64)
             for r in range(n_rings)]
    # Each ring's burst goes in at a random point of the organic stream, clicks back to back.
    bursts: dict[int, list[tuple[int, int]]] = {}
    for ring in rings:
        targets = rng.choice(stream.n_items, size=ring_items, replace=False)
        at = int(rng.integers(0, max(len(users), 1)))
        burst = [(int(u), int(it)) for it in targets for u in rng.permutation(ring)]
        bursts.setdefault(at, []).extend(burst)
    recent: dict[int, list[int]] = {}
    src: list[int] = []
    dst: list[int] = []

    def click(u: int, it: int, depth: int) -> None:
        prev = recent.setdefault(it, [])
        for v in prev[-depth:]:
            src.append(u)
            dst.append(v)
        if u in prev:
            prev.remove(u)
        prev.append(u)
        if len(prev) > max(depth, ring_size):
            del prev[0]

    for pos in range(len(users) + 1):
        for u, it in bursts.get(pos, ()):
            click(u, it, ring_size - 1)  # a ring member sees all the ring's earlier clicks
        if pos < len(users):
            click(users[pos], items[pos], links_per_click)
    s, d = _simple_edges(np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64), n)
    return EdgeGraph(src=s, dst=d, n_vertices=n, rings=rings)


def power_law_graph(
    n_vertices: int, avg_degree: float = 8.0, *, exponent: float = 2.3, seed: int = 0
) -> EdgeGraph:
    """A Chung-Lu random graph whose expected degrees follow a power law with the given exponent
    (simple, undirected, deterministic by seed): the degree skew of real social and interaction graphs."""
    _check_positive(n_vertices=n_vertices, avg_degree=avg_degree)
    if exponent <= 2.0:
        raise ValueError(f"exponent must be > 2 for a finite mean degree, got {exponent}")
    rng = np.random.default_rng(seed)
    i = np.arange(1, n_vertices + 1, dtype=np.float64)
    w = i ** (-1.0 / (exponent - 1.0))
    w *= avg_degree * n_vertices / w.sum()
    w = np.minimum(w, np.sqrt(w.sum()))  # cap so edge probabilities stay <= 1
    m = int(round(w.sum() / 2))
    p = w / w.sum()
    s = rng.choice(n_vertices, size=m, p=p)
    d = rng.choice(n_vertices, size=m, p=p)
    perm = rng.permutation(n_vertices)  # hide the degree order from vertex ids
    src, dst = _simple_edges(perm[s], perm[d], n_vertices)
    return EdgeGraph(src=src, dst=dst, n_vertices=n_vertices)
