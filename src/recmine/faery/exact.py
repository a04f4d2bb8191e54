"""The exactness oracle: brute-force top-K in float64 over every row, ties broken by the smaller id.

This is what "exact" means for faery (and what tests, the demo, the benchmarks and `recmine retrieve bench` check
every engine against): a row's score is the float64 sum of the exact products of its float32 components with the
query's (products of two float32 values are exact in float64), the K best rows per query by (score desc, id asc),
or by (distance asc, id asc) for l2. For cosine, rows and queries are first normalised and rounded to float32, as
the Index stores them. Scoring in float32 instead reorders near-ties, which is why a float32 "oracle" can call an
exact result wrong.

A float64 matrix product screens each block of rows; its rounding error is bounded per row, so only rows that can
still reach the top K are re-scored row by row with one deterministic summation (identical rows get identical
scores wherever they sit, which a BLAS matrix product does not promise)."""

from __future__ import annotations

from typing import Any

import numpy as np

from recmine.faery.index import METRICS

EPS64 = float(np.finfo(np.float64).eps)


def _as_stored(v: np.ndarray, metric: str) -> np.ndarray:
    """float64 copy of float32 rows as the Index scores them (normalised and rounded to float32 for cosine)."""
    v64 = np.asarray(v, np.float32).astype(np.float64)
    if metric == "cosine":
        n = np.linalg.norm(v64, axis=1, keepdims=True)
        v64 = (v64 / np.where(n > 0, n, 1.0)).astype(np.float32).astype(np.float64)
    return v64


def _keys(rows64: np.ndarray, q64: np.ndarray, metric: str) -> np.ndarray:
    """Sort keys (ascending = better) of rows for one query, one deterministic sum per row."""
    if metric == "l2":
        return ((rows64 - q64) ** 2).sum(axis=1)
    return -(rows64 * q64).sum(axis=1)


def brute_force_topk(vectors: Any, ids: Any, queries: Any, k: int, metric: str = "ip",
                     block_rows: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of every query over all rows, computed in float64; ties by the smaller id.

    Parameters
    ----------
    vectors
        (n, dim) rows (converted to float32 first, as an Index stores them); a memory-mapped array is read
        block by block.
    ids
        (n,) int64 ids of the rows, or None for 0..n-1.
    queries
        (nq, dim) or (dim,) queries.
    k
        Results per query; with fewer than k rows the tail is padded with id -1.
    metric
        "ip" (inner product), "cosine" or "l2" (squared Euclidean distance).
    block_rows
        Rows scored per matrix product (bounds the float64 working memory).

    Returns
    -------
    (scores, ids)
        float64 (nq, k) scores, best first (distances ascending for l2; padding -inf, or +inf for l2) and the
        int64 (nq, k) ids.

    Raises
    ------
    ValueError
        A wrong shape, metric, k, or ids that do not match the rows.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    x = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array, got shape {x.shape}")
    n, dim = x.shape
    q = np.asarray(queries)
    q = q[None, :] if q.ndim == 1 else q
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must have shape (nq, {dim}), got {np.asarray(queries).shape}")
    id_arr = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids).astype(np.int64)
    if id_arr.shape != (n,):
        raise ValueError(f"{id_arr.shape[0] if id_arr.ndim else 'scalar'} ids for {n} rows")
    nq = q.shape[0]
    q64 = _as_stored(q, metric)
    qn = np.linalg.norm(q64, axis=1)
    kk = min(int(k), n)
    # per query: candidate rows whose lower bound can still reach the k-th smallest upper bound (T, falling)
    cand: list[list[np.ndarray]] = [[] for _ in range(nq)]
    cand_lb: list[list[np.ndarray]] = [[] for _ in range(nq)]
    best_ub = np.full((nq, 0), np.inf)
    for lo in range(0, n, block_rows):
        xb = _as_stored(x[lo: lo + block_rows], metric)
        xn = np.linalg.norm(xb, axis=1)
        gram = xb @ q64.T  # (B, nq), screening only
        if metric == "l2":
            approx = (xn * xn)[:, None] - 2.0 * gram + (qn * qn)[None, :]
            margin = 3.0 * (dim + 4) * EPS64 * (xn[:, None] + qn[None, :]) ** 2 * 1.01 + 1e-300
        else:
            approx = -gram
            margin = 2.0 * (dim + 2) * EPS64 * xn[:, None] * qn[None, :] * 1.01 + 1e-300
        lb, ub = (approx - margin).T, (approx + margin).T  # (nq, B)
        both = np.concatenate([best_ub, ub], axis=1)
        take = min(kk, both.shape[1])
        best_ub = np.partition(both, take - 1, axis=1)[:, :take]
        theta = best_ub.max(axis=1) if take == kk else np.full(nq, np.inf)
        for i in range(nq):
            keep = np.flatnonzero(lb[i] <= theta[i])
            cand[i].append(keep + lo)
            cand_lb[i].append(lb[i, keep])
    scores = np.full((nq, int(k)), np.inf if metric == "l2" else -np.inf)
    out = np.full((nq, int(k)), -1, np.int64)
    theta = best_ub.max(axis=1) if kk else np.full(nq, np.inf)
    for i in range(nq):
        if not cand[i]:
            continue
        rows = np.concatenate(cand[i])
        rows = rows[np.concatenate(cand_lb[i]) <= theta[i]]
        key = _keys(_as_stored(x[np.sort(rows)], metric), q64[i], metric)
        rid = id_arr[np.sort(rows)]
        order = np.lexsort((rid, key))[:kk]
        scores[i, :kk] = key[order] if metric == "l2" else -key[order]
        out[i, :kk] = rid[order]
    return scores, out


def recall(found_ids: Any, true_ids: Any) -> float:
    """Mean over queries of the fraction of the true top-k ids (padding -1 ignored) that were found."""
    found = np.atleast_2d(np.asarray(found_ids))
    true = np.atleast_2d(np.asarray(true_ids))
    if found.shape[0] != true.shape[0]:
        raise ValueError(f"{found.shape[0]} result rows for {true.shape[0]} queries")
    fracs = []
    for f, t in zip(found, true, strict=True):
        t = t[t >= 0]
        fracs.append(np.isin(t, f).mean() if t.size else 1.0)
    return float(np.mean(fracs)) if fracs else 1.0
