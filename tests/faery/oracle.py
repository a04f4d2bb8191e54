"""Brute-force float64 oracle for faery tests: exact scores, ties broken by the smaller id."""

from __future__ import annotations

import numpy as np


def brute_force(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the top k per query, computed in float64 from the float32 data."""
    x64 = x.astype(np.float64)
    q64 = np.atleast_2d(q).astype(np.float64)
    if metric == "cosine":
        x64 = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
        q64 = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
        x64 = x64.astype(np.float32).astype(np.float64)  # the index stores normalised float32 rows
        q64 = q64.astype(np.float32).astype(np.float64)
    out_s, out_i = [], []
    for qi in q64:
        if metric == "l2":
            s = ((x64 - qi) ** 2).sum(axis=1)
            order = np.lexsort((ids, s))[:k]
        else:
            s = x64 @ qi
            order = np.lexsort((ids, -s))[:k]
        out_s.append(s[order])
        out_i.append(ids[order])
    return np.array(out_s), np.array(out_i)
