"""The model state manager: watch serving quality against a delayed witness copy and roll harmful updates back.

The witness receives every update `witness_delay` batches late, so it is the model "a few minutes behind". Each
evaluation window scores the same recent interactions with the live parameters (as served, e.g. read from a DC's
parameter servers) and with the witness's. When live quality trails the witness by more than `margin` for
`patience` consecutive windows, the keys changed since the last good window are rolled back to the witness's values:
written as fresh versions at the trainer's PS, so they spread to every DC like any update, and the cost is
proportional to the keys changed, not the model size."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

RowGetter = Callable[[str, np.ndarray], np.ndarray]  # (table, keys) -> (n, dim) float32
RowWriter = Callable[[str, np.ndarray, np.ndarray], object]  # (table, keys, values) -> anything (e.g. a ts)


@dataclass
class GuardConfig:
    """Detection knobs: quality is "higher is better" (AUC, HR@10; pass -logloss for logloss)."""

    margin: float = 0.02
    patience: int = 2
    witness_delay: int = 8


@dataclass
class Verdict:
    """One window's comparison."""

    window: int
    live: float
    witness: float
    bad: bool
    consecutive_bad: int
    rollback_due: bool


@dataclass
class RollbackReport:
    """What a rollback did."""

    window: int
    keys: dict[str, int]
    restored: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)
    unrecoverable: dict[str, int] = field(default_factory=dict)
    detect_window: int = 0
    write_seconds: float = 0.0

    @property
    def total_keys(self) -> int:
        """Rows written back."""
        return sum(self.keys.values())


class Witness:
    """A delayed copy of the model's rows: updates apply `delay` batches after they were made."""

    def __init__(self, initial: Mapping[str, tuple[np.ndarray, np.ndarray]], delay: int) -> None:
        if delay < 0:
            raise ValueError(f"witness delay must be >= 0, got {delay}")
        self.delay = delay
        self.rows: dict[str, dict[int, np.ndarray]] = {
            t: {int(k): np.array(v, np.float32) for k, v in zip(keys.tolist(), vals, strict=True)}
            for t, (keys, vals) in initial.items()}
        self.pending: deque[list[tuple[str, np.ndarray, np.ndarray]]] = deque()

    def record_batch(self, updates: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        """Queue one training batch's updates; apply the batch that is now `delay` batches old."""
        self.pending.append([(t, np.asarray(k, np.int64).copy(), np.array(v, np.float32)) for t, k, v in updates])
        while len(self.pending) > self.delay:
            for table, keys, vals in self.pending.popleft():
                dst = self.rows.setdefault(table, {})
                for k, v in zip(keys.tolist(), vals, strict=True):
                    dst[k] = v

    def get(self, table: str, keys: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(values, known mask); unknown keys read as zeros."""
        src = self.rows.get(table, {})
        out = np.zeros((len(keys), dim), np.float32)
        known = np.zeros(len(keys), bool)
        for n, k in enumerate(np.asarray(keys).tolist()):
            v = src.get(k)
            if v is not None:
                out[n] = v
                known[n] = True
        return out, known

    def drop_pending(self) -> None:
        """Forget queued (not yet applied) updates: after a rollback they are the harmful ones."""
        self.pending.clear()


class ModelStateManager:
    """Quality watch + rollback for a model whose rows live in parameter servers (see module docstring)."""

    def __init__(self, initial: Mapping[str, tuple[np.ndarray, np.ndarray]], dims: Mapping[str, int],
                 config: GuardConfig | None = None) -> None:
        self.cfg = config or GuardConfig()
        if self.cfg.patience < 1:
            raise ValueError("patience must be >= 1")
        self.dims = dict(dims)
        self.witness = Witness(initial, self.cfg.witness_delay)
        self.changed_since_good: dict[str, set[int]] = {t: set() for t in self.dims}
        self.window = 0
        self.consecutive_bad = 0
        self.history: list[Verdict] = []
        self.rollbacks: list[RollbackReport] = []
        self._first_bad_window: int | None = None

    def record_batch(self, updates: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        """Call after every training batch with the rows it wrote: feeds the witness and the changed-key set."""
        for table, keys, _ in updates:
            if table not in self.dims:
                raise KeyError(f"unknown table {table!r}; guarded tables are {sorted(self.dims)}")
            self.changed_since_good[table].update(np.asarray(keys).tolist())
        self.witness.record_batch(updates)

    def witness_getter(self) -> RowGetter:
        """Row reads from the witness (its serving share)."""
        return lambda table, keys: self.witness.get(table, keys, self.dims[table])[0]

    def check(self, evaluate: Callable[[RowGetter], float], live: RowGetter) -> Verdict:
        """Score one window with the live rows and the witness rows; track consecutive bad windows."""
        q_live = float(evaluate(live))
        q_wit = float(evaluate(self.witness_getter()))
        if not (np.isfinite(q_live) and np.isfinite(q_wit)):
            raise ValueError(f"quality must be finite, got live={q_live} witness={q_wit}")
        bad = q_live < q_wit - self.cfg.margin
        if bad:
            self.consecutive_bad += 1
            if self._first_bad_window is None:
                self._first_bad_window = self.window
        else:
            self.consecutive_bad = 0
            self._first_bad_window = None
            for s in self.changed_since_good.values():  # a good point: later rollbacks start from here
                s.clear()
        v = Verdict(self.window, q_live, q_wit, bad, self.consecutive_bad,
                    self.consecutive_bad >= self.cfg.patience)
        self.history.append(v)
        self.window += 1
        return v

    def rollback(self, write: RowWriter) -> RollbackReport:
        """Write the witness's values for every key changed since the last good window (fresh versions, so they
        reach every DC); returns what was restored so the trainer can reset its own copy too."""
        t0 = time.perf_counter()
        restored: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        counts, lost = {}, {}
        for table, keyset in self.changed_since_good.items():
            if not keyset:
                continue
            keys = np.array(sorted(keyset), np.int64)
            vals, known = self.witness.get(table, keys, self.dims[table])
            if (~known).any():
                lost[table] = int((~known).sum())  # born after the witness's horizon: nothing older to restore
            keys, vals = keys[known], vals[known]
            if keys.size:
                write(table, keys, vals)
            restored[table] = (keys, vals)
            counts[table] = int(keys.size)
            keyset.clear()
        self.witness.drop_pending()
        rep = RollbackReport(self.window - 1, counts, restored, lost,
                             detect_window=self._first_bad_window if self._first_bad_window is not None else -1,
                             write_seconds=time.perf_counter() - t0)
        self.rollbacks.append(rep)
        self.consecutive_bad = 0
        self._first_bad_window = None
        return rep
