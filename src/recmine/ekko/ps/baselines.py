"""The two ways of updating a geo-distributed model that ekko replaces, on the same store, processes and WAN.

- central push (mode "push"): the trainer's PS forwards every update to every other PS itself, so its NIC carries
  one copy per PS and saturates as data centres are added. It is a real broadcaster at its best: per destination
  many Applies in flight (no round trip per batch), and every batch retried until acknowledged;
- checkpoint (mode "checkpoint"): every checkpoint_s the trainer's PS ships a full snapshot of every table to every
  other PS, so an update waits for the next checkpoint and then for a full-model transfer.
Select them with the topology's "mode"; peer.py runs these loops instead of P2P pulls."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from types import ModuleType
from typing import Protocol

import grpc
import numpy as np

from recmine.ekko.ps.config import PeerConfig
from recmine.ekko.ps.store import ParamStore, TableUpdate, collapse
from recmine.ekko.ps.wire import rows_to_pb


class Host(Protocol):
    """What the baseline loops need from the PS process that runs them (peer.PeerServer provides it); a protocol so
    this module does not import the server that imports it."""

    cfg: PeerConfig
    store: ParamStore
    pb2: ModuleType
    pb2_grpc: ModuleType
    push_retries: int

    def channel(self, node: int) -> grpc.aio.Channel:
        """The (cached) channel to peer `node`."""
        ...


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


async def push_loop(peer: Host, node: int, outbox: Outbox, ready: asyncio.Event, window: int = 32) -> None:
    """Central push to one destination PS: `window` Applies in flight at once (a stream, not stop-and-wait), and a
    batch whose Apply fails goes back to the outbox and is retried, with backoff, until it is acknowledged."""
    stub = peer.pb2_grpc.ParameterServerStub(peer.channel(node))

    async def sender() -> None:
        backoff = 0.05
        while True:
            while not outbox:
                ready.clear()
                await ready.wait()
            batch = outbox.take(peer.cfg.max_message_bytes)
            req = peer.pb2.ApplyRequest(rows=[rows_to_pb(peer.pb2, u) for u in batch])
            try:
                await stub.Apply(req, timeout=peer.cfg.rpc_deadline_s * 4)
            except grpc.aio.AioRpcError:
                outbox.add(batch)  # never dropped: merged with newer rows, sent again
                ready.set()
                peer.push_retries += 1
                await asyncio.sleep(backoff)
                backoff = min(1.0, 2 * backoff)
                continue
            backoff = 0.05

    await asyncio.gather(*(sender() for _ in range(window)))


async def checkpoint_loop(peer: Host) -> None:
    """Checkpoint baseline: every checkpoint_s ship a full snapshot of every table to every other PS."""
    while True:
        await asyncio.sleep(peer.cfg.checkpoint_s)
        snap = [peer.store.dump(t) for t in peer.cfg.tables]
        msgs = []
        for up in snap:
            per = max(1, peer.cfg.max_message_bytes // max(1, up.values.shape[1] * 4 + 20))
            for lo in range(0, len(up), per):
                msgs.append(rows_to_pb(peer.pb2, up.take(np.arange(lo, min(lo + per, len(up))))))

        async def ship(node: int, msgs: list) -> None:
            stub = peer.pb2_grpc.ParameterServerStub(peer.channel(node))
            for m in msgs:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.Apply(peer.pb2.ApplyRequest(rows=[m]), timeout=peer.cfg.checkpoint_s * 3)

        await asyncio.gather(*(ship(p.node_id, msgs) for p in peer.cfg.peers))
