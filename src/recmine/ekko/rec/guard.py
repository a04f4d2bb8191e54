"""The model state manager: watch serving quality against a delayed witness copy and roll harmful updates back.

The witness receives every update `witness_delay` batches late, so it is the model "a few minutes behind". Each
evaluation window scores the same recent interactions with the live parameters (as served, e.g. read from a DC's
parameter servers) and with the witness's. When live quality trails the witness by more than `margin` for
`patience` consecutive windows, the keys changed since the last good window are rolled back to the witness's values:
written as fresh versions at the trainer's PS, so they spread to every DC like any update, and the cost is
proportional to the keys changed, not the model size.

A rollback alone does not hold while the faulty trainer keeps sending: its next update would undo it. The rollback
names the sources that wrote since the last good window, and a `Quarantine` holds those sources' later updates
(latest value per key) instead of applying them. Each window it scores the held rows in shadow (served rows with
the held ones laid over them) against the served rows: held rows that hurt are discarded; after `release_after`
healthy windows in a row they are released (written) and the source is trusted again; an operator can release
or discard at any time.

Some harm is visible in the update itself, before anything is served: `screen` refuses a batch with a NaN/Inf row,
a row whose norm is far above its table's typical norm (an exploding layer), a model step that goes back (a
trainer replaying a stale checkpoint), rows that go back in content to values their keys held before (a stale
checkpoint replayed without its step: a 64-bit fingerprint of each published row version is kept per key), or
labels the trainer learned from that differ from the feedback serving logged for the same events (labels flipped
in the training pipeline), naming what was wrong. Harm confined to one group of users (e.g. their
labels flipped) barely moves a global metric: `check` compares live and witness on every slice `evaluate` returns
(e.g. user cohorts) and alarms on the worst one."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

RowGetter = Callable[[str, np.ndarray], np.ndarray]  # (table, keys) -> (n, dim) float32
RowWriter = Callable[[str, np.ndarray, np.ndarray], object]  # (table, keys, values) -> anything (e.g. a ts)
Quality = float | tuple[np.ndarray, np.ndarray]  # one number, or (per-event quality, cohort of each event)


@dataclass
class GuardConfig:
    """Detection knobs: quality is "higher is better" (AUC, HR@10; pass -logloss for logloss). `slice_margin`
    applies to each slice an evaluation returns besides "all"; `norm_factor` bounds a row's norm (x its table's
    typical norm) in `screen`."""

    margin: float = 0.02
    patience: int = 2
    witness_delay: int = 8
    slice_margin: float = 0.05
    slice_z: float = 3.0
    norm_factor: float = 50.0
    replay_rows: int = 16  # a batch whose changed rows go back to earlier values of their keys, this many ...
    replay_share: float = 0.2  # ... and this share of its changed rows, is a replay
    replay_memory: int = 64  # fingerprints of earlier row versions kept per key
    label_tolerance: float = 0.05  # share of a cohort's trained labels allowed to differ from the logged feedback
    to_witness: bool = False  # roll back every key changed within the witness delay, not only since the last good


@dataclass
class Verdict:
    """One window's comparison (live / witness: the whole evaluation; `slice`: the slice that alarmed, if any)."""

    window: int
    live: float
    witness: float
    bad: bool
    consecutive_bad: int
    rollback_due: bool
    slice: str = ""


@dataclass
class Screening:
    """What `screen` let through and what it refused (one line per problem, naming table, key or source)."""

    accepted: list[tuple[str, np.ndarray, np.ndarray]]
    refused: list[str]

    @property
    def harmful(self) -> bool:
        """Whether anything was refused."""
        return bool(self.refused)


@dataclass
class RollbackReport:
    """What a rollback did."""

    window: int
    keys: dict[str, int]
    restored: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)
    unrecoverable: dict[str, int] = field(default_factory=dict)  # keys per table reset to the prior (zeros)
    detect_window: int = 0
    write_seconds: float = 0.0
    sources: list[str] = field(default_factory=list)  # who wrote since the last good window (to quarantine)

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


_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def _fingerprints(vals: np.ndarray) -> np.ndarray:
    """A 64-bit FNV-1a-style hash of each row's exact float32 bits: equal rows get equal prints, a changed bit a new
    one (collisions about 2**-64 per pair)."""
    bits = np.ascontiguousarray(np.asarray(vals, np.float32)).reshape(len(vals), -1).view(np.uint32)
    h = np.full(bits.shape[0], _FNV_OFFSET, np.uint64)
    for j in range(bits.shape[1]):
        h = (h ^ bits[:, j].astype(np.uint64)) * _FNV_PRIME  # uint64 arithmetic wraps
    return h


class ModelStateManager:
    """Quality watch + rollback for a model whose rows live in parameter servers (see module docstring)."""

    def __init__(self, initial: Mapping[str, tuple[np.ndarray, np.ndarray]], dims: Mapping[str, int],
                 config: GuardConfig | None = None) -> None:
        self.cfg = config or GuardConfig()
        if self.cfg.patience < 1:
            raise ValueError("patience must be >= 1")
        c = self.cfg
        if c.replay_rows < 1 or c.replay_memory < 1 or not 0 < c.replay_share <= 1 or not 0 <= c.label_tolerance < 1:
            raise ValueError(f"replay_rows >= 1, replay_memory >= 1, 0 < replay_share <= 1 and 0 <= label_tolerance < 1 "
                             f"are required, got {c.replay_rows}, {c.replay_memory}, {c.replay_share}, "
                             f"{c.label_tolerance}")
        self.dims = dict(dims)
        self.witness = Witness(initial, self.cfg.witness_delay)
        self.changed_since_good: dict[str, set[int]] = {t: set() for t in self.dims}
        self.window = 0
        self.consecutive_bad = 0
        self.history: list[Verdict] = []
        self.rollbacks: list[RollbackReport] = []
        self._first_bad_window: int | None = None
        self._sources_since_good: set[str] = set()
        self._steps: dict[str, int] = {}  # source -> last model step screened in
        self._norms: dict[str, tuple[int, float]] = {}  # table -> (window, typical row norm)
        self._prints: dict[str, dict[int, deque[int]]] = {t: {} for t in self.dims}  # key -> versions, last = now
        for t, (keys, vals) in initial.items():
            if t in self._prints:
                self._remember(t, np.asarray(keys), np.asarray(vals))

    def _remember(self, table: str, keys: np.ndarray, vals: np.ndarray) -> None:
        """Record the published value of each key (its fingerprint becomes the key's current one)."""
        dst = self._prints[table]
        for k, p in zip(np.asarray(keys).tolist(), _fingerprints(vals).tolist(), strict=True):
            hist = dst.get(k)
            if hist is None:
                dst[k] = hist = deque(maxlen=self.cfg.replay_memory + 1)
            if not hist or hist[-1] != p:
                hist.append(p)

    def record_batch(self, updates: list[tuple[str, np.ndarray, np.ndarray]], source: str = "trainer") -> None:
        """Call after every batch applied to the PS with the rows it wrote (and who wrote them): feeds the witness,
        the changed-key set and the sources a rollback names."""
        for table, keys, _ in updates:
            if table not in self.dims:
                raise KeyError(f"unknown table {table!r}; guarded tables are {sorted(self.dims)}")
            self.changed_since_good[table].update(np.asarray(keys).tolist())
        for table, keys, vals in updates:
            self._remember(table, keys, vals)
        if updates:
            self._sources_since_good.add(source)
        self.witness.record_batch(updates)

    def witness_getter(self) -> RowGetter:
        """Row reads from the witness (its serving share)."""
        return lambda table, keys: self.witness.get(table, keys, self.dims[table])[0]

    def check(self, evaluate: Callable[[RowGetter], Quality], live: RowGetter) -> Verdict:
        """Score one window with the live rows and the witness rows; track consecutive bad windows. `evaluate`
        returns one quality, or (per-event quality, cohort of each event): then the whole window is bad when live
        trails the witness by more than `margin`, and a cohort when its events trail the witness by `slice_margin`
        more than the whole window's do (the witness's general lag cancels out) and by `slice_z` standard errors
        of that difference (a small cohort's noise does not alarm)."""
        q_live, q_wit = evaluate(live), evaluate(self.witness_getter())
        if isinstance(q_live, tuple) != isinstance(q_wit, tuple):
            raise ValueError("evaluate must return the same kind of quality for live and witness")
        if isinstance(q_live, tuple):
            (a, groups), (b, _) = q_live, q_wit  # type: ignore[misc]
            a, b, groups = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(groups)
            if a.shape != b.shape or a.shape != groups.shape or a.size == 0:
                raise ValueError(f"per-event quality and cohorts must have one equal, non-zero length, got "
                                 f"{a.shape}, {b.shape}, {groups.shape}")
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                raise ValueError("quality must be finite (NaN/Inf in per-event quality)")
            top_live, top_wit = float(a.mean()), float(b.mean())
            d = b - a  # > 0 where live serves worse than the witness
            worst, gap = ("all", top_wit - top_live - self.cfg.margin)
            for g in np.unique(groups).tolist():
                m = groups == g
                if m.sum() < 30:
                    continue
                excess = float(d[m].mean() - d.mean())
                se = float(d[m].std(ddof=1) / np.sqrt(m.sum())) + 1e-12
                if excess > self.cfg.slice_margin and excess / se > self.cfg.slice_z and excess > gap:
                    worst, gap = f"cohort {g}", excess
            if gap <= 0:
                worst = ""
        else:
            top_live, top_wit = float(q_live), float(q_wit)  # type: ignore[arg-type]
            if not (np.isfinite(top_live) and np.isfinite(top_wit)):
                raise ValueError(f"quality must be finite, got live={top_live} witness={top_wit}")
            worst = "all" if top_live < top_wit - self.cfg.margin else ""
        bad = bool(worst)
        if bad:
            self.consecutive_bad += 1
            if self._first_bad_window is None:
                self._first_bad_window = self.window
        else:
            self.consecutive_bad = 0
            self._first_bad_window = None
            for s in self.changed_since_good.values():  # a good point: later rollbacks start from here
                s.clear()
            self._sources_since_good.clear()
        v = Verdict(self.window, top_live, top_wit, bad, self.consecutive_bad,
                    self.consecutive_bad >= self.cfg.patience, worst)
        self.history.append(v)
        self.window += 1
        return v

    def screen(self, updates: list[tuple[str, np.ndarray, np.ndarray]], source: str = "trainer",
               step: int | None = None, labels: tuple[np.ndarray, ...] | None = None) -> Screening:
        """Check one batch before it is applied: a NaN/Inf row, a row whose norm exceeds `norm_factor` times its
        table's typical norm (the witness's median row norm), a model `step` below the source's last one (a stale
        checkpoint replayed), changed rows that return to earlier values of their keys (`replay_rows` of them and
        `replay_share` of the changed rows: a stale checkpoint replayed, step or not), or `labels` = (labels the
        batch was trained on, feedback serving logged for the same events[, cohort of each event]) differing in more
        than `label_tolerance` of a cohort's events, refuses the whole batch. Returns what to apply and what was
        refused, by name."""
        refused: list[str] = []
        if labels is not None:
            refused.extend(self._label_skew(source, *labels))
        changed = reverted = 0
        if step is not None:
            last = self._steps.get(source)
            if last is not None and step < last:
                refused.append(f"source {source!r}: model step {step} went back from {last} (a stale checkpoint "
                               "replayed)")
        for table, keys, vals in updates:
            vals = np.asarray(vals, np.float64)
            keys = np.asarray(keys)
            finite = np.isfinite(vals).all(axis=1)
            if not finite.all():
                bad = keys[~finite]
                refused.append(f"table {table!r}: non-finite value (NaN/Inf) in {bad.size} row(s), first key "
                               f"{int(bad[0])}")
                continue
            typical = self._typical_norm(table)
            if typical > 0 and vals.size:
                norms = np.linalg.norm(vals, axis=1)
                big = norms > self.cfg.norm_factor * typical
                if big.any():
                    j = int(np.argmax(norms))
                    refused.append(f"table {table!r}: row norm {norms[j]:.3g} for key {int(keys[j])} is "
                                   f"{norms[j] / typical:.0f}x the table's typical {typical:.3g} (exploding)")
            known = self._prints.get(table, {})
            for k, p in zip(keys.tolist(), _fingerprints(vals).tolist(), strict=True):
                hist = known.get(k)
                if hist and hist[-1] != p:
                    changed += 1
                    reverted += p in hist
        if reverted >= self.cfg.replay_rows and reverted >= self.cfg.replay_share * changed:
            refused.append(f"source {source!r}: {reverted} of {changed} changed rows go back to values their keys held "
                           "before (a stale model replayed, or rolled-back values re-sent)")
        if not refused and step is not None:
            self._steps[source] = step
        return Screening([] if refused else list(updates), refused)

    def _label_skew(self, source: str, trained: np.ndarray, observed: np.ndarray,
                    groups: np.ndarray | None = None) -> list[str]:
        """Refusal lines where the labels `source` trained on differ from the logged feedback of the same events in
        more than `label_tolerance` of all events or of a cohort's (10 or more events)."""
        trained, observed = np.asarray(trained, np.float64), np.asarray(observed, np.float64)
        cohorts = np.zeros(trained.shape, np.int64) if groups is None else np.asarray(groups)
        if not (trained.shape == observed.shape == cohorts.shape) or trained.ndim != 1:
            raise ValueError(f"trained labels, logged feedback and cohorts must be 1-d of one length, got "
                             f"{trained.shape}, {observed.shape}, {cohorts.shape}")
        differ = trained != observed
        worst, share, n = "", self.cfg.label_tolerance, 0
        slices = [] if groups is None else [(f"cohort {g}", cohorts == g) for g in np.unique(cohorts).tolist()]
        for name, m in [("all events", np.ones(differ.shape, bool)), *slices]:
            if m.sum() >= 10 and differ[m].mean() > share:
                worst, share, n = name, float(differ[m].mean()), int(m.sum())
        if not worst:
            return []
        return [f"source {source!r}: {round(share * n)} of {n} trained labels ({worst}) differ from the feedback "
                "serving logged (labels corrupted in training)"]

    def _typical_norm(self, table: str) -> float:
        """Median row norm of the witness's table (cached until the witness moves on a window)."""
        cached = self._norms.get(table)
        if cached is not None and cached[0] == self.window:
            return cached[1]
        rows = self.witness.rows.get(table, {})
        norm = float(np.median(np.linalg.norm(np.stack(list(rows.values())), axis=1))) if rows else 0.0
        self._norms[table] = (self.window, norm)
        return norm

    def rollback(self, write: RowWriter, to_witness: bool | None = None) -> RollbackReport:
        """Write the witness's values for every key changed since the last good window (with `to_witness`, every
        key changed within the witness's delay: harm that slipped past earlier windows goes too) as fresh versions,
        so they reach every DC; keys the witness never saw (born within its delay) go back to the cold-start prior,
        the zero row a PS serves for a key it does not hold. `to_witness` overrides the config's. Returns what was
        restored so a trainer can reset."""
        t0 = time.perf_counter()
        restored: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        counts, reset = {}, {}
        if self.cfg.to_witness if to_witness is None else to_witness:
            for batch in self.witness.pending:
                for table, keys, _ in batch:
                    self.changed_since_good[table].update(np.asarray(keys).tolist())
        for table, keyset in self.changed_since_good.items():
            if not keyset:
                continue
            keys = np.array(sorted(keyset), np.int64)
            vals, known = self.witness.get(table, keys, self.dims[table])  # unknown keys read as zeros
            if (~known).any():
                reset[table] = int((~known).sum())
            write(table, keys, vals)
            self._remember(table, keys, vals)
            restored[table] = (keys, vals)
            counts[table] = int(keys.size)
            keyset.clear()
        self.witness.drop_pending()
        rep = RollbackReport(self.window - 1, counts, restored, reset,
                             detect_window=self._first_bad_window if self._first_bad_window is not None else -1,
                             write_seconds=time.perf_counter() - t0, sources=sorted(self._sources_since_good))
        self.rollbacks.append(rep)
        self.consecutive_bad = 0
        self._first_bad_window = None
        self._sources_since_good.clear()
        return rep


Updates = list[tuple[str, np.ndarray, np.ndarray]]  # [(table, keys, values)], as ModelStateManager.record_batch


def _summary(q: Quality) -> dict[str, float]:
    """{"all": mean quality, "cohort g": mean over its events (30 or more)}."""
    if not isinstance(q, tuple):
        return {"all": float(q)}
    vals, groups = np.asarray(q[0], np.float64), np.asarray(q[1])
    out = {"all": float(vals.mean()) if vals.size else float("nan")}
    for g in np.unique(groups).tolist():
        m = groups == g
        if m.sum() >= 30:
            out[f"cohort {g}"] = float(vals[m].mean())
    return out



@dataclass
class Review:
    """One shadow window of a quarantined source: its held rows laid over the served ones vs the served ones."""

    source: str
    shadow: float
    served: float
    healthy: bool
    held_rows: int
    action: str  # "discarded" | "holding" | "released"
    released: Updates = field(default_factory=list, repr=False)  # rows to write when action == "released"


class Quarantine:
    """Holds the updates of quarantined sources instead of applying them, until a healthy streak or an operator
    releases them (see module docstring). Values are absolute rows, so only the latest per key is kept."""

    def __init__(self, margin: float = 0.02, release_after: int = 2, slice_margin: float = 0.05) -> None:
        if not (np.isfinite(margin) and margin >= 0 and np.isfinite(slice_margin) and slice_margin >= 0):
            raise ValueError(f"margin must be finite and >= 0, got {margin} (slice margin {slice_margin})")
        if release_after < 1:
            raise ValueError(f"release_after must be >= 1, got {release_after}")
        self.margin, self.release_after, self.slice_margin = margin, release_after, slice_margin
        self._held: dict[str, dict[str, dict[int, np.ndarray]]] = {}
        self._healthy: dict[str, int] = {}
        self.reasons: dict[str, str] = {}
        self.reviews: list[Review] = []
        self.held_total: dict[str, int] = {}  # updates (batches) held per source, ever
        self.discarded_rows: dict[str, int] = {}

    def quarantined(self, source: str) -> bool:
        """Whether `source`'s updates are being held."""
        return source in self._held

    @property
    def sources(self) -> list[str]:
        """Sources held now."""
        return sorted(self._held)

    def quarantine(self, source: str, reason: str = "") -> None:
        """Start holding `source`'s updates (no-op if already held; its healthy streak restarts)."""
        self._held.setdefault(source, {})
        self._healthy[source] = 0
        self.reasons[source] = reason

    def submit(self, source: str, updates: Updates) -> Updates:
        """Route one batch of `source`'s updates: returned unchanged (apply them) if the source is trusted, held
        (and [] returned) if it is quarantined."""
        held = self._held.get(source)
        if held is None:
            return updates
        for table, keys, vals in updates:
            dst = held.setdefault(table, {})
            for k, v in zip(np.asarray(keys, np.int64).tolist(), np.asarray(vals, np.float32), strict=True):
                dst[k] = v.copy()
        self.held_total[source] = self.held_total.get(source, 0) + 1
        return []

    def held_rows(self, source: str) -> int:
        """Rows held for `source` now."""
        return sum(len(t) for t in self._held.get(source, {}).values())

    def overlay(self, source: str, base: RowGetter) -> RowGetter:
        """A getter serving `source`'s held rows where it holds them and `base` elsewhere (the shadow model)."""
        held = self._held.get(source, {})

        def get(table: str, keys: np.ndarray) -> np.ndarray:
            vals = np.array(base(table, keys), np.float32, copy=True)
            rows = held.get(table)
            if rows:
                for n, k in enumerate(np.asarray(keys).tolist()):
                    v = rows.get(k)
                    if v is not None:
                        vals[n] = v
            return vals
        return get

    def review(self, source: str, evaluate: Callable[[RowGetter], Quality], served: RowGetter) -> Review:
        """Score `source`'s held rows in shadow on one window (quality as ModelStateManager.check takes it; with
        cohorts, every cohort's mean must hold within `slice_margin` too): harmful ones are discarded, and after
        `release_after` healthy windows in a row they are released (returned in `Review.released`)."""
        if source not in self._held:
            raise KeyError(f"source {source!r} is not quarantined; quarantined: {self.sources}")
        q_served, q_shadow = _summary(evaluate(served)), _summary(evaluate(self.overlay(source, served)))
        for name in q_served:
            if not (np.isfinite(q_served[name]) and np.isfinite(q_shadow.get(name, np.nan))):
                raise ValueError(f"quality must be finite, got shadow={q_shadow.get(name)} served={q_served[name]} "
                                 f"(slice {name!r})")
        n = self.held_rows(source)
        healthy = all(q_shadow[k] >= q_served[k] - (self.margin if k == "all" else self.slice_margin)
                      for k in q_served)
        released: Updates = []
        if not healthy:
            self._healthy[source] = 0
            self.discard(source)
            action = "discarded"
        else:
            self._healthy[source] += 1
            action = "holding"
            if self._healthy[source] >= self.release_after:
                released, action = self.release(source), "released"
        rev = Review(source, q_shadow["all"], q_served["all"], healthy, n, action, released)
        self.reviews.append(rev)
        return rev

    def release(self, source: str) -> Updates:
        """Trust `source` again and return its held rows (the caller writes them); the operator's release."""
        held = self._held.pop(source, None)
        if held is None:
            raise KeyError(f"source {source!r} is not quarantined; quarantined: {self.sources}")
        self._healthy.pop(source, None)
        return [(t, np.array(sorted(rows), np.int64), np.stack([rows[k] for k in sorted(rows)]))
                for t, rows in held.items() if rows]

    def discard(self, source: str) -> int:
        """Drop `source`'s held rows (it stays quarantined); returns how many were dropped."""
        if source not in self._held:
            raise KeyError(f"source {source!r} is not quarantined; quarantined: {self.sources}")
        n = self.held_rows(source)
        self._held[source] = {}
        self.discarded_rows[source] = self.discarded_rows.get(source, 0) + n
        return n
