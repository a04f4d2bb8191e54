"""SLO-aware updater: on each outgoing WAN sync path, pending updates drain in priority order through the link's
byte budget, so under a short link the updates that matter most for serving arrive first.

A PS answers a peer's Pull with "what changed since your version"; when the link's budget cannot carry all of it,
the scheduler sends the highest-priority rows and marks the round incomplete. Nothing is dropped: the asker's
version stays where it was, so the rows that wait are offered again next round, by then merged with any later
change to the same key (the store holds one latest version per key). The scheduler remembers per asker what it
holds (and at which version), so a later round never resends a row the asker holds. What the asker holds comes from
the asker: a round counts only once the asker's next Pull acknowledges it; a round cut on its way (a cancel, a
partition, a crash) is forgotten and its rows are offered again (see sync.py).

Priority (the default `slo_priority`): (a) freshness: a key the asker has never received goes first; (b)
significance: the size of the change against what the asker holds, relative to the key's running mean norm; (c)
model priority: the share of inference traffic the key serves (Gets counted at this PS with exponential decay).
Waiting raises a row's priority (aging) so no key starves. `fifo_priority` (a merging FIFO queue) is the ablation.

With a codec (scheduler "slo+int8", "fifo+fp16", ...; see compress.py) rows travel quantised as deltas against what
the asker holds, changes below the codec's significance wait in the residual, and a quiet key's residual goes exact.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from recmine.ekko.ps import compress
from recmine.ekko.ps.compress import ROW_OVERHEAD, Codec, parse_scheduler
from recmine.ekko.ps.store import ChangeSet, TableUpdate
from recmine.ekko.ps.sync import Round, Superseded

__all__ = ["ROW_OVERHEAD", "POLICIES", "PolicyInputs", "SloScheduler", "Traffic", "fifo_priority", "slo_priority"]


@dataclass
class PolicyInputs:
    """Per candidate row: what a policy may weigh. All arrays have one entry per row."""

    is_new: np.ndarray  # bool: the asker has never received this key
    rel_change: np.ndarray  # ||new - held|| / running mean norm of the key (inf for new keys)
    traffic: np.ndarray  # the key's share of inference reads, relative to the mean key (1.0 = average)
    wait_s: np.ndarray  # seconds since this key first waited for the asker
    ts: np.ndarray  # version stamp (ns) of the row
    queued_ts: np.ndarray  # version stamp of the key's first change the asker still waits for
    change: np.ndarray | None = None  # ||new - held|| (the row's norm for new keys)
    table: np.ndarray | None = None  # index of the row's table in the change set


Policy = Callable[[PolicyInputs], np.ndarray]


def slo_priority(x: PolicyInputs, age_s: float = 2.0) -> np.ndarray:
    """Default policy: new keys first, then change significance times traffic share, raised by waiting time."""
    base = np.where(x.is_new, 1e6 + x.traffic, np.minimum(x.rel_change, 1e3) * (x.traffic + 0.05))
    return base * (1.0 + x.wait_s / age_s)


def fifo_priority(x: PolicyInputs) -> np.ndarray:
    """Ablation: a FIFO queue with per-key merging: a key queues at its first unsent change and keeps that place
    when it changes again (its newest value goes out there)."""
    return -x.queued_ts.astype(np.float64)


POLICIES: dict[str, Policy] = {"slo": slo_priority, "fifo": fifo_priority}


class Traffic:
    """Inference read counts per (table, key), decayed with a half-life, to weigh keys by traffic share."""

    def __init__(self, half_life_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.half_life_s = half_life_s
        self.clock = clock
        self._lock = threading.Lock()
        self._slots: dict[str, dict[int, int]] = {}
        self._counts: dict[str, np.ndarray] = {}
        self._t0 = clock()

    def _weight(self) -> float:  # reads are added with a growing weight: decay without touching every key
        w = float(2.0 ** ((self.clock() - self._t0) / self.half_life_s))
        if w > 1e12:  # rebase (caller holds the lock): scale every count down, so weights never overflow
            for counts in self._counts.values():
                counts /= w
            self._t0 = self.clock()
            w = 1.0
        return w

    def observe(self, table: str, keys: np.ndarray) -> None:
        """Count one read of each key (a Get from a local inference server)."""
        if keys.size == 0:
            return
        uk, cnt = np.unique(np.asarray(keys, np.int64), return_counts=True)
        with self._lock:
            slots = self._slots.setdefault(table, {})
            idx = np.empty(uk.size, np.int64)
            for i, k in enumerate(uk.tolist()):
                s = slots.get(k)
                if s is None:
                    s = slots[k] = len(slots)
                idx[i] = s
            counts = self._counts.get(table, np.zeros(0))
            if counts.size < len(slots):
                grown = np.zeros(max(len(slots), 2 * counts.size))
                grown[: counts.size] = counts
                counts = self._counts[table] = grown
            counts[idx] += cnt * self._weight()

    def share(self, table: str, keys: np.ndarray) -> np.ndarray:
        """Each key's reads relative to the mean over keys read (1.0 when nothing was read yet)."""
        with self._lock:
            slots = self._slots.get(table)
            if not slots:
                return np.ones(keys.shape[0])
            counts = self._counts[table][: len(slots)]
            mean = float(counts.mean())
            idx = np.array([slots.get(k, -1) for k in np.asarray(keys).tolist()], np.int64)
        out = np.where(idx >= 0, counts[np.maximum(idx, 0)], 0.0)
        return out / mean if mean > 0 else np.ones(keys.shape[0])


class _Mirror:
    """What one asker holds of one table, as far as this sender knows, per key: the version and value of the newest
    acknowledged send (`ts`, `values`) and of the newest send still on the current stream (`sent_*`, a round that
    arrives in order or is forgotten when the next Pull shows it was not applied)."""

    FIELDS = ("ts", "values", "norm", "waiting_since", "queued_ts", "shard", "sent_ts", "sent_values", "sent_round",
              "sure", "seen_ts", "seen_at")

    def __init__(self, dim: int) -> None:
        self.slots: dict[int, int] = {}
        self.ts = np.zeros(0, np.int64)  # acknowledged: -1 = never
        self.values = np.zeros((0, dim), np.float32)
        self.norm = np.zeros(0, np.float64)  # running mean of the key's norm
        self.waiting_since = np.zeros(0, np.float64)  # 0 = not waiting
        self.queued_ts = np.zeros(0, np.int64)  # version stamp of the first change still waiting
        self.shard = np.zeros(0, np.int64)
        self.sent_ts = np.zeros(0, np.int64)  # on the current stream, not yet acknowledged: -1 = none
        self.sent_values = np.zeros((0, dim), np.float32)
        self.sent_round = np.zeros(0, np.int64)  # 0 = none
        self.sure = np.zeros(0, bool)  # the asker surely holds `values` (False after a round to it was cut)
        self.seen_ts = np.zeros(0, np.int64)  # the key's newest version this sender has seen, and since when
        self.seen_at = np.zeros(0, np.float64)

    def rows(self, keys: np.ndarray) -> np.ndarray:
        return np.array([self.slots.get(k, -1) for k in keys.tolist()], np.int64)

    def add(self, keys: np.ndarray, shard: int) -> np.ndarray:
        for k in keys.tolist():
            if k not in self.slots:
                self.slots[k] = len(self.slots)
        n = len(self.slots)
        if self.ts.size < n:
            cap = max(n, 2 * self.ts.size)
            for name in self.FIELDS:
                old = getattr(self, name)
                new = np.zeros((cap, *old.shape[1:]), old.dtype)
                if name in ("ts", "sent_ts"):
                    new[:] = -1
                new[: old.shape[0]] = old
                setattr(self, name, new)
        rows = self.rows(keys)
        self.shard[rows] = shard
        return rows

    def view_ts(self, rows: np.ndarray) -> np.ndarray:
        """Version the asker holds once this stream's rounds arrive (-1: none)."""
        return np.where(self.sent_round[rows] != 0, self.sent_ts[rows], self.ts[rows])

    def view_values(self, rows: np.ndarray) -> np.ndarray:
        return np.where((self.sent_round[rows] != 0)[:, None], self.sent_values[rows], self.values[rows])

    def settle(self, shard: int, applied: np.ndarray) -> tuple[int, int]:
        """A new Pull for `shard`: sends in acknowledged rounds become held, the others are forgotten (offered
        again). Returns (rows acknowledged, rows forgotten)."""
        n = len(self.slots)
        rows = np.flatnonzero((self.sent_round[:n] != 0) & (self.shard[:n] == shard))
        if rows.size == 0:
            return 0, 0
        acked = np.isin(self.sent_round[rows], applied)
        ok = rows[acked]
        newer = ok[self.sent_ts[ok] >= self.ts[ok]]  # >=: an exact resend of a version held approximately
        self.ts[newer] = self.sent_ts[newer]
        self.values[newer] = self.sent_values[newer]
        self.sure[ok] = True
        self.sure[rows[~acked]] = False  # a cut round may have left the asker with something else: send absolute
        self.sent_round[rows] = 0
        self.sent_ts[rows] = -1
        return int(ok.size), int(rows.size - ok.size)


class SloScheduler:
    """A PS's Sender for WAN askers: token bucket at `bytes_per_s` split evenly among the askers' streams, rows
    ordered by `policy`, incomplete rounds when a stream's budget runs out (the Pull loop waits `round_s` before the
    next). Intra-DC askers get everything.

    Per asker (node, process incarnation) it keeps a mirror of what the asker holds, so no round resends a row the
    asker holds and significance is measured against the asker's value. A round enters the mirror only when the
    asker's next Pull acknowledges it (see sync.py)."""

    def __init__(self, policy: Policy | str = "slo", bytes_per_s: float = 1e6, round_s: float = 0.05,
                 is_wan: Callable[[int], bool] = lambda node: True, traffic: Traffic | None = None,
                 clock: Callable[[], float] = time.monotonic, codec: Codec | None = None) -> None:
        if isinstance(policy, str):
            name, parsed = parse_scheduler(policy)
            if name not in POLICIES:
                raise ValueError(f"unknown scheduling policy {policy!r}; choose from {sorted(POLICIES)}, optionally "
                                 "with +fp16 or +int8 (compressed deltas), e.g. 'slo+int8'")
            policy, codec = POLICIES[name], codec or parsed
        self.codec = codec
        if bytes_per_s <= 0 or round_s <= 0:
            raise ValueError("bytes_per_s and round_s must be > 0")
        self.policy = policy
        self.bytes_per_s = float(bytes_per_s)
        self.round_s = float(round_s)
        self.capacity = self.bytes_per_s * self.round_s * 2
        self.is_wan = is_wan
        self.traffic = traffic or Traffic()
        self.clock = clock  # seconds; injectable so tests replay rounds deterministically
        self._tokens = self.capacity
        self._last = clock()
        self._mirrors: dict[tuple[int, int, str], _Mirror] = {}
        self._incarnation: dict[int, int] = {}  # requester -> the process incarnation its mirrors belong to
        self._streams: dict[tuple[int, int, int], int] = {}  # (requester, incarnation, shard) -> open stream token
        self._picked: dict[tuple[int, int, int], float] = {}  # stream -> when it last picked with a backlog
        self._credit: dict[tuple[int, int, int], float] = {}  # stream -> bytes of its share it has not spent yet
        self._accrued = clock()  # credits are earned up to here
        self._next_round = int.from_bytes(os.urandom(6), "little") + 1  # ids never reused by a later process
        self._lock = threading.Lock()
        self.sent_bytes = 0
        self.sent_rows = 0
        self.deferred_rounds = 0
        self.acknowledged_rows = 0
        self.forgotten_rows = 0  # sent in rounds the asker never applied, offered again

    def _refill(self) -> float:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.bytes_per_s)
        self._last = now
        return now

    def _allowance(self, stream: tuple[int, int, int], now: float) -> float:
        """Bytes this stream's round may send. While k streams pick (each within the last two rounds), each earns 1/k
        of the link's rate as credit (at most 1/k of the bucket); a round spends its credit plus the tokens no other
        stream's credit holds (what an idle or satisfied stream leaves goes to the others). A share of whatever
        tokens were left when the stream came (first come, first served) gave the stream that picked first most of
        the link: with three far DCs the first got twice the bytes of the last, which was served about as stale as
        under FIFO."""
        horizon = 2 * self.round_s
        for k in [k for k, t in self._picked.items() if now - t > horizon and k != stream]:
            del self._picked[k]  # idle streams give their share back
            self._credit.pop(k, None)
        self._picked[stream] = now
        k = len(self._picked)
        gain, cap = self.bytes_per_s * max(0.0, now - self._accrued) / k, self.capacity / k
        self._accrued = now
        for s in self._picked:
            self._credit[s] = min(cap, self._credit.get(s, 0.0) + gain)
        held = sum(c for s, c in self._credit.items() if s != stream)
        return min(self._tokens, max(self._credit[stream], self._tokens - held))

    def open(self, requester: int, incarnation: int, shard: int, applied: Sequence[int]) -> int:
        """A Pull from `requester` for `shard` starts: rounds it acknowledges become held, the rest of this shard's
        unacknowledged rounds are forgotten, and any older stream of it for this shard is superseded."""
        if not self.is_wan(requester):
            return 0
        with self._lock:
            if self._incarnation.get(requester, incarnation) != incarnation:  # a restarted asker holds only its own
                for k in [k for k in self._mirrors if k[0] == requester]:
                    del self._mirrors[k]
                for k in [k for k in self._streams if k[0] == requester]:
                    del self._streams[k]
            self._incarnation[requester] = incarnation
            acked = np.asarray(sorted(set(applied)), np.int64)
            for (req, inc, _), m in self._mirrors.items():
                if req == requester and inc == incarnation:
                    ok, lost = m.settle(shard, acked)
                    self.acknowledged_rows += ok
                    self.forgotten_rows += lost
            key = (requester, incarnation, shard)
            self._streams[key] = token = self._streams.get(key, 0) + 1
            return token

    def pick(self, cs: ChangeSet, requester: int, incarnation: int, budget: int, stream: int) -> Round:
        """This round's rows for `requester`; complete when it then holds (or has on its way) the whole change set,
        exactly. Raises Superseded when a newer Pull of this asker for this shard has opened."""
        if not self.is_wan(requester):
            return Round(cs.updates, True)
        codec = self.codec
        with self._lock:
            if self._streams.get((requester, incarnation, cs.shard)) != stream:
                raise Superseded(f"a newer Pull of node {requester} for shard {cs.shard} is open")
            now = self._refill()
            cands: list[tuple[TableUpdate, np.ndarray, _Mirror, np.ndarray]] = []
            inputs: list[PolicyInputs] = []
            waiting_rows = 0  # changes left in the residual this round (compressed only)
            for ti, up in enumerate(cs.updates):
                m = self._mirrors.get((requester, incarnation, up.table))
                if m is None:
                    m = self._mirrors[(requester, incarnation, up.table)] = _Mirror(up.values.shape[1])
                rows = m.rows(up.keys)
                known = rows >= 0
                held_ts = np.full(rows.size, -1, np.int64)
                held_ts[known] = m.view_ts(rows[known])
                todo = held_ts != up.ts  # held, or on its way at this version: skip
                if codec is not None:  # ... unless held only approximately
                    at = np.flatnonzero(known & ~todo)
                    todo[at] = (m.view_values(rows[at]) != up.values[at]).any(axis=1)
                todo = np.flatnonzero(todo)
                if todo.size == 0:
                    continue
                sub = up.take(todo)
                rows = m.add(sub.keys, cs.shard)
                is_new = m.view_ts(rows) < 0
                waiting = m.waiting_since[rows]
                fresh_wait = waiting == 0
                m.waiting_since[rows[fresh_wait]] = now
                m.queued_ts[rows[fresh_wait]] = sub.ts[fresh_wait]
                delta = np.linalg.norm(sub.values - m.view_values(rows), axis=1)
                scale = np.where(m.norm[rows] > 0, m.norm[rows], np.linalg.norm(sub.values, axis=1) + 1e-12)
                rel = np.where(is_new, np.inf, delta / scale)
                how = np.zeros(rows.size, np.int8)
                if codec is not None:
                    seen = m.seen_ts[rows] != sub.ts
                    m.seen_ts[rows[seen]], m.seen_at[rows[seen]] = sub.ts[seen], now
                    settled = now - m.seen_at[rows] >= codec.settle_s
                    go = is_new | (rel >= codec.significance) | settled
                    waiting_rows += int((~go).sum())
                    sure = (m.sent_round[rows] != 0) | m.sure[rows]
                    how = np.where(settled & (rel < codec.significance), compress.RAW,
                                   np.where(is_new | ~sure, compress.ABS, compress.DELTA)).astype(np.int8)
                    keep = np.flatnonzero(go)
                    sub, rows, rel, how = sub.take(keep), rows[keep], rel[keep], how[keep]
                    is_new = is_new[keep]
                    if keep.size == 0:
                        continue
                inputs.append(PolicyInputs(is_new, rel, self.traffic.share(up.table, sub.keys),
                                           now - m.waiting_since[rows], sub.ts, m.queued_ts[rows],
                                           np.linalg.norm(sub.values - m.view_values(rows), axis=1),
                                           np.full(len(sub), ti)))
                cands.append((sub, rows, m, how))
            if not cands:
                return Round([], waiting_rows == 0)
            x = PolicyInputs(*(np.concatenate([getattr(i, f) for i in inputs]) for f in
                               ("is_new", "rel_change", "traffic", "wait_s", "ts", "queued_ts", "change", "table")))
            prio = np.asarray(self.policy(x), np.float64)
            cost = np.concatenate([np.full(len(s), ROW_OVERHEAD + 4 * s.values.shape[1]) if codec is None else
                                   codec.cost(s.values.shape[1], how) for s, _, _, how in cands])
            order = np.argsort(-prio, kind="stable")
            key = (requester, incarnation, cs.shard)
            fits = np.cumsum(cost[order]) <= self._allowance(key, now)
            if not fits[0] and self._tokens > 0:  # a row bigger than any round's share would block the queue for
                fits[0] = True  # good: it goes when the link has credit, and the bucket runs into debt
            chosen = order[fits]
            complete = bool(fits.all()) and waiting_rows == 0
            if not bool(fits.all()):
                self.deferred_rounds += 1
            spent = float(cost[chosen].sum())
            self._tokens -= spent
            self._credit[key] = max(0.0, self._credit[key] - spent)
            take = np.zeros(prio.size, bool)
            take[chosen] = True
            rid = self._next_round if chosen.size else 0
            self._next_round += 1 if chosen.size else 0
            out: list[TableUpdate] = []
            lo = 0
            for sub, rows, m, how in cands:
                sel = np.flatnonzero(take[lo: lo + len(sub)])
                lo += len(sub)
                if sel.size == 0:
                    continue
                part = sub.take(sel)
                r = rows[sel]
                norms = np.linalg.norm(part.values, axis=1)
                m.norm[r] = np.where(m.view_ts(r) < 0, norms, 0.9 * m.norm[r] + 0.1 * norms)
                parts = [part] if codec is None else compress.encode(codec, part, how[sel], m.view_values(r),
                                                                     m.view_ts(r))
                for p in parts:
                    pr = m.rows(p.keys)
                    m.sent_ts[pr] = p.ts
                    m.sent_values[pr] = p.values  # what the asker will hold: exact, or as decoded there
                    m.sent_round[pr] = rid
                    m.waiting_since[pr] = 0.0
                    complete &= not isinstance(p, compress.PackedUpdate)  # approximate rows: not yet complete
                    out.append(p)
                self.sent_rows += len(part)
            self.sent_bytes += int(cost[chosen].sum())
            return Round(out, complete, rid)
