"""The two ways of updating a geo-distributed model that ekko replaces, without I/O (peer.py and the simulator
drive them, like the protocol core):

- central push (mode "push"): the trainer's PS forwards every update to every other PS itself, so its NIC carries
  one copy per PS and saturates as data centres are added. It is a real broadcaster at its best: per destination
  many Applies in flight (no round trip per batch), and every batch retried until acknowledged (`Pusher`);
- checkpoint (mode "checkpoint"): every checkpoint_s the trainer's PS ships a full snapshot of every table to every
  other PS, so an update waits for the next checkpoint and then for a full-model transfer (`checkpoint_messages`).
Select them with the topology's "mode"."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np

from recmine.ekko.ps.scheduler import ROW_OVERHEAD
from recmine.ekko.ps.store import ParamStore, TableUpdate, collapse


class Outbox:
    """Rows waiting to be pushed to one destination. A failed batch comes back and merges with newer rows, and a
    long queue collapses to each key's newest version (last-writer-wins), so a destination that is down for a long
    time costs memory in proportion to the keys changed, not to the updates made."""

    def __init__(self, collapse_at: int = 256) -> None:
        self._queue: deque[TableUpdate] = deque()
        self.collapse_at = collapse_at

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, updates: Iterable[TableUpdate]) -> None:
        """Queue rows (a local Put, or a batch whose Apply failed)."""
        self._queue.extend(u for u in updates if len(u))
        if len(self._queue) > self.collapse_at:
            self._queue = deque(collapse(self._queue))

    def take(self, max_bytes: int) -> list[TableUpdate]:
        """The next batch: queued rows up to about `max_bytes`, each key once at its newest version."""
        out: list[TableUpdate] = []
        size = 0
        while self._queue and size < max_bytes:
            up = self._queue.popleft()
            room = max(1, (max_bytes - size) // max(1, up.nbytes() // len(up)))
            if room < len(up):  # split: the rest stays first in line
                self._queue.appendleft(up.take(np.arange(room, len(up))))
                up = up.take(np.arange(room))
            out.append(up)
            size += up.nbytes()
        return collapse(out)


class Pusher:
    """Central push from one origin server: an outbox per destination, up to `window` Applies in flight to each (a
    stream, not stop-and-wait), and a batch whose Apply failed goes back to its outbox and is retried after a
    backoff that doubles with each consecutive failure (50 ms up to 1 s), until it is acknowledged."""

    def __init__(self, dests: Iterable[int], window: int = 32, max_bytes: int = 4 << 20) -> None:
        self.boxes = {int(d): Outbox() for d in dests}
        self.window = window
        self.max_bytes = max_bytes
        self.in_flight = dict.fromkeys(self.boxes, 0)
        self.retry_at = dict.fromkeys(self.boxes, 0.0)
        self._backoff = dict.fromkeys(self.boxes, 0.05)
        self.retries = 0

    def put(self, updates: list[TableUpdate]) -> None:
        """Queue rows for every destination (a Put at the origin)."""
        for box in self.boxes.values():
            box.add(updates)

    def take(self, dest: int, now: float) -> list[TableUpdate] | None:
        """The next batch to Apply at `dest` now, or None (nothing queued, window full, or backing off)."""
        box = self.boxes[dest]
        if not box or self.in_flight[dest] >= self.window or now < self.retry_at[dest]:
            return None
        self.in_flight[dest] += 1
        return box.take(self.max_bytes)

    def acked(self, dest: int) -> None:
        """The Apply of a batch to `dest` succeeded."""
        self.in_flight[dest] -= 1
        self._backoff[dest] = 0.05

    def failed(self, dest: int, batch: list[TableUpdate], now: float) -> None:
        """The Apply failed: the batch goes back (merged with newer rows, never dropped) and `dest` backs off."""
        self.in_flight[dest] -= 1
        self.boxes[dest].add(batch)
        self.retry_at[dest] = now + self._backoff[dest]
        self._backoff[dest] = min(1.0, 2 * self._backoff[dest])
        self.retries += 1


def checkpoint_messages(store: ParamStore, max_bytes: int) -> list[TableUpdate]:
    """A full snapshot of every table, cut into messages of about `max_bytes`."""
    out = []
    for table in store.tables:
        up = store.dump(table)
        per = max(1, max_bytes // (up.values.shape[1] * 4 + ROW_OVERHEAD))
        out += [up.take(np.arange(lo, min(lo + per, len(up)))) for lo in range(0, len(up), per)]
    return out
