"""Inference servers: each DC scores requests from its local parameter servers (`Get`) and reports serving
quality online (AUC, logloss over a sliding window of replayed interactions) and freshness (age of the
parameters it used). A user's vector is read at request time: its id row plus the rows of the items in its recent
history (the request context the server keeps from the events it served). The reads are also the inference
traffic the SLO-aware updater weighs keys by."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recmine.ekko.rec.model import CONTEXT, DENSE_KEY, RequestContext, context_vectors, score_rows

RowReader = Callable[[str, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]  # -> (values, found, ts ns)


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN when one class is absent."""
    score = np.asarray(score, np.float64)
    y = np.asarray(label) > 0.5
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(s.size)
    # average ranks over ties
    _, start, counts = np.unique(s, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def logloss(logit: np.ndarray, label: np.ndarray) -> float:
    """Mean binary cross-entropy of logits against 0/1 labels."""
    z = np.asarray(logit, np.float64)
    y = np.asarray(label, np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


class QualityWindow:
    """The last `size` scored interactions: AUC, logloss, and the parameter age they were served with."""

    def __init__(self, size: int = 5000) -> None:
        self.score: deque[float] = deque(maxlen=size)
        self.label: deque[float] = deque(maxlen=size)
        self.age: deque[float] = deque(maxlen=size)
        self.total = 0

    def add(self, score: np.ndarray, label: np.ndarray, age_s: np.ndarray) -> None:
        """Record scored events."""
        self.score.extend(np.asarray(score, np.float64).tolist())
        self.label.extend(np.asarray(label, np.float64).tolist())
        self.age.extend(np.asarray(age_s, np.float64).tolist())
        self.total += int(np.asarray(score).size)

    def summary(self) -> dict[str, float]:
        """{"auc", "logloss", "age_p50_s", "events"} over the window."""
        if not self.score:
            return {"auc": float("nan"), "logloss": float("nan"), "age_p50_s": float("nan"), "events": 0}
        s, y = np.array(self.score), np.array(self.label)
        return {"auc": auc(s, y), "logloss": logloss(s, y), "age_p50_s": float(np.median(self.age)),
                "events": len(self.score)}


@dataclass
class Scored:
    """One request batch's scores, and the age (s) of the item rows behind each score."""

    logits: np.ndarray
    age_s: np.ndarray
    cold: int  # events whose item, or whose user with no history, the PS did not hold (scored from the prior: zeros)


class InferenceServer:
    """Scores (user, item) requests from one DC's parameter servers; the dense head is cached and re-read every
    `dense_refresh_s` seconds (it changes rarely); embedding rows are read per request, a user's vector from its
    id row and the rows of its last `context` items (the model's request context size: the trainer's `context`)."""

    def __init__(self, read: RowReader, dim: int, name: str = "", dense_refresh_s: float = 0.5,
                 window: int = 5000, context: int = CONTEXT) -> None:
        self.read = read
        self.dim = dim
        self.name = name
        self.dense_refresh_s = dense_refresh_s
        self._head: np.ndarray | None = None
        self._head_at = -1e9
        self.quality = QualityWindow(window)
        self.context = RequestContext(context)

    def head(self) -> np.ndarray:
        """The dense head as served here (identity before the trainer's first dense update arrives)."""
        now = time.monotonic()
        if self._head is None or now - self._head_at > self.dense_refresh_s:
            vals, found, _ = self.read("dense", np.array([DENSE_KEY]))
            self._head = vals[0].reshape(self.dim, self.dim) if found[0] else np.eye(self.dim, dtype=np.float32)
            self._head_at = now
        return self._head

    def observe(self, user: np.ndarray, item: np.ndarray) -> None:
        """Record events in the request context without scoring them (e.g. the stream before serving began)."""
        self.context.batch(user, item)

    def score(self, user: np.ndarray, item: np.ndarray, record: bool = False) -> Scored:
        """Logits for a time-ordered batch of request pairs, from this DC's rows: each user's vector reads the
        items of its events before the request (earlier ones of the batch too); unknown users/items score from
        zero rows (cold start). `record`: the batch joins the request context afterwards."""
        user, item = np.asarray(user, np.int64), np.asarray(item, np.int64)
        hist, counts = self.context.batch(user, item, commit=record)
        uk, uinv = np.unique(user, return_inverse=True)
        ik, iinv = np.unique(np.concatenate([item, hist]), return_inverse=True)  # one read for both
        uv, uf, _ = self.read("user", uk)
        iv, if_, its = self.read("item", ik)
        n = item.shape[0]
        vec = context_vectors(uv[uinv], iv[iinv[n:]], counts)
        iinv = iinv[:n]
        logits = score_rows(vec, iv[iinv], self.head())
        now_ns = time.time_ns()
        age = np.where(if_[iinv], (now_ns - its[iinv]) / 1e9, np.nan)
        return Scored(logits, age, int((~(uf[uinv] | (counts > 0)) | ~if_[iinv]).sum()))

    def serve(self, user: np.ndarray, item: np.ndarray, label: np.ndarray) -> Scored:
        """Score a batch of replayed interactions, record them in the quality window and the request context."""
        s = self.score(user, item, record=True)
        ok = np.isfinite(np.asarray(label, np.float64))
        self.quality.add(s.logits[ok], np.asarray(label)[ok], np.nan_to_num(s.age_s[ok], nan=0.0))
        return s


def ps_reader(client: object) -> RowReader:
    """A RowReader over a PSClient (its `get`)."""
    return lambda table, keys: client.get(table, keys)  # type: ignore[attr-defined]
