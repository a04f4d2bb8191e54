"""Offline quality of the recommender on a replayed stream, beside a popularity baseline (prequential: every batch
is scored with the model as it was before training on that batch, then trained on; each user's vector reads the
request context the serving side has then: the items of the user's events strictly before the scored one).

- AUC of the like logit on the stream's own labels (all events), popularity = the item's positives so far.
- HR@k and NDCG@k: every positive event ranks its item among `negatives` items sampled uniformly from the items
  seen so far that the user never interacts with anywhere in the stream (the usual sampled-negative protocol: an
  item the user rates later in the same batch, or in a later one, is never drawn as a negative); the model ranks by log P(engage) + log P(like) (`rank_rows`),
  popularity by positives so far. A tie counts at the expected position of random tie-breaking."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recmine.ekko.rec.data import Interactions
from recmine.ekko.rec.model import (
    OnlineTrainer,
    RequestContext,
    context_vectors,
    heads,
    rank_rows,
    score_rows,
)
from recmine.ekko.rec.serving import auc


def ranking_metrics(scores: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `scores` (n, 1 + m), column 0 the positive: (hit@k, NDCG@k), each the expectation over random
    tie-breaking (a positive tied with t negatives takes each of its t + 1 possible places with equal chance)."""
    s = np.asarray(scores, np.float64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"scores must be (n, 1 + m) with m >= 1, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (NaN/Inf found)")
    higher = (s[:, 1:] > s[:, :1]).sum(1)
    ties = (s[:, 1:] == s[:, :1]).sum(1)
    hit = np.zeros(s.shape[0])
    gain = np.zeros(s.shape[0])
    for t in np.unique(ties).tolist():  # ties are rare: one pass per distinct tie count
        rows = ties == t
        place = higher[rows, None] + np.arange(t + 1)[None, :]  # 0-based positions, equally likely
        inside = place < k
        hit[rows] = inside.mean(1)
        gain[rows] = np.where(inside, 1.0 / np.log2(place + 2.0), 0.0).mean(1)
    return hit, gain


@dataclass
class Prequential:
    """Replay results: model and popularity side by side."""

    events: int
    positives: int
    auc: float
    popularity_auc: float
    hr: float
    popularity_hr: float
    ndcg: float
    popularity_ndcg: float
    k: int
    negatives: int
    cold_share: float  # positives whose user had no earlier interaction (nothing to personalise from)

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready, with the ratios the targets are stated in."""
        return {**self.__dict__, "hr_ratio": self.hr / self.popularity_hr if self.popularity_hr else float("nan"),
                "auc_gain": self.auc - self.popularity_auc}


def prequential(data: Interactions, trainer: OnlineTrainer | None = None, batch: int = 250,
                warm_fraction: float = 0.2, negatives: int = 99, k: int = 10, seed: int = 0) -> Prequential:
    """Replay `data` in order through `trainer` (default: a fresh OnlineTrainer); events after the first
    `warm_fraction` are scored before the trainer sees them. Returns AUC, HR@k, NDCG@k for model and popularity."""
    if batch < 1 or negatives < 1 or k < 1 or not 0 <= warm_fraction < 1:
        raise ValueError("need batch >= 1, negatives >= 1, k >= 1 and 0 <= warm_fraction < 1")
    tr = trainer or OnlineTrainer(seed=seed)
    rng = np.random.default_rng(seed + 1)
    n_warm = int(len(data) * warm_fraction)
    pos_count: dict[int, float] = {}
    history: dict[int, set[int]] = {}
    touched: dict[int, set[int]] = {}  # every item of each user's events in the whole stream: never a negative
    for u, i in zip(data.user.tolist(), data.item.tolist(), strict=True):
        touched.setdefault(u, set()).add(i)
    seen: list[int] = []
    context = RequestContext(tr.context.size)  # serving's own, from the events before each scored one
    like_s, pop_s, labels, rank_m, rank_p = [], [], [], [], []
    cold = 0
    for lo in range(0, len(data), batch):
        b = data.slice(lo, lo + batch)
        hist, counts = context.batch(b.user, b.item)
        if lo >= n_warm and len(seen) > negatives:
            state = _Rows(tr)
            vec = context_vectors(state.get("user", b.user), state.get("item", hist), counts)
            like_s.append(score_rows(vec, state.get("item", b.item), state.head))
            pop_s.append(np.array([pos_count.get(i, 0.0) for i in b.item.tolist()]))
            labels.append(b.label)
            pos = np.flatnonzero(b.label > 0.5)
            if pos.size:
                cand = _candidates(b.user[pos], b.item[pos], touched, np.array(seen), negatives, rng)
                cold += sum(int(u) not in history for u in b.user[pos].tolist())
                items = state.get("item", cand.reshape(-1)).reshape(*cand.shape, -1)
                rank_m.append(rank_rows(vec[pos], items, state.head, state.engage))
                rank_p.append(np.vectorize(lambda i: pos_count.get(i, 0.0), otypes=[float])(cand))
        tr.step(b.user, b.item, b.label)
        for u, i, y in zip(b.user.tolist(), b.item.tolist(), b.label.tolist(), strict=True):
            if i not in pos_count:
                seen.append(i)
            pos_count[i] = pos_count.get(i, 0.0) + y
            history.setdefault(u, set()).add(i)
    if not labels or not rank_m:
        raise ValueError(f"too few events to evaluate: {len(data)} events, warm fraction {warm_fraction}")
    y = np.concatenate(labels)
    hm, gm = ranking_metrics(np.concatenate(rank_m), k)
    hp, gp = ranking_metrics(np.concatenate(rank_p), k)
    return Prequential(int(y.size), int(hm.size), auc(np.concatenate(like_s), y), auc(np.concatenate(pop_s), y),
                       float(hm.mean()), float(hp.mean()), float(gm.mean()), float(gp.mean()), k, negatives,
                       cold / hm.size)


def _candidates(users: np.ndarray, items: np.ndarray, touched: dict[int, set[int]], seen: np.ndarray,
                negatives: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 1 + negatives): each positive item, then distinct items seen so far outside the user's `touched` set
    (drawn with replacement only when fewer than `negatives` such items exist)."""
    out = np.empty((users.size, 1 + negatives), np.int64)
    for r, (u, i) in enumerate(zip(users.tolist(), items.tolist(), strict=True)):
        avoid = touched.get(u, set()) | {i}
        if seen.size - len(avoid) < 4 * negatives:  # few items left: draw from the explicit list
            allowed = np.array([c for c in seen.tolist() if c not in avoid], np.int64)
            if allowed.size == 0:
                allowed = seen[seen != i]
            out[r, 0], out[r, 1:] = i, rng.choice(allowed, negatives, replace=allowed.size < negatives)
            continue
        picked: dict[int, None] = {}
        while len(picked) < negatives:
            for c in seen[rng.integers(0, seen.size, negatives)].tolist():
                if c not in avoid:
                    picked[c] = None
        out[r, 0], out[r, 1:] = i, list(picked)[:negatives]
    return out


class _Rows:
    """The trainer's rows as a PS would serve them: zeros for keys it does not hold."""

    def __init__(self, tr: OnlineTrainer) -> None:
        self.tr = tr
        self.user_w = tr.published_users()
        self.item_w = tr.model.item.weight.detach().numpy()
        self.head, self.engage = heads(tr.dense_rows()[1], tr.dim)

    def get(self, table: str, keys: np.ndarray) -> np.ndarray:
        idmap, w = (self.tr.users, self.user_w) if table == "user" else (self.tr.items, self.item_w)
        r = idmap.rows(np.asarray(keys), add=False)
        return np.where((r >= 0)[:, None], w[np.maximum(r, 0)], 0.0).astype(np.float32)
